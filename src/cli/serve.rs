//! `conclave serve`: the OpenAI-compatible API (see `crate::server`).
use crate::server::{self, Options};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub options: Options,
    /// Read the API key from this file (its first line).
    #[arg(long, conflicts_with = "api_key")]
    pub api_key_file: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let mut options = args.options;
    if let Some(path) = &args.api_key_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --api-key-file {}", path.display()))?;
        let key = text.lines().next().unwrap_or("").trim().to_string();
        anyhow::ensure!(
            !key.is_empty(),
            "--api-key-file {} is empty",
            path.display()
        );
        options.api_key = Some(key);
    }
    server::run(options)
}
