//! Generation: one prefill of the prompt, then N samples decoded together as one batch.
use super::constraint::{Compiled, DeadEnd, RowConstraint};
use super::error::JobError;
use super::prefix::PrefixStore;
use super::sampler::{Pick, Sampler, SamplingParams, Signal};
use crate::model::kv_cache::Prefix;
use crate::model::tokenizer::Incremental;
use crate::model::{KvCache, Model, RowLogits};
use anyhow::{bail, Result};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Prompts longer than this are prefilled in pieces, bounding the attention scratch memory.
pub(crate) const PREFILL_CHUNK: usize = 512;

#[derive(Clone, Default)]
pub(crate) struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    /// Generation stops before the first of these strings; it is not part of the text.
    pub stop: Vec<String>,
    /// One entry per sample; every sample shares the prompt's prefill.
    pub samples: Vec<SamplingParams>,
    /// Keep going past end-of-turn tokens (benchmarks that need a fixed length). A row under
    /// a grammar still ends when the grammar takes an end-of-turn token.
    pub ignore_eos: bool,
    /// The job's grammar, compiled; each row follows it with its own parser.
    pub constraint: Option<Arc<Compiled>>,
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
    /// The constraint allowed no token at all (a grammar with no way on from its text).
    #[serde(rename = "dead_end")]
    DeadEnd,
    /// The sample's confidence fell under its `stop_below` bar: it was given up, and its text
    /// is unfinished.
    Unsure,
}

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish: Finish,
    /// Sum of the chosen tokens' log-probabilities under the model.
    pub logprob_sum: f32,
    /// Each token's log-probability and alternatives, when the sample's `top_logprobs` asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprobs>>,
    /// Each token's confidence signals, when the sample's `confidence_k` asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signals: Option<Vec<Signal>>,
}

/// A token, its text and its log-probability (see [`super::sampler::Pick`] for which
/// distribution).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Logprob {
    pub token: u32,
    /// The token decoded alone (a piece of a character decodes as U+FFFD).
    pub text: String,
    pub logprob: f32,
}

/// One sampled token's [`Logprob`] and the most likely alternatives, most likely first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprobs {
    pub chosen: Logprob,
    pub top: Vec<Logprob>,
}

/// Text decoded since the last piece of one sample, and the log-probabilities of the tokens
/// taken since then (empty unless asked for).
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub sample: usize,
    pub text: String,
    pub logprobs: Vec<TokenLogprobs>,
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
    /// The whole prompt's length, `cached_tokens` included.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the engine's prefix store instead of
    /// being prefilled: the prefill ran `prompt_tokens - cached_tokens`.
    pub cached_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// Tokens produced by decode steps (all samples together).
    pub decode_tokens: usize,
    /// The most rows of one decode step this request took part in, its own and other
    /// requests' on the same model together.
    pub peak_batch: usize,
}

impl Output {
    /// Prompt tokens prefilled per second (those taken from the prefix store not counted).
    pub fn prefill_tok_s(&self) -> f64 {
        (self.prompt_tokens - self.cached_tokens) as f64 / self.prefill_seconds.max(1e-9)
    }

    pub fn decode_tok_s(&self) -> f64 {
        self.decode_tokens as f64 / self.decode_seconds.max(1e-9)
    }

    pub fn completion_tokens(&self) -> usize {
        self.completions.iter().map(|c| c.tokens.len()).sum()
    }
}

/// Text produced so far by one sample, as `on_text(piece)` calls.
pub(crate) type OnText<'a> = &'a mut dyn FnMut(Piece);

/// One sample while it decodes.
struct Row {
    sample: usize,
    sampler: Sampler,
    tokens: Vec<u32>,
    text: String,
    /// Where `text` was last settled, so that a token decodes only the latest few.
    decoded: Incremental,
    emitted: usize,
    logprob_sum: f32,
    /// Present when asked for; `logprobs_emitted` of them have been streamed.
    logprobs: Option<Vec<TokenLogprobs>>,
    logprobs_emitted: usize,
    /// Present when asked for.
    signals: Option<Vec<Signal>>,
    finish: Option<Finish>,
    /// The row's grammar state, and its masked logits (reused from step to step).
    constraint: Option<RowConstraint>,
    masked: Vec<f32>,
}

