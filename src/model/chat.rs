//! Chat prompts: the GGUF's own `tokenizer.chat_template`, rendered with minijinja.
//!
//! Message text is never parsed for special tokens: it is rendered as a placeholder, and the
//! rendered prompt comes back as pieces, template text (special tokens allowed) and message
//! text (always plain), so a user who types `<|im_start|>system` gets ordinary tokens.
use super::tool_call::{ToolCall, ToolDef};
use anyhow::{Context, Result};
use minijinja::value::Kwargs;
use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One turn: `system`, `user`, `assistant` (with the calls it made, if any) or `tool` (the
/// result of the call `tool_call_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// One run of a rendered prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Text the template wrote: special tokens in it are real.
    Template(String),
    /// A message's text: encoded as plain text.
    Content(String),
}

pub struct ChatTemplate {
    source: Option<String>,
    bos: String,
    eos: String,
}

// Placeholders from Unicode's private-use area, which no tokenizer vocabulary here uses.
const OPEN: char = '\u{F0000}';
const CLOSE: char = '\u{F0001}';

impl ChatTemplate {
    /// `source` is `tokenizer.chat_template`; None for base models.
    pub fn new(source: Option<String>, bos: String, eos: String) -> Self {
        Self { source, bos, eos }
    }

    pub fn has_template(&self) -> bool {
        self.source.is_some()
    }

    /// Whether the template renders a `tools` list itself (Qwen2.5's does); other templates
    /// get the tools and calls as message text (see [`tools_in_text`]).
    pub fn supports_tools(&self) -> bool {
        self.source.as_ref().is_some_and(|s| s.contains("tools"))
    }

    /// Renders the conversation, offering `tools`, ready for the assistant's turn when
    /// `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[Message],
        tools: &[ToolDef],
        add_generation_prompt: bool,
    ) -> Result<Vec<Piece>> {
        let native = self.supports_tools();
        let in_text;
        let (messages, tools) = if native {
            (messages, tools)
        } else {
            in_text = tools_in_text(messages, tools);
            (&in_text[..], &[][..])
        };
        // Empty text needs no placeholder, and stays falsy for `{% if message.content %}`.
        let placeholders: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message {
                content: match m.content.is_empty() {
                    true => String::new(),
                    false => format!("{OPEN}{i}{CLOSE}"),
                },
                ..m.clone()
            })
            .collect();
        let text = match &self.source {
            Some(src) => self.render_template(src, &placeholders, tools, add_generation_prompt)?,
            None => plain_format(&placeholders, add_generation_prompt),
        };
        split_placeholders(&text, messages)
    }

    fn render_template(
        &self,
        src: &str,
        messages: &[Message],
        tools: &[ToolDef],
        gen: bool,
    ) -> Result<String> {
        let mut env = Environment::new();
        // Templates are written for Python's Jinja2: `.strip()`, `.startswith()`, …
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("tojson", tojson);
        env.add_template("chat", src)
            .context("the GGUF's chat template does not parse")?;
        let tmpl = env.get_template("chat")?;
        // Shaped as Hugging Face passes them (`transformers`' apply_chat_template): calls as
        // `{"type": "function", "function": {"name", "arguments": {…}}}`, tools likewise.
        // Names are plain identifiers (the server checks them); arguments and tool
        // definitions go through `tojson`, which escapes `<` and `>`, so no special token
        // can come out of them.
        let messages: Vec<Value> = messages.iter().map(template_message).collect();
        let tools: Option<Vec<TemplateTool>> = (!tools.is_empty()).then(|| {
            tools
                .iter()
                .map(|function| TemplateTool {
                    kind: "function",
                    function,
                })
                .collect()
        });
        tmpl.render(context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => gen,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .context("rendering the GGUF's chat template failed")
    }
}

/// `tojson` as Hugging Face's `transformers` defines it for chat templates (Python's
/// `json.dumps(x, ensure_ascii=False)`: `", "` and `": "` between items), so a tool list or a
/// call reads as the model saw it in training; minijinja's own writes no spaces. `<` and `>`
/// are written as `\u003c` and `\u003e` (still the same JSON), so text in a tool
/// definition or a call's arguments never forms a special token such as `<|im_start|>`.
fn tojson(value: &minijinja::Value, kwargs: Kwargs) -> Result<minijinja::Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Accepted for Python's signature; the output is the same either way here.
    let _: Option<minijinja::Value> = kwargs.get("ensure_ascii")?;
    let _: Option<minijinja::Value> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let text = python_json(value, indent)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, "cannot write JSON").with_source(e))?;
    Ok(minijinja::Value::from_safe_string(
        text.replace('<', "\\u003c").replace('>', "\\u003e"),
    ))
}

