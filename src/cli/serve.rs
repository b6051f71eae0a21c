//! `conclave serve`: the OpenAI-compatible API (see `crate::server`).
use crate::server::{self, Options};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; anything but loopback needs --api-key or --insecure.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Ensemble file to serve as `conclave/<file stem>` (may be repeated); the presets
    /// (vote8, mixed, council, judged, debate) are served as well.
    #[arg(long)]
    pub config: Vec<PathBuf>,
    /// Comma-separated models to serve [default: every catalog model already pulled].
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Require this key as `Authorization: Bearer KEY`.
    #[arg(long, conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// Read the key from this file (its first line).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Requests queued or running at once; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Seconds a request may take before it is answered 504 (0: no limit).
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Largest request body in bytes; larger are answered 413.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Listen on a non-loopback address without an API key.
    #[arg(long)]
    pub insecure: bool,
    /// Serve ensembles that use tools (`refine`, `exec-vote`, agents with `tools = [...]`);
    /// without it they are not listed and requests for them are refused.
    #[arg(long)]
    pub allow_tools: bool,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let api_key = match &args.api_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --api-key-file {}", path.display()))?;
            let key = text.lines().next().unwrap_or("").trim().to_string();
            anyhow::ensure!(
                !key.is_empty(),
                "--api-key-file {} is empty",
                path.display()
            );
            Some(key)
        }
        None => args.api_key.clone(),
    };
    anyhow::ensure!(
        args.request_timeout >= 0.0 && args.request_timeout.is_finite(),
        "--request-timeout must be a number of seconds, 0 for no limit"
    );
    server::run(Options {
        host: args.host,
        port: args.port,
        api_key,
        insecure: args.insecure,
        max_queue: args.max_queue,
        request_timeout: (args.request_timeout > 0.0)
            .then(|| Duration::from_secs_f64(args.request_timeout)),
        body_limit: args.max_body,
        models: args.models,
        configs: args.config,
        allow_tools: args.allow_tools,
    })
}
