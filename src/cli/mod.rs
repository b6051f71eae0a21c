//! The `conclave` command line: one module per command.
pub mod agent;
pub mod ask;
pub mod bench;
pub mod bench_speed;
pub mod doctor;
pub mod ensemble;
pub mod exec;
pub mod models;
pub mod serve;
pub mod tokenize;
pub mod trace;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Run small open-weight GGUF models locally, alone or as an ensemble of agents.
///
/// Models are named from the catalog (`conclave models list`), given as a path to a .gguf
/// file, or as `hf:ORG/REPO[:QUANT|FILE]` from the Hugging Face hub. A model is downloaded
/// on first use; nothing else needs the network.
#[derive(Debug, Parser)]
#[command(name = "conclave", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer a prompt with one model, streaming the answer to stdout.
    Ask(Box<ask::AskArgs>),
    /// Work on a task with tools (python, files, sub-agents) until an answer or a limit.
    Agent(Box<agent::AgentArgs>),
    /// Accuracy and cost against ensemble size on a dataset (tables and plots in --out).
    Bench(Box<bench::BenchArgs>),
    /// Put the series of several finished bench runs in one summary and one set of plots.
    BenchMerge(bench::MergeArgs),
    /// Measure N samples of one prompt against one: wall time and decode tokens/s.
    BenchSpeed(bench_speed::BenchSpeedArgs),
    /// Print the token ids of a text as a JSON array (or, with --decode, the text of ids).
    Tokenize(tokenize::TokenizeArgs),
    /// Run a Python file in the sandbox and print how it ended as JSON.
    Exec(exec::ExecArgs),
    /// Show what this machine offers: sandbox isolation, Python, models, the kernel path.
    Doctor(doctor::DoctorArgs),
    /// List, pull and locate catalog models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Serve an OpenAI-compatible API whose models may be ensembles (`conclave/vote8`).
    Serve(Box<serve::ServeArgs>),
    /// Show a trace file (`ask --trace`, `agent --trace`) as a tree in the terminal.
    #[command(subcommand)]
    Trace(trace::TraceCommand),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Ask(args) => ask::run(*args),
        Command::Agent(args) => agent::run(*args),
        Command::Tokenize(args) => tokenize::run(args),
        Command::Bench(args) => bench::run(*args),
        Command::BenchMerge(args) => bench::merge(args),
        Command::BenchSpeed(args) => bench_speed::run(args),
        Command::Models(cmd) => models::run(cmd),
        Command::Serve(args) => serve::run(*args),
        Command::Exec(args) => exec::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Trace(cmd) => trace::run(cmd),
    }
}
