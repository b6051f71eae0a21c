//! Program answers (`answer = "program"`): each agent answers a word problem with a short
//! Python program, the sandbox runs it, and the number it prints is the agent's answer.
//!
//! The idea is PAL (Gao et al. 2023, "PAL: Program-aided Language Models") and
//! program-of-thought prompting (Chen et al. 2022, "Program of Thoughts Prompting"): the
//! model writes the reasoning as code and the interpreter does the arithmetic, which small
//! models get wrong in prose. A program that crashes, runs too long, prints no number or is
//! missing gives no answer, so it casts no vote.
use super::extract::{extract, printed_number, AnswerKind};
use super::verify;
use crate::tools::{run_python, Status};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;

/// The role (configs/roles.toml) whose system prompt asks for a program: what an agent of a
/// program-answer ensemble gets when its member names no role.
pub const ROLE: &str = "pal";

/// The stdout and stderr kept in a trace: the end, where the answer and the error are.
const TAIL_CHARS: usize = 400;

/// How an agent's program ran: the part of a program answer that a trace keeps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgramRun {
    /// How the run ended; none when the reply held no program to run.
    pub status: Option<Status>,
    pub exit_code: Option<i32>,
    /// Why it gave no answer (or how it ended), in words.
    pub reason: String,
    /// The end of what it printed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    /// The end of its error output (a traceback ends with the exception).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Wall time of the run (that of the first run, for a program run earlier).
    pub seconds: f64,
    /// The same program had already run in this ensemble run; its result was reused.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

/// The program in a reply: its first fenced code block (```python as asked, or untagged),
/// else the whole reply when it calls `print` — small models often drop the fence around a
/// program (a third of qwen2.5-coder-0.5b's replies on the first GSM8K train questions);
/// Python then tells whether the rest is code (an "Answer: 12" line is a syntax error).
pub fn source(reply: &str) -> Option<String> {
    extract(AnswerKind::Code, reply).or_else(|| {
        let bare = reply.trim();
        bare.contains("print(").then(|| bare.to_string())
    })
}

/// Runs one program in the sandbox, with the limits code checks run under
/// ([`verify::limits`]), and reads its answer: the last number it printed, normalized as
/// number answers are ([`printed_number`]). Blocking. Fails only when the sandbox itself
/// cannot run (no Python, for one); a program's own failure is an answer of None.
pub fn run(source: &str) -> Result<Answer> {
    let o = run_python(source, None, &verify::limits())
        .context("cannot run an agent's program in the sandbox (`conclave doctor` says why)")?;
    let answer = (o.status == Status::Ok)
        .then(|| printed_number(&o.stdout))
        .flatten();
    let reason = match (o.status, &answer) {
        (Status::Ok, None) if o.stdout.trim().is_empty() => "printed nothing".to_string(),
        (Status::Ok, None) => "printed no number".to_string(),
        _ => o.reason.clone(),
    };
    let run = ProgramRun {
        status: Some(o.status),
        exit_code: o.exit_code,
        reason,
        stdout: verify::tail(&o.stdout, TAIL_CHARS),
        stderr: verify::tail(&verify::short_paths(&o.stderr), TAIL_CHARS),
        seconds: o.seconds,
        cached: false,
    };
    Ok((answer, run))
}

/// The record for a reply without a program.
fn missing() -> ProgramRun {
    ProgramRun {
        status: None,
        exit_code: None,
        reason: "no ```python block and no print call in the reply: there was no program to run"
            .into(),
        stdout: String::new(),
        stderr: String::new(),
        seconds: 0.0,
        cached: false,
    }
}

/// A reply's answer (the number its program printed) and how its program ran.
pub type Answer = (Option<String>, ProgramRun);

/// The programs of one ensemble run, each distinct source run once: agents that share a
/// model, role and greedy sampling write the same program, and debate rounds repeat them.
#[derive(Default)]
pub struct Programs {
    ran: Mutex<HashMap<String, Answer>>,
}

