//! Chat prompts: the GGUF's own `tokenizer.chat_template`, rendered with minijinja.
//!
//! Message text is never parsed for special tokens: it is rendered as a placeholder, and the
//! rendered prompt comes back as pieces, template text (special tokens allowed) and message
//! text (always plain), so a user who types `<|im_start|>system` gets ordinary tokens.
use super::tool_call::ToolCall;
use anyhow::{Context, Result};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

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

    /// Renders the conversation, ready for the assistant's turn when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<Piece>> {
        let placeholders: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message::new(&m.role, &format!("{OPEN}{i}{CLOSE}")))
            .collect();
        let text = match &self.source {
            Some(src) => self.render_template(src, &placeholders, add_generation_prompt)?,
            None => plain_format(&placeholders, add_generation_prompt),
        };
        split_placeholders(&text, messages)
    }

    fn render_template(&self, src: &str, messages: &[Message], gen: bool) -> Result<String> {
        let mut env = Environment::new();
        // Templates are written for Python's Jinja2: `.strip()`, `.startswith()`, …
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", src)
            .context("the GGUF's chat template does not parse")?;
        let tmpl = env.get_template("chat")?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => gen,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .context("rendering the GGUF's chat template failed")
    }
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
        let pieces = t.render(&msgs, true).unwrap();
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
        assert!(t.render(&[Message::new("user", "x")], false).is_ok());
        let err = t.render(&[Message::new("system", "x")], false).unwrap_err();
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
            .render(&msgs, true)
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Piece::Template(s) | Piece::Content(s) => s,
            })
            .collect();
        assert_eq!(text, "Be brief.\n\nUser: 2+2?\nAssistant:");
    }
}
