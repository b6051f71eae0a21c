//! What a client sends: chat and text completion requests.
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `"x"` or `["x", "y"]`: OpenAI takes either for `stop` and `prompt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage and no choices.
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields both endpoints share. Unknown fields are ignored, as OpenAI-compatible servers
/// do. Fields left unset are not sent, so a request to another server says only what it sets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Common {
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// OpenAI's newer name for `max_tokens`; it wins when both are set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<OneOrMany>,
    /// Any integer in OpenAI's schema, negative ones included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Choices to generate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Read only to be refused when set: this server calls no tools and does not constrain
    /// the output's format, so their shapes are left untyped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// Conclave's own: overrides a `conclave/<preset>`'s agents or settings, with the keys of
    /// an ensemble file (the server reads it into its ensemble config types).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Return each output token's log-probability.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub logprobs: bool,
    /// With `logprobs`: this many most likely alternatives per token (0 to 20). Signed, so
    /// a negative one is refused naming this field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub common: Common,
}

/// One message of a conversation, in a request or as a chat completion's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer` (OpenAI's newer name for `system`), `user`, `assistant`, …
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

impl ChatMessage {
    pub fn text(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: Some(Content::Text(content.to_string())),
        }
    }
}

/// A message's content: a string, or a list of parts (text, images, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

impl Content {
    /// The text: the string, or the text parts joined. A part of another kind is the error,
    /// named by its type.
    pub fn text(&self) -> Result<String, &str> {
        match self {
            Content::Text(t) => Ok(t.clone()),
            Content::Parts(parts) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        _ => return Err(&p.kind),
                    }
                }
                Ok(text)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub prompt: OneOrMany,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
    /// The legacy form: each token's log-probability and this many alternatives (0 to 20).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<i64>,
    #[serde(flatten)]
    pub common: Common,
}
