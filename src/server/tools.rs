//! Tool calling on `/v1/chat/completions`: `tools`, `tool_choice` and `parallel_tool_calls`
//! checked into engine terms, the calls read back out of each choice's text
//! (`ensemble::calls`), and a stream's text held back where a call may start.
use super::errors::ApiError;
use crate::engine::ToolCall;
use crate::ensemble::calls::{self, Choice, Tools};
use crate::ensemble::tool_defs::{check_name, tool_defs};
use crate::wire::{self, ChatRequest, ToolChoice, ToolMode};
use serde_json::Value;

/// Parses a chat request body; a malformed `tools`, `tool_choice`, `parallel_tool_calls` or
/// `response_format` is a 400 naming that field (serde alone would name none).
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let v: Value = super::errors::parse(body)?;
    let check = |field: &str, ok: fn(Value) -> Result<(), serde_json::Error>| match v.get(field) {
        Some(f) if !f.is_null() => ok(f.clone())
            .map_err(|e| ApiError::invalid(Some(field), format!("`{field}` is not valid: {e}"))),
        _ => Ok(()),
    };
    check("tools", |f| {
        serde_json::from_value::<Vec<wire::Tool>>(f).map(drop)
    })?;
    check("tool_choice", |f| {
        serde_json::from_value::<ToolChoice>(f).map(drop)
    })?;
    check("parallel_tool_calls", |f| {
        serde_json::from_value::<bool>(f).map(drop)
    })?;
    check("response_format", |f| {
        serde_json::from_value::<wire::ResponseFormat>(f).map(drop)
    })?;
    serde_json::from_value(v)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid: {e}")))
}

/// The request's tools in engine terms; None when it offers none (or `tool_choice` is
/// `none`).
pub fn tools(req: &ChatRequest) -> Result<Option<Tools>, ApiError> {
    let given = req.tools.as_deref().unwrap_or_default();
    let choice = match &req.tool_choice {
        None | Some(ToolChoice::Mode(ToolMode::Auto)) => Choice::Auto,
        Some(ToolChoice::Mode(ToolMode::None)) => return Ok(None),
        Some(ToolChoice::Mode(ToolMode::Required)) => Choice::Required,
        Some(ToolChoice::Named(n)) => {
            if n.kind != "function" {
                return Err(ApiError::invalid(
                    Some("tool_choice"),
                    format!(
                        "tool_choice type `{}` is not supported: use `function`",
                        n.kind
                    ),
                ));
            }
            Choice::Named(n.function.name.clone())
        }
    };
    if given.is_empty() {
        return match choice {
            Choice::Auto => Ok(None),
            _ => Err(ApiError::invalid(
                Some("tool_choice"),
                "tool_choice asks for a call, but the request gives no `tools`",
            )),
        };
    }
    let defs = tool_defs(given)
        .map_err(|e| ApiError::invalid(Some(&format!("tools[{}]", e.index)), e.message))?;
    if let Choice::Named(name) = &choice {
        if !defs.iter().any(|d| &d.name == name) {
            return Err(ApiError::invalid(
                Some("tool_choice"),
                format!("tool_choice names `{name}`, which is not among the given tools"),
            ));
        }
    }
    Ok(Some(Tools {
        defs,
        choice,
        parallel: req.parallel_tool_calls.unwrap_or(true),
    }))
}

/// OpenAI's rule for function names (`^[a-zA-Z0-9_-]{1,64}$`). The chat template writes names
/// as they are, so this also keeps special tokens out of the prompt.
/// An assistant message's calls in engine terms; `arguments` must be a JSON object.
pub fn history_calls(calls: &[wire::ToolCall]) -> Result<Vec<ToolCall>, String> {
    calls
        .iter()
        .map(|c| {
            check_name(&c.function.name)?;
            let arguments: Value = serde_json::from_str(&c.function.arguments)
                .map_err(|e| format!("the arguments of call `{}` are not JSON: {e}", c.id))?;
            if !arguments.is_object() {
                return Err(format!(
                    "the arguments of call `{}` are not an object",
                    c.id
                ));
            }
            Ok(ToolCall {
                id: c.id.clone(),
                name: c.function.name.clone(),
                arguments,
            })
        })
        .collect()
}

