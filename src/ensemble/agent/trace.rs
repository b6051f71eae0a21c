//! What a run did, step by step: the record `--json` prints and DIR/trace.json holds.
use super::policy::Decision;
use crate::ensemble::Trace;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// The model answered without calling a tool.
    Answer,
    MaxSteps,
    /// The tree's completion-token budget is spent.
    MaxTokens,
    /// The tree's wall-clock limit passed.
    Timeout,
    /// A delegate would have nested deeper than `max_depth`.
    Depth,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Stop::Answer => "answer",
            Stop::MaxSteps => "max_steps",
            Stop::MaxTokens => "max_tokens",
            Stop::Timeout => "timeout",
            Stop::Depth => "depth",
        })
    }
}

/// Tokens of a step, or of a whole tree (delegates included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Every prompt token of every model call.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache; the rest were
    /// prefilled.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.prompt_tokens += o.prompt_tokens;
        self.cached_tokens += o.cached_tokens;
        self.completion_tokens += o.completion_tokens;
    }
}

impl Usage {
    /// An ensemble trace's tokens.
    pub fn of(t: &Trace) -> Self {
        Usage {
            prompt_tokens: t.usage.prompt_tokens,
            cached_tokens: t.usage.cached_tokens,
            completion_tokens: t.usage.completion_tokens,
        }
    }
}

/// One call of a step: the decision on it and, if it ran, its result.
#[derive(Debug, Clone, Serialize)]
pub struct CallTrace {
    pub id: String,
    pub name: String,
    pub arguments: Value,
    pub decision: Decision,
    /// "policy rule N", "default", "user", or why nothing was asked.
    pub by: String,
    /// Whether the tool ran and succeeded (None: it did not run).
    pub ok: Option<bool>,
    /// What the model was sent back.
    pub output: String,
    pub seconds: f64,
    /// A delegate's whole sub-run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepTrace {
    pub step: usize,
    /// The reply's text outside its calls.
    pub text: String,
    pub calls: Vec<CallTrace>,
    pub usage: Usage,
    pub seconds: f64,
    /// How the step was decided: each agent's text and calls, the votes. Absent for steps
    /// read back from the journal on resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<Trace>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunTrace {
    pub agent: String,
    pub task: String,
    /// The final answer; None when a limit stopped the run (the last step's text is in
    /// `steps`).
    pub answer: Option<String>,
    pub stop: Stop,
    pub steps: Vec<StepTrace>,
    /// The whole tree's tokens, delegates included.
    pub usage: Usage,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}
