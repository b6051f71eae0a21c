//! What a server answers: whole completions, stream chunks, the model list.
use super::request::ChatMessage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Why a choice ended. OpenAI has no separate reason for an end-of-turn token and a stop
/// string: both are `stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    /// Conclave's own: the output's grammar (`response_format`, a tool's schema) allowed no
    /// token at all.
    DeadEnd,
    /// Whatever else another server says (this one never does).
    #[serde(other)]
    Other,
}

/// Tokens of one request: the prompt's (prefilled once, however many choices share it) and
/// those generated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// How much of the prompt was not prefilled (OpenAI's `CompletionUsage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// `prompt_tokens_details` of a [`Usage`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose keys and values came from the server's prefix cache.
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: None,
        }
    }

    /// This usage, reporting `cached_tokens` of its prompt tokens as taken from a cache.
    pub fn with_cached(self, cached_tokens: usize) -> Self {
        Self {
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens }),
            ..self
        }
    }

    /// Prompt tokens taken from a cache (0 when the server did not say).
    pub fn cached_tokens(&self) -> usize {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }
}

/// A whole response or one stream chunk; the choices' shape tells which (see the aliases).
/// Everything but `choices` may be missing from another server's reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion<C> {
    #[serde(default)]
    pub id: String,
    /// `chat.completion`, `chat.completion.chunk` or `text_completion`.
    #[serde(default)]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<C>,
    /// On a whole response; on a stream, only on the last chunk, which has no choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Conclave's own: an ensemble's trace (on a stream, on its finishing chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conclave: Option<Value>,
}

pub type ChatCompletion = Completion<ChatChoice>;
pub type ChatChunk = Completion<ChunkChoice>;
/// A `/v1/completions` response; its stream chunks have the same shape.
pub type TextCompletion = Completion<TextChoice>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessage,
    /// When the request asked for `logprobs`.
    #[serde(default)]
    pub logprobs: Option<ChatLogprobs>,
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
}

/// A choice of a chat stream chunk: what the choice adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    /// The log-probabilities of the tokens of this chunk's text, when asked for.
    #[serde(default)]
    pub logprobs: Option<ChatLogprobs>,
    /// Null until the choice's last chunk.
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
}

/// The role on a choice's first chunk, text or calls on the next ones, nothing on its last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// Part of a streamed call: the first part of call `index` has its `id`, `type` and name;
/// the arguments' text follows in pieces, to be concatenated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDelta>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextChoice {
    pub index: usize,
    pub text: String,
    #[serde(default)]
    pub logprobs: Option<TextLogprobs>,
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
}

/// A chat choice's (or chunk's) log-probabilities, OpenAI's shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobs {
    #[serde(default)]
    pub content: Vec<TokenLogprob>,
}

/// One output token: its text, its log-probability, its UTF-8 bytes (a token may hold part
/// of a character) and, most likely first, the alternatives asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
}

/// `/v1/completions`' legacy log-probabilities: parallel lists, one entry per token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    /// Per token, the alternatives asked for: token text to log-probability.
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    /// Where each token starts in the choice's text, in characters (as vLLM counts them:
    /// Python `len`).
    pub text_offset: Vec<usize>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    pub data: Vec<ModelCard>,
}

impl ModelList {
    pub fn new(data: Vec<ModelCard>) -> Self {
        Self {
            object: "list".into(),
            data,
        }
    }
}

/// One model of `/v1/models`, and `GET /v1/models/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    /// `model`.
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

impl ModelCard {
    pub fn new(id: &str, owned_by: &str) -> Self {
        Self {
            id: id.to_string(),
            object: "model".into(),
            created: 0,
            owned_by: owned_by.to_string(),
        }
    }
}
