//! What an ensemble run shows while it runs: each agent's start, the text its sample streams,
//! what the strategy read of it, and each (nested) ensemble's decision. The server sends these
//! as SSE events (`conclave.<type>`); nothing is built or streamed when no listener is set.
use super::aggregate::Decision;
use super::config::Ensemble;
use super::trace::{AgentTrace, Trace};
use crate::engine::{Finish, Piece};
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

/// One step of a run. `path`: the member indexes from the top ensemble down to the nested
/// ensemble the agent (or decision) belongs to; [] for the top one. `agent`: the agent's index
/// among its ensemble's members, as in the trace's `agents`. `round`: 0 for the first answer,
/// then one more per debate or refine round.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An agent is about to answer.
    AgentStart {
        path: Vec<usize>,
        agent: usize,
        round: usize,
        model: String,
        role: String,
        temperature: f32,
    },
    /// Text the agent's sample produced since its last delta.
    Delta {
        path: Vec<usize>,
        agent: usize,
        round: usize,
        text: String,
    },
    /// The agent finished: what the strategy will see of it.
    AgentDone {
        path: Vec<usize>,
        agent: usize,
        round: usize,
        extracted: Option<String>,
        tokens: usize,
        finish: Option<String>,
        error: Option<String>,
    },
    /// The (nested) ensemble decided.
    Decision {
        path: Vec<usize>,
        strategy: String,
        votes: BTreeMap<String, f64>,
        winner: Option<usize>,
        answer: Option<String>,
        agreement: f64,
    },
}

impl Event {
    /// The type as the `type` field names it (`agent_start`, `delta`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::AgentStart { .. } => "agent_start",
            Event::Delta { .. } => "delta",
            Event::AgentDone { .. } => "agent_done",
            Event::Decision { .. } => "decision",
        }
    }
}

/// Where events go; shared with the tasks that stream a job's pieces.
pub(super) type Listener = Arc<dyn Fn(Event) + Send + Sync>;

/// Where a batch of agents sits in the run, for their events.
#[derive(Debug, Clone, Default)]
pub(super) struct Place {
    pub path: Vec<usize>,
    pub round: usize,
    /// Each agent of the batch (in the order the runner takes them) → its member index.
    pub members: Vec<usize>,
}

impl Place {
    /// The path of the nested ensemble that is member `i` here.
    pub fn inner(&self, i: usize) -> Vec<usize> {
        let mut path = self.path.clone();
        path.push(i);
        path
    }
}

/// The name OpenAI's wire and the trace give a finish.
pub(super) fn finish_name(f: Option<Finish>) -> Option<String> {
    f.and_then(|f| serde_json::to_value(f).ok())
        .and_then(|v| v.as_str().map(String::from))
}

/// Runs `work` (an engine job) while sending each piece it streams to `each`, the pieces of
/// the step that ended the job included: every delta is out before the job's result is.
pub(super) async fn forward<T>(
    work: impl Future<Output = T>,
    mut pieces: UnboundedReceiver<Piece>,
    mut each: impl FnMut(Piece),
) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            Some(p) = pieces.recv() => each(p),
            r = &mut work => {
                while let Ok(p) = pieces.try_recv() {
                    each(p);
                }
                return r;
            }
        }
    }
}

/// A spawned task that is aborted when its handle is dropped: a run dropped midway (a client
/// that left, a timeout) drops its engine jobs, which the engine then cancels.
pub(super) struct Owned<T>(pub JoinHandle<T>);

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What sends a job's pieces as its agents' deltas: `batch[sample]` is the sample's agent,
/// as an index into `place.members`.
pub(super) fn deltas(
    listener: &Listener,
    place: &Place,
    batch: &[usize],
) -> impl FnMut(Piece) + Send + 'static {
    let listener = listener.clone();
    let path = place.path.clone();
    let round = place.round;
    let agents: Vec<usize> = batch.iter().map(|&i| place.members[i]).collect();
    move |p: Piece| {
        if !p.text.is_empty() {
            listener(Event::Delta {
                path: path.clone(),
                agent: agents[p.sample],
                round,
                text: p.text,
            });
        }
    }
}

/// Agent `i` of a batch at `place` is done, as its trace says.
pub(super) fn done(place: &Place, i: usize, a: &AgentTrace) -> Event {
    Event::AgentDone {
        path: place.path.clone(),
        agent: place.members[i],
        round: place.round,
        extracted: a.extracted.clone(),
        tokens: a.tokens,
        finish: finish_name(a.finish),
        error: a.error.clone(),
    }
}

/// The ensemble at `path` decided.
pub(super) fn decision(path: &[usize], ens: &Ensemble, d: &Decision) -> Event {
    Event::Decision {
        path: path.to_vec(),
        strategy: ens.strategy.to_string(),
        votes: d.votes.clone(),
        winner: d.winner,
        answer: d.answer.clone(),
        agreement: d.agreement,
    }
}

/// Member `i` at `place`, a nested ensemble, starts: it shows as an agent named after it.
pub(super) fn nested_start(place: &Place, i: usize, sub: &Ensemble) -> Event {
    Event::AgentStart {
        path: place.path.clone(),
        agent: i,
        round: place.round,
        model: format!("ensemble:{}", sub.name),
        role: sub.strategy.to_string(),
        temperature: 0.0,
    }
}

/// Member `i` at `place`, a nested ensemble, decided: its answer is the member's.
pub(super) fn nested_done(place: &Place, i: usize, t: &Trace) -> Event {
    Event::AgentDone {
        path: place.path.clone(),
        agent: i,
        round: place.round,
        extracted: t.answer.clone(),
        tokens: t.usage.completion_tokens,
        finish: None,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forward_sends_the_pieces_queued_when_the_job_ends() {
        // The engine queues a job's last pieces before it answers: all of them are there
        // when the answer is, and every one must still go out before it.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..32 {
            let text = i.to_string();
            tx.send(Piece {
                sample: i % 2,
                text,
                logprobs: Vec::new(),
            })
            .unwrap();
        }
        let mut got = Vec::new();
        let out = forward(async { "answer" }, rx, |p| got.push(p.text)).await;
        assert_eq!(out, "answer");
        let want: Vec<String> = (0..32).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
    }
}
