//! Tool calls read out of a completion's text, in the forms small models write them:
//!
//! - Qwen2.5's (and Hermes') tags: `<tool_call>{"name": …, "arguments": …}</tool_call>`;
//! - a fenced block, ```` ```json ```` or bare ```` ``` ````, holding such an object (what
//!   qwen2.5-coder-0.5b mostly writes under `tool_choice: "auto"`, issue 25);
//! - such an object on its own: `{"name": …, "arguments": …}`.
//!
//! The object may say `parameters` instead of `arguments`, give the arguments as a string of
//! JSON (OpenAI's wire form), or be OpenAI's `{"type": "function", "function": {…}}`; a tag or
//! a fence may hold a list of calls. Whatever is not a call stays the reply's text.
//!
//! The server and the ensemble both read calls here; the server streams text up to
//! [`call_start`], so the text it streams is always a prefix of the text [`parse`] leaves.
//!
//! [`Tools::constraint`] makes the calls themselves valid by construction: a Lark grammar
//! (llguidance's dialect) whose call objects embed each function's parameter schema with
//! `%json{…}`. With `required` or a named function the whole reply is calls; with `auto` the
//! text is free until the model opens a call (`<tool_call>` or ```` ```json ````), and from
//! there the call follows the grammar (a lazy constraint, as llama.cpp's lazy grammars).
use crate::engine::{Constraint, Grammar, ToolCall, ToolDef};
use serde_json::{json, Map, Value};

/// What a request offers the model, checked.
#[derive(Debug, Clone)]
pub struct Tools {
    pub defs: Vec<ToolDef>,
    pub choice: Choice,
    /// Whether one reply may hold several calls.
    pub parallel: bool,
}

/// `tool_choice` (`none` offers no tools, so it is no [`Tools`] at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Text or calls, as the model chooses.
    Auto,
    /// At least one call, of any offered function.
    Required,
    /// A call of this function.
    Named(String),
}

impl Tools {
    /// The functions the model may call under `choice` (a named choice allows only its own).
    pub fn names(&self) -> Vec<String> {
        self.callable().map(|d| d.name.clone()).collect()
    }

    fn callable(&self) -> impl Iterator<Item = &ToolDef> {
        self.defs.iter().filter(|d| match &self.choice {
            Choice::Named(n) => &d.name == n,
            _ => true,
        })
    }

    /// A reply's text split into its text and calls (at most one unless `parallel`).
    pub fn read(&self, text: &str) -> Parsed {
        let mut p = parse(text, &self.names());
        if !self.parallel {
            p.calls.truncate(1);
        }
        p
    }

