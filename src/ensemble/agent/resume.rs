//! `--resume DIR`: a killed run's conversation rebuilt from its journal, then continued after
//! its last step. A call with a `result` never runs again; the last step's calls without one
//! (they were cut off) run now.
use super::config::AgentConfig;
use super::journal::{self, Event, Journal};
use super::policy::Decision;
use super::run::{
    config_path, journal_path, not_run, tool_message, Agent, RunOptions, State, Task, Tree,
};
use super::trace::{CallTrace, RunTrace, StepTrace, Stop, Usage};
use crate::engine::{Engine, Message, ToolCall};
use crate::ensemble::spans;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use tracing::Instrument;

/// What the journal says a run had done.
#[derive(Debug)]
pub struct Rebuilt {
    pub task: String,
    /// The conversation up to the last step's assistant message, its calls' answers included
    /// except those in `last` still to run.
    pub messages: Vec<Message>,
    pub steps: Vec<StepTrace>,
    /// Tokens spent, delegates' included.
    pub usage: Usage,
    /// The last step's calls in order, each with its answer if it has one.
    pub last: Vec<(ToolCall, Option<String>)>,
    /// The run's end, if it ended.
    pub finished: Option<(Option<String>, Stop)>,
    pub notes: Vec<String>,
}

impl Rebuilt {
    pub fn after_step(&self) -> usize {
        self.steps.last().map_or(0, |s| s.step)
    }
}

/// Rebuilds a run from its events.
pub fn rebuild(events: &[Event], cfg: &AgentConfig) -> Result<Rebuilt> {
    let Some(Event::Start { task, messages, .. }) = events.first() else {
        bail!("the journal does not begin with a start event");
    };
    let start = match messages {
        Some(m) => Task::Conversation(m.clone()),
        None => Task::Text(task.clone()),
    };
    let mut r = Rebuilt {
        task: task.clone(),
        messages: start.messages(cfg),
        steps: Vec::new(),
        usage: Usage::default(),
        last: Vec::new(),
        finished: None,
        notes: Vec::new(),
    };
    // Per step: its calls, and what was decided and returned for each.
    let mut steps: Vec<(usize, String, Vec<ToolCall>, Usage)> = Vec::new();
    let mut decisions: HashMap<String, (Decision, String)> = HashMap::new();
    let mut results: HashMap<String, (bool, String, f64, Option<serde_json::Value>)> =
        HashMap::new();
    for e in &events[1..] {
        match e {
            Event::Step {
                step,
                text,
                calls,
                usage,
            } => {
                steps.push((*step, text.clone(), calls.clone(), *usage));
                r.usage += *usage;
            }
            Event::Decision {
                call_id,
                decision,
                by,
                ..
            } => {
                decisions.insert(call_id.clone(), (*decision, by.clone()));
            }
            Event::Result {
                call_id,
                ok,
                output,
                seconds,
                trace,
                usage,
                ..
            } => {
                results.insert(
                    call_id.clone(),
                    (*ok, output.clone(), *seconds, trace.clone()),
                );
                r.usage += usage.unwrap_or_default();
            }
            Event::Final { answer, stop } => r.finished = Some((answer.clone(), *stop)),
            Event::Start { .. } => bail!("the journal has a second start event"),
            Event::Call { .. } | Event::Error { .. } | Event::Resume { .. } => {}
        }
    }
    let n = steps.len();
    for (i, (step, text, calls, usage)) in steps.into_iter().enumerate() {
        r.messages.push(Message {
            tool_calls: calls.clone(),
            ..Message::new("assistant", &text)
        });
        let mut traced = Vec::new();
        for call in calls {
            let decided = decisions.get(&call.id);
            let answer = match (results.get(&call.id), decided) {
                (Some((ok, output, seconds, sub)), d) => {
                    traced.push(CallTrace {
                        id: call.id.clone(),
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                        decision: d.map_or(Decision::Allow, |d| d.0),
                        by: d.map(|d| d.1.clone()).unwrap_or_default(),
                        ok: Some(*ok),
                        output: output.clone(),
                        seconds: *seconds,
                        delegate: sub.clone(),
                    });
                    Some(output.clone())
                }
                (None, Some((decision, by))) if *decision != Decision::Allow => {
                    let output = not_run(by, &call, cfg, &r.steps);
                    traced.push(CallTrace {
                        id: call.id.clone(),
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                        decision: *decision,
                        by: by.clone(),
                        ok: None,
                        output: output.clone(),
                        seconds: 0.0,
                        delegate: None,
                    });
                    Some(output)
                }
                // Cut off before it finished: the last step's run again; an earlier step's
                // cannot be (the model has gone on), so the model is told so.
                _ if i + 1 == n => None,
                _ => Some("error: this call was cut off and did not finish".to_string()),
            };
            if i + 1 == n {
                r.last.push((call, answer));
            } else if let Some(a) = answer {
                r.messages.push(tool_message(&call.id, &a));
            }
        }
        r.steps.push(StepTrace {
            step,
            text,
            calls: traced,
            usage,
            seconds: 0.0,
            ensemble: None,
        });
    }
    Ok(r)
}

