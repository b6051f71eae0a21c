//! OpenAI's request and response shapes (`/v1/chat/completions`, `/v1/completions`), checked
//! and turned into engine terms. Field names and defaults follow OpenAI's API reference.
use super::errors::ApiError;
use crate::engine::{Completion, Finish, Message, Output, SamplingParams};
use serde::Deserialize;
use serde_json::{json, Value};

/// Tokens generated when a request sets no `max_tokens` (OpenAI's "until the context ends"
/// would let a small model ramble for thousands of tokens).
pub const DEFAULT_MAX_TOKENS: usize = 512;
/// Most choices per request: each is a row of one batch, with its own KV cache.
pub const MAX_N: usize = 32;
/// OpenAI allows up to four stop sequences.
const MAX_STOPS: usize = 4;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields both endpoints share. Unknown fields are ignored, as OpenAI-compatible servers
/// do; fields whose meaning would be silently lost are refused (see `refuse_unsupported`).
#[derive(Debug, Deserialize)]
pub struct Common {
    pub model: String,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<i64>,
    pub n: Option<usize>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<Value>,
    pub tools: Option<Value>,
    pub response_format: Option<Value>,
    /// Conclave's own: overrides a `conclave/<preset>`'s agents or strategy.
    pub ensemble: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

/// A message's content: a string, or a list of parts of which only text parts are read.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: OneOrMany,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub common: Common,
}

/// A request's generation settings, checked.
#[derive(Debug, Clone)]
pub struct Params {
    pub max_tokens: usize,
    /// Whether the request set `max_tokens` (an ensemble keeps its own otherwise).
    pub max_tokens_given: bool,
    pub stop: Vec<String>,
    pub samples: Vec<SamplingParams>,
    pub seed: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Parses a JSON body into `T`, answering 400 with serde's reason when it does not fit.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid: {e}")))
}

impl Common {
    pub fn params(&self) -> Result<Params, ApiError> {
        self.refuse_unsupported()?;
        let temperature = self
            .temperature
            .unwrap_or(SamplingParams::default().temperature);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                Some("temperature"),
                format!("temperature must be between 0 and 2, not {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(SamplingParams::default().top_p);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                Some("top_p"),
                format!("top_p must be greater than 0 and at most 1, not {top_p}"),
            ));
        }
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::invalid(
                Some("n"),
                format!("n must be between 1 and {MAX_N}, not {n}"),
            ));
        }
        let given = self.max_completion_tokens.or(self.max_tokens);
        let max_tokens = given.unwrap_or(DEFAULT_MAX_TOKENS);
        if max_tokens == 0 {
            let param = if self.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(ApiError::invalid(
                Some(param),
                format!("{param} must be at least 1"),
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s.clone()],
            Some(OneOrMany::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                Some("stop"),
                format!("at most {MAX_STOPS} stop sequences, not {}", stop.len()),
            ));
        }
        // A negative seed is a valid integer in OpenAI's schema: keep its bits.
        let seed = self.seed.map(|s| s as u64);
        let base = seed.unwrap_or_else(crate::engine::sampler::random_seed);
        let samples = (0..n as u64)
            .map(|i| SamplingParams {
                temperature,
                top_p,
                // Distinct seeds, so the n choices differ; the same request seed gives the
                // same n choices.
                seed: base.wrapping_add(i),
                ..SamplingParams::default()
            })
            .collect();
        Ok(Params {
            max_tokens,
            max_tokens_given: given.is_some(),
            stop,
            samples,
            seed,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }

    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        let set = |v: &Option<Value>| {
            v.as_ref()
                .is_some_and(|v| !v.is_null() && v != &json!(false))
        };
        for (name, value) in [
            ("logprobs", &self.logprobs),
            ("tools", &self.tools),
            ("response_format", &self.response_format),
        ] {
            if set(value) {
                return Err(ApiError::invalid(
                    Some(name),
                    format!("`{name}` is not supported by this server; leave it out"),
                ));
            }
        }
        if self.stream_options.is_some() && !self.stream {
            return Err(ApiError::invalid(
                Some("stream_options"),
                "stream_options is only allowed when stream is true",
            ));
        }
        Ok(())
    }
}

impl ChatRequest {
    /// The conversation in engine terms; `developer` is OpenAI's newer name for `system`.
    pub fn messages(&self) -> Result<Vec<Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                Some("messages"),
                "messages must hold at least one message",
            ));
        }
        let mut out = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            let param = format!("messages[{i}]");
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        Some(&param),
                        format!(
                        "role `{other}` is not supported: use system, developer, user or assistant"
                    ),
                    ))
                }
            };
            let text = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            _ => {
                                return Err(ApiError::invalid(
                                    Some(&param),
                                    format!(
                                        "content part of type `{}` is not supported: only text",
                                        p.kind
                                    ),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            out.push(Message::new(role, &text));
        }
        Ok(out)
    }
}

impl CompletionRequest {
    pub fn prompt(&self) -> Result<String, ApiError> {
        if self.echo || self.suffix.is_some() {
            return Err(ApiError::invalid(
                Some(if self.echo { "echo" } else { "suffix" }),
                "echo and suffix are not supported by this server",
            ));
        }
        let mut prompts = match &self.prompt {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        if prompts.len() != 1 {
            return Err(ApiError::invalid(
                Some("prompt"),
                format!(
                    "one prompt per request, not {} (send one request each)",
                    prompts.len()
                ),
            ));
        }
        let p = prompts.remove(0);
        if p.is_empty() {
            return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
        }
        Ok(p)
    }
}

/// Which endpoint a response is for: the shapes differ in names only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Text,
}

