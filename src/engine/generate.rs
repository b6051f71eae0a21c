//! Generation: one prefill of the prompt, then N samples decoded together as one batch.
use super::sampler::{Sampler, SamplingParams};
use crate::model::{KvCache, Model};
use anyhow::{bail, Result};
use serde::Serialize;
use std::time::Instant;

/// Prompts longer than this are prefilled in pieces, bounding the attention scratch memory.
const PREFILL_CHUNK: usize = 512;

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    /// Generation stops before the first of these strings; it is not part of the text.
    pub stop: Vec<String>,
    /// One entry per sample; every sample shares the prompt's prefill.
    pub samples: Vec<SamplingParams>,
    /// Keep going past end-of-turn tokens (benchmarks that need a fixed length).
    pub ignore_eos: bool,
}

/// Why a job ended without an output, for callers that answer differently per cause (the
/// server maps `PromptTooLong` to HTTP 400). Other failures stay plain `anyhow` errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("the prompt is {prompt} tokens but {model} has a context of {ctx} tokens; shorten the prompt")]
    PromptTooLong {
        prompt: usize,
        ctx: usize,
        model: String,
    },
    /// Nobody waits for the job any more: its reply or its stream receiver was dropped.
    #[error("the job was cancelled: its caller went away")]
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// An end-of-sequence or end-of-turn token.
    Eos,
    /// A stop string.
    Stop,
    /// `max_tokens` or the context ran out.
    Length,
}

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish: Finish,
    /// Sum of the chosen tokens' log-probabilities under the model.
    pub logprob_sum: f32,
}