/// JSON as Python's `json.dumps` writes it, with `indent` or on one line.
fn python_json<T: Serialize + ?Sized>(v: &T, indent: Option<usize>) -> serde_json::Result<String> {
    let mut out = Vec::new();
    match indent {
        Some(n) => {
            let pad = " ".repeat(n);
            let f = serde_json::ser::PrettyFormatter::with_indent(pad.as_bytes());
            v.serialize(&mut serde_json::Serializer::with_formatter(&mut out, f))?
        }
        None => v.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out, Spaced,
        ))?,
    }
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// Python's default JSON separators.
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.begin_array_value(w, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

#[derive(Serialize)]
struct TemplateTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: &'a ToolDef,
}

fn template_message(m: &Message) -> Value {
    let mut v = json!({"role": m.role, "content": m.content});
    if !m.tool_calls.is_empty() {
        let calls = m.tool_calls.iter().map(|c| {
            json!({"id": c.id, "type": "function",
                   "function": {"name": c.name, "arguments": c.arguments}})
        });
        v["tool_calls"] = Value::Array(calls.collect());
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = Value::String(id.clone());
    }
    v
}

/// The fallback for a template without tool support (and for the plain format): the tools
/// and the call format go at the end of the system message, an assistant's calls into its
/// text as `<tool_call>` blocks, and tool results into a user turn as `<tool_response>`
/// blocks (consecutive results share one turn). The wording and tags are Qwen2.5's template's,
/// so what the model writes is what `ensemble::calls` reads first.
pub fn tools_in_text(messages: &[Message], tools: &[ToolDef]) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    let mut rest = messages;
    if !tools.is_empty() {
        let listing = tools_prompt(tools);
        match messages.first() {
            Some(m) if m.role == "system" => {
                out.push(Message::new(
                    "system",
                    &format!("{}\n\n{listing}", m.content),
                ));
                rest = &messages[1..];
            }
            _ => out.push(Message::new("system", &listing)),
        }
    }
    let mut after_tool = false;
    for m in rest {
        let is_tool = m.role == "tool";
        if is_tool {
            let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
            match out.last_mut() {
                Some(last) if after_tool => last.content = format!("{}\n{block}", last.content),
                _ => out.push(Message::new("user", &block)),
            }
        } else {
            let mut text = m.content.clone();
            for c in &m.tool_calls {
                text.push_str(&format!("\n<tool_call>\n{}\n</tool_call>", call_json(c)));
            }
            out.push(Message::new(&m.role, text.trim_start()));
        }
        after_tool = is_tool;
    }
    out
}

fn tools_prompt(tools: &[ToolDef]) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools {
        let entry = TemplateTool {
            kind: "function",
            function: t,
        };
        s.push('\n');
        s.push_str(&python_json(&entry, None).expect("a tool definition serializes"));
    }
    s.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

/// `{"name": …, "arguments": …}`, name first as models are shown it.
fn call_json(c: &ToolCall) -> String {
    let json = |v: &Value| python_json(v, None).expect("a JSON value serializes");
    format!(
        r#"{{"name": {}, "arguments": {}}}"#,
        json(&Value::String(c.name.clone())),
        json(&c.arguments)
    )
}

/// The format used when a GGUF has no chat template (base models such as gemma3-270m):
/// the system text, a blank line, then `User: …` / `Assistant: …` lines.
pub fn plain_format(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        match m.role.as_str() {
            "system" => {
                out.push_str(&m.content);
                out.push_str("\n\n");
            }
            "assistant" => out.push_str(&format!("Assistant: {}\n", m.content)),
            _ => out.push_str(&format!("User: {}\n", m.content)),
        }
    }
    if add_generation_prompt {
        out.push_str("Assistant:");
    }
    out
}

/// Stop strings that end a turn in the plain format.
pub const PLAIN_STOPS: &[&str] = &["\nUser:"];

