//! Turning one row of logits into the next token.
//!
//! The order of the steps is llama.cpp's default sampler chain (`common/sampling.cpp`):
//! repetition penalty, top-k, top-p, min-p, temperature, then a draw.
use crate::model::math::{exp, simd_here};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How one sample draws its tokens; the `ask` options and an API request's sampling fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct SamplingParams {
    /// Sampling temperature; 0 always takes the most likely token.
    #[arg(long, short, default_value_t = Self::DEFAULT.temperature)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = Self::DEFAULT.top_k)]
    pub top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to this total probability (1 = off).
    #[arg(long, default_value_t = Self::DEFAULT.top_p)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, default_value_t = Self::DEFAULT.min_p)]
    pub min_p: f32,
    /// Penalise tokens seen in the last --repeat-last-n (1 = off).
    #[arg(long, default_value_t = Self::DEFAULT.repeat_penalty)]
    pub repeat_penalty: f32,
    /// How many of the latest tokens the penalty looks at.
    #[arg(long, default_value_t = Self::DEFAULT.repeat_last_n)]
    pub repeat_last_n: usize,
    /// The command line's `--seed` is optional (random when not given), so it is its own
    /// option there.
    #[arg(skip)]
    pub seed: u64,
    /// Report each sampled token's log-probability and this many most likely alternatives
    /// (None: report nothing, and compute no alternatives). Set by API requests only.
    #[arg(skip)]
    #[serde(skip)]
    pub top_logprobs: Option<usize>,
    /// Keep each token's [`Signal`], its confidence over this many most likely tokens
    /// (None: compute none). Set by ensembles whose strategy reads confidence.
    #[arg(skip)]
    #[serde(skip)]
    pub confidence_k: Option<usize>,
    /// End the sample early once its confidence falls under a bar (DeepConf's online mode).
    #[arg(skip)]
    #[serde(skip)]
    pub stop_below: Option<StopBelow>,
}

/// A per-row stop: the sample ends ([`super::Finish::Unsure`]) as soon as the mean token
/// confidence of its last `window` tokens is under `threshold` (Fu et al. 2025, "Deep Think
/// with Confidence", §3.2: a trace's group confidence under the warm-up's bar stops it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StopBelow {
    pub window: usize,
    pub threshold: f32,
}

impl StopBelow {
    /// Whether a sample whose token confidences so far are `confidence` stops here: its last
    /// `window` tokens' mean is under the bar. Also what `bench` replays stored samples by.
    pub fn falls_under(&self, confidence: impl ExactSizeIterator<Item = f32>) -> bool {
        let w = self.window.max(1);
        let n = confidence.len();
        if n < w {
            return false;
        }
        let mean = confidence.skip(n - w).sum::<f32>() / w as f32;
        mean < self.threshold
    }

    /// The tokens after which a sample with these token confidences would have been stopped
    /// ([`super::Finish::Unsure`]); None if it ran to its end. Its last token ended it
    /// otherwise (a stop or the length), which the engine checks first.
    pub fn cut(&self, confidence: &[f32]) -> Option<usize> {
        (1..confidence.len()).find(|&t| self.falls_under(confidence[..t].iter().copied()))
    }
}

/// What one token's distribution says about how sure the model was, computed from the logits
/// the token was drawn from (those [`Pick::logprob`] is of).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// DeepConf's token confidence (Fu et al. 2025, eq. 2): minus the mean log-probability of
    /// the k most likely tokens. Large when the mass sits on a few tokens.
    pub confidence: f32,
    /// Self-certainty (Kang et al. 2025, "Scalable Best-of-N Selection for Large Language
    /// Models via Self-Certainty", eq. 4): KL(U ‖ p), the distribution's divergence from
    /// uniform over the tokens it allows, `−log V − (1/V)·Σ log p`.
    pub certainty: f32,
}