/// Continues the run journaled in `dir`: one that finished gives back its answer and runs
/// nothing.
pub async fn resume(engine: Engine, dir: &Path, opts: &RunOptions) -> Result<RunTrace> {
    if !journal_path(dir).is_file() {
        bail!(
            "cannot resume {}: it has no journal.jsonl, so it is not an agent's run directory \
             (`conclave agent` prints `run dir: DIR` when it starts)",
            dir.display()
        );
    }
    let cfg_path = config_path(dir);
    let cfg = AgentConfig::load(&cfg_path.display().to_string())
        .with_context(|| format!("cannot resume {}: its config", dir.display()))?;
    if !opts.interactive {
        cfg.check_unattended()?;
    }
    let (events, notes) = journal::read(&journal_path(dir))?;
    let mut r = rebuild(&events, &cfg)?;
    r.notes.extend(notes);
    if let Some((answer, stop)) = r.finished.clone() {
        r.notes
            .push("the run had finished: nothing was run again".into());
        return Ok(RunTrace {
            agent: cfg.name().into(),
            task: r.task,
            answer,
            stop,
            steps: r.steps,
            usage: r.usage,
            seconds: 0.0,
            notes: r.notes,
        });
    }
    let after_step = r.after_step();
    let mut j = Journal::open(&journal_path(dir))?;
    j.write(&Event::Resume { after_step })?;
    r.notes.push(format!("resumed after step {after_step}"));
    if opts.progress {
        eprintln!("resuming after step {after_step}");
    }
    let mcp = super::mcp::McpTools::start(&cfg.spec.mcp).await?;
    let tree = Tree::new(engine, &cfg, dir, opts, r.usage.completion_tokens, mcp)?;
    let mut state = State::new(r.task, r.messages);
    state.steps = r.steps;
    state.usage = r.usage;
    state.notes = r.notes;
    let agent = Agent {
        tree: &tree,
        cfg: &cfg,
        depth: 0,
        journal: Some(Mutex::new(j)),
    };
    let span = spans::agent_run(cfg.name(), 0);
    let t = agent
        .finish(state, r.last, dir)
        .instrument(span.clone())
        .await;
    if let Ok(t) = &t {
        spans::agent_ended(&span, t);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn cfg() -> AgentConfig {
        AgentConfig::from_toml(
            "[agent]\nmodel = \"m\"\ntools = [\"python\", \"write_file\"]\nsystem = \"S\"",
            "t",
            Path::new("."),
        )
        .unwrap()
    }

    fn call(id: &str, name: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: json!({"code": id}),
        }
    }

    fn lines(text: &str) -> Vec<Event> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn messages_are_rebuilt_and_only_unfinished_calls_of_the_last_step_are_pending() {
        let u = r#"{"prompt_tokens":10,"cached_tokens":0,"completion_tokens":7}"#;
        let journal = format!(
            r#"{{"event":"start","task":"T","agent":"t","version":1}}
{{"event":"step","step":1,"text":"","calls":[{{"id":"a","name":"python","arguments":{{"code":"a"}}}},{{"id":"b","name":"write_file","arguments":{{"code":"b"}}}}],"usage":{u}}}
{{"event":"decision","step":1,"call_id":"a","tool":"python","decision":"allow","by":"default"}}
{{"event":"call","step":1,"call_id":"a","tool":"python","arguments":{{"code":"a"}}}}
{{"event":"result","step":1,"call_id":"a","tool":"python","ok":true,"output":"out-a","seconds":0.1}}
{{"event":"decision","step":1,"call_id":"b","tool":"write_file","decision":"deny","by":"policy rule 1"}}
{{"event":"step","step":2,"text":"more","calls":[{{"id":"c","name":"python","arguments":{{"code":"c"}}}},{{"id":"d","name":"python","arguments":{{"code":"d"}}}}],"usage":{u}}}
{{"event":"decision","step":2,"call_id":"c","tool":"python","decision":"allow","by":"default"}}
{{"event":"call","step":2,"call_id":"c","tool":"python","arguments":{{"code":"c"}}}}
{{"event":"result","step":2,"call_id":"c","tool":"python","ok":false,"output":"out-c","seconds":0.1}}
{{"event":"decision","step":2,"call_id":"d","tool":"python","decision":"allow","by":"default"}}
{{"event":"call","step":2,"call_id":"d","tool":"python","arguments":{{"code":"d"}}}}"#
        );
        let r = rebuild(&lines(&journal), &cfg()).unwrap();
        let m: Vec<(&str, &str, Option<&str>)> = r
            .messages
            .iter()
            .map(|m| {
                (
                    m.role.as_str(),
                    m.content.as_str(),
                    m.tool_call_id.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            m[..3],
            [
                ("system", "S", None),
                ("user", "T", None),
                ("assistant", "", None)
            ]
        );
        assert_eq!(
            r.messages[2].tool_calls,
            vec![call("a", "python"), call("b", "write_file")]
        );
        assert_eq!(m[3], ("tool", "out-a", Some("a")));
        assert_eq!(m[4].2, Some("b"));
        assert!(m[4].1.starts_with("denied by policy rule 1"), "{}", m[4].1);
        assert_eq!(m[5], ("assistant", "more", None));
        assert_eq!(m.len(), 6);
        // Step 2's finished call keeps its answer; the cut-off one is to run.
        assert_eq!(
            r.last,
            vec![
                (call("c", "python"), Some("out-c".into())),
                (call("d", "python"), None)
            ]
        );
        assert_eq!((r.after_step(), r.usage.completion_tokens), (2, 14));
        assert_eq!(r.steps[0].calls.len(), 2);
        assert_eq!(r.steps[0].calls[1].decision, Decision::Deny);
        assert!(r.finished.is_none());
    }

    #[test]
    fn a_journal_cut_before_the_first_step_restarts_it_and_a_finished_one_is_done() {
        let start = r#"{"event":"start","task":"T","agent":"t","version":1}"#;
        let r = rebuild(&lines(start), &cfg()).unwrap();
        assert_eq!((r.after_step(), r.messages.len(), r.last.len()), (0, 2, 0));
        let done = format!(
            "{start}\n{}\n{}",
            r#"{"event":"step","step":1,"text":"42","calls":[],"usage":{"prompt_tokens":1,"cached_tokens":0,"completion_tokens":1}}"#,
            r#"{"event":"final","answer":"42","stop":"answer"}"#
        );
        let r = rebuild(&lines(&done), &cfg()).unwrap();
        assert_eq!(r.finished, Some((Some("42".into()), Stop::Answer)));
        assert!(rebuild(&lines(&done)[1..], &cfg()).is_err());
    }
}