/// One request's samples from prefill to their last token. Their KV rows live in a [`Batch`],
/// which the engine thread shares between requests for the same model.
pub(crate) struct Generation {
    req: Request,
    rows: Vec<Row>,
    max_tokens: usize,
    prefill_seconds: f64,
    decode_seconds: f64,
    decode_tokens: usize,
    peak_batch: usize,
    prefills: usize,
    /// Prompt tokens taken from the prefix store.
    cached: usize,
}

/// A request's prompt on its way into a cache: checked by [`Prefill::begin`], started from
/// the prefix store by [`Prefill::start_from`] when its turn comes (after the prompts before
/// it have filled the store), prefilled by one or more [`Prefill::run`]s (the engine thread
/// splits a long prompt between the decode steps of the jobs already running), then turned
/// into a [`Generation`] by [`Prefill::finish`], which samples every sample's first token.
pub(crate) struct Prefill {
    req: Request,
    cache: KvCache,
    max_tokens: usize,
    /// Prompt positions in the cache, from the store or prefilled.
    done: usize,
    /// Prompt tokens taken from the prefix store.
    cached: usize,
    /// Prompt tokens the forward passes ran, to count whole prompts prefilled.
    ran: usize,
    /// The last prompt position's logits, once the whole prompt is in.
    logits: Vec<Vec<f32>>,
    /// Time spent in this prompt's own work (not waiting between chunks).
    seconds: f64,
}