impl Programs {
    /// Forgets earlier runs (a new ensemble run begins).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Answer>> {
        // A panic elsewhere leaves the map whole: each entry is inserted complete.
        self.ran.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Each reply's answer and program run; the new distinct programs run at once, each on
    /// a blocking thread.
    pub async fn answers(&self, replies: &[&str]) -> Result<Vec<Answer>> {
        let sources: Vec<Option<String>> = replies.iter().map(|r| source(r)).collect();
        let mut fresh: Vec<String> = Vec::new();
        {
            let ran = self.lock();
            for s in sources.iter().flatten() {
                if !ran.contains_key(s) && !fresh.contains(s) {
                    fresh.push(s.clone());
                }
            }
        }
        let handles: Vec<_> = fresh
            .iter()
            .map(|s| {
                let s = s.clone();
                tokio::task::spawn_blocking(move || run(&s))
            })
            .collect();
        let mut first_use: Vec<&String> = Vec::new();
        for (s, h) in fresh.iter().zip(handles) {
            let result = h.await.context("a program's sandbox thread panicked")??;
            self.lock().insert(s.clone(), result);
        }
        let ran = self.lock();
        Ok(sources
            .iter()
            .map(|s| match s {
                None => (None, missing()),
                Some(s) => {
                    let (answer, mut run) = ran[s].clone();
                    // The first reply with a program run just now is the one it ran for.
                    if fresh.contains(s) && !first_use.contains(&s) {
                        first_use.push(s);
                    } else {
                        run.cached = true;
                    }
                    (answer, run)
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(replies: &[&str]) -> Vec<Answer> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(Programs::default().answers(replies)).unwrap()
    }

    #[test]
    fn a_program_answers_with_the_last_number_it_prints() {
        let good = "```python\napples = 3 * 4\nprint('left:', apples - 2)\n```";
        let float = "```python\nprint(10 / 4)\nprint(30 / 3)\n```";
        let out = answers(&[good, float]);
        assert_eq!(out[0].0.as_deref(), Some("10"), "{:?}", out[0].1);
        assert_eq!(out[0].1.status, Some(Status::Ok));
        assert_eq!(out[0].1.stdout, "left: 10");
        // 30 / 3 prints "10.0": the same answer as the gold "10".
        assert_eq!(out[1].0.as_deref(), Some("10"));
    }

    #[test]
    fn crashes_timeouts_silence_and_no_code_give_no_answer() {
        let crash = "```python\nx = 7\nprint(x)\nprint(x / 0)\n```";
        let spin = "```python\nwhile True:\n    pass\n```";
        let words = "```python\nprint('many')\n```";
        let silent = "```python\nx = 12\n```";
        let prose = "Twelve apples, so the answer is 12.";
        let not_code = "Answer: print(12) is what it prints";
        let out = answers(&[crash, spin, words, silent, prose, not_code]);
        for (i, (answer, _)) in out.iter().enumerate() {
            assert_eq!(*answer, None, "reply {i}: {:?}", out[i].1);
        }
        let crash = &out[0].1;
        assert_eq!(
            (crash.status, crash.exit_code),
            (Some(Status::Error), Some(1))
        );
        assert!(
            crash.reason.contains("ZeroDivisionError") && crash.stderr.contains("main.py"),
            "{crash:?}"
        );
        assert!(!crash.stderr.contains("conclave-sandbox-"), "{crash:?}");
        assert_eq!(crash.stdout, "7", "what it printed before it crashed");
        assert_eq!(out[1].1.status, Some(Status::Timeout), "{:?}", out[1].1);
        assert_eq!(out[2].1.reason, "printed no number");
        assert_eq!(out[3].1.reason, "printed nothing");
        assert_eq!(out[4].1.status, None);
        assert!(out[4].1.reason.contains("no ```python block"));
        // Unfenced text that calls print runs, and is no program when it is not Python.
        assert_eq!(out[5].1.status, Some(Status::Error), "{:?}", out[5].1);
        assert!(out[5].1.reason.contains("SyntaxError"), "{:?}", out[5].1);
    }

    #[test]
    fn a_program_without_its_fence_still_runs() {
        let bare = "pages = 3 * (2 * 2 * 2) * 7\nprint(pages)";
        let out = answers(&[bare]);
        assert_eq!(out[0].0.as_deref(), Some("168"), "{:?}", out[0].1);
    }

    #[test]
    fn each_distinct_program_runs_once() {
        let a = "```python\nprint(2 + 2)\n```";
        let same = "Here it is:\n```python\nprint(2 + 2)\n```\nIt prints 4.";
        let b = "```python\nprint(5)\n```";
        let programs = Programs::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let out = rt.block_on(programs.answers(&[a, same, b])).unwrap();
        let cached: Vec<bool> = out.iter().map(|o| o.1.cached).collect();
        assert_eq!(cached, [false, true, false]);
        assert_eq!(out[1].0.as_deref(), Some("4"));
        let again = rt.block_on(programs.answers(&[b])).unwrap();
        assert!(again[0].1.cached && again[0].0.as_deref() == Some("5"));
        programs.clear();
        assert!(!rt.block_on(programs.answers(&[b])).unwrap()[0].1.cached);
    }

    #[test]
    fn a_trace_shows_what_ran() {
        let (_, run) = &answers(&["```python\nprint(1 / 0)\n```"])[0];
        let v = serde_json::to_value(run).unwrap();
        assert_eq!(v["status"], "error");
        assert!(
            v.get("cached").is_none() && v.get("stdout").is_none(),
            "{v}"
        );
        assert!(v["stderr"].as_str().unwrap().ends_with("division by zero"));
    }
}
