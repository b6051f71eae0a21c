//! `conclave ask --config FILE | --agents N …`: an ensemble answers, and the trace shows why.
use crate::engine::sampler::random_seed;
use crate::engine::{Engine, DEFAULT_MAX_TOKENS};
use crate::ensemble::config::Quick;
use crate::ensemble::{AnswerKind, Ensemble, Runner, Strategy, Trace};
use anyhow::{Context, Result};
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct EnsembleArgs {
    /// Ensemble config: a TOML file or a preset (vote8, mixed, council, judged, debate, refine).
    /// `--seed` replaces the file's seed.
    #[arg(long, help_heading = "Ensemble")]
    pub config: Option<String>,
    /// Run N agents instead of one (with --models, --roles, --temperatures).
    #[arg(long, help_heading = "Ensemble")]
    pub agents: Option<usize>,
    /// Comma-separated temperatures, cycled over the agents.
    #[arg(long, value_delimiter = ',', help_heading = "Ensemble")]
    pub temperatures: Vec<f32>,
    /// Comma-separated models, cycled over the agents.
    #[arg(long, value_delimiter = ',', help_heading = "Ensemble")]
    pub models: Vec<String>,
    /// Comma-separated roles from configs/roles.toml, cycled over the agents.
    #[arg(long, value_delimiter = ',', help_heading = "Ensemble")]
    pub roles: Vec<String>,
    /// How answers are combined.
    #[arg(long, ignore_case = true, help_heading = "Ensemble")]
    pub strategy: Option<Strategy>,
    /// What an answer is, for voting. `program`: each agent writes a Python program that the
    /// sandbox runs, and the number it prints is its answer (agents get the `pal` role unless
    /// --roles, or a config written for programs, says otherwise).
    #[arg(long, ignore_case = true, help_heading = "Ensemble")]
    pub answer: Option<AnswerKind>,
    /// Comma-separated tools every agent may use, on top of the config's.
    #[arg(
        long,
        value_delimiter = ',',
        ignore_case = true,
        help_heading = "Ensemble"
    )]
    pub tools: Vec<crate::tools::Tool>,
    /// Write the full JSON trace (every agent's text, answer, votes) to this file.
    #[arg(long, help_heading = "Ensemble")]
    pub trace: Option<std::path::PathBuf>,
}

impl EnsembleArgs {
    pub fn is_requested(&self) -> bool {
        self.config.is_some() || self.agents.is_some()
    }
}

/// What `ask` was given besides the ensemble options: a quick ensemble's defaults.
pub struct Question<'a> {
    pub prompt: &'a str,
    pub model: &'a str,
    pub temperature: f32,
    /// Replaces a config's `max_tokens` when given.
    pub max_tokens: Option<usize>,
    /// Replaces a config's seed when given.
    pub seed: Option<u64>,
    pub json: bool,
}

pub fn run(e: &EnsembleArgs, args: &Question) -> Result<()> {
    let mut ens = match &e.config {
        Some(c) => Ensemble::load_seeded(c, args.seed)?,
        None => {
            let models = if e.models.is_empty() {
                vec![args.model.to_string()]
            } else {
                e.models.clone()
            };
            let temps = if e.temperatures.is_empty() {
                vec![args.temperature]
            } else {
                e.temperatures.clone()
            };
            Ensemble::quick(&Quick {
                agents: e.agents.unwrap_or(1),
                models,
                roles: e.roles.clone(),
                temperatures: temps,
                strategy: e.strategy.unwrap_or(Strategy::Vote),
                answer: e.answer.unwrap_or(AnswerKind::Text),
                max_tokens: args.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                seed: args.seed.unwrap_or_else(random_seed),
            })?
        }
    };
    if let Some(s) = e.strategy {
        ens.strategy = s;
    }
    if let Some(a) = e.answer {
        ens.set_answer(a)?;
    }
    if let Some(n) = args.max_tokens {
        ens.max_tokens = n;
    }
    for &t in &e.tools {
        ens.allow_tool(t);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let trace = rt.block_on(async {
        let mut runner = Runner::new(Engine::start()).on_progress(|done, total| {
            eprint!("\ragents finished: {done}/{total}");
            if done >= total {
                eprintln!();
            }
        });
        runner.run(&ens, args.prompt).await
    })?;
    let json = serde_json::to_string_pretty(&trace)?;
    if let Some(path) = &e.trace {
        std::fs::write(path, &json)
            .with_context(|| format!("cannot write trace {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print_human(&trace)?;
    }
    Ok(())
}

fn print_human(t: &Trace) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", t.answer.as_deref().unwrap_or("(no answer)"))?;
    writeln!(out)?;
    writeln!(
        out,
        "{:>3}  {:<20} {:<13} {:>5}  {:<16} {:>6}  {:>7}",
        "#", "model", "role", "T", "answer", "tokens", "logprob"
    )?;
    for (i, a) in t.agents.iter().enumerate() {
        let mark = if t.winner == Some(i) { "*" } else { " " };
        let ans = a.extracted.as_deref().unwrap_or("-");
        let ans: String = ans.chars().take(16).collect();
        writeln!(
            out,
            "{:>2}{mark}  {:<20} {:<13} {:>5.2}  {:<16} {:>6}  {:>7.3}",
            i + 1,
            a.model,
            a.role,
            a.temperature,
            ans,
            a.tokens,
            a.logprob_mean
        )?;
    }
    let votes: Vec<String> = t
        .votes
        .iter()
        .map(|(k, v)| format!("{k}: {v:.3}"))
        .collect();
    writeln!(out, "\nvotes: {}", votes.join(", "))?;
    writeln!(
        out,
        "strategy {}, agreement {:.0}%, {} prompt + {} completion tokens, {:.1} s",
        t.strategy,
        t.agreement * 100.0,
        t.usage.prompt_tokens,
        t.usage.completion_tokens,
        t.seconds
    )?;
    if let Some(tb) = &t.tie_break {
        writeln!(out, "{tb}")?;
    }
    for n in &t.notes {
        writeln!(out, "note: {n}")?;
    }
    Ok(())
}
