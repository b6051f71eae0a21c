//! `conclave bench-speed`: wall time and aggregate decode speed for N samples of one prompt.
use crate::bench::speed;
use crate::engine::{GrammarArgs, DEFAULT_MODEL};
use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct BenchSpeedArgs {
    /// Catalog name or path to a .gguf file.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Ensemble sizes to measure, comma-separated; ratios are against the first.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub sizes: Vec<usize>,
    /// Tokens each sample generates.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Prefill exactly this many prompt tokens (the prompt's text repeated, no chat
    /// template), as llama-bench's `-p`; default: the prompt in the chat template.
    #[arg(long)]
    pub prompt_tokens: Option<usize>,
    /// Runs per size, the sizes taking turns; each row is their mean (llama-bench's `-r`).
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Every sample decodes under this constraint, to compare with unconstrained decoding. A
    /// sample ends when its output is complete: give a grammar whose outputs run past
    /// --max-tokens (e.g. an array schema with a large minItems).
    #[command(flatten)]
    pub grammar: GrammarArgs,
}

pub fn run(args: BenchSpeedArgs) -> Result<()> {
    anyhow::ensure!(
        !args.sizes.is_empty() && !args.sizes.contains(&0),
        "--sizes needs positive sizes"
    );
    anyhow::ensure!(
        args.prompt_tokens != Some(0),
        "--prompt-tokens needs at least one token"
    );
    if !args.json {
        println!(
            "{:>4}  {:>9}  {:>10}  {:>15}  {:>14}  {:>12}  {:>10}  {:>11}",
            "N",
            "seconds",
            "prefill s",
            "prefill tok/s",
            "decode tok/s",
            "tok/s ratio",
            "wall ratio",
            "wall range"
        );
    }
    let json = args.json;
    let report = speed::run(
        &args.model,
        &args.sizes,
        args.max_tokens,
        args.prompt_tokens,
        args.repeats,
        args.grammar.constraint()?,
        |r| {
            if !json {
                println!(
                    "{:>4}  {:>9.2}  {:>10.3}  {:>15.1}  {:>14.1}  {:>12.2}  {:>10.2}  {:>11}",
                    r.n,
                    r.seconds,
                    r.prefill_seconds,
                    r.prefill_tok_s,
                    r.decode_tok_s,
                    r.ratio,
                    r.wall_ratio,
                    format!("{:.2}–{:.2}", r.wall_ratio_min, r.wall_ratio_max)
                );
            }
        },
    )
    .map_err(|e| args.grammar.explain(e))?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
