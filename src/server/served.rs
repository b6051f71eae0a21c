//! What a server answers for: local models (catalog models already pulled, or `--models`),
//! ensembles (`conclave/<preset>` for the compiled-in presets and each `--config` file) and
//! agents (`conclave/<name>` for each `--config` file with an `[agent]` section).
//!
//! Requests name models only from these lists: a request can never make the server read a
//! file, download a model or load one it was not started with.
use super::errors::ApiError;
use crate::ensemble::agent::AgentConfig;
use crate::ensemble::config::preset_names;
use crate::ensemble::{AnswerKind, Ensemble, Member, Strategy, WeightBy};
use crate::store::fetch;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The prefix that marks an ensemble in a request's `model`.
pub const ENSEMBLE_PREFIX: &str = "conclave/";

#[derive(Debug, Clone)]
enum Source {
    Preset(&'static str),
    File(PathBuf),
}

#[derive(Debug)]
pub struct Served {
    /// Model ids as requests name them (catalog names or the `.gguf` paths given).
    pub models: Vec<String>,
    /// Ensemble name (after `conclave/`) → where it comes from, for those whose local models
    /// are all served.
    ensembles: BTreeMap<String, Source>,
    /// Agent name (after `conclave/`) → its config, loaded and checked at start.
    agents: BTreeMap<String, AgentConfig>,
    allow_tools: bool,
}

impl Served {
    /// `models`: empty for every catalog model already on disk. `configs`: ensemble files,
    /// served as `conclave/<file stem>` (a file named like a preset replaces it).
    /// Without `allow_tools`, presets that use tools are left out and such a file is an error.
    pub fn new(models: &[String], configs: &[PathBuf], allow_tools: bool) -> Result<Self> {
        let models: Vec<String> = if models.is_empty() {
            fetch::status()
                .into_iter()
                .filter(|(_, path)| path.is_some())
                .map(|(e, _)| e.name)
                .collect()
        } else {
            for m in models {
                // Never downloads: a server starts from what is on disk.
                fetch::resolve(m, false).with_context(|| format!("--models {m}"))?;
            }
            models.to_vec()
        };
        if models.is_empty() {
            bail!("no models to serve: pull one first (`conclave models pull smollm2-135m`)");
        }
        let mut served = Self {
            models,
            ensembles: BTreeMap::new(),
            agents: BTreeMap::new(),
            allow_tools,
        };
        for name in preset_names() {
            let src = Source::Preset(name);
            let ens = served.build(&src, None)?;
            // A preset whose models this server lacks, or that needs tools it may not use, is
            // left out, not an error.
            if served.missing(&ens).is_none() && (allow_tools || !ens.uses_tools()) {
                served.ensembles.insert(name.to_string(), src);
            }
        }
        for path in configs {
            if path.is_file() && AgentConfig::is_agent(&path.display().to_string()) {
                served.add_agent(path)?;
                continue;
            }
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .with_context(|| format!("--config {}: no file name", path.display()))?;
            let src = Source::File(path.clone());
            let ens = served.build(&src, None)?;
            if ens.uses_tools() && !allow_tools {
                bail!(
                    "--config {}: this ensemble uses tools; start the server with --allow-tools \
                     to serve it",
                    path.display()
                );
            }
            if let Some(m) = served.missing(&ens) {
                bail!(
                    "--config {}: its model `{m}` is not served (add it to --models)",
                    path.display()
                );
            }
            served.ensembles.insert(name, src);
        }
        Ok(served)
    }