impl SamplingParams {
    /// llama.cpp's defaults (`common/common.h`), with its penalty window; the command line's
    /// defaults too.
    pub const DEFAULT: Self = Self {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 0,
        top_logprobs: None,
        confidence_k: None,
        stop_below: None,
    };
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A seed for a run that was given none: the clock's nanoseconds mixed with the process id,
/// so two runs started in the same instant by different processes still differ.
pub fn random_seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

/// The chosen token and its log-probability under the model's unaltered distribution.
///
/// Under a grammar (engine/constraint.rs) the logits the sampler sees are already masked:
/// the distribution is then the model's renormalised over the tokens the grammar allows,
/// the one tokens are drawn from, and a masked token is never among `top`.
///
/// That distribution is the log-softmax of the logits before temperature, top-k, top-p and
/// min-p (after the repetition penalty, which the API never sets): what vLLM reports by
/// default (`logprobs_mode = "raw_logprobs"`, vllm/config), and what OpenAI documents as the
/// token's log probability. llama.cpp's server can report post-sampling probabilities instead
/// (`n_probs` with `post_sampling_probs`, tools/server/README.md).
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    pub token: u32,
    pub logprob: f32,
    /// When `top_logprobs` asks: the most likely tokens and their log-probabilities under the
    /// same distribution, most likely first (equal ones by id, so a greedy pick is first).
    pub top: Vec<(u32, f32)>,
    /// When `confidence_k` asks: the distribution's confidence signals.
    pub signal: Option<Signal>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Pick {
        let p = &self.params;
        // The row is copied only when the penalty changes it (262k floats for gemma).
        let penalized;
        let logits = if p.repeat_penalty != 1.0 {
            let mut l = logits.to_vec();
            let start = history.len().saturating_sub(p.repeat_last_n);
            let mut seen = history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                let x = &mut l[t as usize];
                *x = if *x > 0.0 {
                    *x / p.repeat_penalty
                } else {
                    *x * p.repeat_penalty
                };
            }
            penalized = l;
            &penalized[..]
        } else {
            logits
        };
        let token = if p.temperature <= 0.0 {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        // One normalizer for the pick and its alternatives.
        let norm = log_sum_exp(logits);
        let top = match self.params.top_logprobs {
            Some(k) if k > 0 => {
                let mut best = top_k(logits, k.min(logits.len()));
                best.sort_unstable_by(by_logit);
                // Tokens a constraint masks out are no alternatives.
                best.into_iter()
                    .filter(|&(_, l)| l > f32::NEG_INFINITY)
                    .map(|(t, l)| (t, l - norm))
                    .collect()
            }
            _ => Vec::new(),
        };
        let signal = self.params.confidence_k.map(|k| signal(logits, k, norm));
        Pick {
            token,
            logprob: logits[token as usize] - norm,
            top,
            signal,
        }
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let mut cand = if p.top_k > 0 && p.top_k < logits.len() {
            top_k(logits, p.top_k)
        } else {
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l))
                .collect()
        };
        cand.sort_unstable_by(by_logit);
        // Tokens a constraint masked out (−∞) are never drawn, not even by rounding.
        let allowed = cand.iter().take_while(|c| c.1 > f32::NEG_INFINITY).count();
        cand.truncate(allowed.max(1));
        // Probabilities at temperature 1 for the truncation steps, as llama.cpp does.
        let max = cand[0].1;
        let probs: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        let mut keep = cand.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, q) in probs.iter().enumerate() {
                acc += q / total;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            // probs[0] is the largest, so the threshold is relative to it.
            let floor = p.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        cand.truncate(keep);
        let weights: Vec<f32> = cand
            .iter()
            .map(|c| ((c.1 - max) / p.temperature).exp())
            .collect();
        let sum: f32 = weights.iter().sum();
        let mut r = self.rng.random::<f32>() * sum;
        for (c, w) in cand.iter().zip(&weights) {
            if r < *w {
                return c.0;
            }
            r -= w;
        }
        cand[cand.len() - 1].0
    }
}

