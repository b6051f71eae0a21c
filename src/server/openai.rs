//! OpenAI requests (`crate::wire`) checked and turned into engine terms, and engine output
//! turned into OpenAI responses and stream chunks.
use super::errors::ApiError;
use super::tools;
use crate::engine::sampler::random_seed;
use crate::engine::{
    Constraint, Finish, Grammar, Message, Output, SamplingParams, TokenLogprobs, ToolCall,
    DEFAULT_MAX_TOKENS,
};
use crate::ensemble::calls::Tools;
use crate::wire::{
    ChatChoice, ChatChunk, ChatCompletion, ChatLogprobs, ChatMessage, ChatRequest, ChunkChoice,
    Common, Completion, CompletionRequest, Content, Delta, FinishReason, FunctionDelta,
    GrammarSyntax, ResponseFormat, TextChoice, TextCompletion, TextLogprobs, TokenLogprob,
    ToolCallDelta, TopLogprob, Usage,
};
use serde::Serialize;
use serde_json::Value;

/// Most choices per request: each is a row of one batch, with its own KV cache.
pub const MAX_N: usize = 32;
/// OpenAI allows up to four stop sequences.
const MAX_STOPS: usize = 4;
/// OpenAI's most `top_logprobs` (and legacy `logprobs`) alternatives per token.
pub const MAX_TOP_LOGPROBS: i64 = 20;

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
    /// What every choice must follow, and the request field it came from (a 400 names it
    /// when the grammar does not compile).
    pub constraint: Option<(Constraint, &'static str)>,
}

impl Params {
    /// Whether the request asked for log-probabilities.
    pub fn logprobs(&self) -> bool {
        self.samples.iter().any(|s| s.top_logprobs.is_some())
    }

    /// Every sample reports log-probabilities with `top` alternatives (None: none).
    pub fn set_logprobs(&mut self, top: Option<usize>) {
        for s in &mut self.samples {
            s.top_logprobs = top;
        }
    }
}

/// A chat request's `logprobs` and `top_logprobs`, checked: the alternatives per token, or
/// None when log-probabilities are not asked for.
pub fn chat_logprobs(req: &ChatRequest) -> Result<Option<usize>, ApiError> {
    match (req.logprobs, req.top_logprobs) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(ApiError::invalid(
            Some("top_logprobs"),
            "top_logprobs needs logprobs: true",
        )),
        (true, top) => top_count("top_logprobs", top.unwrap_or(0)).map(Some),
    }
}

/// A `/v1/completions` request's legacy `logprobs: N`, checked.
pub fn text_logprobs(req: &CompletionRequest) -> Result<Option<usize>, ApiError> {
    req.logprobs.map(|n| top_count("logprobs", n)).transpose()
}

fn top_count(param: &str, n: i64) -> Result<usize, ApiError> {
    if !(0..=MAX_TOP_LOGPROBS).contains(&n) {
        return Err(ApiError::invalid(
            Some(param),
            format!("{param} must be between 0 and {MAX_TOP_LOGPROBS}, not {n}"),
        ));
    }
    Ok(n as usize)
}

/// The settings both endpoints share, checked; fields whose meaning would be silently lost
/// are refused (see `refuse_unsupported`).
pub fn params(c: &Common) -> Result<Params, ApiError> {
    refuse_unsupported(c)?;
    let temperature = c
        .temperature
        .unwrap_or(SamplingParams::default().temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            Some("temperature"),
            format!("temperature must be between 0 and 2, not {temperature}"),
        ));
    }
    let top_p = c.top_p.unwrap_or(SamplingParams::default().top_p);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            Some("top_p"),
            format!("top_p must be greater than 0 and at most 1, not {top_p}"),
        ));
    }
    let n = c.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid(
            Some("n"),
            format!("n must be between 1 and {MAX_N}, not {n}"),
        ));
    }
    let given = c.max_completion_tokens.or(c.max_tokens);
    let max_tokens = given.unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens == 0 {
        let param = if c.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        return Err(ApiError::invalid(
            Some(param),
            format!("{param} must be at least 1"),
        ));
    }
    let stop = c.stop.as_ref().map(|s| s.to_vec()).unwrap_or_default();
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            Some("stop"),
            format!("at most {MAX_STOPS} stop sequences, not {}", stop.len()),
        ));
    }
    // A negative seed is a valid integer in OpenAI's schema: keep its bits.
    let seed = c.seed.map(|s| s as u64);
    let base = seed.unwrap_or_else(random_seed);
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
        stream: c.stream,
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        constraint: response_format(c)?.map(|g| (Constraint::Full(g), "response_format")),
    })
}

