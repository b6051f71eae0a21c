//! Agent files: an `[agent]` section (alone, or inside an ensemble file whose members then
//! decide each step), read into an [`AgentConfig`] whose every error is found at load.
use super::policy::{Policy, Rule};
use super::toolbox::BUILTINS;
use crate::ensemble::{Ensemble, Strategy};
use crate::tools::McpServer;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Agent presets reachable by name (`agent`, `conclave/agent`) as well as by path.
const PRESETS: &[(&str, &str)] = &[("agent", include_str!("../../../configs/agent.toml"))];

/// The `[agent]` section; `[agent.delegates.X]` takes the same keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Default: the file's stem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The model of each step's agents (unless `ensemble` or the file's members decide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Agents voting over each step's proposed call.
    #[serde(default = "one")]
    pub samples: usize,
    #[serde(default)]
    pub temperature: f32,
    /// An ensemble (preset or path) that decides each step; in a delegate, one that is asked
    /// the sub-task once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<String>,
    /// Replaces the default agent system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default = "default_max_steps")]
    pub max_steps: usize,
    /// Completion tokens of the whole tree, delegates included.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Seconds the whole tree may take.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// How deep delegates may nest (the top agent is depth 0).
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Most completion tokens of one step (per sample).
    #[serde(default = "default_step_max_tokens")]
    pub step_max_tokens: usize,
    /// Seconds one python run may take.
    #[serde(default = "default_tool_timeout_s")]
    pub tool_timeout_s: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<Rule>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delegates: BTreeMap<String, AgentSpec>,
    /// MCP servers over stdio whose tools are offered beside `tools` (top agent and its
    /// copies only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp: Vec<McpServer>,
}

/// Limits given on the command line, each over the config's own (`conclave agent`'s flags).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Limits {
    /// Most steps (model calls) of the top agent.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Most completion tokens of the whole run, delegates included.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Seconds the whole run may take.
    #[arg(long)]
    pub timeout: Option<f64>,
}

fn one() -> usize {
    1
}
fn default_max_steps() -> usize {
    8
}
fn default_max_tokens() -> usize {
    4096
}
fn default_timeout_s() -> f64 {
    600.0
}
fn default_max_depth() -> usize {
    2
}
fn default_step_max_tokens() -> usize {
    512
}
fn default_tool_timeout_s() -> f64 {
    10.0
}

/// A loaded agent: its spec, checked, and the ensemble that decides each of its steps.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub spec: AgentSpec,
    pub policy: Policy,
    /// Decides each step (for a delegate with `ensemble`: answers the sub-task once).
    pub ensemble: Ensemble,
    /// The file as loaded with `[agent]` resolved (overrides applied): DIR/config.toml.
    file: toml::Table,
    /// Delegates by name, loaded.
    pub delegates: BTreeMap<String, AgentConfig>,
}

