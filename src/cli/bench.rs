//! `conclave bench`: accuracy and cost against ensemble size on a dataset.
use crate::bench::dataset::Task;
use crate::bench::run::{self, Options};
use crate::engine::DEFAULT_MAX_TOKENS;
use crate::ensemble::confidence::Settings;
use crate::ensemble::{AnswerKind, Strategy};
use anyhow::Result;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// JSONL dataset (.jsonl or .jsonl.gz), one item a line; see the README for each format.
    #[arg(long)]
    pub dataset: PathBuf,
    /// What the dataset's items are.
    #[arg(long, ignore_case = true)]
    pub task: Task,
    /// Sample one model (K samples of one prompt, majority vote).
    #[arg(long, short)]
    pub model: Option<String>,
    /// An ensemble config (file or preset), or an agent (a file with an `[agent]` section, or
    /// an agent preset), run once per item at --sizes 1; repeat to compare several on one plot.
    #[arg(long = "config")]
    pub configs: Vec<String>,
    /// Ensemble sizes, comma-separated; the largest is generated, smaller ones sub-sampled.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub sizes: Vec<usize>,
    /// Use only the first K items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Random subsets drawn per item and size.
    #[arg(long, default_value_t = 200)]
    pub trials: usize,
    /// Seeds the samples and the subsets; a config's own seed is replaced by it.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory; rerunning with the same one resumes the run.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    #[arg(long, short = 'n', help = format!(
        "Most tokens per sample [default: {DEFAULT_MAX_TOKENS} for --model, a config's own `max_tokens`]"
    ))]
    pub max_tokens: Option<usize>,
    /// Sampling temperature for --model.
    #[arg(long, short, default_value_t = 0.7)]
    pub temperature: f32,
    /// Decide each sampled series by each of these strategies: those that decide from stored
    /// samples (vote, weighted, medoid, exec-vote, confidence, certainty) on one set of
    /// samples, at no extra cost; early-stop and adaptive, which sample as they go, run live
    /// at each size.
    #[arg(long, value_delimiter = ',', ignore_case = true)]
    pub strategies: Vec<Strategy>,
    /// `--task tools`: generate calls under the tool choice's grammar (the text stays free
    /// until a call starts; the call follows its function's schema) instead of decoding freely.
    #[arg(long)]
    pub constrain: bool,
    #[command(flatten)]
    pub confidence: Settings,
    /// Read answers this way instead of the task's own: `--task gsm8k --answer program` asks
    /// each agent for a Python program (the `pal` role) and scores the number it prints.
    #[arg(long, ignore_case = true)]
    pub answer: Option<AnswerKind>,
    /// Decide early-stop and adaptive on the stored samples instead of running them: a live
    /// run at size n draws the first n of them (the same seeds), and the replay cuts each
    /// where the engine's bar would have stopped it, or draws them in rounds, counting only
    /// the tokens the live run would spend. Needs a strategy decided from stored samples in
    /// --strategies (e.g. vote) to make them.
    #[arg(long)]
    pub replay_online: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let opts = Options {
        dataset: args.dataset,
        task: args.task,
        model: args.model,
        configs: args.configs,
        sizes: args.sizes,
        limit: args.limit,
        trials: args.trials,
        seed: args.seed,
        out: args.out,
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        strategies: args.strategies,
        constrain: args.constrain,
        confidence: args.confidence,
        answer: args.answer,
        replay_online: args.replay_online,
    };
    let outcome = run::run(&opts)?;
    if !outcome.plot_text {
        eprintln!(
            "warning: no font found (set CONCLAVE_FONT to a .ttf file): the plots have no text"
        );
    }
    print!("{}", outcome.summary.markdown());
    eprintln!(
        "{} item(s) generated, {} read back; results in {}",
        outcome.generated,
        outcome.resumed,
        opts.out.display()
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The --out directories of finished `conclave bench` runs of one task.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where the merged summary and plots go.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn merge(args: MergeArgs) -> Result<()> {
    let (summary, text) = crate::bench::merge::merge(&args.runs, &args.out)?;
    if !text {
        eprintln!(
            "warning: no font found (set CONCLAVE_FONT to a .ttf file): the plots have no text"
        );
    }
    print!("{}", summary.markdown());
    eprintln!(
        "merged {} run(s) into {}",
        args.runs.len(),
        args.out.display()
    );
    Ok(())
}
