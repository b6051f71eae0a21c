//! Generating and scoring one item's candidates: the one path every series takes.
//!
//! A series is an ensemble. `--model NAME` is a flat ensemble of K agents of one model and
//! role, which `Runner` sends to the engine as one job of K samples: one prefill, one batch.
//! A `--config` file is run as written, its members cycled (with fresh seeds) up to the size
//! asked for.
use super::code;
use super::dataset::{Gold, Item, Task};
use super::store::{Check, Decided, Record, Sample};
use crate::engine::Engine;
use crate::ensemble::agent::{self, AgentConfig, RunOptions, Task as AgentTask};
use crate::ensemble::calls;
use crate::ensemble::config::Quick;
use crate::ensemble::decide::{plan, Plan, Rule};
use crate::ensemble::extract::extract;
use crate::ensemble::verify;
use crate::ensemble::{AgentTrace, AnswerKind, Ask, Ensemble, Member, Runner, Strategy, Verifier};
use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// One line of the comparison: an ensemble and how sizes of it are measured, or an agent.
pub struct Series {
    pub name: String,
    pub ens: Ensemble,
    /// The rule smaller sizes are decided by, sub-sampled from the samples of one run at the
    /// largest size. None: the ensemble decides itself (judge and fuse need a model to decide,
    /// debate and refine go in rounds), so it runs at every size, or refine once, at its own.
    pub rule: Option<Rule>,
    /// The series whose stored samples this one decides on, by its own strategy (see
    /// [`Series::deciding`]); none for a series that generates its own.
    pub shares: Option<String>,
    /// An online strategy (early-stop, adaptive) replayed on the first n of `shares`'
    /// samples at each size n, the ones a live run would draw (`bench --replay-online`).
    pub replay: bool,
    /// An agent run on each item, once (its steps decided by `ens`); its answer is scored.
    pub agent: Option<AgentConfig>,
}

impl Series {
    /// `k` samples of one model at one temperature, decided by majority vote.
    pub fn model(
        model: &str,
        task: Task,
        temperature: f32,
        max_tokens: usize,
        k: usize,
        seed: u64,
    ) -> Result<Self> {
        let mut ens = Ensemble::quick(&Quick {
            agents: k,
            models: vec![model.to_string()],
            roles: vec![task.role().to_string()],
            temperatures: vec![temperature],
            strategy: Strategy::Vote,
            answer: task.answer_kind(),
            max_tokens,
            seed,
        })?;
        ens.name = model.to_string();
        Ok(Self {
            name: model.to_string(),
            ens,
            rule: Some(Rule::Vote),
            shares: None,
            replay: false,
            agent: None,
        })
    }

    /// An ensemble file or preset. The task decides how answers are read, whatever the
    /// file's `answer`, except that a file written for program answers keeps them on a task
    /// that takes them (gsm8k: the number a program prints is a number answer).
    pub fn config(
        spec: &str,
        task: Task,
        max_tokens: Option<usize>,
        seed: Option<u64>,
    ) -> Result<Self> {
        if AgentConfig::is_agent(spec) {
            return Self::agent(spec, task, max_tokens);
        }
        let mut ens = Ensemble::load_seeded(spec, seed)?;
        if !(ens.answer == AnswerKind::Program && task.accepts(ens.answer)) {
            ens.answer = task.answer_kind();
        }
        if let Some(m) = max_tokens {
            ens.max_tokens = m;
        }
        Ok(Self {
            name: ens.name.clone(),
            rule: plan(&ens).rule(),
            ens,
            shares: None,
            replay: false,
            agent: None,
        })
    }

    /// An agent file or preset: run once per item, at size 1. `max_tokens` replaces the
    /// agent's budget for the whole run (its steps keep `step_max_tokens`).
    fn agent(spec: &str, task: Task, max_tokens: Option<usize>) -> Result<Self> {
        ensure!(
            task != Task::Tools,
            "an agent runs its own tools and answers in text; `--task tools` scores the calls \
             a model proposes: give --model or an ensemble"
        );
        let mut cfg = AgentConfig::load(spec)?;
        cfg.check_unattended()?;
        if let Some(m) = max_tokens {
            cfg.spec.max_tokens = m;
        }
        let mut ens = cfg.ensemble.clone();
        ens.answer = task.answer_kind();
        Ok(Self {
            name: cfg.name().to_string(),
            ens,
            rule: None,
            shares: None,
            replay: false,
            agent: Some(cfg),
        })
    }

