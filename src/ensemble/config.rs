//! Ensembles as data: TOML files of members (agents or whole ensembles), a strategy and limits.
use super::aggregate::WeightBy;
use super::confidence;
use super::extract::AnswerKind;
use crate::engine::SamplingParams;
use crate::tools::Tool;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The roles every ensemble knows (configs/roles.toml, compiled in).
const ROLES: &str = include_str!("../../configs/roles.toml");

/// Presets reachable by name (`vote8`, `conclave/vote8`) as well as by path.
const PRESETS: &[(&str, &str)] = &[
    ("vote8", include_str!("../../configs/vote8.toml")),
    ("mixed", include_str!("../../configs/mixed.toml")),
    ("council", include_str!("../../configs/council.toml")),
    ("judged", include_str!("../../configs/judged.toml")),
    ("debate", include_str!("../../configs/debate.toml")),
    ("refine", include_str!("../../configs/refine.toml")),
];

/// How answers are combined. The command line's names (clap's kebab-case) are the serde names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Vote,
    Weighted,
    Medoid,
    Judge,
    Fuse,
    Debate,
    /// Run every candidate with the verifier; the largest cluster of passing candidates that
    /// behave alike wins (CodeT / AlphaCode style). See `verify`.
    #[serde(rename = "exec-vote")]
    ExecVote,
    /// Rounds of candidates, each round told why the last one failed verification; stops at
    /// the first pass.
    Refine,
    /// The most confident samples vote, weighted by their confidence (DeepConf offline).
    Confidence,
    /// The sample with the highest self-certainty wins (best-of-N, any kind of answer).
    Certainty,
    /// Warm-up samples set a confidence bar; the others stop as soon as they fall under it
    /// and cast no vote (DeepConf online); the rest vote as `confidence` does.
    #[serde(rename = "early-stop")]
    EarlyStop,
    /// Samples are drawn in rounds until the leading answer's lead is sure (or all are
    /// drawn), then a vote (Adaptive-Consistency).
    Adaptive,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let name = clap::ValueEnum::to_possible_value(self).expect("no variant is skipped");
        f.write_str(name.get_name())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Role {
    #[serde(default)]
    pub name: String,
    pub system: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Agent {
    pub model: String,
    pub role: Role,
    pub sampling: SamplingParams,
    pub weight: f32,
    /// Tools this agent may be used with (`tools = ["python"]`); none unless granted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// Set when another OpenAI-compatible server runs this agent (`model` is its name there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<Box<Remote>>,
}

/// `remote = { url, model, api_key_env }`: an agent answered by any OpenAI-compatible chat
/// endpoint (another `conclave serve`, llama.cpp's llama-server, vLLM, Ollama).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// The API base, as OpenAI clients take it: `http://host:port/v1`.
    pub url: String,
    /// The model name that server knows.
    pub model: String,
    /// Environment variable holding the server's API key, sent as a bearer token.
    pub api_key_env: Option<String>,
    /// Seconds one attempt may take.
    #[serde(default = "default_remote_timeout")]
    pub timeout_s: f64,
    /// Further attempts after a failed one (connection error, timeout, 429 or 5xx).
    #[serde(default = "default_remote_retries")]
    pub retries: usize,
}

#[derive(Debug, Clone)]
pub enum Member {
    Agent(Agent),
    Ensemble(Box<Ensemble>),
}

#[derive(Debug, Clone)]
pub struct Ensemble {
    pub name: String,
    pub strategy: Strategy,
    pub answer: AnswerKind,
    pub weight_by: WeightBy,
    pub max_tokens: usize,
    /// Completion tokens the whole tree may spend, nested ensembles included.
    pub token_budget: Option<usize>,
    pub rounds: usize,
    /// The model that judges (`judge`) or synthesizes (`fuse`); defaults to the first agent's.
    pub judge: Option<Agent>,
    pub members: Vec<Member>,
    /// How `confidence`, `early-stop` and `adaptive` read and spend samples.
    pub confidence: confidence::Settings,
}

/// An ensemble described by command-line flags (`conclave ask --agents N …`).
pub struct Quick {
    pub agents: usize,
    pub models: Vec<String>,
    pub roles: Vec<String>,
    pub temperatures: Vec<f32>,
    pub strategy: Strategy,
    pub answer: AnswerKind,
    pub max_tokens: usize,
    pub seed: u64,
}

