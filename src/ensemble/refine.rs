//! The strategies that check candidates with a tool: `exec-vote` (one round, then the
//! largest passing group of alike-behaving candidates) and `refine` (rounds in which the
//! verifier's feedback goes back to the agents, until a candidate passes).
use super::config::{Agent, Ensemble, Member};
use super::decide::{decide, Ballot, Rule};
use super::events::{self, Place};
use super::extract::AnswerKind;
use super::prompts;
use super::run::{candidates, AgentTrace, Runner, Trace, Usage};
use super::spans;
use super::verify::{self, Verdict, Verifier};
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use std::time::Instant;

/// Failed attempts shown to the agents in the next refine round.
const ATTEMPTS_SHOWN: usize = 2;

impl Runner {
    /// Up to `rounds` rounds of checked answers (one: exec-vote; more: refine).
    pub(super) async fn run_checked(
        &self,
        ens: &Ensemble,
        question: &str,
        verifier: Option<&Verifier>,
        rounds: usize,
        path: Vec<usize>,
    ) -> Result<Trace> {
        let start = Instant::now();
        let verifier = match verifier {
            Some(v) => v.clone(),
            None if ens.answer == AnswerKind::Number => Verifier::Calculator,
            None => bail!(
                "strategy `{}` needs a verifier for `{}` answers: tests for code (Runner::run_verified \
                 with Verifier::CodeTests, as the bench's code task does), or answer = \"number\" \
                 to check arithmetic with the calculator",
                ens.strategy,
                ens.answer
            ),
        };
        ens.require_tool(verifier.tool())?;
        let mut flat: Vec<&Agent> = Vec::new();
        for m in &ens.members {
            match m {
                Member::Agent(a) => flat.push(a),
                Member::Ensemble(e) => bail!(
                    "strategy `{}` takes agents only, but member `{}` is an ensemble",
                    ens.strategy,
                    e.name
                ),
            }
        }
        let verifier = Arc::new(verifier);
        let mut usage = Usage::default();
        let mut notes = Vec::new();
        let mut history: Vec<Vec<AgentTrace>> = Vec::new();
        let mut prompts = Vec::new();
        let mut prompt = question.to_string();
        let mut place = Place {
            path,
            round: 0,
            members: (0..flat.len()).collect(),
        };
        for round in 0..rounds {
            place.round = round;
            let ask = prompt.as_str().into();
            let mut agents = self
                .answer(ens, &flat, &ask, &mut usage, &mut notes, &place)
                .await?;
            check_all(&verifier, &mut agents).await?;
            prompts.push(prompt);
            let passed = agents.iter().any(passed);
            let answered = agents.iter().any(|a| a.tokens > 0);
            history.push(agents);
            if passed || !answered || round + 1 == rounds {
                break;
            }
            let attempts = attempts(&verifier, history.last().expect("a round just ran"));
            prompt = prompts::refine(question, &attempts);
        }
        let agents = history.pop().expect("at least one round");
        let verdicts: Vec<Option<Verdict>> = agents.iter().map(|a| a.verdict.clone()).collect();
        let cands = candidates(&agents);
        let ballot = Ballot {
            cands: &cands,
            verdicts: &verdicts,
            similarity: None,
        };
        let (decision, note) = decide(Rule::ExecVote, ballot);
        self.emit(|| events::decision(&place.path, ens, &decision));
        if let Some(n) = note {
            let rounds_run = history.len() + 1;
            notes.push(format!("{n} (after {rounds_run} round(s))"));
        }
        let text = decision
            .winner
            .map(|w| agents[w].text.clone())
            .unwrap_or_default();
        Ok(Trace {
            name: ens.name.clone(),
            strategy: ens.strategy,
            answer: decision.answer,
            text,
            calls: Vec::new(),
            agreement: decision.agreement,
            votes: decision.votes,
            winner: decision.winner,
            tie_break: decision.tie_break,
            agents,
            rounds: history,
            prompts,
            judge: None,
            usage,
            seconds: start.elapsed().as_secs_f64(),
            notes,
        })
    }
}

fn passed(a: &AgentTrace) -> bool {
    a.verdict.as_ref().is_some_and(|v| v.passed)
}

/// Verifies every answer at once, each on a blocking thread (a check may run a program).
async fn check_all(verifier: &Arc<Verifier>, agents: &mut [AgentTrace]) -> Result<()> {
    let mut handles = Vec::new();
    let mut spans = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let (v, text) = (verifier.clone(), a.text.clone());
        // Under the ensemble's span, across the thread; a sandbox run goes under it.
        let span = spans::check(verifier.tool(), i);
        spans.push(span.clone());
        handles.push(tokio::task::spawn_blocking(move || {
            let _in = span.enter();
            if text.trim().is_empty() {
                return Ok(Verdict {
                    passed: false,
                    feedback: "no answer".into(),
                    behaviour: String::new(),
                    status: None,
                    seconds: 0.0,
                });
            }
            v.check(&text, &verify::limits())
        }));
    }
    for ((a, h), span) in agents.iter_mut().zip(handles).zip(spans) {
        let verdict = h.await.context("a verifier thread panicked")??;
        spans::checked(&span, &verdict);
        a.verdict = Some(verdict);
    }
    Ok(())
}

/// The most promising failed attempts of a round, distinct, surest first, with feedback.
fn attempts(verifier: &Verifier, agents: &[AgentTrace]) -> Vec<(String, String)> {
    let mut order: Vec<&AgentTrace> = agents.iter().filter(|a| a.tokens > 0).collect();
    order.sort_by(|a, b| b.logprob_mean.total_cmp(&a.logprob_mean));
    let mut out: Vec<(String, String)> = Vec::new();
    for a in order {
        let shown = verifier.shown(&a.text);
        let feedback = a
            .verdict
            .as_ref()
            .map(|v| v.feedback.clone())
            .unwrap_or_default();
        if !out.iter().any(|(s, _)| *s == shown) {
            out.push((shown, feedback));
        }
        if out.len() == ATTEMPTS_SHOWN {
            break;
        }
    }
    out
}