    /// This series decided by `strategy` instead, on the samples of the series named
    /// `shares` (none, or this series itself: it generates them). Every strategy is then
    /// scored on the very same replies, which are generated once. The strategies that sample
    /// as they go run live at each size, or with `replay`, replay on `shares`' samples (which
    /// must then be given).
    pub fn deciding(
        &self,
        strategy: Strategy,
        shares: Option<String>,
        replay: bool,
    ) -> Result<Self> {
        let ens = Ensemble {
            strategy,
            ..self.ens.clone()
        };
        let name = format!("{} · {strategy}", self.name);
        let rule = match plan(&ens) {
            Plan::EarlyStop(_) | Plan::Adaptive(_) if replay => {
                ensure!(
                    shares.is_some(),
                    "--replay-online replays {strategy} on stored samples: give a strategy \
                     decided from them too, e.g. --strategies vote,{strategy}"
                );
                return Ok(Self {
                    name: format!("{name} (replayed)"),
                    ens,
                    rule: None,
                    shares,
                    replay: true,
                    agent: None,
                });
            }
            // They sample as they go: each size is a run of its own.
            Plan::EarlyStop(_) | Plan::Adaptive(_) => {
                return Ok(Self {
                    name,
                    ens,
                    rule: None,
                    shares: None,
                    replay: false,
                    agent: None,
                })
            }
            p => p.rule().with_context(|| {
                format!(
                    "--strategies takes strategies decided from stored samples (vote, \
                     weighted, medoid, exec-vote, confidence, certainty) or sampled as they go \
                     (early-stop, adaptive), not `{strategy}`; give a config with that strategy \
                     instead"
                )
            })?,
        };
        Ok(Self {
            shares: shares.filter(|f| *f != name),
            name,
            ens,
            rule: Some(rule),
            replay: false,
            agent: None,
        })
    }

    /// Whether the ensemble decides itself at each size it runs (see `rule`).
    pub fn decided(&self) -> bool {
        self.rule.is_none()
    }

    /// A digest of everything that shapes the samples: models, roles, seeds, limits. The
    /// confidence settings shape only the decisions of a sub-sampled series, so they are left
    /// out of its digest (other settings decide anew on the same samples); an online
    /// strategy run live samples under them.
    pub fn digest(&self) -> String {
        let mut ens = self.ens.clone();
        if self.rule.is_some() {
            ens.confidence = Default::default();
        }
        let mut shape = format!("{:?}", ens);
        if let Some(a) = &self.agent {
            shape.push_str(&format!("{:?}", a.spec));
        }
        format!("{:x}", Sha256::digest(shape.as_bytes()))
    }

    /// How many samples a sub-sampled series stores per item: the largest size, or all the
    /// ensemble's members if it has more.
    pub fn samples(&self, sizes: &[usize]) -> usize {
        let largest = sizes.iter().copied().max().unwrap_or(1);
        largest.max(self.ens.members.len())
    }

    /// The sizes the ensemble runs at for each item.
    pub fn runs(&self, sizes: &[usize]) -> Vec<usize> {
        if self.agent.is_some() {
            return vec![1];
        }
        match (self.rule, plan(&self.ens)) {
            (Some(_), _) => vec![self.samples(sizes)],
            (None, Plan::Check { .. }) => vec![self.ens.members.len()],
            (None, _) => sizes.to_vec(),
        }
    }
}

/// The ensemble for item number `item` at size `n`: its members cycled to `n`. Every item,
/// and every round of the cycle, gets seeds of its own, so items are independent draws and
/// a member's copies differ.
pub fn sized(ens: &Ensemble, n: usize, item: usize) -> Ensemble {
    let count = ens.members.len().max(1);
    let members = (0..n)
        .map(|i| {
            let mut m = ens.members[i % count].clone();
            reseed(&mut m, salt(i / count, item));
            m
        })
        .collect();
    Ensemble {
        members,
        ..ens.clone()
    }
}

