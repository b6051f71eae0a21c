//! Running an ensemble: agents answer (batched per model and role), then the strategy decides.
use super::aggregate::{self, Candidate, Decision};
use super::ask::Ask;
use super::confidence;
use super::config::{Agent, Ensemble, Member};
use super::decide::{decide, plan, Ballot, Decider, Plan, Rule};
use super::events::{self, Event, Listener, Owned, Place};
use super::extract::AnswerKind;
use super::program::{self, Programs};
use super::prompts;
use super::remote;
use super::reply::Replies;
use super::spans;
use super::verify::Verifier;
use crate::engine::{Engine, Finish, Job, Message, Prompt, SamplingParams};
use anyhow::{bail, Result};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::task::JoinHandle;
use tracing::{Instrument, Span};

pub use super::trace::{candidates, AgentTrace, ModelCall, Trace, Usage};

type Progress = Box<dyn Fn(usize, usize) + Send + Sync>;

/// Runs ensembles on an engine, within one shared token budget.
pub struct Runner {
    engine: Engine,
    budget: Option<usize>,
    spent: AtomicUsize,
    done: AtomicUsize,
    total: AtomicUsize,
    progress: Option<Progress>,
    events: Option<Listener>,
    /// Keep every local agent's confidence signals, whatever the strategy reads.
    signals: bool,
    /// The programs of `answer = "program"` agents run so far in this run, by source.
    programs: Programs,
}