impl AgentConfig {
    /// Reads an agent file or an ensemble file with an `[agent]` section (path or preset name).
    pub fn load(spec: &str) -> Result<AgentConfig> {
        let path = Path::new(spec);
        if path.is_file() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read agent config {}", path.display()))?;
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "agent".into());
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            return Self::from_toml(&text, &stem, &dir)
                .with_context(|| format!("in agent config {}", path.display()));
        }
        let name = spec.strip_prefix("conclave/").unwrap_or(spec);
        let name = Path::new(name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match PRESETS.iter().find(|(n, _)| *n == name) {
            Some((n, text)) => {
                Self::from_toml(text, n, Path::new("")).with_context(|| format!("in preset {n}"))
            }
            None => {
                let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                bail!(
                    "no agent config `{spec}`: not a file, nor a preset ({})",
                    names.join(", ")
                )
            }
        }
    }

    /// Whether `spec` names an agent: a file with an `[agent]` section, or an agent preset.
    /// A file that cannot be read or parsed is not one (loading it as an ensemble says why).
    pub fn is_agent(spec: &str) -> bool {
        let path = Path::new(spec);
        if path.is_file() {
            return std::fs::read_to_string(path)
                .ok()
                .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
                .is_some_and(|t| t.contains_key("agent"));
        }
        let name = spec.strip_prefix("conclave/").unwrap_or(spec);
        PRESETS.iter().any(|(n, _)| *n == name)
    }

    /// Parses a file's text; `stem` names the agent when `[agent]` has no `name`, and relative
    /// ensemble paths are read from `dir`.
    pub fn from_toml(text: &str, stem: &str, dir: &Path) -> Result<AgentConfig> {
        let mut file: toml::Table = toml::from_str(text)?;
        let section = file.remove("agent").context(
            "no [agent] section: an agent file needs one (see configs/agent.toml for an example)",
        )?;
        let mut spec: AgentSpec = section.try_into().context("in [agent]")?;
        if spec.name.is_none() {
            spec.name = Some(stem.to_string());
        }
        // An ensemble path is kept absolute, so that DIR/config.toml resolves it on resume.
        if let Some(e) = &spec.ensemble {
            let p = dir.join(e);
            if p.is_file() {
                spec.ensemble = Some(p.canonicalize().unwrap_or(p).display().to_string());
            }
        }
        // The file's own members, when it has any, decide each step.
        let own = (!file.is_empty())
            .then(|| Ensemble::from_toml(text, dir))
            .transpose()
            .context("in the file's ensemble (its keys outside [agent])")?;
        let mut cfg = Self::build(spec, own, dir)?;
        cfg.file = file;
        Ok(cfg)
    }

    fn build(spec: AgentSpec, own: Option<Ensemble>, dir: &Path) -> Result<AgentConfig> {
        for t in &spec.tools {
            if !BUILTINS.contains(&t.as_str()) {
                bail!(
                    "unknown tool `{t}` in `tools` (known tools: {})",
                    BUILTINS.join(", ")
                );
            }
        }
        let policy = Policy::new(spec.policy.clone())?;
        let mut servers = std::collections::BTreeSet::new();
        for m in &spec.mcp {
            if !servers.insert(m.name.as_str()) {
                bail!(
                    "two [[agent.mcp]] servers are named `{}`: names must differ",
                    m.name
                );
            }
        }
        if spec.samples == 0 || spec.max_steps == 0 {
            bail!("`samples` and `max_steps` must be at least 1");
        }
        let mut ensemble = match (&spec.ensemble, own, &spec.model) {
            (Some(e), None, None) => {
                Ensemble::load(e).with_context(|| format!("loading the agent's ensemble `{e}`"))?
            }
            (None, Some(own), None) => own,
            (None, None, model) => Self::samples(&spec, model.as_deref())?,
            _ => bail!(
                "say who decides each step once: `model` (with `samples`), `ensemble`, or the \
                 file's own [[member]]s"
            ),
        };
        if matches!(ensemble.strategy, Strategy::ExecVote | Strategy::Refine) {
            bail!(
                "strategy `{}` checks answers with a verifier and cannot decide an agent's steps: \
                 use vote, weighted, medoid, judge or debate",
                ensemble.strategy
            );
        }
        ensemble.max_tokens = spec.step_max_tokens;
        let mut delegates = BTreeMap::new();
        for (name, d) in &spec.delegates {
            let mut d = d.clone();
            d.name.get_or_insert_with(|| name.clone());
            if let Some(e) = &d.ensemble {
                let p = dir.join(e);
                if p.is_file() {
                    d.ensemble = Some(p.canonicalize().unwrap_or(p).display().to_string());
                }
            }
            if !d.mcp.is_empty() {
                bail!(
                    "in [agent.delegates.{name}]: `mcp` is read from the top [agent] only (its \
                     copies share its servers); move the server there"
                );
            }
            let cfg = Self::build(d, None, dir)
                .with_context(|| format!("in [agent.delegates.{name}]"))?;
            delegates.insert(name.clone(), cfg);
        }
        Ok(AgentConfig {
            spec,
            policy,
            ensemble,
            file: toml::Table::new(),
            delegates,
        })
    }

    /// `samples` agents of `model` at `temperature`, voting: the plainest step ensemble.
    fn samples(spec: &AgentSpec, model: Option<&str>) -> Result<Ensemble> {
        let model = model.unwrap_or(crate::engine::DEFAULT_MODEL);
        let text = format!(
            "name = {}\nstrategy = \"vote\"\n[[member]]\nmodel = {}\ntemperature = {}\ncount = {}\n",
            toml::Value::String(spec.name.clone().unwrap_or_default()),
            toml::Value::String(model.to_string()),
            spec.temperature,
            spec.samples
        );
        Ensemble::from_toml(&text, Path::new(""))
    }

    pub fn name(&self) -> &str {
        self.spec.name.as_deref().unwrap_or("agent")
    }

    /// Refuses `ask` rules where nobody can answer (server, no TTY), with what to write instead.
    pub fn check_unattended(&self) -> Result<()> {
        self.policy.check_unattended()?;
        for (name, d) in &self.delegates {
            d.check_unattended()
                .with_context(|| format!("in [agent.delegates.{name}]"))?;
        }
        Ok(())
    }

    /// Puts the limits given over the file's own.
    pub fn limit(&mut self, l: &Limits) {
        let s = &mut self.spec;
        s.max_steps = l.max_steps.unwrap_or(s.max_steps);
        s.max_tokens = l.max_tokens.unwrap_or(s.max_tokens);
        s.timeout_s = l.timeout.unwrap_or(s.timeout_s);
    }

    /// Replaces the model of each step (an ensemble or the file's members no longer decide).
    pub fn set_model(&mut self, model: &str) -> Result<()> {
        self.spec.model = Some(model.to_string());
        self.spec.ensemble = None;
        self.file = toml::Table::new();
        self.ensemble = Self::samples(&self.spec, Some(model))?;
        self.ensemble.max_tokens = self.spec.step_max_tokens;
        Ok(())
    }

    /// The file with `[agent]` as resolved: what `--resume` loads back.
    pub fn to_toml(&self) -> Result<String> {
        let mut file = self.file.clone();
        file.insert("agent".into(), toml::Value::try_from(&self.spec)?);
        Ok(toml::to_string(&file)?)
    }

    /// Writes [`to_toml`](Self::to_toml) to `path`.
    pub fn save(&self, path: &Path) -> Result<PathBuf> {
        std::fs::write(path, self.to_toml()?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AgentConfig> {
        AgentConfig::from_toml(text, "t", Path::new("."))
    }

    fn err(text: &str) -> String {
        format!("{:#}", load(text).unwrap_err())
    }

    #[test]
    fn the_preset_loads_and_round_trips_through_its_saved_form() {
        let a = AgentConfig::load("agent").unwrap();
        assert_eq!(a.name(), "agent");
        assert!(a.spec.tools.iter().any(|t| t == "python"));
        let b = AgentConfig::from_toml(&a.to_toml().unwrap(), "x", Path::new("")).unwrap();
        assert_eq!(a.spec, b.spec);
        assert_eq!(b.ensemble.max_tokens, a.spec.step_max_tokens);
    }

    #[test]
    fn unknown_tools_and_keys_fail_at_load() {
        let e = err("[agent]\nmodel = \"m\"\ntools = [\"python\", \"shell\"]");
        assert!(
            e.contains("unknown tool `shell`") && e.contains("read_file"),
            "{e}"
        );
        let e = err("[agent]\nmodel = \"m\"\nmax_stepz = 3");
        assert!(e.contains("max_stepz"), "{e}");
        let e = err("[agent]\nmodel = \"m\"\n[agent.delegates.x]\ntools = [\"rm\"]");
        assert!(
            e.contains("unknown tool `rm`") && e.contains("delegates.x"),
            "{e}"
        );
        assert!(err("name = \"x\"").contains("no [agent] section"));
        let e = err("[agent]\nmodel = \"m\"\nensemble = \"vote8\"");
        assert!(e.contains("say who decides each step once"), "{e}");
    }

    #[test]
    fn bad_globs_and_unattended_asks_fail_at_load() {
        let e = err(
            "[agent]\nmodel = \"m\"\n[[agent.policy]]\ntool = \"write_file\"\n\
             args = { path = \"out/[ab]\" }\ndecision = \"allow\"",
        );
        assert!(e.contains("out/[ab]"), "{e}");
        let e = err(
            "[agent]\nmodel = \"m\"\n[[agent.policy]]\ntool = \"python\"\ndecision = \"maybe\"",
        );
        assert!(e.contains("maybe"), "{e}");
        let a = load(
            "[agent]\nmodel = \"m\"\n[[agent.policy]]\ntool = \"*\"\ndecision = \"allow\"\n\
             [[agent.policy]]\ntool = \"python\"\ndecision = \"ask\"",
        )
        .unwrap();
        let e = format!("{:#}", a.check_unattended().unwrap_err());
        assert!(
            e.contains("policy rule 2 (python) says ask, but nobody can answer here")
                && e.contains("write allow or deny"),
            "{e}"
        );
        let d = load(
            "[agent]\nmodel = \"m\"\n[agent.delegates.c]\nmodel = \"m\"\n\
             [[agent.delegates.c.policy]]\ntool = \"*\"\ndecision = \"ask\"",
        )
        .unwrap();
        assert!(format!("{:#}", d.check_unattended().unwrap_err()).contains("delegates.c"));
        assert!(load("[agent]\nmodel = \"m\"")
            .unwrap()
            .check_unattended()
            .is_ok());
    }

    #[test]
    fn an_ensemble_file_with_an_agent_section_is_both() {
        let text = "strategy = \"vote\"\n[[member]]\nmodel = \"m\"\ncount = 3\n\
                    [agent]\ntools = [\"calculator\"]\n";
        let a = load(text).unwrap();
        assert_eq!(a.ensemble.agents().len(), 3);
        // The same file still loads as a plain ensemble.
        assert_eq!(
            Ensemble::from_toml(text, Path::new("."))
                .unwrap()
                .agents()
                .len(),
            3
        );
        // Its saved form keeps the members.
        let b = AgentConfig::from_toml(&a.to_toml().unwrap(), "x", Path::new("")).unwrap();
        assert_eq!(b.ensemble.agents().len(), 3);
        let e = err("strategy = \"refine\"\n[[member]]\nmodel = \"m\"\n[agent]\n");
        assert!(e.contains("cannot decide an agent's steps"), "{e}");
    }
}