fn salt(round: usize, item: usize) -> u64 {
    // Odd multipliers from splitmix64 (Steele, Lea & Flood 2014) keep the pairs apart.
    (item as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (round as u64).wrapping_mul(0x94D0_49BB_1331_11EB)
}

fn reseed(m: &mut Member, salt: u64) {
    match m {
        Member::Agent(a) => a.sampling.seed ^= salt,
        Member::Ensemble(e) => e.members.iter_mut().for_each(|m| reseed(m, salt)),
    }
}

/// Generates, scores and records one item for one series.
pub async fn record(
    engine: &Engine,
    series: &Series,
    item: &Item,
    index: usize,
    sizes: &[usize],
    run: u32,
    constrain: bool,
) -> Result<Record> {
    let verifier = match &item.gold {
        Gold::Code(p) => Some(Verifier::for_code(&p.prompt, &p.entry_point)),
        Gold::Answer(_) if series.ens.answer == AnswerKind::Number => Some(Verifier::Calculator),
        Gold::Answer(_) | Gold::Calls(_) => None,
    };
    let mut scorer = Scorer::new(&item.gold, verifier.as_ref());
    let mut rec = Record {
        series: series.name.clone(),
        index,
        id: item.id.clone(),
        gold: match &item.gold {
            Gold::Answer(a) => Some(a.clone()),
            // The accepted ballots as a JSON list: a ballot may hold any text.
            Gold::Calls(c) => Some(serde_json::to_string(c)?),
            Gold::Code(_) => None,
        },
        samples: Vec::new(),
        votes: Default::default(),
        decided: Vec::new(),
        prompt_tokens: 0,
        tokens: 0,
        seconds: 0.0,
        run,
        written: 0.0,
    };
    let ask = match &item.chat {
        Some(c) => {
            let mut ask = Ask::conversation(c.messages.clone(), c.tools.clone());
            if constrain {
                // `auto`: text stays free until a call opens; the call follows its schema.
                let tools = calls::Tools {
                    defs: c.tools.clone(),
                    choice: calls::Choice::Auto,
                    parallel: true,
                };
                ask.constraint = Some(tools.constraint());
            }
            ask
        }
        None => match (&item.program, series.ens.answer) {
            (Some(p), AnswerKind::Program) => Ask::from(p),
            _ => Ask::from(&item.prompt),
        },
    };
    if let Some(cfg) = &series.agent {
        let (d, prompt_tokens) = agent(engine, cfg, series.ens.answer, item, &mut scorer).await?;
        rec.prompt_tokens += prompt_tokens;
        rec.tokens += d.tokens;
        rec.seconds += d.seconds;
        rec.decided.push(d);
    }
    // An agent's one run is recorded above; an ensemble runs at each of its sizes.
    let sizes = match series.agent {
        Some(_) => Vec::new(),
        None => series.runs(sizes),
    };
    // Signals are kept for every sample so that `confidence` and `certainty` can decide on
    // the samples another strategy's series drew.
    let mut runner = Runner::new(engine.clone()).keep_signals();
    for n in sizes {
        let ens = sized(&series.ens, n, index);
        let checked = matches!(plan(&ens), Plan::Check { .. });
        let t = match &verifier {
            Some(v) if checked => runner.run_verified(&ens, ask.clone(), v).await?,
            _ => runner.run(&ens, ask.clone()).await?,
        };
        let samples = t
            .agents
            .iter()
            .map(|a| scorer.sample(a))
            .collect::<Result<Vec<_>>>()?;
        rec.prompt_tokens += t.usage.prompt_tokens;
        rec.tokens += t.usage.completion_tokens;
        rec.seconds += t.seconds;
        if series.decided() {
            rec.decided.push(Decided {
                n,
                correct: scorer.score(t.answer.as_deref())?,
                answer: t.answer,
                tokens: t.usage.completion_tokens,
                seconds: t.seconds,
                samples,
                rounds: (!t.rounds.is_empty() || checked).then_some(t.rounds.len() + 1),
                steps: None,
            });
        } else {
            for a in samples.iter().filter_map(|s| s.extracted.clone()) {
                *rec.votes.entry(a).or_default() += 1;
            }
            rec.samples = samples;
        }
    }
    rec.written = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    Ok(rec)
}

/// Runs an agent on the item's prompt, in a run directory thrown away afterwards, and scores
/// its answer as the task reads answers (for gsm8k, the number, as from a chain of thought).
/// A run stopped at a limit is read from its last step's text, as a reply cut at max_tokens
/// is. Returns the decision and the run's prompt tokens.
async fn agent(
    engine: &Engine,
    cfg: &AgentConfig,
    kind: AnswerKind,
    item: &Item,
    scorer: &mut Scorer<'_>,
) -> Result<(Decided, usize)> {
    let dir = tempfile::Builder::new()
        .prefix("conclave-bench-agent-")
        .tempdir()
        .context("cannot make the agent's run directory")?;
    let task = AgentTask::Text(item.prompt.clone());
    let t = agent::run(
        engine.clone(),
        cfg,
        task,
        dir.path(),
        &RunOptions::default(),
    )
    .await
    .with_context(|| format!("the agent on item {}", item.id))?;
    let text = t
        .answer
        .clone()
        .or_else(|| t.steps.last().map(|s| s.text.clone()))
        .unwrap_or_default();
    let extracted = extract(kind, &text);
    let correct = scorer.score(extracted.as_deref())?;
    let tokens = t.usage.completion_tokens;
    let sample = Sample {
        model: cfg.name().to_string(),
        seed: 0,
        text,
        extracted: extracted.clone(),
        correct,
        tokens,
        logprob_mean: 0.0,
        weight: 1.0,
        check: None,
        signals: Default::default(),
    };
    let decided = Decided {
        n: 1,
        answer: extracted,
        correct,
        tokens,
        seconds: t.seconds,
        samples: vec![sample],
        rounds: None,
        steps: Some(t.steps.len()),
    };
    Ok((decided, t.usage.prompt_tokens))
}

/// Scores answers against one item's gold, and checks them with the verifier a solver may
/// use; a program is run once however often it recurs.
struct Scorer<'a> {
    gold: &'a Gold,
    verifier: Option<&'a Verifier>,
    runs: HashMap<String, bool>,
    checks: HashMap<String, Check>,
}