/// The TOML form of an ensemble file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnsembleSpec {
    name: Option<String>,
    #[serde(default = "default_strategy")]
    strategy: Strategy,
    answer: Option<AnswerKind>,
    #[serde(default)]
    weight_by: WeightBy,
    #[serde(default = "default_max_tokens")]
    max_tokens: usize,
    token_budget: Option<usize>,
    #[serde(default = "default_max_depth")]
    max_depth: usize,
    #[serde(default = "default_rounds")]
    rounds: usize,
    #[serde(default)]
    confidence: confidence::Settings,
    #[serde(default)]
    seed: u64,
    judge: Option<MemberSpec>,
    #[serde(default)]
    roles: HashMap<String, Role>,
    // `members` reads better in the JSON of a server request; TOML files say `[[member]]`.
    #[serde(rename = "member", alias = "members", default)]
    members: Vec<MemberSpec>,
    /// An agent file's `[agent]` section (read by `ensemble::agent`): the same file is also
    /// an ensemble.
    #[serde(default, rename = "agent")]
    _agent: Option<serde::de::IgnoredAny>,
}

/// One `[[member]]`: an agent (`model`, or `remote`) or a nested ensemble (`ensemble`, a path
/// or preset).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    pub model: Option<String>,
    pub ensemble: Option<String>,
    pub remote: Option<Remote>,
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub role: Option<String>,
    pub seed: Option<u64>,
    #[serde(default = "one")]
    pub count: usize,
    #[serde(default = "one_f32")]
    pub weight: f32,
    /// Tool names this member's agents may use: `python`, `calculator`.
    #[serde(default)]
    pub tools: Vec<String>,
}

/// The role of an agent whose role is not given: `fallback`, or for program answers the role
/// that asks for a program (the others ask for an "Answer:" line).
fn default_role(answer: AnswerKind, fallback: &str) -> &str {
    match answer {
        AnswerKind::Program => super::program::ROLE,
        _ => fallback,
    }
}

fn default_strategy() -> Strategy {
    Strategy::Vote
}
fn default_max_tokens() -> usize {
    crate::engine::DEFAULT_MAX_TOKENS
}
fn default_max_depth() -> usize {
    3
}
fn default_rounds() -> usize {
    2
}
fn default_remote_timeout() -> f64 {
    120.0
}
fn default_remote_retries() -> usize {
    2
}
fn default_temperature() -> f32 {
    0.7
}
fn one() -> usize {
    1
}
fn one_f32() -> f32 {
    1.0
}

/// splitmix64 (Steele, Lea & Flood 2014): distinct, well-spread seeds from a counter.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Walks a config tree, numbering agents so that each gets its own seed.
struct Loader {
    roles: HashMap<String, Role>,
    /// Files or presets being loaded, outermost first: a repeat is a cycle.
    stack: Vec<String>,
    next_agent: u64,
    base_seed: u64,
    seed_override: Option<u64>,
    max_depth: usize,
    /// For specs from outside (a server request): nested ensembles resolve to compiled-in
    /// presets only, and remote members are refused, so a request can neither read the
    /// server's files nor make it call arbitrary URLs.
    untrusted: bool,
}

/// Names of the compiled-in presets.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

impl Ensemble {
    /// Loads a file, or a preset by name (`vote8` or `conclave/vote8`).
    pub fn load(spec: &str) -> Result<Self> {
        Self::load_seeded(spec, None)
    }

    /// Like `load`, with `seed` in place of the file's own `seed` (agents' seeds derive from it).
    pub fn load_seeded(spec: &str, seed: Option<u64>) -> Result<Self> {
        let mut loader = Loader::new()?;
        loader.seed_override = seed;
        loader.load(spec, Path::new("."))
    }

