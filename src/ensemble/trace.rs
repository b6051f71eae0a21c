//! What an ensemble run leaves behind: each agent's part, the decision, the tokens spent.
use super::aggregate::Candidate;
use super::confidence::Signals;
use super::config::Strategy;
use super::program::ProgramRun;
use super::verify::Verdict;
use crate::engine::{Finish, ToolCall};
use serde::Serialize;
use std::collections::BTreeMap;

/// One agent's part in a decision: enough to recompute the decision from the trace alone.
#[derive(Debug, Clone, Serialize)]
pub struct AgentTrace {
    pub model: String,
    pub role: String,
    pub temperature: f32,
    pub seed: u64,
    pub text: String,
    /// With tools: the calls read from `text` (`extracted` is their ballot).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<ToolCall>,
    pub extracted: Option<String>,
    pub logprob_mean: f32,
    pub weight: f32,
    pub tokens: usize,
    /// Prefill plus decode time of the batch this agent decoded in (agents of one batch share it).
    pub seconds: f64,
    pub finish: Option<Finish>,
    /// For a member that is itself an ensemble: its whole trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<Box<Trace>>,
    /// The API base of the server that ran a remote agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Why the agent gave no answer (a remote member that failed); it took no part in the vote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The verifier's result (`exec-vote`, `refine`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// The reply's confidence signals, when the strategy reads them (or the caller asked).
    #[serde(skip_serializing_if = "Signals::is_empty")]
    pub signals: Signals,
    /// With `answer = "program"`: how the reply's program ran (its status, or why there was
    /// none, and the end of its output); `extracted` is the number it printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<ProgramRun>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// Prompt tokens of the jobs run: once per batch, however many samples share it.
    pub prompt_tokens: usize,
    /// Of `prompt_tokens`, those taken from the engine's prefix store: the prefill ran
    /// `prompt_tokens - cached_tokens`.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

/// A model's part in a `judge` or `fuse` decision.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCall {
    pub model: String,
    pub prompt: String,
    pub text: String,
    /// The judge's pick (0-based), if its reply could be read.
    pub pick: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub name: String,
    pub strategy: Strategy,
    /// The winning extracted answer (for `fuse`, extracted from the synthesis).
    pub answer: Option<String>,
    /// The full text behind the answer: the winner's, or the synthesis.
    pub text: String,
    /// With tools: the calls of the answer (the winner's, or the synthesis's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<ToolCall>,
    pub agreement: f64,
    pub votes: BTreeMap<String, f64>,
    pub winner: Option<usize>,
    pub tie_break: Option<String>,
    pub agents: Vec<AgentTrace>,
    /// Earlier debate or refine rounds; `agents` holds the last.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<Vec<AgentTrace>>,
    /// `refine`, `exec-vote` and `debate`: the user prompt of each round, verifier feedback
    /// or the last round's answers included.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge: Option<ModelCall>,
    pub usage: Usage,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Trace {
    /// The candidates the decision was made from, as the aggregators take them.
    pub fn candidates(&self) -> Vec<Candidate> {
        candidates(&self.agents)
    }
}

pub fn candidates(agents: &[AgentTrace]) -> Vec<Candidate> {
    agents
        .iter()
        .map(|a| Candidate {
            text: a.text.clone(),
            extracted: a.extracted.clone(),
            logprob_mean: a.logprob_mean,
            weight: a.weight,
            signals: a.signals.clone(),
        })
        .collect()
}