impl<'a> Scorer<'a> {
    fn new(gold: &'a Gold, verifier: Option<&'a Verifier>) -> Self {
        Self {
            gold,
            verifier,
            runs: HashMap::new(),
            checks: HashMap::new(),
        }
    }

    /// The reply's visible check: the runner's verdict when it made one, else our own.
    fn check(&mut self, a: &AgentTrace) -> Result<Option<Check>> {
        if let Some(v) = &a.verdict {
            return Ok(Some(v.into()));
        }
        let Some(verifier) = self.verifier else {
            return Ok(None);
        };
        if a.text.trim().is_empty() {
            return Ok(None);
        }
        let key = verifier.shown(&a.text);
        if let Some(c) = self.checks.get(&key) {
            return Ok(Some(c.clone()));
        }
        let c = Check::from(&verifier.check(&a.text, &verify::limits())?);
        self.checks.insert(key, c.clone());
        Ok(Some(c))
    }

    fn score(&mut self, answer: Option<&str>) -> Result<bool> {
        let Some(answer) = answer else {
            return Ok(false);
        };
        match self.gold {
            Gold::Answer(g) => Ok(answer == g),
            Gold::Calls(accepted) => Ok(accepted.iter().any(|a| a == answer)),
            Gold::Code(p) => {
                if let Some(&ok) = self.runs.get(answer) {
                    return Ok(ok);
                }
                let ok = code::passes(&code::program(p, answer))?;
                self.runs.insert(answer.to_string(), ok);
                Ok(ok)
            }
        }
    }