impl Completion {
    pub fn logprob_mean(&self) -> f32 {
        if self.tokens.is_empty() {
            0.0
        } else {
            self.logprob_sum / self.tokens.len() as f32
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Output {
    pub completions: Vec<Completion>,
    pub prompt_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// Tokens produced by decode steps (all samples together).
    pub decode_tokens: usize,
}

impl Output {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds.max(1e-9)
    }

    pub fn decode_tok_s(&self) -> f64 {
        self.decode_tokens as f64 / self.decode_seconds.max(1e-9)
    }

    pub fn completion_tokens(&self) -> usize {
        self.completions.iter().map(|c| c.tokens.len()).sum()
    }
}

/// Text produced so far by one sample, as `on_text(sample, piece)` calls.
pub type OnText<'a> = &'a mut dyn FnMut(usize, &str);

/// One sample while it decodes.
struct Row {
    sample: usize,
    sampler: Sampler,
    tokens: Vec<u32>,
    text: String,
    emitted: usize,
    logprob_sum: f32,
    finish: Option<Finish>,
}

/// Runs `req` to completion: one prefill, then batched decode steps until every sample ends.
pub fn generate(model: &Model, req: &Request, on_text: OnText) -> Result<Output> {
    let mut g = Generation::start(model, req.clone(), on_text)?;
    while !g.is_done() {
        g.step(model, on_text)?;
    }
    Ok(g.finish())
}

/// One request in flight: its batch's KV cache and the state of each of its samples. The
/// engine thread keeps several and steps them in turn, so no request waits for another to end.
pub struct Generation {
    req: Request,
    cache: KvCache,
    rows: Vec<Row>,
    /// Samples whose rows the cache holds, in row order.
    in_cache: Vec<usize>,
    max_tokens: usize,
    prefill_seconds: f64,
    decode_seconds: f64,
    decode_tokens: usize,
}

impl Generation {
    /// Checks the request, prefills its prompt once and samples every sample's first token
    /// from that one prefill.
    pub fn start(model: &Model, req: Request, on_text: OnText) -> Result<Self> {
        let n = req.samples.len();
        if n == 0 {
            bail!("no samples requested");
        }
        if req.prompt.is_empty() {
            bail!("the prompt is empty");
        }
        let ctx = model.ctx_len();
        if req.prompt.len() >= ctx {
            return Err(JobError::PromptTooLong {
                prompt: req.prompt.len(),
                ctx,
                model: model.name.clone(),
            }
            .into());
        }
        let max_tokens = req.max_tokens.min(ctx - req.prompt.len());

        let start = Instant::now();
        let mut cache = model.new_cache(1, req.prompt.len() + max_tokens)?;
        let mut logits = Vec::new();
        for chunk in req.prompt.chunks(PREFILL_CHUNK) {
            logits = model.step(&[chunk.to_vec()], &mut cache)?;
        }
        if n > 1 {
            cache = cache.fork(n)?;
        }
        let prefill_seconds = start.elapsed().as_secs_f64();

        let rows = req
            .samples
            .iter()
            .enumerate()
            .map(|(i, p)| Row {
                sample: i,
                sampler: Sampler::new(p.clone()),
                tokens: Vec::new(),
                text: String::new(),
                emitted: 0,
                logprob_sum: 0.0,
                finish: None,
            })
            .collect();
        let mut g = Self {
            req,
            cache,
            rows,
            in_cache: (0..n).collect(),
            max_tokens,
            prefill_seconds,
            decode_seconds: 0.0,
            decode_tokens: 0,
        };
        for row in g.rows.iter_mut() {
            advance(model, &g.req, row, &logits[0], max_tokens, on_text)?;
        }
        Ok(g)
    }

    pub fn is_done(&self) -> bool {
        self.rows.iter().all(|r| r.finish.is_some())
    }

    /// One forward pass for all unfinished samples together, and one token for each.
    pub fn step(&mut self, model: &Model, on_text: OnText) -> Result<()> {
        let start = Instant::now();
        let active: Vec<usize> = (0..self.rows.len())
            .filter(|&i| self.rows[i].finish.is_none())
            .collect();
        if active.is_empty() {
            return Ok(());
        }
        if active.len() < self.in_cache.len() {
            // Finished samples leave the batch.
            let keep: Vec<usize> = active
                .iter()
                .map(|s| self.in_cache.iter().position(|c| c == s).unwrap())
                .collect();
            self.cache.retain(&keep)?;
            self.in_cache = active.clone();
        }
        let input: Vec<Vec<u32>> = active
            .iter()
            .map(|&i| vec![*self.rows[i].tokens.last().unwrap()])
            .collect();
        let logits = model.step(&input, &mut self.cache)?;
        self.decode_tokens += active.len();
        for (&i, l) in active.iter().zip(&logits) {
            advance(
                model,
                &self.req,
                &mut self.rows[i],
                l,
                self.max_tokens,
                on_text,
            )?;
        }
        self.decode_seconds += start.elapsed().as_secs_f64();
        Ok(())
    }

    pub fn finish(self) -> Output {
        let completions = self
            .rows
            .into_iter()
            .map(|r| Completion {
                text: r.text,
                tokens: r.tokens,
                finish: r.finish.unwrap_or(Finish::Length),
                logprob_sum: r.logprob_sum,
            })
            .collect();
        Output {
            completions,
            prompt_tokens: self.req.prompt.len(),
            prefill_seconds: self.prefill_seconds,
            decode_seconds: self.decode_seconds,
            decode_tokens: self.decode_tokens,
        }
    }
}

/// Samples one token for `row` from `logits`, updates its text and streams what is final.
fn advance(
    model: &Model,
    req: &Request,
    row: &mut Row,
    logits: &[f32],
    max_tokens: usize,
    on_text: OnText,
) -> Result<()> {
    // The penalty looks back `repeat_last_n` tokens at most: copy only that window.
    let n = row.sampler.params().repeat_last_n;
    let from_prompt = n.saturating_sub(row.tokens.len()).min(req.prompt.len());
    let recent: Vec<u32> = req.prompt[req.prompt.len() - from_prompt..]
        .iter()
        .chain(&row.tokens[row.tokens.len().saturating_sub(n)..])
        .copied()
        .collect();
    let pick = row.sampler.sample(logits, &recent);
    if !req.ignore_eos && model.tokenizer.stop_ids.contains(&pick.token) {
        row.finish = Some(Finish::Eos);
    } else {
        row.tokens.push(pick.token);
        row.logprob_sum += pick.logprob;
        row.text = model.tokenizer.decode(&row.tokens, true)?;
        if let Some(cut) = first_stop(&row.text, &req.stop) {
            row.text.truncate(cut);
            row.finish = Some(Finish::Stop);
        } else if row.tokens.len() >= max_tokens {
            row.finish = Some(Finish::Length);
        }
    }
    // While running, hold back a partial UTF-8 character and anything that may begin a stop string.
    let end = if row.finish.is_some() {
        row.text.len()
    } else {
        safe_end(&row.text, &req.stop)
    };
    if end > row.emitted {
        on_text(row.sample, &row.text[row.emitted..end]);
        row.emitted = end;
    }
    Ok(())
}

fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// Length of the prefix of `text` that no later token can change.
fn safe_end(text: &str, stops: &[String]) -> usize {
    let mut end = text.trim_end_matches('\u{FFFD}').len();
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if text[..end].ends_with(&s[..i]) {
                end = end.min(text[..end].len() - i);
            }
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_held_back() {
        let stops = vec!["\nUser:".to_string()];
        assert_eq!(first_stop("4\nUser: hi", &stops), Some(1));
        assert_eq!(first_stop("4", &stops), None);
        assert_eq!(safe_end("4\nUs", &stops), 1);
        assert_eq!(safe_end("4 and 5", &stops), 7);
        assert_eq!(safe_end("caf\u{FFFD}", &[]), 3);
    }
}