    /// Serves the agent file `path` as `conclave/<its name>`: it runs tools, so only with
    /// `allow_tools`, and nobody can answer its `ask` rules.
    fn add_agent(&mut self, path: &Path) -> Result<()> {
        let at = || format!("--config {}", path.display());
        let cfg = AgentConfig::load(&path.display().to_string()).with_context(at)?;
        if !self.allow_tools {
            bail!(
                "--config {}: an agent runs tools; start the server with --allow-tools to \
                 serve it",
                path.display()
            );
        }
        cfg.check_unattended().with_context(at)?;
        let mut steps = vec![&cfg];
        while let Some(c) = steps.pop() {
            if let Some(m) = self.missing(&c.ensemble) {
                bail!(
                    "{}: its model `{m}` is not served (add it to --models)",
                    at()
                );
            }
            steps.extend(c.delegates.values());
        }
        let name = cfg.name().to_string();
        if self.agents.contains_key(&name) || self.ensembles.contains_key(&name) {
            bail!(
                "{}: `conclave/{name}` is served already; give the agent another `name`",
                at()
            );
        }
        self.agents.insert(name, cfg);
        Ok(())
    }

    /// The agent `conclave/<name>` names, if it is one.
    pub fn agent(&self, name: &str) -> Option<AgentConfig> {
        self.agents.get(name).cloned()
    }

    fn build(&self, src: &Source, seed: Option<u64>) -> Result<Ensemble> {
        match src {
            Source::Preset(name) => Ensemble::load_seeded(name, seed),
            Source::File(path) => Ensemble::load_seeded(&path.display().to_string(), seed)
                .with_context(|| format!("--config {}", path.display())),
        }
    }

    /// Ensemble and agent ids as requests name them: `conclave/<name>`.
    pub fn ensemble_ids(&self) -> Vec<String> {
        self.ensembles
            .keys()
            .chain(self.agents.keys())
            .map(|k| format!("{ENSEMBLE_PREFIX}{k}"))
            .collect()
    }

    /// The model a request names, if this server serves it.
    pub fn model(&self, id: &str) -> Result<String, ApiError> {
        if self.models.iter().any(|m| m == id) {
            return Ok(id.to_string());
        }
        Err(ApiError::model_not_found(
            id,
            &format!(
                "this server serves {} (GET /v1/models lists them)",
                self.models.join(", ")
            ),
        ))
    }

    /// The ensemble `conclave/<name>` names, with the request's `ensemble` overrides applied.
    pub fn ensemble(
        &self,
        name: &str,
        seed: Option<u64>,
        overrides: Option<&Value>,
    ) -> Result<Ensemble, ApiError> {
        let src = self.ensembles.get(name).ok_or_else(|| {
            ApiError::model_not_found(
                &format!("{ENSEMBLE_PREFIX}{name}"),
                &format!("ensembles here: {}", self.ensemble_ids().join(", ")),
            )
        })?;
        let mut ens = self.build(src, seed).map_err(|e| ApiError::internal(&e))?;
        if let Some(v) = overrides {
            apply(&mut ens, v, seed)
                .map_err(|e| ApiError::invalid(Some("ensemble"), format!("{e:#}")))?;
            if let Some(m) = self.missing(&ens) {
                return Err(ApiError::invalid(
                    Some("ensemble"),
                    format!(
                        "the model `{m}` is not served here (served: {})",
                        self.models.join(", ")
                    ),
                ));
            }
        }
        if ens.uses_tools() && !self.allow_tools {
            return Err(ApiError::invalid(
                Some("ensemble"),
                "this ensemble uses tools (a verifying strategy or agents with `tools`), and \
                 this server was started without --allow-tools"
                    .to_string(),
            ));
        }
        Ok(ens)
    }

    /// The first local model `ens` needs (agents and judges, nested ones too) that this
    /// server does not serve.
    fn missing(&self, ens: &Ensemble) -> Option<String> {
        let mut needed: Vec<&str> = Vec::new();
        if let Some(j) = &ens.judge {
            needed.push(&j.model);
        }
        for m in &ens.members {
            match m {
                Member::Agent(a) if a.remote.is_none() => needed.push(&a.model),
                Member::Agent(_) => {}
                Member::Ensemble(sub) => {
                    if let Some(m) = self.missing(sub) {
                        return Some(m);
                    }
                }
            }
        }
        needed
            .into_iter()
            .find(|m| !self.models.iter().any(|s| s == m))
            .map(String::from)
    }
}

/// A request's `ensemble` object: the keys of an ensemble file, as JSON. `members` (and
/// `judge`) replace the preset's; the other keys override its settings one by one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Overrides {
    strategy: Option<Strategy>,
    answer: Option<AnswerKind>,
    weight_by: Option<WeightBy>,
    max_tokens: Option<usize>,
    token_budget: Option<usize>,
    rounds: Option<usize>,
    #[serde(alias = "member")]
    members: Option<Value>,
    judge: Option<Value>,
    roles: Option<Value>,
}