/// The first index of the largest logit (NaNs are passed over; 0 when none is above −∞).
pub fn argmax(logits: &[f32]) -> u32 {
    simd_here!(argmax_body(logits))
}

#[inline(always)]
fn argmax_body(logits: &[f32]) -> u32 {
    // The largest of each chunk of sixteen vectorizes; only the winning chunk is searched.
    const LANES: usize = 16;
    let (mut best, mut chunk) = (f32::NEG_INFINITY, 0);
    for (c, ls) in logits.chunks(LANES).enumerate() {
        let top = chunk_max(ls);
        if top > best {
            (best, chunk) = (top, c);
        }
    }
    let at = logits[chunk * LANES..].iter().position(|&l| l == best);
    (chunk * LANES + at.unwrap_or(0)) as u32
}

/// The largest of a chunk, NaNs passed over (−∞ when none is above it): a compare and
/// select, which vectorizes where `f32::max`, with its NaN rule, does not.
#[inline(always)]
fn chunk_max(ls: &[f32]) -> f32 {
    ls.iter()
        .fold(f32::NEG_INFINITY, |m, &l| if l > m { l } else { m })
}

/// Larger logit first; equal logits by token id, so the order (and so the draw) does not
/// depend on how the candidates were gathered.
fn by_logit(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The `k` best (token, logit) pairs, in no order. One pass that keeps the first k and then
/// only what beats the k-th best so far: collecting and partitioning the whole row (262k
/// entries for gemma, per sample per token) was a tenth of decode time at N = 8. A later
/// logit equal to the floor ranks below every kept one (its id is larger), so `>` keeps
/// exactly `by_logit`'s top k, −∞ included; a NaN past the first k is dropped, where
/// `total_cmp` would rank it first (comparing that way costs a fifth more per sample).
fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    simd_here!(top_k_body(logits, k))
}

#[inline(always)]
fn top_k_body(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    // Sixteen logits at a time: a chunk whose largest is not above the floor adds nothing,
    // and that test vectorizes where the per-logit one does not.
    const LANES: usize = 16;
    let mut cand: Vec<(u32, f32)> = Vec::with_capacity(4 * k);
    let mut floor = f32::NEG_INFINITY;
    for (c, chunk) in logits.chunks(LANES).enumerate() {
        let top = chunk_max(chunk);
        if top <= floor && cand.len() >= k {
            continue;
        }
        for (j, &l) in chunk.iter().enumerate() {
            if l > floor || cand.len() < k {
                cand.push(((c * LANES + j) as u32, l));
                if cand.len() == 4 * k {
                    cand.select_nth_unstable_by(k - 1, by_logit);
                    cand.truncate(k);
                    floor = cand[k - 1].1;
                }
            }
        }
    }
    if cand.len() > k {
        cand.select_nth_unstable_by(k - 1, by_logit);
        cand.truncate(k);
    }
    cand
}

/// The [`Signal`] of a row of logits whose log-sum-exp is `norm`; masked (−∞) logits are no
/// tokens of the distribution.
pub fn signal(logits: &[f32], k: usize, norm: f32) -> Signal {
    let top = top_k(logits, k.clamp(1, logits.len()));
    let (sum, n) = top
        .iter()
        .filter(|t| t.1 > f32::NEG_INFINITY)
        .fold((0.0f64, 0usize), |(s, n), t| {
            (s + f64::from(t.1 - norm), n + 1)
        });
    let (total, allowed) = finite_sum(logits);
    // Σ log p over the allowed tokens is Σ logit − V·norm.
    let v = allowed.max(1) as f64;
    let certainty = f64::from(norm) - total / v - v.ln();
    Signal {
        confidence: (-sum / n.max(1) as f64) as f32,
        certainty: certainty as f32,
    }
}

/// The sum of the finite logits, and how many there are.
fn finite_sum(logits: &[f32]) -> (f64, usize) {
    simd_here!(finite_sum_body(logits))
}

