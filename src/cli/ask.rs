//! `conclave ask`: one model answers one prompt, through the engine as the server's requests do.
use super::ensemble::{self, EnsembleArgs, Question};
use crate::engine::sampler::random_seed;
use crate::engine::{
    model_name, Engine, Job, Message, Piece, Prompt, SamplingParams, DEFAULT_MAX_TOKENS,
    DEFAULT_MODEL,
};
use anyhow::Result;
use serde_json::json;
use std::io::Write;

/// The system prompt unless one is given. SmolLM2's template falls back to a long persona
/// prompt under which the 135M model answers greedy questions poorly; a plain one works better.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

#[derive(Debug, clap::Args)]
pub struct AskArgs {
    /// The question or instruction.
    pub prompt: String,
    /// Catalog name, path to a .gguf file, or hf:ORG/REPO[:QUANT|FILE].
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// System prompt; an empty string leaves the chat template's own default in place.
    #[arg(long, default_value = DEFAULT_SYSTEM)]
    pub system: String,
    #[command(flatten)]
    pub sampling: SamplingParams,
    #[arg(long, short = 'n', help = format!(
        "Most tokens to generate [default: {DEFAULT_MAX_TOKENS}, or the ensemble config's `max_tokens`]"
    ))]
    pub max_tokens: Option<usize>,
    /// Random seed; the same seed gives the same answer. Random when not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this text (may be repeated).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Send the prompt as raw text, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object with the answer and token counts instead of streaming.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub ensemble: EnsembleArgs,
}

pub fn run(args: AskArgs) -> Result<()> {
    if args.ensemble.is_requested() {
        let question = Question {
            prompt: &args.prompt,
            model: &args.model,
            temperature: args.sampling.temperature,
            max_tokens: args.max_tokens,
            seed: args.seed,
            json: args.json,
        };
        return ensemble::run(&args.ensemble, &question);
    }
    let prompt = if args.raw {
        Prompt::Text(args.prompt.clone())
    } else {
        let mut messages = Vec::new();
        if !args.system.is_empty() {
            messages.push(Message::new("system", &args.system));
        }
        messages.push(Message::new("user", &args.prompt));
        Prompt::Chat(messages)
    };
    let seed = args.seed.unwrap_or_else(random_seed);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Piece>();
    let job = Job {
        model: args.model.clone(),
        prompt,
        max_tokens: args.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        stop: args.stop.clone(),
        samples: vec![SamplingParams {
            seed,
            ..args.sampling.clone()
        }],
        ignore_eos: false,
        stream: (!args.json).then_some(tx),
        constraint: None,
    };
    let engine = Engine::start();
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let output = rt.block_on(async {
        // The stream ends when the engine drops the job's sender, after its last piece.
        let print = async {
            let mut out = std::io::stdout();
            while let Some(piece) = rx.recv().await {
                let _ = write!(out, "{}", piece.text);
                let _ = out.flush();
            }
        };
        let (output, ()) = tokio::join!(engine.generate(job), print);
        output
    })?;
    let answer = &output.completions[0];
    if args.json {
        let v = json!({
            "model": model_name(&args.model),
            "answer": answer.text,
            "finish_reason": answer.finish,
            "seed": seed,
            "prompt_tokens": output.prompt_tokens,
            "completion_tokens": output.completion_tokens(),
            "prefill_tok_s": round1(output.prefill_tok_s()),
            "decode_tok_s": round1(output.decode_tok_s()),
        });
        println!("{v}");
    } else {
        println!();
    }
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