/// `response_format` as the grammar of the whole output (None: free text). `strict` or not,
/// the output follows the schema: constrained decoding costs nothing for being exact.
fn response_format(c: &Common) -> Result<Option<Grammar>, ApiError> {
    Ok(Some(match &c.response_format {
        None | Some(ResponseFormat::Text) => return Ok(None),
        Some(ResponseFormat::JsonObject) => Grammar::JsonObject,
        Some(ResponseFormat::JsonSchema { json_schema }) => match &json_schema.schema {
            None => Grammar::JsonSchema(Value::Bool(true)),
            Some(s @ (Value::Object(_) | Value::Bool(_))) => Grammar::JsonSchema(s.clone()),
            Some(_) => {
                return Err(ApiError::invalid(
                    Some("response_format"),
                    "response_format.json_schema.schema must be a JSON Schema: an object",
                ))
            }
        },
        Some(ResponseFormat::Grammar { grammar }) => match grammar.syntax {
            GrammarSyntax::Lark => Grammar::Lark(grammar.definition.clone()),
            GrammarSyntax::Regex => Grammar::Regex(grammar.definition.clone()),
        },
    }))
}

fn refuse_unsupported(c: &Common) -> Result<(), ApiError> {
    if c.stream_options.is_some() && !c.stream {
        return Err(ApiError::invalid(
            Some("stream_options"),
            "stream_options is only allowed when stream is true",
        ));
    }
    Ok(())
}

/// The conversation in engine terms; `developer` is OpenAI's newer name for `system`.
pub fn messages(req: &ChatRequest) -> Result<Vec<Message>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "messages must hold at least one message",
        ));
    }
    let mut out = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                return Err(ApiError::invalid(
                    Some(&param),
                    format!(
                        "role `{other}` is not supported: use system, developer, user, assistant \
                         or tool"
                    ),
                ))
            }
        };
        let text = match &m.content {
            None => String::new(),
            Some(c) => c.text().map_err(|kind| {
                ApiError::invalid(
                    Some(&param),
                    format!("content part of type `{kind}` is not supported: only text"),
                )
            })?,
        };
        let mut msg = Message::new(role, &text);
        if let Some(calls) = &m.tool_calls {
            msg.tool_calls =
                tools::history_calls(calls).map_err(|e| ApiError::invalid(Some(&param), e))?;
        }
        if role == "tool" {
            msg.tool_call_id = Some(m.tool_call_id.clone().ok_or_else(|| {
                ApiError::invalid(Some(&param), "a `tool` message needs its `tool_call_id`")
            })?);
        }
        out.push(msg);
    }
    Ok(out)
}

/// The one prompt of a `/v1/completions` request.
pub fn prompt(req: &CompletionRequest) -> Result<String, ApiError> {
    if req.echo || req.suffix.is_some() {
        return Err(ApiError::invalid(
            Some(if req.echo { "echo" } else { "suffix" }),
            "echo and suffix are not supported by this server",
        ));
    }
    let mut prompts = req.prompt.to_vec();
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

/// One choice of a whole response.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    pub finish: Option<Finish>,
    /// When the request asked for them.
    pub logprobs: Option<Vec<TokenLogprobs>>,
    /// The calls read out of the text (which then holds only what is not a call).
    pub tool_calls: Vec<ToolCall>,
}

impl Answer {
    pub fn new(text: String, finish: Option<Finish>) -> Self {
        Self {
            text,
            finish,
            logprobs: None,
            tool_calls: Vec::new(),
        }
    }

    /// Moves the calls in the text into `tool_calls`.
    pub fn read_calls(&mut self, tools: &Tools) {
        let parsed = tools.read(&self.text);
        self.text = parsed.content;
        self.tool_calls = parsed.calls;
    }