#[inline(always)]
fn finite_sum_body(logits: &[f32]) -> (f64, usize) {
    const LANES: usize = 16;
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    let (mut sums, mut counts) = ([0f32; LANES], [0u32; LANES]);
    for c in chunks {
        for ((s, n), &l) in sums.iter_mut().zip(counts.iter_mut()).zip(c) {
            let ok = l > f32::NEG_INFINITY;
            *s += if ok { l } else { 0.0 };
            *n += u32::from(ok);
        }
    }
    let finite = tail.iter().filter(|l| **l > f32::NEG_INFINITY);
    let sum = sums.iter().map(|&s| f64::from(s)).sum::<f64>()
        + finite.clone().map(|&l| f64::from(l)).sum::<f64>();
    let count = counts.iter().map(|&n| n as usize).sum::<usize>() + finite.count();
    (sum, count)
}

/// log softmax(logits)[i], computed stably.
pub fn log_softmax_at(logits: &[f32], i: usize) -> f32 {
    logits[i] - log_sum_exp(logits)
}

/// log Σ exp(logits), computed stably: log softmax(logits)[i] is `logits[i]` less this.
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    simd_here!(log_sum_exp_body(logits))
}

#[inline(always)]
fn log_sum_exp_body(logits: &[f32]) -> f32 {
    // Sixteen partial maxima and sums, so both loops vectorize.
    const LANES: usize = 16;
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut top = [f32::NEG_INFINITY; LANES];
    for c in chunks.clone() {
        for (t, &l) in top.iter_mut().zip(c) {
            *t = if l > *t { l } else { *t };
        }
    }
    let max = top
        .iter()
        .chain(tail)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sums = [0f32; LANES];
    for c in chunks {
        for (s, &l) in sums.iter_mut().zip(c) {
            *s += exp(l - max);
        }
    }
    let sum: f32 = sums.iter().sum::<f32>() + tail.iter().map(|&l| exp(l - max)).sum::<f32>();
    max + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample stops after the first token whose last `window` confidences average under
    /// the bar, never on its last token (which ended it otherwise), and not before a whole
    /// window.
    #[test]
    fn a_sample_is_cut_after_its_first_window_under_the_bar() {
        let stop = StopBelow {
            window: 2,
            threshold: 1.0,
        };
        assert_eq!(stop.cut(&[0.0, 3.0, 3.0, 0.5, 1.0, 3.0]), Some(5));
        assert_eq!(stop.cut(&[0.1, 3.0, 3.0]), None);
        assert_eq!(stop.cut(&[3.0, 3.0, 0.5, 0.5]), None);
        assert_eq!(stop.cut(&[3.0, 0.5, 0.5, 0.5]), Some(3));
        assert!(!stop.falls_under([0.5].into_iter()));
    }

    fn params(temperature: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            seed,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_largest() {
        let mut s = Sampler::new(params(0.0, 1));
        assert_eq!(s.sample(&[0.1, 3.0, 2.9, -1.0], &[]).token, 1);
    }

    #[test]
    fn same_seed_same_draws_and_other_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                ..params(1.5, seed)
            });
            (0..40)
                .map(|_| s.sample(&logits, &[]).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_temperature() {
        let mut s = Sampler::new(SamplingParams {
            top_k: 1,
            ..params(5.0, 3)
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.5], &[]).token, 1);
        }
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // Token 2 is e^-10 as likely as token 0: min-p 0.05 must never pick it.
        let mut s = Sampler::new(SamplingParams {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.05,
            ..params(1.0, 9)
        });
        for _ in 0..200 {
            assert_ne!(s.sample(&[10.0, 9.5, 0.0], &[]).token, 2);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // softmax([5, 0, 0]) puts 0.987 on token 0: top-p 0.9 keeps only it.
        let mut s = Sampler::new(SamplingParams {
            top_k: 0,
            top_p: 0.9,
            min_p: 0.0,
            ..params(1.0, 4)
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&[5.0, 0.0, 0.0], &[]).token, 0);
        }
    }

    #[test]
    fn repeat_penalty_changes_the_greedy_pick() {
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 2.0,
            ..params(0.0, 0)
        });
        assert_eq!(s.sample(&[2.0, 1.5], &[0]).token, 1);
    }

    #[test]
    fn logprob_is_of_the_unaltered_distribution() {
        let mut s = Sampler::new(params(0.0, 0));
        let pick = s.sample(&[0.0, 0.0], &[]);
        assert!((pick.logprob - 0.5f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn signals_match_their_definitions() {
        // Four tokens: p = softmax(l); k = 2 takes the two most likely.
        let logits = [2.0f32, 1.0, 0.0, f32::NEG_INFINITY, -1.0];
        let norm = log_sum_exp(&logits);
        let lp: Vec<f64> = [2.0f64, 1.0, 0.0, -1.0]
            .iter()
            .map(|l| l - f64::from(norm))
            .collect();
        let s = signal(&logits, 2, norm);
        assert!((f64::from(s.confidence) + (lp[0] + lp[1]) / 2.0).abs() < 1e-5);
        // KL(U ‖ p) over the four allowed tokens: Σ (1/4)·log((1/4) / p).
        let kl: f64 = lp.iter().map(|l| 0.25 * ((0.25f64).ln() - l)).sum();
        assert!((f64::from(s.certainty) - kl).abs() < 1e-5, "{s:?} vs {kl}");
        // A uniform row is not certain at all; a peaked one is more confident.
        let flat = [0.5f32; 40];
        let u = signal(&flat, 20, log_sum_exp(&flat));
        assert!(u.certainty.abs() < 1e-5);
        let mut peak = flat;
        peak[7] = 12.0;
        let p = signal(&peak, 20, log_sum_exp(&peak));
        assert!(p.confidence > u.confidence && p.certainty > 1.0);
        // Asked for or not.
        let mut s = Sampler::new(SamplingParams {
            confidence_k: Some(20),
            ..params(0.0, 0)
        });
        assert_eq!(s.sample(&peak, &[]).signal, Some(p));
        assert_eq!(Sampler::new(params(0.0, 0)).sample(&peak, &[]).signal, None);
    }

    #[test]
    fn argmax_takes_the_first_of_equal_largest() {
        let mut logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32).collect();
        assert_eq!(argmax(&logits), 30); // 30·37 = 1110 ≡ 100 (mod 101)
        logits[990] = 500.0;
        logits[995] = 500.0;
        logits[3] = f32::NAN;
        assert_eq!(argmax(&logits), 990);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 40]), 0);
    }

    #[test]
    fn top_k_keeps_the_k_largest_with_ties_by_id() {
        // With masked (−∞) logits, and more of them than some k's.
        let logits: Vec<f32> = (0..5000)
            .map(|i| match (i * 7919) % 1000 {
                v if v < 300 => f32::NEG_INFINITY,
                v => v as f32 / 10.0,
            })
            .collect();
        for k in [1, 3, 40, 999, 4999] {
            let mut got = top_k(&logits, k);
            got.sort_unstable_by(by_logit);
            let mut all: Vec<(u32, f32)> = (0..).zip(logits.iter().copied()).collect();
            all.sort_unstable_by(by_logit);
            all.truncate(k);
            assert_eq!(got, all, "k = {k}");
        }
    }

    #[test]
    fn log_softmax_matches_a_double_precision_one() {
        let logits: Vec<f32> = (0..1003)
            .map(|i| ((i * 31) % 97) as f32 * 0.37 - 9.0)
            .collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        for i in [0, 500, 1002] {
            let want = f64::from(logits[i] - max) - sum.ln();
            assert!((f64::from(log_softmax_at(&logits, i)) - want).abs() < 1e-5);
        }
    }
}