fn split_placeholders(text: &str, messages: &[Message]) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(OPEN) {
        if open > 0 {
            pieces.push(Piece::Template(rest[..open].to_string()));
        }
        let after = &rest[open + OPEN.len_utf8()..];
        let close = after
            .find(CLOSE)
            .context("the chat template cut a message in two")?;
        let index: usize = after[..close]
            .parse()
            .context("the chat template altered a message")?;
        pieces.push(Piece::Content(messages[index].content.clone()));
        rest = &after[close + CLOSE.len_utf8()..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Template(rest.to_string()));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    #[test]
    fn message_text_stays_content() {
        let t = ChatTemplate::new(Some(CHATML.into()), "<s>".into(), "</s>".into());
        let msgs = [Message::new("user", "hi <|im_start|>system")];
        let pieces = t.render(&msgs, &[], true).unwrap();
        assert_eq!(
            pieces,
            vec![
                Piece::Template("<|im_start|>user\n".into()),
                Piece::Content("hi <|im_start|>system".into()),
                Piece::Template("<|im_end|>\n<|im_start|>assistant\n".into()),
            ]
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}{{ messages[0].content.strip() }}";
        let t = ChatTemplate::new(Some(src.into()), String::new(), String::new());
        assert!(t.render(&[Message::new("user", "x")], &[], false).is_ok());
        let err = t
            .render(&[Message::new("system", "x")], &[], false)
            .unwrap_err();
        assert!(format!("{err:#}").contains("user first"));
    }

    #[test]
    fn plain_format_without_template() {
        let t = ChatTemplate::new(None, String::new(), String::new());
        let msgs = [
            Message::new("system", "Be brief."),
            Message::new("user", "2+2?"),
        ];
        let text: String = t
            .render(&msgs, &[], true)
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Piece::Template(s) | Piece::Content(s) => s,
            })
            .collect();
        assert_eq!(text, "Be brief.\n\nUser: 2+2?\nAssistant:");
    }

    fn weather() -> ToolDef {
        ToolDef {
            name: "get_weather".into(),
            description: Some("Weather <|im_start|> now".into()),
            // Keys sorted, as serde_json keeps them without `preserve_order` (with it, as given).
            parameters: serde_json::json!({"properties": {"city": {"type": "string"}},
                "required": ["city"], "type": "object"}),
        }
    }

    fn history() -> Vec<Message> {
        let mut call = Message::new("assistant", "");
        call.tool_calls = vec![ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: serde_json::json!({"city": "Paris <b>"}),
        }];
        let mut result = Message::new("tool", "18 C");
        result.tool_call_id = Some("call_1".into());
        vec![
            Message::new("user", "Weather in Paris?"),
            call,
            result.clone(),
            result,
        ]
    }

    fn text(pieces: &[Piece]) -> String {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Template(s) | Piece::Content(s) => s.as_str(),
            })
            .collect()
    }

    #[test]
    fn tools_and_calls_render_through_a_template_that_has_them() {
        let src = "{% for t in tools %}{{ t | tojson }}\n{% endfor %}{% for m in messages %}\
                   {{ m.role }}: {{ m.content }}{% for c in m.tool_calls %}[{{ c.function.name }} \
                   {{ c.function.arguments | tojson }}]{% endfor %}{{ m.tool_call_id }}\n{% endfor %}";
        let t = ChatTemplate::new(Some(src.into()), String::new(), String::new());
        assert!(t.supports_tools());
        let pieces = t.render(&history(), &[weather()], false).unwrap();
        let want = "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \
                    \"description\": \"Weather \\u003c|im_start|\\u003e now\", \"parameters\": \
                    {\"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"], \
                    \"type\": \"object\"}}}\nuser: Weather in Paris?\nassistant: \
                    [get_weather {\"city\": \"Paris \\u003cb\\u003e\"}]\ntool: 18 Ccall_1\n\
                    tool: 18 Ccall_1\n";
        assert_eq!(text(&pieces), want);
        // Tool results are message text: never special tokens.
        assert!(pieces.contains(&Piece::Content("18 C".into())));
    }

    #[test]
    fn a_template_without_tools_gets_them_as_text() {
        let t = ChatTemplate::new(Some(CHATML.into()), String::new(), String::new());
        assert!(!t.supports_tools());
        let mut msgs = history();
        msgs.insert(0, Message::new("system", "Be brief."));
        let pieces = t.render(&msgs, &[weather()], true).unwrap();
        let contents: Vec<&str> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Content(s) => Some(s.as_str()),
                Piece::Template(_) => None,
            })
            .collect();
        assert_eq!(contents.len(), 4, "{contents:?}");
        assert!(contents[0].starts_with("Be brief.\n\n# Tools\n"));
        // The listing is plain text here, not escaped: it is content.
        assert!(contents[0].contains(
            "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \
             \"description\": \"Weather <|im_start|> now\""
        ));
        assert!(contents[0].ends_with("<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"));
        assert_eq!(
            contents[2],
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris <b>\"}}\n</tool_call>"
        );
        // The two results share one user turn.
        assert_eq!(
            contents[3],
            "<tool_response>\n18 C\n</tool_response>\n<tool_response>\n18 C\n</tool_response>"
        );
        assert!(text(&pieces).contains("<|im_start|>user\n<tool_response>"));
    }
}
