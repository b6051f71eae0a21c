//! The strategies that spend fewer samples while they run: `early-stop` (DeepConf online:
//! warm-up samples set a confidence bar, and the engine stops any later sample whose recent
//! tokens fall under it, freeing its batch row) and `adaptive` (Adaptive-Consistency: samples
//! are drawn in rounds until the leading answer's lead is sure). See `confidence` for the
//! rules themselves.
use super::aggregate::{self, Decision};
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
        let bar = confidence::bar(&warmups, &s);
        got.notes.push(match bar {
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
                    a.sampling.stop_below = bar.map(|threshold| StopBelow {
                        window: s.window,
                        threshold,
                    });
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
        let cands = candidates(&got.agents);
        let rule = Rule::Confidence(Settings { keep: 100, ..s });
        let (decision, note) = decide(rule, Ballot::of(&cands));
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
            let votes = aggregate::vote(&candidates(&got.agents)).votes;
            let mut counts: Vec<usize> = votes.values().map(|&v| v as usize).collect();
            counts.sort_unstable_by(|a, b| b.cmp(a));
            let (lead, second) = (
                counts.first().copied().unwrap_or(0),
                counts.get(1).copied().unwrap_or(0),
            );
            let (holds, p) = confidence::leader_holds(lead, second, s.stop_at);
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