/// What every response and chunk of one request repeats.
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub shape: Shape,
}

impl Meta {
    pub fn new(model: &str, shape: Shape) -> Self {
        let prefix = match shape {
            Shape::Chat => "chatcmpl",
            Shape::Text => "cmpl",
        };
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Self {
            id: format!("{prefix}-{:016x}", rand::random::<u64>()),
            created,
            model: model.to_string(),
            shape,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.shape, chunk) {
            (Shape::Chat, false) => "chat.completion",
            (Shape::Chat, true) => "chat.completion.chunk",
            (Shape::Text, _) => "text_completion",
        }
    }

    /// A whole (non-streamed) response; `extra` is merged in at the top level.
    pub fn response(&self, choices: Vec<(String, Option<Finish>)>, usage: Value) -> Value {
        let choices: Vec<Value> = choices
            .into_iter()
            .enumerate()
            .map(|(i, (text, finish))| {
                let reason = finish_reason(finish);
                match self.shape {
                    Shape::Chat => json!({"index": i, "finish_reason": reason, "logprobs": null,
                        "message": {"role": "assistant", "content": text}}),
                    Shape::Text => json!({"index": i, "finish_reason": reason, "logprobs": null,
                        "text": text}),
                }
            })
            .collect();
        json!({"id": self.id, "object": self.object(false), "created": self.created,
               "model": self.model, "choices": choices, "usage": usage})
    }

    /// One streamed chunk for choice `index`: `role` on a chat stream's first chunk of each
    /// choice, `text` as it is decoded, `finish` on the last.
    pub fn chunk(&self, index: usize, role: bool, text: &str, finish: Option<Finish>) -> Value {
        let reason = finish.map(|f| finish_reason(Some(f)));
        let choice = match self.shape {
            Shape::Chat => {
                let delta = match (role, finish) {
                    (true, _) => json!({"role": "assistant", "content": text}),
                    (false, Some(_)) => json!({}),
                    (false, None) => json!({"content": text}),
                };
                json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": reason})
            }
            Shape::Text => {
                json!({"index": index, "text": text, "logprobs": null, "finish_reason": reason})
            }
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created,
               "model": self.model, "choices": [choice]})
    }

    /// The usage chunk OpenAI sends last when `stream_options.include_usage`: no choices.
    pub fn usage_chunk(&self, usage: Value) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created,
               "model": self.model, "choices": [], "usage": usage})
    }
}

/// OpenAI has no separate reason for an end-of-turn token and a stop string: both are "stop".
pub fn finish_reason(f: Option<Finish>) -> &'static str {
    match f {
        Some(Finish::Length) => "length",
        _ => "stop",
    }
}

pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens})
}

pub fn output_usage(o: &Output) -> Value {
    usage(o.prompt_tokens, o.completion_tokens())
}

pub fn choices(o: &Output) -> Vec<(String, Option<Finish>)> {
    o.completions
        .iter()
        .map(|c: &Completion| (c.text.clone(), Some(c.finish)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(v: Value) -> Common {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn fields_are_checked_and_name_the_param() {
        let bad = |v: Value| common(v).params().unwrap_err();
        let e = bad(json!({"model": "m", "temperature": 3.0}));
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (400, Some("temperature"))
        );
        assert_eq!(
            bad(json!({"model": "m", "n": 0})).param.as_deref(),
            Some("n")
        );
        assert_eq!(
            bad(json!({"model": "m", "top_p": 0})).param.as_deref(),
            Some("top_p")
        );
        let e = bad(json!({"model": "m", "max_completion_tokens": 0}));
        assert_eq!(e.param.as_deref(), Some("max_completion_tokens"));
        let e = bad(json!({"model": "m", "stop": ["a", "b", "c", "d", "e"]}));
        assert_eq!(e.param.as_deref(), Some("stop"));
        assert_eq!(
            bad(json!({"model": "m", "tools": [{}]})).param.as_deref(),
            Some("tools")
        );
    }

    #[test]
    fn n_choices_get_distinct_seeds_from_the_request_seed() {
        let p = common(json!({"model": "m", "n": 3, "seed": 7, "stop": "x", "max_tokens": 9}))
            .params()
            .unwrap();
        let seeds: Vec<u64> = p.samples.iter().map(|s| s.seed).collect();
        assert_eq!(seeds, vec![7, 8, 9]);
        assert_eq!((p.max_tokens, p.stop.clone()), (9, vec!["x".to_string()]));
        // max_completion_tokens, OpenAI's newer name, wins over max_tokens.
        let p = common(json!({"model": "m", "max_tokens": 9, "max_completion_tokens": 4}));
        assert_eq!(p.params().unwrap().max_tokens, 4);
    }

    #[test]
    fn chunks_have_openai_shape() {
        let m = Meta::new("smollm2-135m", Shape::Chat);
        let first = m.chunk(2, true, "", None);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["index"], 2);
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert!(first["choices"][0]["finish_reason"].is_null());
        let last = m.chunk(0, false, "", Some(Finish::Eos));
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(last["choices"][0]["delta"], json!({}));
        let u = m.usage_chunk(usage(3, 4));
        assert_eq!(
            (u["choices"].clone(), u["usage"]["total_tokens"].clone()),
            (json!([]), json!(7))
        );
    }
}
