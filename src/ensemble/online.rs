//! The strategies that spend fewer samples while they run: `early-stop` (DeepConf online:
//! warm-up samples set a confidence bar, and the engine stops any later sample whose recent
//! tokens fall under it, freeing its batch row) and `adaptive` (Adaptive-Consistency: samples
//! are drawn in rounds until the leading answer's lead is sure). See `confidence` for the
//! rules themselves. Both also replay on samples drawn before (`replay_early_stop`,
//! `replay_adaptive`): a live run draws its samples in seed order, so the first n stored
//! samples of a run at a larger size are the ones it would draw.
use super::aggregate::{self, Candidate, Decision};
use super::confidence::{self, Settings};
use super::config::{Agent, Ensemble, Member};
use super::decide::{decide, Ballot, Rule};
use super::events::{self, Place};
use super::run::{candidates, AgentTrace, Runner, Trace, Usage};
use crate::engine::{Finish, StopBelow};
use anyhow::{bail, Result};
use std::time::Instant;

/// What a run of either strategy gathered before its decision.
#[derive(Default)]
struct Gathered {
    agents: Vec<AgentTrace>,
    usage: Usage,
    notes: Vec<String>,
}

impl Runner {
    /// `early-stop`: the first `warmup` agents answer whole; the bar is read from them; the
    /// others run under it, and those it stops cast no vote. The rest decide as `confidence`
    /// does, without filtering again (the bar already did).
    pub(super) async fn run_early_stop(
        &self,
        ens: &Ensemble,
        ask: &super::Ask,
        s: Settings,
        path: Vec<usize>,
    ) -> Result<Trace> {
        let start = Instant::now();
        let flat = agents_only(ens)?;
        let mut got = Gathered::default();
        let warm = s.warmup.clamp(1, flat.len());
        let place = |from: usize, to: usize| Place {
            path: path.clone(),
            round: 0,
            members: (from..to).collect(),
        };
        let first = self
            .answer(
                ens,
                &flat[..warm],
                ask,
                &mut got.usage,
                &mut got.notes,
                &place(0, warm),
            )
            .await?;
        got.agents.extend(first);
        let warmups: Vec<&[f32]> = got
            .agents
            .iter()
            .map(|a| a.signals.confidence.as_slice())
            .collect();
        let stop = stop_below(&warmups, s);
        got.notes.push(match stop.map(|st| st.threshold) {
            Some(b) => format!(
                "early-stop: {warm} warm-up sample(s) set the bar at {b:.3} (their lowest \
                 {}-token group confidence, keeping {} %)",
                s.window, s.keep
            ),
            None => format!("early-stop: the {warm} warm-up sample(s) gave no confidence: no bar"),
        });
        if flat.len() > warm {
            let rest: Vec<Agent> = flat[warm..]
                .iter()
                .map(|&a| {
                    let mut a = a.clone();
                    a.sampling.stop_below = stop;
                    a
                })
                .collect();
            let rest: Vec<&Agent> = rest.iter().collect();
            let more = self
                .answer(
                    ens,
                    &rest,
                    ask,
                    &mut got.usage,
                    &mut got.notes,
                    &place(warm, flat.len()),
                )
                .await?;
            let stopped = more
                .iter()
                .filter(|a| a.finish == Some(Finish::Unsure))
                .count();
            got.notes.push(format!(
                "early-stop: {stopped} of {} later sample(s) fell under the bar and were \
                 stopped; they cast no vote",
                more.len()
            ));
            got.agents.extend(more);
        }
        // A stopped sample's text is unfinished: whatever it would have answered is no vote.
        for a in &mut got.agents {
            if a.finish == Some(Finish::Unsure) {
                a.extracted = None;
            }
        }
        let (decision, note) = early_stop_decision(&candidates(&got.agents), s);
        got.notes.extend(note);
        Ok(self.finish(ens, &path, got, decision, start))
    }

    /// `adaptive`: rounds of `batch` agents, in order, until Adaptive-Consistency's rule says
    /// the leading answer holds (or every agent has answered); then a vote.
    pub(super) async fn run_adaptive(
        &self,
        ens: &Ensemble,
        ask: &super::Ask,
        s: Settings,
        path: Vec<usize>,
    ) -> Result<Trace> {
        let start = Instant::now();
        let flat = agents_only(ens)?;
        let mut got = Gathered::default();
        let n = flat.len();
        loop {
            let from = got.agents.len();
            let to = (from + s.batch).min(n);
            let place = Place {
                path: path.clone(),
                round: 0,
                members: (from..to).collect(),
            };
            let more = self
                .answer(
                    ens,
                    &flat[from..to],
                    ask,
                    &mut got.usage,
                    &mut got.notes,
                    &place,
                )
                .await?;
            got.agents.extend(more);
            let (holds, lead, second, p) = lead_holds(&candidates(&got.agents), s);
            if holds || to == n {
                got.notes.push(format!(
                    "adaptive: {to} of {n} sample(s) drawn; the leader's {lead} to {second} \
                     holds with P = {p:.3} ({} {} %)",
                    if holds { "≥" } else { "<" },
                    s.stop_at
                ));
                break;
            }
        }
        let cands = candidates(&got.agents);
        let (decision, note) = decide(Rule::Vote, Ballot::of(&cands));
        got.notes.extend(note);
        Ok(self.finish(ens, &path, got, decision, start))
    }

