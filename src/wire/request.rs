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
    /// The form the output must take; the server constrains decoding to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Conclave's own: overrides a `conclave/<preset>`'s agents or settings, with the keys of
    /// an ensemble file (the server reads it into its ensemble config types).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<Value>,
}

/// `response_format`: OpenAI's `text`, `json_object` and `json_schema`, and Conclave's
/// `grammar`, whose `grammar` object is the shape OpenAI gives a custom tool's grammar
/// format (`{"syntax": "lark" | "regex", "definition": "..."}`, the Chat API's
/// `tools[].custom.format`). llama-server and mistral.rs take grammars in a top-level
/// `grammar` field instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
    Grammar { grammar: GrammarFormat },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Absent: any JSON value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// Whether OpenAI enforces the schema; this server always does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrammarFormat {
    pub syntax: GrammarSyntax,
    pub definition: String,
}

/// `lark` is llguidance's Lark dialect; `regex` a regular expression for the whole output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrammarSyntax {
    Lark,
    Regex,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Return each output token's log-probability.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub logprobs: bool,
    /// With `logprobs`: this many most likely alternatives per token (0 to 20). Signed, so
    /// a negative one is refused naming this field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<i64>,
    /// Functions the model may call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// Whether, and which, tool the model must call; `auto` when tools are given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Whether one reply may hold several calls (OpenAI's default: true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Conclave's own options for this request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conclave: Option<ChatExtension>,
    #[serde(flatten)]
    pub common: Common,
}

/// A chat request's `conclave` field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatExtension {
    /// With `stream` on an ensemble: send its agents' progress as `conclave.*` SSE events
    /// before the answer. Opt-in, because OpenAI's Python client reads every event's data as
    /// a chunk.
    #[serde(default)]
    pub events: bool,
}

/// One entry of `tools`: `{"type": "function", "function": {...}}` (OpenAI has no other
/// kind on chat completions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

impl Tool {
    pub fn function(function: FunctionDef) -> Self {
        Self {
            kind: "function".into(),
            function,
        }
    }
}

/// A function the model may call: its name, what it does, and its arguments as a JSON Schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema object; none means the function takes no arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// The call's arguments must follow `parameters` exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `tool_choice`: a mode, or `{"type": "function", "function": {"name": ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(ToolMode),
    Named(NamedTool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolMode {
    /// Call no tool: answer in text.
    None,
    /// Text or calls, as the model chooses.
    Auto,
    /// At least one call.
    Required,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedTool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionName,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionName {
    pub name: String,
}

/// A call the assistant made: in a reply's message, and in the history sent back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

/// The function called and its arguments, a JSON object as a string (the model wrote it:
/// OpenAI does not promise it parses, this server does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// One message of a conversation, in a request or as a chat completion's answer. An
/// assistant's answer that calls tools has `tool_calls` and (usually) no `content`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer` (OpenAI's newer name for `system`), `user`, `assistant`, `tool`.
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant message's calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A `tool` message: the call whose result `content` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn text(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: Some(Content::Text(content.to_string())),
            tool_calls: None,
            tool_call_id: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_fields_read_and_write_openai_shapes() {
        let v = json!({"model": "m", "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                "type": "function", "function": {"name": "get_weather",
                "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"}],
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "description": "Weather now", "strict": true, "parameters":
                {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false});
        let req: ChatRequest = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(req.tools.as_ref().unwrap()[0].function.strict, Some(true));
        assert_eq!(
            req.messages[1].tool_calls.as_ref().unwrap()[0]
                .function
                .name,
            "get_weather"
        );
        assert_eq!(req.messages[2].tool_call_id.as_deref(), Some("call_1"));
        let back = serde_json::to_value(&req).unwrap();
        assert_eq!(back["tools"], v["tools"]);
        assert_eq!(back["tool_choice"], v["tool_choice"]);
        assert_eq!(
            back["messages"][1]["tool_calls"],
            v["messages"][1]["tool_calls"]
        );
        for (mode, want) in [
            ("none", ToolMode::None),
            ("auto", ToolMode::Auto),
            ("required", ToolMode::Required),
        ] {
            let c: ToolChoice = serde_json::from_value(json!(mode)).unwrap();
            assert_eq!(c, ToolChoice::Mode(want));
        }
        assert!(serde_json::from_value::<ToolChoice>(json!("sometimes")).is_err());
    }
}