impl Runner {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            budget: None,
            spent: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            progress: None,
            events: None,
            signals: false,
            programs: Programs::default(),
        }
    }

    /// Keeps every local agent's confidence signals in the trace (the bench keeps them so
    /// that `confidence` and `certainty` can decide on samples drawn for another strategy).
    pub fn keep_signals(mut self) -> Self {
        self.signals = true;
        self
    }

    /// Called with each [`Event`] as the run goes (agents' text streams only when set).
    pub fn on_event(mut self, f: impl Fn(Event) + Send + Sync + 'static) -> Self {
        self.events = Some(std::sync::Arc::new(f));
        self
    }

    /// Sends the event `e` makes, if anyone listens (it is not built otherwise).
    pub(super) fn emit(&self, e: impl FnOnce() -> Event) {
        if let Some(l) = &self.events {
            l(e());
        }
    }

    /// Called with (agents finished, agents in all) as batches finish.
    pub fn on_progress(mut self, f: impl Fn(usize, usize) + Send + Sync + 'static) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// The ensemble's answer to a question (`&str`) or to an [`Ask`].
    pub async fn run(&mut self, ens: &Ensemble, ask: impl Into<Ask>) -> Result<Trace> {
        self.reset(ens);
        self.run_inner(ens, &ask.into(), None, Vec::new()).await
    }

    /// Like `run`, with `verifier` checking candidates for `exec-vote` and `refine` (which
    /// without one can check only arithmetic, for `answer = "number"`).
    pub async fn run_verified(
        &mut self,
        ens: &Ensemble,
        ask: impl Into<Ask>,
        verifier: &Verifier,
    ) -> Result<Trace> {
        self.reset(ens);
        self.run_inner(ens, &ask.into(), Some(verifier), Vec::new())
            .await
    }

    fn reset(&mut self, ens: &Ensemble) {
        self.budget = ens.token_budget;
        self.spent.store(0, Ordering::SeqCst);
        self.done.store(0, Ordering::SeqCst);
        self.programs.clear();
        self.total
            .store(ens.agents().len() * plan(ens).rounds(), Ordering::SeqCst);
    }

    /// The run in the ensemble's `invoke_agent` span, which gets the decision at the end.
    fn run_inner<'a>(
        &'a self,
        ens: &'a Ensemble,
        ask: &'a Ask,
        verifier: Option<&'a Verifier>,
        path: Vec<usize>,
    ) -> Pin<Box<dyn Future<Output = Result<Trace>> + Send + 'a>> {
        let span = spans::ensemble(ens);
        let run = self
            .run_plan(ens, ask, verifier, path)
            .instrument(span.clone());
        Box::pin(async move {
            let trace = run.await;
            spans::decided(&span, &trace);
            trace
        })
    }

    fn run_plan<'a>(
        &'a self,
        ens: &'a Ensemble,
        ask: &'a Ask,
        verifier: Option<&'a Verifier>,
        path: Vec<usize>,
    ) -> Pin<Box<dyn Future<Output = Result<Trace>> + Send + 'a>> {
        Box::pin(async move {
            let (rounds, decider) = match plan(ens) {
                Plan::Check { .. } if ask.conversation.is_some() => bail!(
                    "strategy `{}` checks answers to a question with a verifier, not a \
                     conversation's replies or tool calls: use vote, weighted, medoid, judge or \
                     debate for requests with tools or a response format",
                    ens.strategy
                ),
                Plan::Check { rounds } => {
                    return self
                        .run_checked(ens, &ask.question, verifier, rounds, path)
                        .await
                }
                Plan::EarlyStop(s) => return self.run_early_stop(ens, ask, s, path).await,
                Plan::Adaptive(s) => return self.run_adaptive(ens, ask, s, path).await,
                Plan::Answer { rounds, decider } => (rounds, decider),
            };
            let start = Instant::now();
            let mut usage = Usage::default();
            let mut notes = Vec::new();
            let mut agents = Vec::new();
            let (flat, members): (Vec<&Agent>, Vec<usize>) = ens
                .members
                .iter()
                .enumerate()
                .filter_map(|(i, m)| match m {
                    Member::Agent(a) => Some((a, i)),
                    Member::Ensemble(_) => None,
                })
                .unzip();
            let mut place = Place {
                path,
                round: 0,
                members,
            };
            let mut answers = self
                .answer(ens, &flat, ask, &mut usage, &mut notes, &place)
                .await?;
            for (i, m) in ens.members.iter().enumerate() {
                match m {
                    Member::Agent(_) => agents.push(answers.remove(0)),
                    Member::Ensemble(sub) => {
                        self.emit(|| events::nested_start(&place, i, sub));
                        let t = self.run_inner(sub, ask, verifier, place.inner(i)).await?;
                        self.emit(|| events::nested_done(&place, i, &t));
                        usage.prompt_tokens += t.usage.prompt_tokens;
                        usage.cached_tokens += t.usage.cached_tokens;
                        usage.completion_tokens += t.usage.completion_tokens;
                        agents.push(nested(sub, t));
                    }
                }
            }
            // A debate: each round after the first sees the others' last answers.
            let mut earlier = Vec::new();
            // Each round's user prompt, so the trace shows what a round saw.
            let mut round_prompts = Vec::new();
            if rounds > 1 {
                round_prompts.push(ask.question.clone());
            }
            for round in 1..rounds {
                place.round = round;
                let previous: Vec<&str> = agents.iter().map(|a| a.text.as_str()).collect();
                let prompt = prompts::debate(&ask.question, &previous);
                let next = ask.with_question(&prompt);
                round_prompts.push(prompt);
                let mut revised = self
                    .answer(ens, &flat, &next, &mut usage, &mut notes, &place)
                    .await?;
                let next: Vec<AgentTrace> = agents
                    .iter()
                    .map(|a| {
                        if a.ensemble.is_some() {
                            a.clone()
                        } else {
                            revised.remove(0)
                        }
                    })
                    .collect();
                earlier.push(std::mem::replace(&mut agents, next));
            }
            let cands = candidates(&agents);
            let (decision, text, judge) = self
                .decide(ens, decider, &flat, ask, &cands, &mut usage, &mut notes)
                .await?;
            self.emit(|| events::decision(&place.path, ens, &decision));
            let calls = match decision.winner {
                Some(w) => agents[w].calls.clone(),
                None => ask.read(ens.answer, &text).1,
            };
            Ok(Trace {
                name: ens.name.clone(),
                strategy: ens.strategy,
                answer: decision.answer.clone(),
                text,
                calls,
                agreement: decision.agreement,
                votes: decision.votes,
                winner: decision.winner,
                tie_break: decision.tie_break,
                agents,
                rounds: earlier,
                prompts: round_prompts,
                judge,
                usage,
                seconds: start.elapsed().as_secs_f64(),
                notes,
            })
        })
    }

    /// Every agent answers `ask`: one engine job per (model, role), so agents that share a
    /// prompt share its prefill and decode as one batch. Remote agents are asked over HTTP;
    /// one that fails is kept in the trace with its error and left out of the vote.
    pub(super) async fn answer(
        &self,
        ens: &Ensemble,
        agents: &[&Agent],
        ask: &Ask,
        usage: &mut Usage,
        notes: &mut Vec<String>,
        place: &Place,
    ) -> Result<Vec<AgentTrace>> {
        let mut out: Vec<Option<AgentTrace>> = vec![None; agents.len()];
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, a) in agents.iter().enumerate() {
            let key = agents
                .iter()
                .position(|b| {
                    b.model == a.model && b.role.name == a.role.name && b.remote == a.remote
                })
                .unwrap();
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        // Submit every group at once: the engine steps them in turn, each as one batch.
        // Their tokens are reserved from the budget up front and settled when they end.
        let mut launched = Vec::new();
        for (key, members) in groups {
            let lead = agents[key];
            for &i in &members {
                self.emit(|| Event::AgentStart {
                    path: place.path.clone(),
                    agent: place.members[i],
                    round: place.round,
                    model: agents[i].model.clone(),
                    role: agents[i].role.name.clone(),
                    temperature: agents[i].sampling.temperature,
                });
            }
            let max_tokens = self.grant(ens.max_tokens, members.len());
            if max_tokens == 0 {
                notes.push(format!(
                    "token budget spent: {} agent(s) of {} / {} did not run",
                    members.len(),
                    lead.model,
                    lead.role.name
                ));
                for &i in &members {
                    let a = skipped(agents[i]);
                    self.emit(|| events::done(place, i, &a));
                    out[i] = Some(a);
                }
                continue;
            }
            let reserved = max_tokens * members.len();
            self.spent.fetch_add(reserved, Ordering::SeqCst);
            let signals = self.signals || plan(ens).reads_signals();
            let samples: Vec<SamplingParams> = members
                .iter()
                .map(|&i| {
                    let mut p = agents[i].sampling.clone();
                    if signals {
                        p.confidence_k.get_or_insert(confidence::TOP_K);
                    }
                    p
                })
                .collect();
            let spans: Vec<Span> = members
                .iter()
                .map(|&i| spans::agent(ens, agents[i], i))
                .collect();
            let handle = match lead.remote.clone() {
                // Another server is sent the conversation alone: a constraint cannot be
                // written back as a request, so its reply is only read for calls.
                Some(r) => {
                    let messages = ask.messages(&lead.role.system);
                    let span = spans.first().cloned().unwrap_or_else(Span::none);
                    tokio::spawn(
                        async move {
                            Ok(remote::answer_all(&r, &samples, &messages, max_tokens).await)
                        }
                        .instrument(span),
                    )
                }
                None => {
                    let job = Job {
                        model: lead.model.clone(),
                        prompt: ask.prompt(&lead.role.system),
                        max_tokens,
                        stop: Vec::new(),
                        samples,
                        ignore_eos: false,
                        stream: None,
                        constraint: ask.constraint.clone(),
                    };
                    self.spawn_job(job, place, &members, spans.clone())
                }
            };
            let handle = Owned(handle);
            launched.push((members, spans, reserved, handle));
        }
        for (members, spans, reserved, mut handle) in launched {
            let answered: Replies = (&mut handle.0).await??;
            usage.prompt_tokens += answered.prompt_tokens;
            usage.cached_tokens += answered.cached_tokens;
            usage.completion_tokens += answered.completion_tokens;
            // Settle the reservation (a remote server may overshoot `max_tokens`).
            self.spent
                .fetch_add(answered.completion_tokens, Ordering::SeqCst);
            self.spent.fetch_sub(reserved, Ordering::SeqCst);
            // A reply the confidence bar stopped is unfinished: its program is not run.
            let texts: Vec<Option<&str>> = answered
                .replies
                .iter()
                .map(|r| match r {
                    Ok(r) if r.finish == Some(Finish::Unsure) => None,
                    Ok(r) => Some(r.text.as_str()),
                    Err(_) => Some(""),
                })
                .collect();
            let mut programs = self.run_programs(ens, ask, &texts).await?.into_iter();
            for ((&i, reply), span) in members.iter().zip(answered.replies).zip(spans) {
                let a = agents[i];
                let remote = a.remote.as_ref().map(|r| r.url.clone());
                let program = programs.next().flatten();
                out[i] = Some(match reply {
                    Ok(r) => {
                        let (mut extracted, calls) = ask.read(ens.answer, &r.text);
                        let program = program.map(|(answer, run)| {
                            extracted = answer;
                            run
                        });
                        AgentTrace {
                            model: a.model.clone(),
                            role: a.role.name.clone(),
                            temperature: a.sampling.temperature,
                            seed: a.sampling.seed,
                            extracted,
                            calls,
                            logprob_mean: r.logprob_mean,
                            weight: a.weight,
                            tokens: r.tokens,
                            seconds: r.seconds,
                            finish: r.finish,
                            text: r.text,
                            ensemble: None,
                            remote,
                            error: None,
                            verdict: None,
                            signals: r.signals,
                            program,
                        }
                    }
                    Err(e) => {
                        notes.push(format!(
                            "agent {} ({} / {}) failed and was left out of the vote: {e}",
                            i + 1,
                            a.model,
                            a.role.name
                        ));
                        AgentTrace {
                            remote,
                            error: Some(e),
                            ..skipped(a)
                        }
                    }
                });
                if let Some(a) = &out[i] {
                    spans::answered(&span, a);
                    self.emit(|| events::done(place, i, a));
                }
            }
            let done = self.done.fetch_add(members.len(), Ordering::SeqCst) + members.len();
            if let Some(p) = &self.progress {
                p(done, self.total.load(Ordering::SeqCst));
            }
        }
        Ok(out
            .into_iter()
            .map(|a| a.expect("every agent answered"))
            .collect())
    }

    /// With `answer = "program"` (and no tools, whose calls are the ballot instead), each
    /// reply's program run and the number it printed, in order; otherwise none. A failed
    /// agent's empty text is a reply without a program; a reply given as None is not run.
    ///
    /// Choosing program answers is the consent to run the agents' programs, as the bench's
    /// code task grants `python` by design; a server allows it only with `--allow-tools`
    /// (see `Ensemble::uses_tools`).
    async fn run_programs(
        &self,
        ens: &Ensemble,
        ask: &Ask,
        texts: &[Option<&str>],
    ) -> Result<Vec<Option<program::Answer>>> {
        if ens.answer != AnswerKind::Program || !ask.tools.is_empty() {
            return Ok(vec![None; texts.len()]);
        }
        let run: Vec<&str> = texts.iter().flatten().copied().collect();
        let mut answers = self.programs.answers(&run).await?.into_iter();
        Ok(texts
            .iter()
            .map(|t| t.and_then(|_| answers.next()))
            .collect())
    }

    /// Runs `job` in a task of its own; with a listener, its pieces go out as the deltas of
    /// the agents `batch` (indexes into `place.members`, one per sample), and sample `i`'s
    /// `chat` span goes under `agents[i]`.
    fn spawn_job(
        &self,
        mut job: Job,
        place: &Place,
        batch: &[usize],
        agents: Vec<Span>,
    ) -> JoinHandle<Result<Replies>> {
        let engine = self.engine.clone();
        let Some(send) = self
            .events
            .as_ref()
            .map(|l| events::deltas(l, place, batch))
        else {
            return tokio::spawn(async move {
                engine.generate_for(job, &agents).await.map(Replies::from)
            });
        };
        let (tx, pieces) = tokio::sync::mpsc::unbounded_channel();
        job.stream = Some(tx);
        tokio::spawn(async move {
            events::forward(engine.generate_for(job, &agents), pieces, send)
                .await
                .map(Replies::from)
        })
    }

    /// Tokens each of `n` samples may generate now, within the shared budget.
    fn grant(&self, max_tokens: usize, n: usize) -> usize {
        match self.budget {
            None => max_tokens,
            Some(b) => {
                let left = b.saturating_sub(self.spent.load(Ordering::SeqCst));
                max_tokens.min(left / n.max(1))
            }
        }
    }

    /// The decision on the last round's candidates: by a rule, or by a model reading them
    /// (which, when it cannot run or names no candidate, falls back to a vote).
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        ens: &Ensemble,
        decider: Decider,
        flat: &[&Agent],
        ask: &Ask,
        cands: &[Candidate],
        usage: &mut Usage,
        notes: &mut Vec<String>,
    ) -> Result<(Decision, String, Option<ModelCall>)> {
        let winner_text =
            |d: &Decision| d.winner.map(|w| cands[w].text.clone()).unwrap_or_default();
        // Program answers: a candidate whose program gave no number takes no part, in medoid
        // too, which compares texts. Its reply counts as empty there (see `aggregate::
        // medoid_with`), and the medoid's answer is the number its own program printed.
        let program = ens.answer == AnswerKind::Program;
        let by_rule = |rule: Rule, notes: &mut Vec<String>| {
            let sim = (program && rule == Rule::Medoid).then(|| answered_only(cands));
            let ballot = Ballot {
                similarity: sim.as_deref(),
                ..Ballot::of(cands)
            };
            let (mut d, note) = decide(rule, ballot);
            if sim.is_some() {
                d.answer = d.winner.and_then(|w| cands[w].extracted.clone());
            }
            notes.extend(note);
            d
        };
        let fuse = match decider {
            Decider::Rule(rule) => {
                let d = by_rule(rule, notes);
                let t = winner_text(&d);
                return Ok((d, t, None));
            }
            Decider::Judge => false,
            Decider::Fuse => true,
        };
        let texts: Vec<&str> = cands.iter().map(|c| c.text.as_str()).collect();
        let prompt = if fuse {
            prompts::fuse(&ask.question, &texts)
        } else {
            prompts::judge(&ask.question, &texts)
        };
        let base = by_rule(Rule::Vote, notes);
        let Some(call) = self.call_judge(ens, flat, &prompt, usage, notes).await? else {
            let t = winner_text(&base);
            return Ok((base, t, None));
        };
        if fuse {
            // A synthesis of programs is a program: its answer is what it prints.
            let ran = self.run_programs(ens, ask, &[Some(&call.text)]).await?;
            let answer = match ran.into_iter().next().flatten() {
                Some((printed, _)) => printed,
                None => ask.read(ens.answer, &call.text).0,
            };
            let answer = answer.or_else(|| Some(call.text.trim().to_string()));
            let d = Decision {
                winner: None,
                answer,
                agreement: base.agreement,
                votes: base.votes,
                tie_break: None,
            };
            let text = call.text.clone();
            return Ok((d, text, Some(call)));
        }
        let pick = aggregate::parse_pick(&call.text, cands.len());
        let call = ModelCall { pick, ..call };
        let Some(i) = pick else {
            notes.push("the judge's reply named no candidate: decided by vote instead".into());
            let t = winner_text(&base);
            return Ok((base, t, Some(call)));
        };
        if program && cands[i].extracted.is_none() {
            notes.push(format!(
                "the judge picked candidate {}, whose program gave no answer: decided by vote \
                 instead",
                i + 1
            ));
            let t = winner_text(&base);
            return Ok((base, t, Some(call)));
        }
        let answer = cands[i]
            .extracted
            .clone()
            .or_else(|| Some(cands[i].text.trim().to_string()));
        let total: f64 = base.votes.values().sum();
        let agreement = match &cands[i].extracted {
            Some(a) if total > 0.0 => base.votes.get(a).copied().unwrap_or(0.0) / total,
            _ => 0.0,
        };
        let d = Decision {
            winner: Some(i),
            answer,
            agreement,
            votes: base.votes,
            tie_break: None,
        };
        Ok((d, cands[i].text.clone(), Some(call)))
    }

    /// One greedy answer from the judge (or synthesizer) model; None if the budget is spent.
    async fn call_judge(
        &self,
        ens: &Ensemble,
        flat: &[&Agent],
        prompt: &str,
        usage: &mut Usage,
        notes: &mut Vec<String>,
    ) -> Result<Option<ModelCall>> {
        let (model, system) = match (&ens.judge, flat.first()) {
            (Some(j), _) => (j.model.clone(), j.role.system.clone()),
            (None, Some(a)) => (a.model.clone(), "You are a careful judge.".to_string()),
            (None, None) => (crate::engine::DEFAULT_MODEL.to_string(), String::new()),
        };
        let max_tokens = self.grant(ens.max_tokens, 1);
        if max_tokens == 0 {
            notes.push("token budget spent before the judge could run: decided by vote".into());
            return Ok(None);
        }
        let sampling = SamplingParams {
            temperature: 0.0,
            ..ens
                .judge
                .as_ref()
                .map(|j| j.sampling.clone())
                .unwrap_or_default()
        };
        let job = Job {
            model: model.clone(),
            prompt: Prompt::Chat(vec![
                Message::new("system", &system),
                Message::new("user", prompt),
            ]),
            max_tokens,
            stop: Vec::new(),
            samples: vec![sampling],
            ignore_eos: false,
            stream: None,
            constraint: None,
        };
        let out = self.engine.generate(job).await?;
        usage.prompt_tokens += out.prompt_tokens;
        usage.cached_tokens += out.cached_tokens;
        usage.completion_tokens += out.completion_tokens();
        self.spent
            .fetch_add(out.completion_tokens(), Ordering::SeqCst);
        let text = out
            .completions
            .into_iter()
            .next()
            .map(|c| c.text)
            .unwrap_or_default();
        Ok(Some(ModelCall {
            model,
            prompt: prompt.to_string(),
            text,
            pick: None,
        }))
    }
}