fn apply(ens: &mut Ensemble, v: &Value, seed: Option<u64>) -> Result<()> {
    let o: Overrides = serde_json::from_value(v.clone())?;
    if o.roles.is_some() && o.members.is_none() && o.judge.is_none() {
        bail!("`roles` apply to inline `members` or `judge` only");
    }
    if o.members.is_some() || o.judge.is_some() {
        let mut spec = v.clone();
        if o.members.is_none() {
            // A new judge for the preset's agents: parse it beside a placeholder member.
            spec["members"] = serde_json::json!([{"model": "placeholder"}]);
        }
        let inline = Ensemble::from_untrusted_json(&spec, seed)?;
        if o.members.is_some() {
            ens.members = inline.members;
        }
        if o.judge.is_some() {
            ens.judge = inline.judge;
        }
    }
    if let Some(s) = o.strategy {
        ens.strategy = s;
    }
    if let Some(a) = o.answer {
        ens.set_answer(a)?;
    }
    if let Some(w) = o.weight_by {
        ens.weight_by = w;
    }
    if let Some(n) = o.max_tokens {
        ens.max_tokens = n;
    }
    if o.token_budget.is_some() {
        ens.token_budget = o.token_budget;
    }
    if let Some(r) = o.rounds {
        ens.rounds = r.max(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn served() -> Served {
        Served {
            // vote8 runs qwen; smollm2 is what the overrides name.
            models: vec!["smollm2-135m".into(), "qwen2.5-coder-0.5b".into()],
            ensembles: [("vote8".to_string(), Source::Preset("vote8"))].into(),
            agents: BTreeMap::new(),
            allow_tools: false,
        }
    }

    #[test]
    fn overrides_replace_agents_and_settings() {
        let s = served();
        let v = json!({"strategy": "medoid", "max_tokens": 8, "members": [
            {"model": "smollm2-135m", "role": "solver", "count": 2}]});
        let e = s.ensemble("vote8", Some(1), Some(&v)).unwrap();
        assert_eq!(
            (e.strategy, e.max_tokens, e.agents().len()),
            (Strategy::Medoid, 8, 2)
        );
        // The preset's own settings stay where the request says nothing.
        let e = s
            .ensemble("vote8", None, Some(&json!({"max_tokens": 5})))
            .unwrap();
        assert_eq!((e.answer, e.agents().len()), (AnswerKind::Number, 8));
    }

    #[test]
    fn a_request_cannot_reach_files_urls_or_unserved_models() {
        let s = served();
        let err = |v: Value| s.ensemble("vote8", None, Some(&v)).unwrap_err();
        let e = err(json!({"members": [{"model": "/tmp/x.gguf"}]}));
        assert!(e.message.contains("not served"), "{}", e.message);
        let e = err(json!({"members": [{"remote": {"url": "http://x", "model": "m"}}]}));
        assert!(e.message.contains("remote members"), "{}", e.message);
        let e = err(json!({"members": [{"ensemble": "/etc/passwd"}]}));
        assert!(e.message.contains("no ensemble config"), "{}", e.message);
        let e = err(json!({"stratgy": "vote"}));
        assert_eq!(e.param.as_deref(), Some("ensemble"));
        let e = s.ensemble("nope", None, None).unwrap_err();
        assert_eq!(e.status.as_u16(), 404);
    }
}