    /// The constraint calls are generated under: Qwen2.5's `<tool_call>` form (what the
    /// template shows, and the fallback prompt too), the arguments following the schema.
    pub fn constraint(&self) -> Constraint {
        let call_rules = self.call_rules();
        let tag = r#""<tool_call>\n" call "\n</tool_call>""#;
        let more = if self.parallel {
            format!(r#" ("\n" {tag})*"#)
        } else {
            String::new()
        };
        match self.choice {
            Choice::Required | Choice::Named(_) => {
                Constraint::Full(Grammar::Lark(format!("start: {tag}{more}\n{call_rules}")))
            }
            Choice::Auto => {
                // After the trigger: the rest of the tag, or of the fence (one call per fence).
                let after_tag = format!(r#"start: "\n" call "\n</tool_call>"{more}"#);
                let after_fence = r#"start: "\n" call "\n```""#;
                Constraint::Lazy(vec![
                    (
                        TAG_OPEN.into(),
                        Grammar::Lark(format!("{after_tag}\n{call_rules}")),
                    ),
                    (
                        format!("{FENCE}json"),
                        Grammar::Lark(format!("{after_fence}\n{call_rules}")),
                    ),
                ])
            }
        }
    }

    /// `call: f0 | f1 | …`, each `fN` the JSON of a call of one function: its name, then
    /// arguments under its schema, written as the prompt shows them (`", "` and `": "`, no
    /// other whitespace, so a small model cannot pad a call without end).
    fn call_rules(&self) -> String {
        let mut alts = Vec::new();
        let mut rules = String::new();
        for (i, d) in self.callable().enumerate() {
            let schema = json!({
                "type": "object",
                "properties": {"name": {"const": d.name}, "arguments": d.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": false,
                "x-guidance": {"whitespace_flexible": false, "item_separator": ", ",
                               "key_separator": ": ", "coerce_one_of": true},
            });
            alts.push(format!("f{i}"));
            rules.push_str(&format!("f{i}: %json {schema}\n"));
        }
        format!("call: {}\n{rules}", alts.join(" | "))
    }
}

const TAG_OPEN: &str = "<tool_call>";
const TAG_CLOSE: &str = "</tool_call>";
const FENCE: &str = "```";

/// A completion split into its text and its calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The text outside the calls, trimmed.
    pub content: String,
    pub calls: Vec<ToolCall>,
}

/// Reads the calls in `text`. Only calls of functions in `names` count (any name when it is
/// empty); an object naming another function stays text.
pub fn parse(text: &str, names: &[String]) -> Parsed {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut done = 0; // `text[..done]` is accounted for
    let mut at = 0;
    while at < text.len() {
        if matches!(form_at(&text[at..]), Start::Yes(_)) {
            if let Some((found, len)) = read_call(&text[at..], names) {
                content.push_str(&text[done..at]);
                calls.extend(found);
                at += len;
                done = at;
                continue;
            }
        }
        at += text[at..].chars().next().map_or(1, char::len_utf8);
    }
    content.push_str(&text[done..]);
    Parsed {
        content: content.trim().to_string(),
        calls,
    }
}

/// Where a call begins or may begin in `text` (a stream's text so far): the text before it
/// cannot change in what [`parse`] makes of the whole, once trimmed of trailing whitespace.
pub fn call_start(text: &str) -> Option<usize> {
    text.char_indices()
        .map(|(i, _)| i)
        .find(|&i| !matches!(form_at(&text[i..]), Start::No))
}

/// Whether a call form starts at the beginning of `rest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// It does; the JSON starts this many bytes in.
    Yes(usize),
    /// `rest` is too short to tell.
    Maybe,
    No,
}

fn form_at(rest: &str) -> Start {
    match rest.as_bytes().first() {
        Some(b'<') => literal_then_json(rest, TAG_OPEN, false),
        Some(b'`') => literal_then_json(rest, FENCE, true),
        Some(b'{') => match skip_ws(&rest[1..]).as_bytes().first() {
            None => Start::Maybe,
            Some(b'"') => Start::Yes(0),
            Some(_) => Start::No,
        },
        _ => Start::No,
    }
}

/// `lit` (and, after a fence, an optional `json` tag), whitespace, then `{` or `[`.
fn literal_then_json(rest: &str, lit: &str, fence: bool) -> Start {
    if rest.len() < lit.len() {
        return if lit.starts_with(rest) {
            Start::Maybe
        } else {
            Start::No
        };
    }
    let Some(mut after) = rest.strip_prefix(lit) else {
        return Start::No;
    };
    if fence {
        if after.len() < 4 && "json".starts_with(after) && !after.is_empty() {
            return Start::Maybe;
        }
        after = after.strip_prefix("json").unwrap_or(after);
    }
    let json = skip_ws(after);
    match json.as_bytes().first() {
        None => Start::Maybe,
        Some(b'{' | b'[') => Start::Yes(rest.len() - json.len()),
        Some(_) => Start::No,
    }
}

fn skip_ws(s: &str) -> &str {
    s.trim_start()
}

/// The calls of the form at the start of `rest` and the bytes it takes, or None when what is
/// there is not a call of a function in `names`.
fn read_call(rest: &str, names: &[String]) -> Option<(Vec<ToolCall>, usize)> {
    let Start::Yes(json_at) = form_at(rest) else {
        return None;
    };
    let closer = match rest.as_bytes()[0] {
        b'<' => Some(TAG_CLOSE),
        b'`' => Some(FENCE),
        _ => None,
    };
    let mut values = serde_json::Deserializer::from_str(&rest[json_at..]).into_iter::<Value>();
    let value = values.next()?.ok()?;
    let mut end = json_at + values.byte_offset();
    let calls = match (closer, value) {
        (Some(_), Value::Array(items)) => items
            .into_iter()
            .map(|v| call_of(v, names))
            .collect::<Option<Vec<_>>>()?,
        (_, v @ Value::Object(_)) => vec![call_of(v, names)?],
        _ => return None,
    };
    if calls.is_empty() {
        return None;
    }
    if let Some(closer) = closer {
        // A completion may end before the closing tag or fence (a stop string, max_tokens).
        let tail = skip_ws(&rest[end..]);
        if let Some(after) = tail.strip_prefix(closer) {
            end = rest.len() - after.len();
        } else if !tail.is_empty() {
            return None;
        }
    }
    Some((calls, end))
}

/// One call object: `{"name", "arguments"|"parameters"}` or OpenAI's
/// `{"type": "function", "function": {"name", "arguments"}}`.
fn call_of(v: Value, names: &[String]) -> Option<ToolCall> {
    let Value::Object(mut m) = v else {
        return None;
    };
    if let Some(Value::Object(f)) = m.remove("function") {
        m = f;
    }
    let Some(Value::String(name)) = m.remove("name") else {
        return None;
    };
    if !names.is_empty() && !names.contains(&name) {
        return None;
    }
    let args = m.remove("arguments").or_else(|| m.remove("parameters"));
    let arguments = match args {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(Value::String(s)) => match serde_json::from_str(&s).ok()? {
            v @ Value::Object(_) => v,
            _ => return None,
        },
        Some(_) => return None,
    };
    Some(ToolCall::new(&name, arguments))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names() -> Vec<String> {
        vec!["get_weather".into(), "add".into()]
    }

    fn calls(p: &Parsed) -> Vec<(String, Value)> {
        p.calls
            .iter()
            .map(|c| (c.name.clone(), c.arguments.clone()))
            .collect()
    }

    fn weather(city: &str) -> (String, Value) {
        ("get_weather".into(), json!({"city": city}))
    }

    #[test]
    fn qwen_tags_one_or_several() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
        let p = parse(text, &names());
        assert_eq!(calls(&p), vec![weather("Paris"), weather("Oslo")]);
        assert_eq!(p.content, "");
        // Cut off before the closing tag: still the call.
        let p = parse(
            "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1}}",
            &names(),
        );
        assert_eq!(calls(&p), vec![("add".into(), json!({"a": 1}))]);
    }

