//! How much of a waiting prompt to prefill between two decode steps (chunked prefill).
//!
//! On these CPUs a prefill and a decode step both spend their time on the same arithmetic,
//! so a chunk of a long prompt delays every stream in flight by its own duration. A chunk is
//! therefore sized in time, as a share of the last decode step, and in tokens from the
//! model's measured prefill rate. vLLM bounds a step by a token budget instead
//! (`max_num_batched_tokens`, docs "Optimization and Tuning: chunked prefill"); a time share
//! carries over between a 135M and a 1.5B model.
use super::generate::PREFILL_CHUNK;
use std::collections::HashMap;
use std::time::Duration;

/// Prompts of at most this many new tokens go in whole even while others decode: splitting
/// a prompt can change the last bits of its logits (on a GPU candle's attention sums in an
/// order that follows the chunk's size; the CPU's does not, `model::attention`), so short
/// prompts, an ensemble's and most chat turns', keep the logits they have on an idle engine,
/// at the cost of one longer gap in the streams.
pub(crate) const WHOLE_UP_TO: usize = 64;

/// The fewest tokens a chunk of a long prompt takes, however short the decode steps: each
/// chunk reads every weight once, and smaller ones spend more of their time doing that. On
/// a 0.5B model on 2 cores this floor, not the share, is what sizes the chunks (README,
/// "Serving").
pub(crate) const MIN_CHUNK: usize = 16;

/// The part of a decode step's time that a chunk of a waiting prompt may add to it: while a
/// long prompt goes in, streams in flight get a token every 1 + PREFILL_SHARE steps' time.
/// A larger share gives the long prompt its first token sooner and the streams longer gaps.
pub(crate) const PREFILL_SHARE: f64 = 0.5;

/// Each model's prefill rate and the last decode step's time.
#[derive(Default)]
pub(crate) struct Pace {
    /// Prompt tokens per second of each model's recent prefill runs (a moving average).
    rate: HashMap<String, f64>,
    /// The last round of decode steps, every model's together.
    step: Duration,
}

impl Pace {
    /// Prefill time one round of decode steps may wait for.
    pub fn budget(&self) -> Duration {
        self.step.mul_f64(PREFILL_SHARE)
    }

    /// Tokens to prefill now of a prompt of `new` tokens (those not from the prefix store),
    /// `remaining` of them still to go, with `left` of this round's budget. With nothing
    /// `decoding`, and for short prompts, the rest whole; else what fits in `left`, from
    /// [`MIN_CHUNK`] (also until a run of the model was timed) to [`PREFILL_CHUNK`].
    pub fn chunk(
        &self,
        model: &str,
        new: usize,
        remaining: usize,
        decoding: bool,
        left: Duration,
    ) -> usize {
        if !decoding || new <= WHOLE_UP_TO {
            return remaining;
        }
        let rate = self.rate.get(model).copied().unwrap_or(0.0);
        let fits = (rate * left.as_secs_f64()) as usize;
        fits.clamp(MIN_CHUNK, PREFILL_CHUNK).min(remaining)
    }

    /// Records a prefill run of `tokens` of `model`'s prompt that took `took`.
    pub fn ran(&mut self, model: &str, tokens: usize, took: Duration) {
        if tokens == 0 || took.is_zero() {
            return;
        }
        let now = tokens as f64 / took.as_secs_f64();
        let r = self.rate.entry(model.to_string()).or_insert(now);
        *r = 0.7 * *r + 0.3 * now;
    }

    /// Records a round of decode steps that took `took`.
    pub fn stepped(&mut self, took: Duration) {
        self.step = took;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle or short: the rest whole. Busy and long: what the budget holds at the measured
    /// rate, within the floor and the piece size, never past the prompt's end.
    #[test]
    fn chunks_follow_the_rate_and_the_budget() {
        let mut p = Pace::default();
        let ms = Duration::from_millis;
        assert_eq!(p.chunk("m", 2000, 2000, false, ms(0)), 2000);
        assert_eq!(
            p.chunk("m", WHOLE_UP_TO, WHOLE_UP_TO, true, ms(0)),
            WHOLE_UP_TO
        );
        assert_eq!(
            p.chunk("m", 2000, 2000, true, ms(50)),
            MIN_CHUNK,
            "no rate yet"
        );
        p.ran("m", 100, ms(100)); // 1,000 tokens/s
        assert_eq!(p.chunk("m", 2000, 2000, true, ms(50)), 50);
        assert_eq!(p.chunk("m", 2000, 30, true, ms(50)), 30);
        assert_eq!(p.chunk("m", 2000, 2000, true, ms(1)), MIN_CHUNK);
        assert_eq!(p.chunk("m", 2000, 2000, true, ms(5000)), PREFILL_CHUNK);
        assert_eq!(p.chunk("other", 2000, 2000, true, ms(50)), MIN_CHUNK);
        p.stepped(ms(80));
        assert_eq!(p.budget(), ms(40));
    }
}
