//! What an ensemble is asked: a question its agents' roles frame, or a whole conversation
//! that brings its own frame (tools, a response format).
use super::calls;
use super::extract::{calls_ballot, extract, AnswerKind};
use crate::engine::{Constraint, Message, Prompt, ToolCall, ToolDef};

#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// The question: the user turn that roles' system prompts frame, and that judges, debates
    /// and refine rounds quote.
    pub question: String,
    /// When set, every agent is sent this conversation in place of its role's system prompt
    /// and `question`: a request with tools or a response format has its own frame (roles ask
    /// for an "Answer:" line), and a tool's results live in its history.
    pub conversation: Option<Vec<Message>>,
    /// Functions the agents may call. When any are offered, a reply is read for its calls and
    /// the vote is over calls (see [`extract::calls_ballot`](super::extract::calls_ballot)).
    pub tools: Vec<ToolDef>,
    /// Whether a reply may hold several calls; when not, only its first call counts.
    pub parallel: bool,
    /// Every agent generates under it (a response format's, or a tool choice's).
    pub constraint: Option<Constraint>,
}

impl From<&str> for Ask {
    fn from(question: &str) -> Self {
        Ask {
            question: question.to_string(),
            ..Ask::default()
        }
    }
}

impl From<&String> for Ask {
    fn from(question: &String) -> Self {
        Ask::from(question.as_str())
    }
}

impl Ask {
    /// A conversation sent whole; its last user turn is the question.
    pub fn conversation(messages: Vec<Message>, tools: Vec<ToolDef>) -> Self {
        let question = messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.clone())
            .unwrap_or_default();
        Ask {
            question,
            conversation: Some(messages),
            tools,
            parallel: true,
            constraint: None,
        }
    }

    /// The same ask with `question` in place of its question (a later debate round's): in a
    /// conversation, it replaces the last user turn.
    pub fn with_question(&self, question: &str) -> Self {
        let mut next = self.clone();
        next.question = question.to_string();
        if let Some(m) = next
            .conversation
            .as_mut()
            .and_then(|c| c.iter_mut().rev().find(|m| m.role == "user"))
        {
            m.content = question.to_string();
        }
        next
    }

    /// The messages an agent with this system prompt is sent.
    pub fn messages(&self, system: &str) -> Vec<Message> {
        match &self.conversation {
            Some(c) => c.clone(),
            None => vec![
                Message::new("system", system),
                Message::new("user", &self.question),
            ],
        }
    }

    /// The prompt of an agent with this system prompt: its messages, with the tools offered.
    pub fn prompt(&self, system: &str) -> Prompt {
        let messages = self.messages(system);
        if self.tools.is_empty() {
            Prompt::Chat(messages)
        } else {
            Prompt::ChatTools {
                messages,
                tools: self.tools.clone(),
            }
        }
    }

    /// What a reply answers: its ballot and its calls when tools are offered (a reply that
    /// calls nothing votes [`NO_CALL`](super::extract::NO_CALL)), else the answer `kind` reads.
    pub fn read(&self, kind: AnswerKind, text: &str) -> (Option<String>, Vec<ToolCall>) {
        if self.tools.is_empty() {
            return (extract(kind, text), Vec::new());
        }
        let names: Vec<String> = self.tools.iter().map(|t| t.name.clone()).collect();
        let mut calls = calls::parse(text, &names).calls;
        if !self.parallel {
            calls.truncate(1);
        }
        (Some(calls_ballot(&calls)), calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather() -> ToolDef {
        ToolDef {
            name: "get_weather".into(),
            description: None,
            parameters: json!({"type": "object"}),
        }
    }

    #[test]
    fn a_question_is_framed_by_the_role_and_a_conversation_is_sent_whole() {
        let q = Ask::from("2+2?");
        let m = q.messages("Be brief.");
        assert_eq!(
            (m[0].role.as_str(), m[1].content.as_str()),
            ("system", "2+2?")
        );
        let talk = vec![
            Message::new("user", "hi"),
            Message::new("assistant", "hello"),
            Message::new("user", "Paris weather?"),
        ];
        let c = Ask::conversation(talk.clone(), vec![weather()]);
        assert_eq!(c.question, "Paris weather?");
        assert_eq!(c.messages("Be brief."), talk);
        let next = c.with_question("Others said X. Paris weather?");
        assert_eq!(
            next.messages("")[2].content,
            "Others said X. Paris weather?"
        );
        assert_eq!(next.messages("")[0].content, "hi");
    }

    #[test]
    fn with_tools_a_reply_votes_its_calls() {
        let c = Ask::conversation(vec![Message::new("user", "q")], vec![weather()]);
        let text = "Sure.\n```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n```";
        let (ballot, calls) = c.read(AnswerKind::Text, text);
        assert_eq!(calls.len(), 1);
        assert_eq!(
            ballot.as_deref(),
            Some(r#"{"arguments":{"city":"Paris"},"name":"get_weather"}"#)
        );
        let (ballot, calls) = c.read(AnswerKind::Text, "It is sunny, I think.");
        assert_eq!((ballot.as_deref(), calls.len()), (Some("text"), 0));
        // A call of a function not offered is text.
        let other = r#"{"name": "rm", "arguments": {"path": "/"}}"#;
        assert_eq!(c.read(AnswerKind::Text, other).0.as_deref(), Some("text"));
        // Without parallel calls only the first counts.
        let two = r#"{"name": "get_weather", "arguments": {"city": "A"}} {"name": "get_weather", "arguments": {"city": "B"}}"#;
        assert!(c.read(AnswerKind::Text, two).0.unwrap().starts_with('['));
        let one = Ask {
            parallel: false,
            ..c.clone()
        };
        let (ballot, calls) = one.read(AnswerKind::Text, two);
        assert_eq!((calls.len(), ballot.unwrap().contains("\"A\"")), (1, true));
        // Without tools the answer kind reads the reply.
        let (answer, calls) = Ask::from("q").read(AnswerKind::Number, "Answer: 4");
        assert_eq!((answer.as_deref(), calls.len()), (Some("4"), 0));
    }
}