    fn finish(
        &self,
        ens: &Ensemble,
        path: &[usize],
        got: Gathered,
        decision: Decision,
        start: Instant,
    ) -> Trace {
        self.emit(|| events::decision(path, ens, &decision));
        let text = decision
            .winner
            .map(|w| got.agents[w].text.clone())
            .unwrap_or_default();
        let calls = decision
            .winner
            .map(|w| got.agents[w].calls.clone())
            .unwrap_or_default();
        Trace {
            name: ens.name.clone(),
            strategy: ens.strategy,
            answer: decision.answer,
            text,
            calls,
            agreement: decision.agreement,
            votes: decision.votes,
            winner: decision.winner,
            tie_break: decision.tie_break,
            agents: got.agents,
            rounds: Vec::new(),
            prompts: Vec::new(),
            judge: None,
            usage: got.usage,
            seconds: start.elapsed().as_secs_f64(),
            notes: got.notes,
        }
    }
}

/// `early-stop`'s decision once its samples are in: a stopped one has no answer, and the
/// rest decide as `confidence` does, without filtering again (the bar already did).
fn early_stop_decision(cands: &[Candidate], s: Settings) -> (Decision, Option<String>) {
    decide(
        Rule::Confidence(Settings { keep: 100, ..s }),
        Ballot::of(cands),
    )
}

/// The stop the warm-up samples' token confidences set for the samples after them: the
/// bar over `window`-token groups; None when they gave no confidence.
fn stop_below(warmups: &[&[f32]], s: Settings) -> Option<StopBelow> {
    confidence::bar(warmups, &s).map(|threshold| StopBelow {
        window: s.window,
        threshold,
    })
}

/// Whether `adaptive` stops after these samples: the leading answer's votes against the
/// runner-up's, and the chance that the leader holds.
fn lead_holds(cands: &[Candidate], s: Settings) -> (bool, usize, usize, f64) {
    let votes = aggregate::vote(cands).votes;
    let mut counts: Vec<usize> = votes.values().map(|&v| v as usize).collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let (lead, second) = (
        counts.first().copied().unwrap_or(0),
        counts.get(1).copied().unwrap_or(0),
    );
    let (holds, p) = confidence::leader_holds(lead, second, s.stop_at);
    (holds, lead, second, p)
}

/// What a live run of an online strategy would have done with samples drawn before.
#[derive(Debug)]
pub struct Replayed {
    pub decision: Decision,
    /// The candidates as the live run would have had them (a stopped one without answer).
    pub cands: Vec<Candidate>,
    /// Completion tokens the live run would have spent: a stopped sample's up to its stop,
    /// and none of the samples it would not have drawn.
    pub tokens: usize,
}

/// `early-stop` on `cands`, drawn in this order, with `tokens` completion tokens each: the
/// first `warmup` set the bar; each later one is cut where the engine would have stopped it
/// (`StopBelow::cut`, on its stored token confidences).
pub fn replay_early_stop(mut cands: Vec<Candidate>, tokens: &[usize], s: Settings) -> Replayed {
    let warm = s.warmup.max(1).min(cands.len());
    let warmups: Vec<&[f32]> = cands[..warm]
        .iter()
        .map(|c| c.signals.confidence.as_slice())
        .collect();
    let stop = stop_below(&warmups, s);
    let mut spent: usize = tokens[..warm].iter().sum();
    for (c, &t) in cands[warm..].iter_mut().zip(&tokens[warm..]) {
        match stop.and_then(|st| st.cut(&c.signals.confidence)) {
            Some(cut) => {
                spent += cut;
                c.extracted = None;
                c.signals.confidence.truncate(cut);
            }
            None => spent += t,
        }
    }
    let (decision, _) = early_stop_decision(&cands, s);
    Replayed {
        decision,
        cands,
        tokens: spent,
    }
}

/// `adaptive` on `cands`, drawn in this order: rounds of `batch` until the leader holds or
/// all are drawn, then a vote over those drawn.
pub fn replay_adaptive(mut cands: Vec<Candidate>, tokens: &[usize], s: Settings) -> Replayed {
    let n = cands.len();
    let mut to = 0;
    while to < n {
        to = (to + s.batch.max(1)).min(n);
        if lead_holds(&cands[..to], s).0 {
            break;
        }
    }
    cands.truncate(to);
    let (decision, _) = decide(Rule::Vote, Ballot::of(&cands));
    Replayed {
        decision,
        cands,
        tokens: tokens[..to].iter().sum(),
    }
}

/// The ensemble's agents, in order; these strategies take no nested ensembles.
fn agents_only(ens: &Ensemble) -> Result<Vec<&Agent>> {
    ens.members
        .iter()
        .map(|m| match m {
            Member::Agent(a) => Ok(a),
            Member::Ensemble(e) => bail!(
                "strategy `{}` draws samples of agents, but member `{}` is an ensemble: use \
                 vote, weighted or confidence for nested ensembles",
                ens.strategy,
                e.name
            ),
        })
        .collect()
}
