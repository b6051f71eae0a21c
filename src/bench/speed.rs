//! `conclave bench-speed`: what N samples of one prompt cost against one.
//!
//! Each size runs one prefill and N sequences decoded as one batch, exactly `max_tokens`
//! each (end-of-turn tokens ignored), so sizes compare like for like. With `repeats` > 1 every
//! size runs that many times, the sizes taking turns, and its row is the mean, with the
//! range of the wall ratio over the turns.
use crate::engine::{model_name, Constraint, Engine, Job, Message, Output, Prompt, SamplingParams};
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct SpeedRow {
    pub n: usize,
    /// Wall time: prefill plus decode.
    pub seconds: f64,
    pub prefill_seconds: f64,
    /// Prompt tokens per second of the prefill.
    pub prefill_tok_s: f64,
    /// Aggregate decode tokens per second over all N sequences.
    pub decode_tok_s: f64,
    /// decode_tok_s relative to N = 1 (the first size).
    pub ratio: f64,
    /// Wall time relative to N = 1.
    pub wall_ratio: f64,
    /// The lowest and highest wall ratio of a single repeat (this size's time over the first
    /// size's in the same turn): how far the machine's drift moved it. `wall_ratio`, the
    /// ratio of the means, lies between them.
    pub wall_ratio_min: f64,
    pub wall_ratio_max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpeedReport {
    pub model: String,
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    /// Whether every sample decoded under a grammar (`--json-schema`, `--grammar`).
    pub constrained: bool,
    pub results: Vec<SpeedRow>,
}

pub const PROMPT: &str =
    "Write a short story about a lighthouse keeper who finds a message in a bottle.";

/// `prompt_tokens`: None for `PROMPT` in the model's chat template; Some(n) for exactly n
/// tokens of `PROMPT`'s text repeated, without a template, as llama-bench's `-p n` measures.
/// `constraint`: what every sample follows (its rows end when their output is complete).
#[allow(clippy::too_many_arguments)]
pub fn run(
    model_spec: &str,
    sizes: &[usize],
    max_tokens: usize,
    prompt_tokens: Option<usize>,
    repeats: usize,
    constraint: Option<Constraint>,
    on_row: impl Fn(&SpeedRow),
) -> Result<SpeedReport> {
    anyhow::ensure!(repeats > 0, "--repeats needs at least one run");
    let prompt = match prompt_tokens {
        None => Prompt::Chat(vec![Message::new("user", PROMPT)]),
        Some(tokens) => Prompt::Filler {
            text: format!("{PROMPT} "),
            tokens,
        },
    };
    let job = |max_tokens: usize, n: usize| Job {
        model: model_spec.to_string(),
        prompt: prompt.clone(),
        max_tokens,
        stop: Vec::new(),
        samples: (0..n as u64)
            .map(|seed| SamplingParams {
                seed,
                ..Default::default()
            })
            .collect(),
        ignore_eos: true,
        stream: None,
        constraint: constraint.clone(),
    };
    // Through the engine thread, as the server's requests run; its timings are the
    // generation's own, so the hand-over to the thread is not counted.
    // No prefix cache: every run prefills its whole prompt, which is what is measured.
    let engine = Engine::with_prefix_cache(0);
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let generate = |job: Job| -> Result<Output> { rt.block_on(engine.generate(job)) };
    // Warm-up (and the model's load): first-touch page faults and lazy allocations stay out
    // of the first size.
    let warm = generate(job(4, 1))?;
    let requests: Vec<Job> = sizes.iter().map(|&n| job(max_tokens, n)).collect();
    // The mean over `repeats` runs, as llama-bench's `-r` reports its mean. Each repeat runs
    // every size in turn: the machine's speed drifts (here by up to 2× within minutes), and
    // sizes measured minutes apart compared that drift more than themselves.
    let mut sums = vec![[0f64; 4]; sizes.len()]; // seconds, prefill s, prefill tok/s, decode tok/s
    let mut spans = vec![(f64::INFINITY, 0f64); sizes.len()]; // lowest, highest wall ratio
    for _ in 0..repeats {
        let mut first = None;
        for ((req, sum), span) in requests.iter().zip(&mut sums).zip(&mut spans) {
            let out = generate(req.clone())?;
            let r = repeats as f64;
            let wall = out.prefill_seconds + out.decode_seconds;
            sum[0] += wall / r;
            sum[1] += out.prefill_seconds / r;
            sum[2] += out.prefill_tok_s() / r;
            sum[3] += out.decode_tok_s() / r;
            let ratio = wall / *first.get_or_insert(wall);
            *span = (span.0.min(ratio), span.1.max(ratio));
        }
    }
    let mut results: Vec<SpeedRow> = Vec::new();
    let rows = sizes.iter().zip(&sums).zip(&spans);
    for ((&n, &[seconds, prefill_seconds, prefill_tok_s, decode_tok_s]), &span) in rows {
        let (base_tok_s, base_s) = results
            .first()
            .map(|r| (r.decode_tok_s, r.seconds))
            .unwrap_or((decode_tok_s, seconds));
        let row = SpeedRow {
            n,
            seconds,
            prefill_seconds,
            prefill_tok_s,
            decode_tok_s,
            ratio: decode_tok_s / base_tok_s,
            wall_ratio: seconds / base_s,
            wall_ratio_min: span.0,
            wall_ratio_max: span.1,
        };
        on_row(&row);
        results.push(row);
    }
    Ok(SpeedReport {
        model: model_name(model_spec),
        prompt_tokens: warm.prompt_tokens,
        max_tokens,
        constrained: constraint.is_some(),
        results,
    })
}