    fn sample(&mut self, a: &AgentTrace) -> Result<Sample> {
        Ok(Sample {
            model: a.model.clone(),
            seed: a.seed,
            text: a.text.clone(),
            correct: self.score(a.extracted.as_deref())?,
            extracted: a.extracted.clone(),
            tokens: a.tokens,
            logprob_mean: a.logprob_mean,
            weight: a.weight,
            check: self.check(a)?,
            signals: a.signals.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn sizes_cycle_members_with_fresh_seeds() {
        let text =
            "[[member]]\nmodel = \"a\"\n[[member]]\nmodel = \"b\"\n[[member]]\nmodel = \"c\"";
        let ens = Ensemble::from_toml(text, Path::new(".")).unwrap();
        let five = sized(&ens, 5, 0);
        let agents = five.agents();
        let models: Vec<&str> = agents.iter().map(|a| a.model.as_str()).collect();
        assert_eq!(models, ["a", "b", "c", "a", "b"]);
        let seeds: std::collections::HashSet<u64> =
            agents.iter().map(|a| a.sampling.seed).collect();
        assert_eq!(seeds.len(), 5, "copies of a member get new seeds");
        // The same item gets the same seeds; another item other ones.
        let seed = |e: &Ensemble| e.agents()[0].sampling.seed;
        assert_eq!(seed(&sized(&ens, 2, 0)), seed(&five));
        assert_ne!(seed(&sized(&ens, 2, 1)), seed(&five));
    }

    #[test]
    fn series_from_a_model_and_from_a_config() {
        let s = Series::model("m", Task::Gsm8k, 0.7, 64, 4, 1).unwrap();
        assert_eq!(
            (s.ens.members.len(), s.decided(), s.samples(&[1, 2, 4])),
            (4, false, 4)
        );
        assert_eq!(s.ens.agents()[0].role.name, "solver");
        // Its members are copies of one agent, weight 1 each: `weighted` weighs their samples
        // by log-probability, or it would be `vote` again.
        let w = s
            .deciding(Strategy::Weighted, Some("m".into()), false)
            .unwrap();
        assert_eq!(
            w.rule,
            Some(Rule::Weighted(crate::ensemble::WeightBy::Logprob))
        );
        let j = Series::config("judged", Task::Text, Some(9), None).unwrap();
        assert!(j.decided() && j.ens.max_tokens == 9);
        let v = Series::config("vote8", Task::Gsm8k, None, None).unwrap();
        assert_eq!(v.samples(&[1, 2, 4]), 8, "all eight members are sampled");
        assert_ne!(
            v.digest(),
            Series::config("vote8", Task::Gsm8k, None, Some(3))
                .unwrap()
                .digest()
        );
    }

    #[test]
    fn a_config_written_for_programs_keeps_program_answers_on_gsm8k() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pal.toml");
        std::fs::write(&path, "answer = \"program\"\n[[member]]\nmodel = \"m\"").unwrap();
        let path = path.to_str().unwrap();
        let s = Series::config(path, Task::Gsm8k, None, None).unwrap();
        assert_eq!(s.ens.answer, AnswerKind::Program);
        // Another task reads answers its own way.
        let s = Series::config(path, Task::Text, None, None).unwrap();
        assert_eq!(s.ens.answer, AnswerKind::Text);
        assert!(Task::Gsm8k.accepts(AnswerKind::Program));
        assert!(!Task::Choice.accepts(AnswerKind::Program));
        assert!(Task::Code.accepts(AnswerKind::Code));
    }

    #[test]
    fn code_answers_are_run_once_each() {
        let p = super::super::dataset::Problem {
            prompt: "def f():\n    \"\"\"One.\"\"\"\n".into(),
            entry_point: "f".into(),
            test: "def check(g):\n    assert g() == 1\n".into(),
        };
        let gold = Gold::Code(p);
        let mut s = Scorer::new(&gold, None);
        assert!(s.score(Some("def f():\n    return 1")).unwrap());
        assert!(!s.score(Some("def f():\n    return 2")).unwrap());
        assert!(!s.score(None).unwrap());
        assert_eq!(s.runs.len(), 2);
        let num = Gold::Answer("7".into());
        let mut s = Scorer::new(&num, None);
        assert!(s.score(Some("7")).unwrap() && !s.score(Some("8")).unwrap());
    }
}