    #[test]
    fn fenced_json_with_text_around() {
        let text = "Let me check.\n```json\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}\n```\nDone.";
        let p = parse(text, &names());
        assert_eq!(calls(&p), vec![weather("Rome")]);
        assert_eq!(p.content, "Let me check.\n\nDone.");
        // A bare fence and a list of calls.
        let text = "```\n[{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}, {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lima\"}}]\n```";
        let p = parse(text, &names());
        assert_eq!(
            calls(&p),
            vec![("add".into(), json!({"a": 1, "b": 2})), weather("Lima")]
        );
    }

    #[test]
    fn bare_objects_and_openai_shapes() {
        let p = parse(
            r#" {"name": "get_weather", "arguments": "{\"city\": \"Kyiv\"}"} "#,
            &names(),
        );
        assert_eq!(calls(&p), vec![weather("Kyiv")]);
        let p = parse(
            r#"{"type": "function", "function": {"name": "add", "arguments": {"a": 2}}}"#,
            &names(),
        );
        assert_eq!(calls(&p), vec![("add".into(), json!({"a": 2}))]);
        // No arguments at all: an empty object.
        let p = parse(r#"{"name": "add"}"#, &[]);
        assert_eq!(calls(&p), vec![("add".into(), json!({}))]);
    }

    #[test]
    fn what_is_not_a_call_stays_text() {
        for text in [
            "The answer is 4.",
            r#"{"name": "delete_everything", "arguments": {}}"#, // not offered
            "```python\nprint({\"name\": 1})\n```",
            r#"{"city": "Paris"}"#,
            "<tool_call>{\"name\": \"add\", \"arguments\": 3}</tool_call>",
            "```json\n{\"name\": \"add\", \"arguments\": {}}\n``` trailing ```json {\"name\"",
        ] {
            let p = parse(text, &names());
            if text.contains("trailing") {
                // The first block is a call; the broken second one stays text.
                assert_eq!(p.calls.len(), 1, "{text}");
                assert!(p.content.starts_with("trailing"), "{}", p.content);
            } else {
                assert!(p.calls.is_empty(), "{text}");
                assert_eq!(p.content, text.trim(), "{text}");
            }
        }
        // Any name counts when no names are given.
        assert_eq!(
            parse(r#"{"name": "delete_everything", "arguments": {}}"#, &[])
                .calls
                .len(),
            1
        );
    }

    #[test]
    fn streamed_text_stops_where_a_call_may_start() {
        assert_eq!(call_start("Hello there"), None);
        assert_eq!(call_start("Sure. <tool"), Some(6));
        assert_eq!(call_start("Sure. <b>bold</b>"), None);
        assert_eq!(call_start("x ``"), Some(2));
        assert_eq!(call_start("x ```js"), Some(2)); // "```json" may follow
        assert_eq!(call_start("x ```python\n"), None);
        assert_eq!(call_start("code: if (a) { return; }"), None);
        assert_eq!(call_start("{ \"name\""), Some(0));
        // What was streamed before the start is a prefix of the parsed text.
        let text = "Checking now.\n```json\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n```";
        let at = call_start(text).unwrap();
        let p = parse(text, &names());
        assert!(p.content.starts_with(text[..at].trim()));
        assert_eq!(p.calls.len(), 1);
    }
}
