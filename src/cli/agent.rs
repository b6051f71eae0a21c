//! `conclave agent "TASK"`: an agent works on a task with tools until it answers or a limit
//! stops it; `--resume DIR` continues a run that was killed.
use crate::engine::Engine;
use crate::ensemble::agent::{self, AgentConfig, Limits, RunOptions, RunTrace, Stop, Task};
use anyhow::{Context, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The task, in words.
    #[arg(required_unless_present = "resume")]
    pub task: Option<String>,
    /// An agent file, an ensemble file with an [agent] section, or a preset (`agent`).
    #[arg(long, default_value = "agent")]
    pub config: String,
    /// Each step's model, in place of the config's agents.
    #[arg(long)]
    pub model: Option<String>,
    /// The run directory (journal, workspace, trace) [default:
    /// ./conclave-runs/<UTC yyyymmdd-HHMMSS>-<4 hex>].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub limits: Limits,
    /// Also write the run's trace (JSON) here.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Print the whole trace as JSON in place of the answer.
    #[arg(long)]
    pub json: bool,
    /// Continue the run journaled in DIR after its last completed step.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["task", "model", "dir", "max_steps", "max_tokens", "timeout"])]
    pub resume: Option<PathBuf>,
}

pub fn run(args: AgentArgs) -> Result<()> {
    let opts = RunOptions {
        interactive: std::io::stdin().is_terminal(),
        progress: true,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (trace, dir) = match &args.resume {
        Some(dir) => {
            eprintln!("run dir: {}", dir.display());
            let t = rt.block_on(agent::resume(
                Engine::with_default_prefix_cache(),
                dir,
                &opts,
            ))?;
            (t, dir.clone())
        }
        None => {
            let mut cfg = AgentConfig::load(&args.config)?;
            if let Some(m) = &args.model {
                cfg.set_model(m)?;
            }
            cfg.limit(&args.limits);
            if !opts.interactive {
                cfg.check_unattended()
                    .context("stdin is not a terminal, so nobody can answer `ask`")?;
            }
            let dir = args.dir.clone().unwrap_or_else(default_dir);
            eprintln!("run dir: {}", dir.display());
            let task = Task::Text(args.task.clone().unwrap_or_default());
            let t = rt.block_on(agent::run(
                Engine::with_default_prefix_cache(),
                &cfg,
                task,
                &dir,
                &opts,
            ))?;
            (t, dir)
        }
    };
    report(&args, &trace, &dir)
}

fn report(args: &AgentArgs, t: &RunTrace, dir: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(t)?;
    if let Some(path) = &args.trace {
        std::fs::write(path, &json)
            .with_context(|| format!("cannot write trace {}", path.display()))?;
    }
    eprintln!(
        "stopped: {} after {} step(s), {} prompt ({} cached) + {} completion tokens, {:.1} s",
        t.stop,
        t.steps.len(),
        t.usage.prompt_tokens,
        t.usage.cached_tokens,
        t.usage.completion_tokens,
        t.seconds
    );
    for n in &t.notes {
        eprintln!("note: {n}");
    }
    if args.json {
        println!("{json}");
    } else if let Some(a) = &t.answer {
        println!("{a}");
    }
    if t.stop != Stop::Answer {
        eprintln!(
            "the run can go on with: conclave agent --resume {}",
            dir.display()
        );
        crate::telemetry::shutdown();
        std::process::exit(3);
    }
    Ok(())
}

/// ./conclave-runs/<UTC yyyymmdd-HHMMSS>-<4 hex>.
fn default_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (y, m, d) = civil(secs / 86_400);
    let t = secs % 86_400;
    PathBuf::from("conclave-runs").join(format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{:04x}",
        t / 3600,
        t / 60 % 60,
        t % 60,
        rand::random::<u16>()
    ))
}

/// The date of a day count since 1970-01-01: Howard Hinnant's `civil_from_days`
/// (http://howardhinnant.github.io/date_algorithms.html), for days after the epoch.
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::civil;

    #[test]
    fn days_become_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(59), (1970, 3, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(20_429), (2025, 12, 7));
    }
}
