//! OpenAI's Responses API (`POST /v1/responses`), its text and function-call subset: the
//! request, the response object and the streamed events.
//!
//! The shapes follow the `openai` Python package's own types (`openai/types/responses/`,
//! version 3.63: `response_create_params.py`, `response.py`, `response_output_message.py`,
//! `response_function_tool_call.py`, `response_usage.py` and the `response_*_event.py` files);
//! those are the reference, as the API's documentation pages render the same OpenAPI spec.
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/responses`. Unknown fields are ignored; fields this server cannot honour without
/// changing the answer's meaning are read only to be refused (the server's job).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResponsesRequest {
    pub model: String,
    pub input: Input,
    /// A system message put before the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// `"none"`, `"auto"`, `"required"` or `{"type": "function", "name": …}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Output format: `{"format": {"type": "text" | "json_object" | "json_schema", …}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Value>,
    /// Continuing a stored response: this server stores none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_response_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<bool>,
    /// A stored prompt template, by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<i64>,
    /// Conclave's own, as on chat completions: a sampling seed, and overrides of a
    /// `conclave/<preset>`'s agents or settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<Value>,
}

/// `input`: a string (one user message) or a list of items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<InputItem>),
}

impl Default for Input {
    fn default() -> Self {
        Input::Text(String::new())
    }
}

/// One input item, its fields by kind: a `message` (`role`, `content`; `type` may be left out),
/// a `function_call` the model made earlier (`call_id`, `name`, `arguments`), or a
/// `function_call_output` (`call_id`, `output`). Loose on purpose, so that the server can say
/// which field of which item is wrong; items a client copies back from a response's `output`
/// (with `id`, `status`, `annotations`) fit too.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputItem {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ItemContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A function call's arguments: a JSON object, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<ItemContent>,
}

impl InputItem {
    pub fn message(role: &str, text: &str) -> Self {
        Self {
            kind: Some("message".into()),
            role: Some(role.into()),
            content: Some(ItemContent::Text(text.into())),
            ..Self::default()
        }
    }
}

/// A message's content or a function's output: a string or a list of parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ItemContent {
    Text(String),
    Parts(Vec<InputPart>),
}

impl ItemContent {
    /// The text: the string, or the text parts (`input_text`, and the `output_text` of an
    /// assistant message copied back) joined. A part of another kind is the error, named by
    /// its type.
    pub fn text(&self) -> Result<String, &str> {
        match self {
            ItemContent::Text(t) => Ok(t.clone()),
            ItemContent::Parts(parts) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("input_text" | "output_text", Some(t)) => text.push_str(t),
                        _ => return Err(&p.kind),
                    }
                }
                Ok(text)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A tool, in the Responses API's flat shape (chat completions nest the same fields under
/// `function`). Only `function` tools are served; `type` is a string so that another kind can
/// be refused by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The arguments' JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `completed`, `incomplete` (stopped by `max_output_tokens`), `in_progress` (while
/// streaming) or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InProgress,
    Completed,
    Incomplete,
    Failed,
}

/// The response object (`response.py`'s `Response`): whole, or the snapshot a stream's
/// `response.created`, `response.in_progress` and final events carry. The request's settings
/// are echoed back, as OpenAI does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// `resp_…`.
    pub id: String,
    /// `response`.
    pub object: String,
    /// Unix seconds.
    pub created_at: f64,
    pub model: String,
    pub status: Status,
    pub output: Vec<OutputItem>,
    #[serde(default)]
    pub error: Option<ResponseError>,
    #[serde(default)]
    pub incomplete_details: Option<IncompleteDetails>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub max_output_tokens: Option<usize>,
    pub parallel_tool_calls: bool,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    pub tool_choice: Value,
    pub tools: Vec<Tool>,
    /// On a finished response.
    #[serde(default)]
    pub usage: Option<ResponseUsage>,
    /// Conclave's own: an ensemble's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conclave: Option<Value>,
}

/// One item of a response's `output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    /// The model's text (`response_output_message.py`).
    Message {
        /// `msg_…`.
        id: String,
        /// `assistant`.
        role: String,
        status: Status,
        content: Vec<OutputText>,
    },
    /// A call of one of the request's functions (`response_function_tool_call.py`).
    FunctionCall {
        /// `fc_…`: the item's id.
        id: String,
        /// The id a `function_call_output` item answers.
        call_id: String,
        name: String,
        /// A JSON object, as a string.
        arguments: String,
        status: Status,
    },
}

