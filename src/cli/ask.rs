//! `conclave ask`: one model answers one prompt.
use crate::engine::sampler::random_seed;
use crate::engine::{self, Message, Prompt, Request, SamplingParams, DEFAULT_MODEL};
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
    /// Catalog name or path to a .gguf file.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// System prompt; an empty string leaves the chat template's own default in place.
    #[arg(long, default_value = DEFAULT_SYSTEM)]
    pub system: String,
    /// Sampling temperature; 0 always takes the most likely token.
    #[arg(long, short, default_value_t = 0.8)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this total probability (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise tokens seen in the last 64 (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Most tokens to generate [default: 512, or the ensemble config's `max_tokens`].
    #[arg(long, short = 'n')]
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
    pub ensemble: super::ensemble::EnsembleArgs,
}

pub fn run(args: AskArgs) -> Result<()> {
    if args.ensemble.is_requested() {
        return super::ensemble::run(&args);
    }
    let model = engine::load(&args.model)?;
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
    let (prompt, mut stop) = prompt.encode(&model)?;
    tracing::debug!("prompt tokens: {prompt:?}");
    let seed = args.seed.unwrap_or_else(random_seed);
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        seed,
        ..Default::default()
    };
    stop.extend(args.stop.iter().cloned());
    let req = Request {
        prompt,
        max_tokens: args.max_tokens.unwrap_or(512),
        stop,
        samples: vec![sampling],
        ignore_eos: false,
    };
    let stream = !args.json;
    let mut out = std::io::stdout();
    let output = engine::generate(&model, &req, &mut |_, piece| {
        if stream {
            let _ = write!(out, "{piece}");
            let _ = out.flush();
        }
    })?;
    let answer = &output.completions[0];
    if args.json {
        let v = json!({
            "model": model.name,
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
