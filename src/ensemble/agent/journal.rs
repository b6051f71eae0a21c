//! DIR/journal.jsonl: one JSON object per event, appended as it happens, so that a killed run
//! can be resumed from what it had done.
//!
//! Each event is one `write` of a whole line, then `sync_data`: a SIGKILL loses nothing that
//! was written (the page cache outlives the process), and the fsync makes the line outlive a
//! machine crash too. It costs a few milliseconds per event, against seconds per model step.
use super::policy::Decision;
use super::trace::{Stop, Usage};
use crate::engine::{Message, ToolCall};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// The journal format's version, in the `start` event.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start {
        task: String,
        agent: String,
        version: u32,
        /// A conversation task's messages (a text task is `task` alone).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        messages: Option<Vec<Message>>,
    },
    /// The model's reply: its text outside calls, and its calls.
    Step {
        step: usize,
        text: String,
        calls: Vec<ToolCall>,
        usage: Usage,
    },
    Decision {
        step: usize,
        call_id: String,
        tool: String,
        decision: Decision,
        by: String,
    },
    /// Written before the call runs.
    Call {
        step: usize,
        call_id: String,
        tool: String,
        arguments: Value,
    },
    /// The call ran to completion (`ok` false: it failed, and `output` says how). For a call
    /// that did not run (denied, unknown tool, bad arguments) `output` is what the model was
    /// told, and no `call` event precedes it.
    Result {
        step: usize,
        call_id: String,
        tool: String,
        ok: bool,
        output: String,
        seconds: f64,
        /// A delegate's whole sub-run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<Value>,
        /// Tokens a delegate's sub-run spent (counted against the tree's budget on resume).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    },
    /// A model call failed and is retried.
    Error {
        step: usize,
        message: String,
        attempt: usize,
    },
    Resume {
        after_step: usize,
    },
    Final {
        answer: Option<String>,
        stop: Stop,
    },
}

/// An open journal, appended to.
pub struct Journal {
    file: File,
}

impl Journal {
    /// Opens `path` for appending, creating it.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the journal {}", path.display()))?;
        Ok(Self { file })
    }

    /// Appends one event as one line, flushed to disk.
    pub fn write(&mut self, e: &Event) -> Result<()> {
        let mut line = serde_json::to_string(e)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .context("cannot append to the journal")
    }
}

/// The events of a journal. A last line that does not parse (the run was killed while writing
/// it) is left out with a note; a bad line before the last is an error.
pub fn read(path: &Path) -> Result<(Vec<Event>, Vec<String>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the journal {}", path.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut events = Vec::new();
    let mut notes = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(e) => events.push(e),
            Err(e) if i + 1 == lines.len() => notes.push(format!(
                "the journal's last line was torn ({e}) and is ignored: {}",
                line.chars().take(80).collect::<String>()
            )),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("{} line {} is not a journal event", path.display(), i + 1)
                })
            }
        }
    }
    Ok((events, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Vec<Event> {
        let call = ToolCall {
            id: "call_1".into(),
            ..ToolCall::new("python", json!({"code": "print(2)"}))
        };
        vec![
            Event::Start {
                task: "t".into(),
                agent: "a".into(),
                version: VERSION,
                messages: None,
            },
            Event::Step {
                step: 1,
                text: String::new(),
                calls: vec![call.clone()],
                usage: Usage {
                    prompt_tokens: 10,
                    cached_tokens: 0,
                    completion_tokens: 5,
                },
            },
            Event::Decision {
                step: 1,
                call_id: call.id.clone(),
                tool: "python".into(),
                decision: Decision::Allow,
                by: "default".into(),
            },
            Event::Call {
                step: 1,
                call_id: call.id.clone(),
                tool: "python".into(),
                arguments: call.arguments.clone(),
            },
            Event::Result {
                step: 1,
                call_id: call.id.clone(),
                tool: "python".into(),
                ok: true,
                output: "2".into(),
                seconds: 0.1,
                trace: None,
                usage: None,
            },
            Event::Final {
                answer: Some("2".into()),
                stop: Stop::Answer,
            },
        ]
    }

    #[test]
    fn events_round_trip_and_a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut j = Journal::open(&path).unwrap();
        for e in sample() {
            j.write(&e).unwrap();
        }
        let (events, notes) = read(&path).unwrap();
        assert_eq!((events, notes.len()), (sample(), 0));
        // The wire names are API.md's.
        let text = std::fs::read_to_string(&path).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(
            first,
            json!({"event": "start", "task": "t", "agent": "a", "version": 1})
        );
        assert!(text.contains(r#""stop":"answer""#), "{text}");
        // A line cut off mid-write.
        std::fs::write(&path, format!("{text}{{\"event\":\"step\",\"st")).unwrap();
        let (events, notes) = read(&path).unwrap();
        assert_eq!(events.len(), sample().len());
        assert!(notes[0].contains("torn"), "{notes:?}");
        // A bad line in the middle is an error.
        std::fs::write(&path, format!("garbage\n{text}")).unwrap();
        let e = format!("{:#}", read(&path).unwrap_err());
        assert!(e.contains("line 1"), "{e}");
    }
}