    /// Parses TOML text; nested `ensemble = "…"` paths are relative to `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self> {
        let mut loader = Loader::new()?;
        loader.stack.push("<inline>".into());
        loader.parse(text, base_dir)
    }

    /// An ensemble from an API request (the same keys as a TOML file, as JSON). Nested
    /// ensembles may name compiled-in presets only; remote members are refused.
    pub fn from_untrusted_json(v: &serde_json::Value, seed: Option<u64>) -> Result<Self> {
        let spec: EnsembleSpec = serde_json::from_value(v.clone())?;
        let mut loader = Loader::new()?;
        loader.untrusted = true;
        loader.seed_override = seed;
        loader.stack.push("<request>".into());
        loader.build(spec, Path::new(""))
    }

    /// A flat ensemble from command-line flags: agents cycling through the given models,
    /// roles and temperatures.
    pub fn quick(q: &Quick) -> Result<Self> {
        let mut loader = Loader::new()?;
        loader.base_seed = q.seed;
        let cycle = |v: &[String], i: usize, d: &str| {
            v.get(i % v.len().max(1)).cloned().unwrap_or(d.into())
        };
        let mut members = Vec::new();
        for i in 0..q.agents {
            let spec = MemberSpec {
                model: Some(cycle(&q.models, i, crate::engine::DEFAULT_MODEL)),
                ensemble: None,
                remote: None,
                temperature: q
                    .temperatures
                    .get(i % q.temperatures.len().max(1))
                    .copied()
                    .unwrap_or(0.7),
                top_p: None,
                top_k: None,
                min_p: None,
                role: Some(cycle(&q.roles, i, default_role(q.answer, "solver"))),
                seed: None,
                count: 1,
                weight: 1.0,
                tools: Vec::new(),
            };
            members.extend(
                loader
                    .agents(&spec, "solver")?
                    .into_iter()
                    .map(Member::Agent),
            );
        }
        Ok(Ensemble {
            name: format!("{} agents", q.agents),
            strategy: q.strategy,
            answer: q.answer,
            weight_by: WeightBy::default(),
            max_tokens: q.max_tokens,
            token_budget: None,
            rounds: default_rounds(),
            judge: None,
            members,
            confidence: confidence::Settings::DEFAULT,
        })
    }

    /// Makes `answer` the kind of answer the ensemble reads (a command line's `--answer`, a
    /// bench task's). Switching to program answers an ensemble not written for them (its
    /// roles ask for an "Answer:" line, not a program) gives every agent in the tree the
    /// program role, and nested ensembles program answers too; a file that says `answer =
    /// "program"` keeps its own roles.
    pub fn set_answer(&mut self, answer: AnswerKind) -> Result<()> {
        if answer == AnswerKind::Program && self.answer != AnswerKind::Program {
            let role = Loader::new()?.role(super::program::ROLE)?;
            for m in &mut self.members {
                match m {
                    Member::Agent(a) => a.role = role.clone(),
                    Member::Ensemble(e) => e.set_answer(answer)?,
                }
            }
        }
        self.answer = answer;
        Ok(())
    }

    /// Lets every agent in the tree, judges included, use `tool`: for front ends that run
    /// the agents' code by design (the bench's code task).
    pub fn allow_tool(&mut self, tool: Tool) {
        let grant = |a: &mut Agent| {
            if !a.tools.contains(&tool) {
                a.tools.push(tool);
            }
        };
        self.judge.iter_mut().for_each(grant);
        for m in &mut self.members {
            match m {
                Member::Agent(a) => grant(a),
                Member::Ensemble(e) => e.allow_tool(tool),
            }
        }
    }

    /// Fails, saying which agent and how to fix it, unless every agent may use `tool`.
    pub fn require_tool(&self, tool: Tool) -> Result<()> {
        for (i, a) in self.agents().iter().enumerate() {
            if !a.tools.contains(&tool) {
                bail!(
                    "strategy `{}` checks answers with the `{tool}` tool, but agent {} ({}, role \
                     {}) is not allowed it: add `tools = [\"{tool}\"]` to its [[member]] (or \
                     `--tools {tool}` to `conclave ask`)",
                    self.strategy,
                    i + 1,
                    a.model,
                    a.role.name
                );
            }
        }
        Ok(())
    }

    /// Whether running this ensemble uses a tool: a verifying strategy, program answers (the
    /// sandbox runs each agent's program), or an agent or judge (nested ones too) allowed one.
    pub fn uses_tools(&self) -> bool {
        matches!(self.strategy, Strategy::ExecVote | Strategy::Refine)
            || self.answer == AnswerKind::Program
            || self.judge.as_ref().is_some_and(|j| !j.tools.is_empty())
            || self.members.iter().any(|m| match m {
                Member::Agent(a) => !a.tools.is_empty(),
                Member::Ensemble(e) => e.uses_tools(),
            })
    }

    /// Every agent in the tree, nested ones included.
    pub fn agents(&self) -> Vec<&Agent> {
        let mut out = Vec::new();
        for m in &self.members {
            match m {
                Member::Agent(a) => out.push(a),
                Member::Ensemble(e) => out.extend(e.agents()),
            }
        }
        out
    }
}