impl Prefill {
    /// Checks the request and makes its cache.
    pub fn begin(model: &Model, req: Request) -> Result<Self> {
        let start = Instant::now();
        if req.samples.is_empty() {
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
        let cache = model.new_cache(1, req.prompt.len() + max_tokens)?;
        Ok(Self {
            req,
            cache,
            max_tokens,
            done: 0,
            cached: 0,
            ran: 0,
            logits: Vec::new(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Whether no position of the prompt is in the cache yet.
    pub fn is_fresh(&self) -> bool {
        self.done == 0
    }

    /// Starts the fresh cache from the longest prefix of the prompt that `store` holds under
    /// `key` (the model's name in it), if any.
    pub fn start_from(&mut self, store: &mut PrefixStore, key: &str) -> Result<()> {
        debug_assert!(self.is_fresh());
        if let Some(hit) = store.find(key, &self.req.prompt) {
            self.cache.start_from(&hit.kv, hit.len)?;
            (self.done, self.cached) = (hit.len, hit.len);
        }
        Ok(())
    }

    /// Prompt tokens still to prefill.
    pub fn remaining(&self) -> usize {
        self.req.prompt.len() - self.done
    }

    /// Prompt tokens the prefix store did not hold: what the prefill runs in all.
    pub fn new_tokens(&self) -> usize {
        self.req.prompt.len() - self.cached
    }

    /// Prefills up to `most` more prompt tokens, in pieces of at most [`PREFILL_CHUNK`].
    pub fn run(&mut self, model: &Model, most: usize) -> Result<()> {
        let start = Instant::now();
        let end = self.req.prompt.len().min(self.done.saturating_add(most));
        for chunk in self.req.prompt[self.done..end].chunks(PREFILL_CHUNK) {
            let seqs = [chunk.to_vec()];
            self.logits = model.step(&seqs, &mut self.cache)?;
            self.ran += chunk.len();
        }
        self.done = end;
        self.seconds += start.elapsed().as_secs_f64();
        Ok(())
    }

    /// Samples every sample's first token from the prefilled prompt, and leaves the prompt's
    /// keys and values in `store`. The cache holds one row per sample still going, in the
    /// order of [`Generation::active`]; None when every sample ended at its first token.
    pub fn finish(
        self,
        model: &Model,
        store: Option<(&mut PrefixStore, &str)>,
        on_text: OnText,
    ) -> Result<(Generation, Option<KvCache>)> {
        debug_assert_eq!(self.remaining(), 0, "finish after the whole prompt is in");
        let start = Instant::now();
        let Self {
            req,
            cache,
            max_tokens,
            cached,
            ran,
            logits,
            seconds,
            ..
        } = self;
        if let Some((s, key)) = store {
            s.insert(key, &req.prompt, Arc::new(cache.row_prefix()?));
        }
        let n = req.samples.len();
        let rows = req
            .samples
            .iter()
            .enumerate()
            .map(|(i, p)| Row {
                sample: i,
                sampler: Sampler::new(p.clone()),
                tokens: Vec::new(),
                text: String::new(),
                decoded: Incremental::default(),
                emitted: 0,
                logprob_sum: 0.0,
                logprobs: p.top_logprobs.map(|_| Vec::new()),
                logprobs_emitted: 0,
                signals: p.confidence_k.map(|_| Vec::new()),
                finish: None,
                constraint: req.constraint.clone().map(RowConstraint::new),
                masked: Vec::new(),
            })
            .collect();
        let prefills = ran / (req.prompt.len() - cached);
        let mut g = Generation {
            req,
            rows,
            max_tokens,
            prefill_seconds: 0.0,
            decode_seconds: 0.0,
            decode_tokens: 0,
            peak_batch: 0,
            prefills,
            cached,
        };
        let steps: Vec<(usize, &[f32])> = (0..n).map(|s| (s, logits[0].as_slice())).collect();
        g.advance(model, &steps, on_text)?;
        let cache = match g.active().len() {
            0 => None,
            1 => Some(cache),
            going => Some(cache.fork(going)?),
        };
        g.prefill_seconds = seconds + start.elapsed().as_secs_f64();
        Ok((g, cache))
    }
}

impl Generation {
    /// The prompt and `sample`'s tokens so far, the sequence its cache row continues.
    pub fn sequence(&self, sample: usize) -> Vec<u32> {
        [&self.req.prompt[..], &self.rows[sample].tokens[..]].concat()
    }

    /// Samples the job draws.
    pub fn samples(&self) -> usize {
        self.rows.len()
    }

    /// How many sequences the prompt was prefilled as (the engine's `prefills` counter).
    pub fn prefills(&self) -> usize {
        self.prefills
    }

    /// Prompt tokens taken from the prefix store (the engine's `cached_tokens` counter).
    pub fn cached_tokens(&self) -> usize {
        self.cached
    }

    /// Samples still decoding, in order.
    pub fn active(&self) -> Vec<usize> {
        (0..self.rows.len())
            .filter(|&s| self.rows[s].finish.is_none())
            .collect()
    }

    pub fn is_finished(&self, sample: usize) -> bool {
        self.rows[sample].finish.is_some()
    }

    pub fn is_done(&self) -> bool {
        self.rows.iter().all(|r| r.finish.is_some())
    }

    /// The token `sample` decodes next from.
    pub fn last_token(&self, sample: usize) -> u32 {
        *self.rows[sample]
            .tokens
            .last()
            .expect("a decoding sample has a token")
    }

    /// Samples a token for each `(sample, logits of its last token)` in `steps` and decodes
    /// its text, the rows spread over the model's threads (a gemma row's 262144 logits take
    /// about 240 µs), then streams the rows in the order given.
    pub fn advance(
        &mut self,
        model: &Model,
        steps: &[(usize, &[f32])],
        on_text: OnText,
    ) -> Result<()> {
        let (req, max_tokens) = (&self.req, self.max_tokens);
        let mut rows: Vec<Option<&mut Row>> = self.rows.iter_mut().map(Some).collect();
        let drawn: Vec<Mutex<_>> = steps
            .iter()
            .map(|&(s, _)| {
                let row = rows[s].take().expect("a sample advances once per step");
                Mutex::new((row, None))
            })
            .collect();
        crate::model::for_each_task(steps.len(), &|i| {
            let mut slot = drawn[i].lock().unwrap_or_else(|e| e.into_inner());
            let (row, taken) = &mut *slot;
            let pick = draw(req, row, steps[i].1);
            *taken = Some(take(model, req, row, pick, max_tokens));
        });
        for slot in drawn {
            let (row, taken) = slot.into_inner().unwrap_or_else(|e| e.into_inner());
            taken.expect("every row was drawn")?;
            emit(req, row, on_text);
        }
        Ok(())
    }

    /// Counts a decode step this request took part in with `tokens` of the step's `rows`.
    pub fn add_decode_step(&mut self, seconds: f64, tokens: usize, rows: usize) {
        self.decode_seconds += seconds;
        self.decode_tokens += tokens;
        self.peak_batch = self.peak_batch.max(rows);
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
                logprobs: r.logprobs,
                signals: r.signals,
            })
            .collect();
        Output {
            completions,
            prompt_tokens: self.req.prompt.len(),
            cached_tokens: self.cached,
            prefill_seconds: self.prefill_seconds,
            decode_seconds: self.decode_seconds,
            decode_tokens: self.decode_tokens,
            peak_batch: self.peak_batch,
        }
    }
}

/// The rows of every request decoding on one model, stepped by one forward pass together
/// (continuous batching): requests join after their prefill and rows leave as they finish.
/// A row is named by `(request key, sample)`.
#[derive(Default)]
pub(crate) struct Batch {
    cache: Option<KvCache>,
    rows: Vec<(u64, usize)>,
    /// The last step's logits, in the order of `rows`.
    logits: RowLogits,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Rows in batch order.
    pub fn rows(&self) -> &[(u64, usize)] {
        &self.rows
    }

    /// Adds a request's rows (`samples`, in the order of the rows of `cache`).
    pub fn join(&mut self, key: u64, samples: Vec<usize>, cache: KvCache) -> Result<()> {
        if samples.is_empty() {
            return Ok(());
        }
        match &mut self.cache {
            Some(c) => c.join(cache)?,
            None => self.cache = Some(cache),
        }
        self.rows.extend(samples.into_iter().map(|s| (key, s)));
        Ok(())
    }

    /// One forward pass over every row; `last_token(key, sample)` gives each row's input.
    /// [`Batch::logits`] then holds each row's logits.
    pub fn step(&mut self, model: &Model, last_token: impl Fn(u64, usize) -> u32) -> Result<()> {
        let Some(cache) = &mut self.cache else {
            self.logits = RowLogits::default();
            return Ok(());
        };
        let input: Vec<Vec<u32>> = self
            .rows
            .iter()
            .map(|&(k, s)| vec![last_token(k, s)])
            .collect();
        model.step_into(&input, cache, &mut self.logits)
    }

    /// Every position row `i` (in the order of [`Batch::rows`]) holds, copied out.
    pub fn row_kv(&self, i: usize) -> Result<Prefix> {
        match &self.cache {
            Some(c) => c.row_copy(i),
            None => bail!("an empty batch has no rows"),
        }
    }

    /// The last step's logits, in the order of [`Batch::rows`].
    pub fn logits(&self) -> &RowLogits {
        &self.logits
    }

    /// Keeps the rows for which `keep(key, sample)` holds.
    pub fn retain(&mut self, keep: impl Fn(u64, usize) -> bool) -> Result<()> {
        let kept: Vec<usize> = (0..self.rows.len())
            .filter(|&i| keep(self.rows[i].0, self.rows[i].1))
            .collect();
        if kept.len() == self.rows.len() {
            return Ok(());
        }
        self.rows = kept.iter().map(|&i| self.rows[i]).collect();
        if kept.is_empty() {
            self.cache = None;
        } else if let Some(c) = &mut self.cache {
            c.retain(&kept)?;
        }
        Ok(())
    }
}

/// Samples one token for `row` from `logits`, masked by its constraint; Err when the
/// constraint allows no token.
fn draw(req: &Request, row: &mut Row, logits: &[f32]) -> Result<Pick, DeadEnd> {
    let masked = match &mut row.constraint {
        Some(c) => c.mask(logits, &mut row.masked)?,
        None => false,
    };
    let logits = if masked { &row.masked[..] } else { logits };
    // The penalty looks back `repeat_last_n` tokens at most: copy only that window.
    let n = row.sampler.params().repeat_last_n;
    let from_prompt = n.saturating_sub(row.tokens.len()).min(req.prompt.len());
    let recent: Vec<u32> = req.prompt[req.prompt.len() - from_prompt..]
        .iter()
        .chain(&row.tokens[row.tokens.len().saturating_sub(n)..])
        .copied()
        .collect();
    Ok(row.sampler.sample(logits, &recent))
}

/// Takes `pick` as `row`'s next token: its text, and whether it ends the row (a dead end of
/// its constraint ends it without a token).
fn take(
    model: &Model,
    req: &Request,
    row: &mut Row,
    pick: Result<Pick, DeadEnd>,
    max_tokens: usize,
) -> Result<()> {
    let Ok(pick) = pick else {
        row.finish = Some(Finish::DeadEnd);
        return Ok(());
    };
    let constrained = row.constraint.as_ref().is_some_and(|c| c.is_active());
    if (!req.ignore_eos || constrained) && model.tokenizer.stop_ids.contains(&pick.token) {
        row.finish = Some(Finish::Eos);
        return Ok(());
    }
    let complete = match &mut row.constraint {
        Some(c) => match c.take(pick.token) {
            Ok(complete) => complete,
            Err(DeadEnd) => {
                row.finish = Some(Finish::DeadEnd);
                return Ok(());
            }
        },
        None => false,
    };
    row.tokens.push(pick.token);
    row.logprob_sum += pick.logprob;
    if let (Some(signals), Some(s)) = (&mut row.signals, pick.signal) {
        signals.push(s);
    }
    if let Some(lps) = &mut row.logprobs {
        let logprob = |(token, logprob): (u32, f32)| -> Result<Logprob> {
            let text = model.tokenizer.decode(&[token], false)?;
            Ok(Logprob {
                token,
                text,
                logprob,
            })
        };
        lps.push(TokenLogprobs {
            chosen: logprob((pick.token, pick.logprob))?,
            top: pick.top.into_iter().map(logprob).collect::<Result<_>>()?,
        });
    }
    model
        .tokenizer
        .decode_more(&row.tokens, &mut row.decoded, &mut row.text)?;
    if let Some(c) = &mut row.constraint {
        c.after_text(&row.text);
    }
    if let Some(cut) = first_stop(&row.text, &req.stop) {
        row.text.truncate(cut);
        row.finish = Some(Finish::Stop);
    } else if complete {
        row.finish = Some(Finish::Stop);
    } else if row.tokens.len() >= max_tokens {
        row.finish = Some(Finish::Length);
    } else if unsure(row) {
        row.finish = Some(Finish::Unsure);
    }
    Ok(())
}

/// Whether `row`'s last `window` tokens are, on average, less confident than its bar allows.
fn unsure(row: &Row) -> bool {
    let (Some(stop), Some(signals)) = (row.sampler.params().stop_below, &row.signals) else {
        return false;
    };
    stop.falls_under(signals.iter().map(|s| s.confidence))
}

/// Streams what of `row`'s text is final. While it runs, a partial UTF-8 character and
/// anything that may begin a stop string are held back.
fn emit(req: &Request, row: &mut Row, on_text: OnText) {
    let end = if row.finish.is_some() {
        row.text.len()
    } else {
        safe_end(&row.text, &req.stop)
    };
    // Log-probabilities go with the text they end at; the last piece takes any left.
    let logprobs = match &row.logprobs {
        Some(l) if end > row.emitted || row.finish.is_some() => &l[row.logprobs_emitted..],
        _ => &[],
    };
    if end > row.emitted || !logprobs.is_empty() {
        on_text(Piece {
            sample: row.sample,
            text: row.text[row.emitted..end].to_string(),
            logprobs: logprobs.to_vec(),
        });
        row.emitted = end;
        row.logprobs_emitted += logprobs.len();
    }
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
