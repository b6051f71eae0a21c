//! `conclave exec FILE.py`: runs a Python file in the sandbox and prints how it ended as JSON.
use crate::tools::{run_python, Limits};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The Python file to run (it runs as main.py in a fresh, empty work dir).
    pub file: PathBuf,
    /// Wall-clock limit in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// CPU-time limit in seconds [default: the wall-clock limit, rounded up].
    #[arg(long)]
    pub cpu: Option<u64>,
    /// Address-space limit in MB.
    #[arg(long, default_value_t = 512)]
    pub memory: u64,
    /// Bytes of stdout and of stderr kept; more stops the program.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_output: usize,
    /// A file whose text is the program's standard input.
    #[arg(long)]
    pub stdin: Option<PathBuf>,
}

pub fn run(args: ExecArgs) -> Result<()> {
    let code = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let stdin = match &args.stdin {
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        ),
        None => None,
    };
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    let limits = Limits {
        timeout: Duration::from_secs_f64(args.timeout),
        cpu_seconds: args.cpu.unwrap_or(args.timeout.ceil() as u64),
        memory_mb: args.memory,
        max_output_bytes: args.max_output,
        ..Limits::default()
    };
    let outcome = run_python(&code, stdin.as_deref(), &limits)?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(())
}