    /// OpenAI's reason: `tool_calls` when the answer calls tools.
    fn finish_reason(&self) -> FinishReason {
        if self.tool_calls.is_empty() {
            finish_reason(self.finish)
        } else {
            FinishReason::ToolCalls
        }
    }
}

/// Tokens' log-probabilities in OpenAI's chat shape.
pub fn chat_logprobs_of(tokens: &[TokenLogprobs]) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .iter()
            .map(|t| TokenLogprob {
                token: t.chosen.text.clone(),
                logprob: t.chosen.logprob,
                bytes: Some(t.chosen.text.as_bytes().to_vec()),
                top_logprobs: t
                    .top
                    .iter()
                    .map(|a| TopLogprob {
                        token: a.text.clone(),
                        logprob: a.logprob,
                        bytes: Some(a.text.as_bytes().to_vec()),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Tokens' log-probabilities in `/v1/completions`' legacy shape; the first token starts
/// `offset` characters into the choice's text.
pub fn text_logprobs_of(tokens: &[TokenLogprobs], mut offset: usize) -> TextLogprobs {
    let mut out = TextLogprobs::default();
    for t in tokens {
        out.tokens.push(t.chosen.text.clone());
        out.token_logprobs.push(t.chosen.logprob);
        out.top_logprobs
            .push(t.top.iter().map(|a| (a.text.clone(), a.logprob)).collect());
        out.text_offset.push(offset);
        offset += t.chosen.text.chars().count();
    }
    out
}

/// Which endpoint a response is for: the shapes differ in names only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Text,
}

/// A whole response of either endpoint.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Whole {
    Chat(ChatCompletion),
    Text(TextCompletion),
}

/// A stream chunk of either endpoint.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Chunk {
    Chat(ChatChunk),
    Text(TextCompletion),
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

    fn completion<C>(&self, object: &str, choices: Vec<C>, usage: Option<Usage>) -> Completion<C> {
        Completion {
            id: self.id.clone(),
            object: object.to_string(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            conclave: None,
        }
    }

    /// A whole chat response: one choice per answer.
    pub fn chat(&self, choices: Vec<Answer>, usage: Usage) -> ChatCompletion {
        let choices = choices
            .into_iter()
            .enumerate()
            .map(|(index, a)| {
                let mut message = ChatMessage::text("assistant", &a.text);
                if !a.tool_calls.is_empty() {
                    // OpenAI's calling reply has no text unless the model wrote some.
                    message.content = (!a.text.is_empty()).then(|| Content::Text(a.text.clone()));
                    message.tool_calls = Some(a.tool_calls.iter().map(tools::wire_call).collect());
                }
                ChatChoice {
                    index,
                    message,
                    logprobs: a.logprobs.as_deref().map(chat_logprobs_of),
                    finish_reason: Some(a.finish_reason()),
                }
            })
            .collect();
        self.completion("chat.completion", choices, Some(usage))
    }

    /// A whole (non-streamed) response of this request's endpoint.
    pub fn response(&self, choices: Vec<Answer>, usage: Usage) -> Whole {
        match self.shape {
            Shape::Chat => Whole::Chat(self.chat(choices, usage)),
            Shape::Text => {
                let choices = choices
                    .into_iter()
                    .enumerate()
                    .map(|(index, a)| TextChoice {
                        index,
                        logprobs: a.logprobs.as_deref().map(|l| text_logprobs_of(l, 0)),
                        text: a.text,
                        finish_reason: Some(finish_reason(a.finish)),
                    })
                    .collect();
                Whole::Text(self.completion("text_completion", choices, Some(usage)))
            }
        }
    }

    /// One chat chunk for choice `index`: `role` on a choice's first chunk, `text` as it is
    /// decoded (with its tokens' `logprobs` when asked for), `finish` on the last (which
    /// carries no text).
    pub fn chat_chunk(
        &self,
        index: usize,
        role: bool,
        text: &str,
        logprobs: Option<&[TokenLogprobs]>,
        finish: Option<Finish>,
    ) -> ChatChunk {
        let delta = match (role, finish) {
            (true, _) => Delta {
                role: Some("assistant".into()),
                content: Some(text.to_string()),
                ..Delta::default()
            },
            (false, Some(_)) => Delta::default(),
            (false, None) => Delta {
                content: Some(text.to_string()),
                ..Delta::default()
            },
        };
        let choice = ChunkChoice {
            index,
            delta,
            logprobs: logprobs.map(chat_logprobs_of),
            finish_reason: finish.map(|f| finish_reason(Some(f))),
        };
        self.completion("chat.completion.chunk", vec![choice], None)
    }

    /// The chunks that stream choice `index`'s calls: per call, one with its id, type and name,
    /// then one with its arguments; then the choice's last chunk, `finish_reason` `tool_calls`.
    pub fn tool_call_chunks(&self, index: usize, calls: &[ToolCall]) -> Vec<ChatChunk> {
        let chunk = |delta: Delta, finish_reason: Option<FinishReason>| {
            let choice = ChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason,
            };
            self.completion("chat.completion.chunk", vec![choice], None)
        };
        let mut out = Vec::new();
        for (i, call) in calls.iter().enumerate() {
            let wire = tools::wire_call(call);
            let head = ToolCallDelta {
                index: i,
                id: Some(wire.id),
                kind: Some(wire.kind),
                function: Some(FunctionDelta {
                    name: Some(wire.function.name),
                    arguments: Some(String::new()),
                }),
            };
            let args = ToolCallDelta {
                index: i,
                function: Some(FunctionDelta {
                    name: None,
                    arguments: Some(wire.function.arguments),
                }),
                ..ToolCallDelta::default()
            };
            for d in [head, args] {
                let delta = Delta {
                    tool_calls: Some(vec![d]),
                    ..Delta::default()
                };
                out.push(chunk(delta, None));
            }
        }
        out.push(chunk(Delta::default(), Some(FinishReason::ToolCalls)));
        out
    }

    /// One streamed chunk of this request's endpoint (see `chat_chunk`; a text stream has no
    /// role chunks, and its first token of `logprobs` starts `offset` characters into the
    /// choice's text).
    pub fn chunk(
        &self,
        index: usize,
        role: bool,
        text: &str,
        logprobs: Option<(&[TokenLogprobs], usize)>,
        finish: Option<Finish>,
    ) -> Chunk {
        match self.shape {
            Shape::Chat => {
                let logprobs = logprobs.map(|(l, _)| l);
                Chunk::Chat(self.chat_chunk(index, role, text, logprobs, finish))
            }
            Shape::Text => {
                let choice = TextChoice {
                    index,
                    text: text.to_string(),
                    logprobs: logprobs.map(|(l, offset)| text_logprobs_of(l, offset)),
                    finish_reason: finish.map(|f| finish_reason(Some(f))),
                };
                Chunk::Text(self.completion("text_completion", vec![choice], None))
            }
        }
    }

    /// The usage chunk OpenAI sends last when `stream_options.include_usage`: no choices.
    pub fn usage_chunk(&self, usage: Usage) -> Chunk {
        match self.shape {
            Shape::Chat => {
                Chunk::Chat(self.completion("chat.completion.chunk", Vec::new(), Some(usage)))
            }
            Shape::Text => Chunk::Text(self.completion("text_completion", Vec::new(), Some(usage))),
        }
    }
}

/// OpenAI has no separate reason for an end-of-turn token and a stop string: both are "stop".
/// A constraint with no way on is Conclave's own `dead_end`.
pub fn finish_reason(f: Option<Finish>) -> FinishReason {
    match f {
        Some(Finish::Length) => FinishReason::Length,
        Some(Finish::DeadEnd) => FinishReason::DeadEnd,
        _ => FinishReason::Stop,
    }
}

pub fn output_usage(o: &Output) -> Usage {
    Usage::new(o.prompt_tokens, o.completion_tokens()).with_cached(o.cached_tokens)
}

pub fn choices(o: &Output) -> Vec<Answer> {
    o.completions
        .iter()
        .map(|c| Answer {
            text: c.text.clone(),
            finish: Some(c.finish),
            logprobs: c.logprobs.clone(),
            tool_calls: Vec::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn common(v: Value) -> Common {
        serde_json::from_value(v).unwrap()
    }

    fn value(v: impl Serialize) -> Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn fields_are_checked_and_name_the_param() {
        let bad = |v: Value| params(&common(v)).unwrap_err();
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
        let schema = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": 3}});
        assert_eq!(
            bad(json!({"model": "m", "response_format": schema}))
                .param
                .as_deref(),
            Some("response_format")
        );
        let ok = json!({"model": "m", "response_format": null, "whatever": 1});
        assert!(params(&common(ok)).unwrap().constraint.is_none());
    }

    #[test]
    fn n_choices_get_distinct_seeds_from_the_request_seed() {
        let p = params(&common(
            json!({"model": "m", "n": 3, "seed": 7, "stop": "x", "max_tokens": 9}),
        ))
        .unwrap();
        let seeds: Vec<u64> = p.samples.iter().map(|s| s.seed).collect();
        assert_eq!(seeds, vec![7, 8, 9]);
        assert_eq!((p.max_tokens, p.stop.clone()), (9, vec!["x".to_string()]));
        // max_completion_tokens, OpenAI's newer name, wins over max_tokens.
        let c = common(json!({"model": "m", "max_tokens": 9, "max_completion_tokens": 4}));
        assert_eq!(params(&c).unwrap().max_tokens, 4);
    }

    #[test]
    fn content_parts_are_read_as_text() {
        let req: ChatRequest = serde_json::from_value(json!({"model": "m", "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "a"},
                                              {"type": "text", "text": "b"}]},
            {"role": "user"}]}))
        .unwrap();
        let m = messages(&req).unwrap();
        assert_eq!(
            (
                m[0].role.as_str(),
                m[0].content.as_str(),
                m[1].content.as_str()
            ),
            ("system", "ab", "")
        );
        let req: ChatRequest = serde_json::from_value(json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}))
        .unwrap();
        let e = messages(&req).unwrap_err();
        assert!(e.message.contains("`image_url`"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("messages[0]"));
    }

    #[test]
    fn responses_have_openai_shape() {
        let m = Meta::new("smollm2-135m", Shape::Chat);
        let whole = value(m.response(
            vec![Answer::new("Paris".into(), Some(Finish::Eos))],
            Usage::new(3, 4),
        ));
        let want = json!({"id": m.id, "object": "chat.completion", "created": m.created,
            "model": "smollm2-135m", "usage":
                {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                         "message": {"role": "assistant", "content": "Paris"}}]});
        assert_eq!(whole, want);
        let t = Meta::new("m", Shape::Text);
        let whole = value(t.response(
            vec![Answer::new("x".into(), Some(Finish::Length))],
            Usage::new(1, 1),
        ));
        assert_eq!(whole["object"], "text_completion");
        assert_eq!(
            whole["choices"][0],
            json!({"index": 0, "text": "x", "logprobs": null, "finish_reason": "length"})
        );
        assert!(t.id.starts_with("cmpl-") && m.id.starts_with("chatcmpl-"));
    }

    #[test]
    fn chunks_have_openai_shape() {
        let m = Meta::new("smollm2-135m", Shape::Chat);
        let first = value(m.chunk(2, true, "", None, None));
        assert_eq!(
            first,
            json!({"id": m.id, "object": "chat.completion.chunk", "created": m.created,
                   "model": "smollm2-135m", "choices": [{"index": 2, "logprobs": null,
                   "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]})
        );
        let next = value(m.chunk(0, false, "Par", None, None));
        assert_eq!(next["choices"][0]["delta"], json!({"content": "Par"}));
        let last = value(m.chunk(0, false, "", None, Some(Finish::Eos)));
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(last["choices"][0]["delta"], json!({}));
        let u = value(m.usage_chunk(Usage::new(3, 4)));
        assert_eq!(
            (u["choices"].clone(), u["usage"]["total_tokens"].clone()),
            (json!([]), json!(7))
        );
        let t = Meta::new("m", Shape::Text);
        let c = value(t.chunk(1, false, "a", None, None));
        assert_eq!(
            c["choices"][0],
            json!({"index": 1, "text": "a", "logprobs": null, "finish_reason": null})
        );
        assert!(c.get("usage").is_none());
    }
}