/// The candidates' similarities for medoid, with those that have no answer made to look
/// empty (nothing in common even with themselves), which leaves them out of the pool.
fn answered_only(cands: &[Candidate]) -> Vec<Vec<f64>> {
    let mut sim = aggregate::similarities(cands);
    for (i, c) in cands.iter().enumerate() {
        if c.extracted.is_none() {
            sim[i].iter_mut().for_each(|s| *s = 0.0);
            sim.iter_mut().for_each(|row| row[i] = 0.0);
        }
    }
    sim
}

fn skipped(a: &Agent) -> AgentTrace {
    AgentTrace {
        model: a.model.clone(),
        role: a.role.name.clone(),
        temperature: a.sampling.temperature,
        seed: a.sampling.seed,
        text: String::new(),
        calls: Vec::new(),
        extracted: None,
        logprob_mean: 0.0,
        weight: a.weight,
        tokens: 0,
        seconds: 0.0,
        finish: None,
        ensemble: None,
        remote: None,
        error: None,
        verdict: None,
        signals: Default::default(),
        program: None,
    }
}

/// A nested ensemble as one member of its parent: its decision is its answer.
fn nested(sub: &Ensemble, t: Trace) -> AgentTrace {
    let n = t.agents.len().max(1) as f32;
    AgentTrace {
        model: format!("ensemble:{}", sub.name),
        role: sub.strategy.to_string(),
        temperature: 0.0,
        seed: 0,
        text: t.text.clone(),
        calls: t.calls.clone(),
        extracted: t.answer.clone(),
        logprob_mean: t.agents.iter().map(|a| a.logprob_mean).sum::<f32>() / n,
        weight: 1.0,
        tokens: t.usage.completion_tokens,
        seconds: t.seconds,
        finish: None,
        ensemble: Some(Box::new(t)),
        remote: None,
        error: None,
        verdict: None,
        signals: Default::default(),
        program: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(text: &str, extracted: Option<&str>) -> Candidate {
        Candidate {
            text: text.into(),
            extracted: extracted.map(String::from),
            logprob_mean: -0.1,
            weight: 1.0,
            signals: Default::default(),
        }
    }

    #[test]
    fn a_medoid_of_programs_leaves_out_those_that_gave_no_answer() {
        // The three crashed programs are most alike; only the two that ran may win.
        let crash = "x = int(input())\nprint(x * 4)";
        let cands = [
            cand(crash, None),
            cand(crash, None),
            cand(crash, None),
            cand("trays = 4\nprint(trays * 6 - 9)", Some("15")),
            cand("print(4 * 6 - 9)", Some("15")),
        ];
        assert_eq!(aggregate::medoid(&cands).winner, Some(0), "texts alone");
        let sim = answered_only(&cands);
        let d = aggregate::medoid_with(&cands, &sim);
        assert!(matches!(d.winner, Some(3 | 4)), "{d:?}");
        assert!(d.votes.keys().all(|k| k == "#3" || k == "#4"), "{d:?}");
    }
}