impl Loader {
    fn new() -> Result<Self> {
        let roles: HashMap<String, Role> = toml::from_str(ROLES).context("configs/roles.toml")?;
        let roles = roles
            .into_iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    Role {
                        name,
                        system: r.system,
                    },
                )
            })
            .collect();
        Ok(Self {
            roles,
            stack: Vec::new(),
            next_agent: 0,
            base_seed: 0,
            seed_override: None,
            max_depth: default_max_depth(),
            untrusted: false,
        })
    }

    fn load(&mut self, spec: &str, base_dir: &Path) -> Result<Ensemble> {
        // `conclave/vote8`, `vote8`, `judged.toml` and `configs/vote8.toml` all name presets
        // when no such file exists.
        let preset_name = Path::new(spec.strip_prefix("conclave/").unwrap_or(spec))
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = base_dir.join(spec);
        let (key, text, dir) = if path.is_file() && !self.untrusted {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read ensemble config {}", path.display()))?;
            let key = path
                .canonicalize()
                .unwrap_or(path.clone())
                .display()
                .to_string();
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (key, text, dir)
        } else if let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == preset_name) {
            (
                format!("preset {preset_name}"),
                text.to_string(),
                PathBuf::new(),
            )
        } else {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            bail!(
                "no ensemble config `{spec}`: not a file, nor a preset ({})",
                names.join(", ")
            );
        };
        if self.stack.contains(&key) {
            let chain: Vec<&str> = self.stack.iter().map(String::as_str).collect();
            bail!("cyclic ensemble config: {} → {key}", chain.join(" → "));
        }
        if self.stack.len() > self.max_depth {
            bail!(
                "ensemble nesting is deeper than the limit of {} levels at {key}",
                self.max_depth
            );
        }
        self.stack.push(key.clone());
        let ens = self
            .parse(&text, &dir)
            .with_context(|| format!("in {key}"))?;
        self.stack.pop();
        Ok(ens)
    }

    fn parse(&mut self, text: &str, dir: &Path) -> Result<Ensemble> {
        let spec: EnsembleSpec = toml::from_str(text)?;
        self.build(spec, dir)
    }

    fn build(&mut self, spec: EnsembleSpec, dir: &Path) -> Result<Ensemble> {
        if self.stack.len() <= 1 {
            // The outermost file sets the seed and depth limit for the whole tree.
            self.base_seed = self.seed_override.unwrap_or(spec.seed);
            self.max_depth = spec.max_depth;
        }
        let saved = self.roles.clone();
        for (name, r) in spec.roles {
            self.roles.insert(
                name.clone(),
                Role {
                    name,
                    system: r.system,
                },
            );
        }
        let answer = spec.answer.unwrap_or(AnswerKind::Text);
        let role = default_role(answer, "assistant");
        let mut members = Vec::new();
        for m in &spec.members {
            match (&m.model, &m.ensemble, &m.remote) {
                (Some(_), None, None) => {
                    members.extend(self.agents(m, role)?.into_iter().map(Member::Agent))
                }
                (None, None, Some(_)) if self.untrusted => {
                    bail!("remote members are allowed only in the server's own config files")
                }
                (None, None, Some(_)) => {
                    members.extend(self.agents(m, role)?.into_iter().map(Member::Agent))
                }
                (None, Some(e), None) => {
                    for _ in 0..m.count {
                        members.push(Member::Ensemble(Box::new(self.load(e, dir)?)));
                    }
                }
                _ => bail!(
                    "each [[member]] needs exactly one of `model` or `ensemble`, or a `remote`"
                ),
            }
        }
        if members.is_empty() {
            bail!("an ensemble needs at least one [[member]]");
        }
        spec.confidence
            .check()
            .context("in the ensemble's [confidence] settings")?;
        let judge = match &spec.judge {
            Some(j) if j.model.is_some() && j.remote.is_none() => {
                Some(self.agents(j, "assistant")?.remove(0))
            }
            Some(_) => bail!("[judge] needs a `model` (a local one: the judge cannot be remote)"),
            None => None,
        };
        self.roles = saved;
        Ok(Ensemble {
            name: spec.name.unwrap_or_else(|| "ensemble".into()),
            strategy: spec.strategy,
            answer,
            weight_by: spec.weight_by,
            max_tokens: spec.max_tokens,
            token_budget: spec.token_budget,
            rounds: spec.rounds.max(1),
            judge,
            members,
            confidence: spec.confidence,
        })
    }

    /// The role named `name`, or an error that lists the known ones.
    fn role(&self, name: &str) -> Result<Role> {
        self.roles.get(name).cloned().with_context(|| {
            let mut known: Vec<&String> = self.roles.keys().collect();
            known.sort();
            format!("unknown role `{name}` (known: {known:?}; add it under [roles.{name}])")
        })
    }

    /// The `count` agents of one member, each with a seed of its own; `default_role` is the
    /// role of a member that names none.
    fn agents(&mut self, m: &MemberSpec, default_role: &str) -> Result<Vec<Agent>> {
        let role = self.role(m.role.as_deref().unwrap_or(default_role))?;
        let model = m
            .model
            .clone()
            .or_else(|| m.remote.as_ref().map(|r| r.model.clone()))
            .context("member without a model")?;
        let tools = m
            .tools
            .iter()
            .map(|t| {
                <Tool as clap::ValueEnum>::from_str(t.trim(), true).map_err(|_| {
                    anyhow::anyhow!("unknown tool `{t}` (known tools: python, calculator)")
                })
            })
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("in the tools of the [[member]] with model `{model}`"))?;
        let base = SamplingParams::default();
        Ok((0..m.count)
            .map(|i| {
                self.next_agent += 1;
                let seed = match m.seed {
                    Some(s) => s.wrapping_add(i as u64),
                    None => mix(self.base_seed ^ mix(self.next_agent)),
                };
                Agent {
                    model: model.clone(),
                    role: role.clone(),
                    sampling: SamplingParams {
                        temperature: m.temperature,
                        top_p: m.top_p.unwrap_or(base.top_p),
                        top_k: m.top_k.unwrap_or(base.top_k),
                        min_p: m.min_p.unwrap_or(base.min_p),
                        seed,
                        ..base.clone()
                    },
                    weight: m.weight,
                    remote: m.remote.clone().map(Box::new),
                    tools: tools.clone(),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn every_preset_loads() {
        for (name, _) in PRESETS {
            let e = Ensemble::load(name).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(!e.agents().is_empty());
        }
        let e = Ensemble::load("conclave/vote8").unwrap();
        assert_eq!(
            (e.members.len(), e.strategy, e.answer),
            (8, Strategy::Vote, AnswerKind::Number)
        );
        let temps: Vec<f32> = e.agents().iter().map(|a| a.sampling.temperature).collect();
        assert_eq!((temps[0], temps[7]), (0.3, 1.1));
    }

    #[test]
    fn answer_kinds_are_read_by_name() {
        let e = Ensemble::from_toml(
            "answer = \"json\"\n[[member]]\nmodel = \"m\"",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(e.answer, AnswerKind::Json);
        let bad = Ensemble::from_toml(
            "answer = \"yaml\"\n[[member]]\nmodel = \"m\"",
            Path::new("."),
        );
        assert!(format!("{:#}", bad.unwrap_err()).contains("json"));
    }

    #[test]
    fn program_answers_default_to_the_pal_role_and_count_as_using_tools() {
        let text = "answer = \"program\"\n[[member]]\nmodel = \"m\"\n\
                    [[member]]\nmodel = \"m\"\nrole = \"skeptic\"";
        let e = Ensemble::from_toml(text, Path::new(".")).unwrap();
        let roles: Vec<&str> = e.agents().iter().map(|a| a.role.name.as_str()).collect();
        assert_eq!(
            (e.answer, roles),
            (AnswerKind::Program, vec!["pal", "skeptic"])
        );
        assert!(e.agents()[0].role.system.contains("```python"));
        assert!(e.uses_tools(), "the sandbox runs its agents' programs");
        // A file written for programs keeps its roles when asked for programs again.
        let mut same = e.clone();
        same.set_answer(AnswerKind::Program).unwrap();
        assert_eq!(same.agents()[1].role.name, "skeptic");
        // Prose-answer ensembles switched to programs ask every agent, nested ones too, for one.
        let mut v = Ensemble::load("council").unwrap();
        assert!(v.agents().iter().any(|a| a.role.name != "pal"));
        v.set_answer(AnswerKind::Program).unwrap();
        assert!(v.agents().iter().all(|a| a.role.name == "pal"));
        assert!(v.members.iter().all(|m| match m {
            Member::Ensemble(e) => e.answer == AnswerKind::Program,
            Member::Agent(_) => true,
        }));
        let q = |roles: Vec<String>| {
            Ensemble::quick(&Quick {
                agents: 2,
                models: vec!["m".into()],
                roles,
                temperatures: vec![0.0],
                strategy: Strategy::Vote,
                answer: AnswerKind::Program,
                max_tokens: 8,
                seed: 0,
            })
            .unwrap()
        };
        assert_eq!(q(Vec::new()).agents()[1].role.name, "pal");
        assert_eq!(q(vec!["solver".into()]).agents()[1].role.name, "solver");
        let mut n = Ensemble::load("vote8").unwrap();
        n.set_answer(AnswerKind::Number).unwrap();
        assert!(!n.uses_tools() && n.agents().iter().all(|a| a.role.name != "pal"));
    }

    #[test]
    fn seeds_are_distinct_and_follow_the_ensemble_seed() {
        let text =
            "seed = 1\n[[member]]\nmodel = \"m\"\ncount = 5\n[[member]]\nmodel = \"m\"\ncount = 3";
        let a = Ensemble::from_toml(text, Path::new(".")).unwrap();
        let seeds: std::collections::HashSet<u64> =
            a.agents().iter().map(|a| a.sampling.seed).collect();
        assert_eq!(seeds.len(), 8);
        let b = Ensemble::from_toml(&text.replace("seed = 1", "seed = 2"), Path::new(".")).unwrap();
        assert_ne!(a.agents()[0].sampling.seed, b.agents()[0].sampling.seed);
    }

    #[test]
    fn a_given_seed_replaces_the_files_seed() {
        let seeds = |s| -> Vec<u64> {
            let e = Ensemble::load_seeded("vote8", s).unwrap();
            e.agents().iter().map(|a| a.sampling.seed).collect()
        };
        assert_eq!(seeds(None), seeds(Some(0)), "vote8's own seed is 0");
        assert_ne!(seeds(Some(5)), seeds(Some(6)));
        assert_eq!(seeds(Some(5)), seeds(Some(5)));
    }

    #[test]
    fn cycles_and_over_deep_nesting_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "a.toml", "[[member]]\nensemble = \"b.toml\"");
        write(d, "b.toml", "[[member]]\nensemble = \"a.toml\"");
        let err = format!(
            "{:#}",
            Ensemble::load(d.join("a.toml").to_str().unwrap()).unwrap_err()
        );
        assert!(
            err.contains("cyclic ensemble config") && err.contains("a.toml"),
            "{err}"
        );

        write(
            d,
            "top.toml",
            "max_depth = 2\n[[member]]\nensemble = \"l1.toml\"",
        );
        write(d, "l1.toml", "[[member]]\nensemble = \"l2.toml\"");
        write(d, "l2.toml", "[[member]]\nensemble = \"l3.toml\"");
        write(d, "l3.toml", "[[member]]\nmodel = \"m\"");
        let err = format!(
            "{:#}",
            Ensemble::load(d.join("top.toml").to_str().unwrap()).unwrap_err()
        );
        assert!(err.contains("deeper than the limit of 2"), "{err}");
        write(
            d,
            "top.toml",
            "max_depth = 3\n[[member]]\nensemble = \"l1.toml\"",
        );
        assert!(Ensemble::load(d.join("top.toml").to_str().unwrap()).is_ok());
    }

    #[test]
    fn remote_members_parse_and_requests_cannot_use_them() {
        let text = r#"
[[member]]
remote = { url = "http://127.0.0.1:8081/v1", model = "m", api_key_env = "K", retries = 1 }
role = "solver"
count = 2
"#;
        let e = Ensemble::from_toml(text, Path::new(".")).unwrap();
        let agents = e.agents();
        let r = agents[0].remote.as_ref().unwrap();
        assert_eq!((agents.len(), agents[0].model.as_str()), (2, "m"));
        assert_eq!(
            (r.retries, r.timeout_s, r.api_key_env.as_deref()),
            (1, 120.0, Some("K"))
        );
        assert_ne!(agents[0].sampling.seed, agents[1].sampling.seed);
        let bad = "[[member]]\nmodel = \"m\"\nremote = { url = \"http://x\", model = \"m\" }";
        let err = format!(
            "{:#}",
            Ensemble::from_toml(bad, Path::new(".")).unwrap_err()
        );
        assert!(err.contains("exactly one of"), "{err}");
        // From a request (JSON), remote members and files are refused.
        let v = serde_json::json!({"members": [{"remote": {"url": "http://x", "model": "m"}}]});
        let err = format!("{:#}", Ensemble::from_untrusted_json(&v, None).unwrap_err());
        assert!(
            err.contains("only in the server's own config files"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "x.toml", "[[member]]\nmodel = \"m\"");
        let path = dir.path().join("x.toml").display().to_string();
        let v = serde_json::json!({"members": [{"ensemble": path}]});
        assert!(Ensemble::from_untrusted_json(&v, None).is_err());
        assert!(Ensemble::load(&path).is_ok());
    }

    #[test]
    fn bad_members_and_roles_say_what_is_wrong() {
        let bad = |t: &str| format!("{:#}", Ensemble::from_toml(t, Path::new(".")).unwrap_err());
        assert!(
            bad("[[member]]\nmodel = \"m\"\nrole = \"pirate\"").contains("unknown role `pirate`")
        );
        assert!(
            bad("[[member]]\ntemperature = 1.0").contains("exactly one of `model` or `ensemble`")
        );
        assert!(bad("strategy = \"vote\"").contains("at least one [[member]]"));
        assert!(bad("strategy = \"shout\"\n[[member]]\nmodel = \"m\"").contains("shout"));
        assert!(bad("[[member]]\nensemble = \"nope\"").contains("no ensemble config `nope`"));
        let e = bad("[[member]]\nmodel = \"m\"\ntools = [\"python\", \"shell\"]");
        assert!(
            e.contains("unknown tool `shell` (known tools: python, calculator)")
                && e.contains("model `m`"),
            "{e}"
        );
        // A role defined in the file itself is fine.
        let ok = "[roles.pirate]\nsystem = \"Arr.\"\n[[member]]\nmodel = \"m\"\nrole = \"pirate\"";
        assert_eq!(
            Ensemble::from_toml(ok, Path::new(".")).unwrap().agents()[0]
                .role
                .system,
            "Arr."
        );
    }

    #[test]
    fn tools_are_granted_per_member_and_required_by_strategy() {
        let text = "strategy = \"refine\"\n\
                    [[member]]\nmodel = \"a\"\ntools = [\"python\"]\n\
                    [[member]]\nmodel = \"b\"\nrole = \"solver\"";
        let mut e = Ensemble::from_toml(text, Path::new(".")).unwrap();
        assert_eq!(e.strategy, Strategy::Refine);
        assert_eq!(e.agents()[0].tools, vec![Tool::Python]);
        assert!(e.agents()[1].tools.is_empty());
        let err = format!("{:#}", e.require_tool(Tool::Python).unwrap_err());
        assert!(
            err.contains("agent 2 (b, role solver) is not allowed it")
                && err.contains("tools = [\"python\"]"),
            "{err}"
        );
        e.allow_tool(Tool::Python);
        assert!(e.require_tool(Tool::Python).is_ok());
        assert!(e.require_tool(Tool::Calculator).is_err());
        assert_eq!(Strategy::ExecVote.to_string(), "exec-vote");
        // The names the command line takes are those the files use.
        for s in <Strategy as clap::ValueEnum>::value_variants() {
            assert_eq!(serde_json::to_value(s).unwrap(), s.to_string());
        }
    }
}