/// A text part of a message (`response_output_text.py`). Its `type` is `output_text`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputText {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
    /// Citations; this server makes none.
    #[serde(default)]
    pub annotations: Vec<Value>,
}

impl OutputText {
    pub fn new(text: &str) -> Self {
        Self {
            kind: "output_text".into(),
            text: text.into(),
            annotations: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseError {
    /// `server_error`, `rate_limit_exceeded`, …
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncompleteDetails {
    /// `max_output_tokens`.
    pub reason: String,
}

/// `response_usage.py`: the prompt's tokens are `input_tokens`, the generated ones
/// `output_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseUsage {
    pub input_tokens: usize,
    #[serde(default)]
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: usize,
    #[serde(default)]
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: usize,
}

impl ResponseUsage {
    pub fn new(input_tokens: usize, output_tokens: usize) -> Self {
        Self {
            input_tokens,
            output_tokens,
            total_tokens: input_tokens + output_tokens,
            ..Self::default()
        }
    }
}

/// A chat completion's usage as a response's: its cached prompt tokens are the response's
/// cached input tokens.
impl From<super::Usage> for ResponseUsage {
    fn from(u: super::Usage) -> Self {
        Self {
            input_tokens_details: InputTokensDetails {
                cached_tokens: u.cached_tokens(),
            },
            ..Self::new(u.prompt_tokens, u.completion_tokens)
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: usize,
}

/// One streamed event: `data: {"type": …, "sequence_number": …, …}`, numbered from 0 in the
/// order sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamEvent {
    pub sequence_number: usize,
    #[serde(flatten)]
    pub event: Event,
}

/// The semantic events of a streamed response, named by `type` as in the `response_*_event.py`
/// files. `output_index` is the item's place in `output`, `content_index` the part's in a
/// message's `content`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    #[serde(rename = "response.created")]
    Created { response: Response },
    #[serde(rename = "response.in_progress")]
    InProgress { response: Response },
    #[serde(rename = "response.output_item.added")]
    ItemAdded {
        output_index: usize,
        item: OutputItem,
    },
    #[serde(rename = "response.content_part.added")]
    PartAdded {
        item_id: String,
        output_index: usize,
        content_index: usize,
        part: OutputText,
    },
    #[serde(rename = "response.output_text.delta")]
    TextDelta {
        item_id: String,
        output_index: usize,
        content_index: usize,
        delta: String,
        logprobs: Vec<Value>,
    },
    #[serde(rename = "response.output_text.done")]
    TextDone {
        item_id: String,
        output_index: usize,
        content_index: usize,
        text: String,
        logprobs: Vec<Value>,
    },
    #[serde(rename = "response.content_part.done")]
    PartDone {
        item_id: String,
        output_index: usize,
        content_index: usize,
        part: OutputText,
    },
    #[serde(rename = "response.function_call_arguments.delta")]
    ArgumentsDelta {
        item_id: String,
        output_index: usize,
        delta: String,
    },
    #[serde(rename = "response.function_call_arguments.done")]
    ArgumentsDone {
        item_id: String,
        output_index: usize,
        arguments: String,
    },
    #[serde(rename = "response.output_item.done")]
    ItemDone {
        output_index: usize,
        item: OutputItem,
    },
    #[serde(rename = "response.completed")]
    Completed { response: Response },
    #[serde(rename = "response.incomplete")]
    Incomplete { response: Response },
    #[serde(rename = "response.failed")]
    Failed { response: Response },
    /// A failure mid-stream (`response_error_event.py`), followed by `response.failed`.
    #[serde(rename = "error")]
    Error {
        code: Option<String>,
        message: String,
        param: Option<String>,
    },
}

impl Event {
    /// The SSE `event:` name OpenAI sends beside the data: the same as `type`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Created { .. } => "response.created",
            Event::InProgress { .. } => "response.in_progress",
            Event::ItemAdded { .. } => "response.output_item.added",
            Event::PartAdded { .. } => "response.content_part.added",
            Event::TextDelta { .. } => "response.output_text.delta",
            Event::TextDone { .. } => "response.output_text.done",
            Event::PartDone { .. } => "response.content_part.done",
            Event::ArgumentsDelta { .. } => "response.function_call_arguments.delta",
            Event::ArgumentsDone { .. } => "response.function_call_arguments.done",
            Event::ItemDone { .. } => "response.output_item.done",
            Event::Completed { .. } => "response.completed",
            Event::Incomplete { .. } => "response.incomplete",
            Event::Failed { .. } => "response.failed",
            Event::Error { .. } => "error",
        }
    }
}