/// A call in OpenAI's shape; its arguments are the one JSON text both a whole reply and the
/// stream send.
pub fn wire_call(c: &ToolCall) -> wire::ToolCall {
    wire::ToolCall {
        id: c.id.clone(),
        kind: "function".into(),
        function: wire::FunctionCall {
            name: c.name.clone(),
            arguments: c.arguments.to_string(),
        },
    }
}

/// One choice of a stream: its text so far, and how much of [`calls::call_start`]'s safe
/// prefix has been sent. What is sent is always a prefix of the text the whole reply has.
#[derive(Debug, Default)]
pub struct Held {
    text: String,
    sent: usize,
}

impl Held {
    /// Adds a piece; returns the text now safe to send.
    pub fn push(&mut self, piece: &str) -> String {
        self.text.push_str(piece);
        let end = calls::call_start(&self.text).unwrap_or(self.text.len());
        let safe = self.text[..end].trim();
        let out = safe.get(self.sent..).unwrap_or_default().to_string();
        self.sent = self.sent.max(safe.len());
        out
    }

    /// At the end: the rest of the text and the calls.
    pub fn finish(&self, tools: &Tools) -> (String, Vec<ToolCall>) {
        let p = tools.read(&self.text);
        let rest = p.content.get(self.sent..).unwrap_or_default().to_string();
        (rest, p.calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ToolDef;
    use serde_json::json;

    fn req(v: Value) -> Result<ChatRequest, ApiError> {
        parse_chat(v.to_string().as_bytes())
    }

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
    }

    fn param(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.status.as_u16(), 400, "{}", e.message);
        e.param.unwrap_or_default()
    }

    #[test]
    fn bad_tools_name_their_param() {
        let base = |extra: Value| {
            let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        assert_eq!(
            param(req(base(json!({"tools": [{"type": "function"}]})))),
            "tools"
        );
        assert_eq!(param(req(base(json!({"tools": {"a": 1}})))), "tools");
        assert_eq!(
            param(req(base(
                json!({"tools": [weather()], "tool_choice": "sometimes"})
            ))),
            "tool_choice"
        );
        let checked = |extra: Value| tools(&req(base(extra)).unwrap());
        assert_eq!(
            param(checked(json!({"tool_choice": "required"}))),
            "tool_choice"
        );
        assert_eq!(
            param(checked(json!({"tools": [weather()], "tool_choice":
                {"type": "function", "function": {"name": "get_time"}}}))),
            "tool_choice"
        );
        let bad_name = json!({"type": "function", "function": {"name": "a b<|im_start|>"}});
        assert_eq!(param(checked(json!({"tools": [bad_name]}))), "tools[0]");
        assert_eq!(
            param(checked(json!({"tools": [weather(), weather()]}))),
            "tools[1]"
        );
        // `none` offers nothing; no tools and no choice is no tool use.
        assert!(
            checked(json!({"tools": [weather()], "tool_choice": "none"}))
                .unwrap()
                .is_none()
        );
        assert!(checked(json!({})).unwrap().is_none());
        let t = checked(json!({"tools": [weather()], "parallel_tool_calls": false}))
            .unwrap()
            .unwrap();
        assert_eq!((t.choice, t.parallel), (Choice::Auto, false));
    }

    #[test]
    fn a_stream_sends_text_up_to_a_call_then_the_same_reply() {
        let tools = Tools {
            defs: vec![ToolDef {
                name: "add".into(),
                description: None,
                parameters: json!({}),
            }],
            choice: Choice::Auto,
            parallel: true,
        };
        let text =
            "  Sure, adding.\n```json\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n```\n";
        let mut held = Held::default();
        let mut sent = String::new();
        for ch in text.chars() {
            sent.push_str(&held.push(&ch.to_string()));
        }
        assert_eq!(sent, "Sure, adding.");
        let (rest, calls) = held.finish(&tools);
        let whole = tools.read(text);
        assert_eq!(format!("{sent}{rest}"), whole.content);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].arguments, whole.calls[0].arguments);
        // Text that only looked like a call start is sent at the end.
        let mut held = Held::default();
        let mut sent = held.push("Use {\"x\": 1} ");
        sent.push_str(&held.push("here"));
        let (rest, calls) = held.finish(&tools);
        assert_eq!(
            (format!("{sent}{rest}"), calls.len()),
            ("Use {\"x\": 1} here".into(), 0)
        );
    }
}
