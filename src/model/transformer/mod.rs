//! The decoder forward pass shared by the llama, qwen2, qwen3, phi3 and gemma3 GGUFs.
//!
//! Every step — prefill and decode, any batch — runs the layers' one wiring (`block`) on the
//! activations of its device (`acts`): plain rows on the CPU, candle tensors on a GPU.
//!
//! Shapes: `B` sequences in a batch, `T` new tokens each, `L` cached positions after this step,
//! `E` embedding width, `H`/`KVH` query/key-value heads, `D` head width.
mod acts;
mod block;
mod loader;
mod norm;
mod projection;
mod rope;

use super::config::Config;
use super::kv_cache::KvCache;
use acts::{Acts, At, Rows};
use anyhow::Result;
use block::Block;
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use norm::RmsNorm;
use projection::Proj;
use rope::{Frequencies, Rope};
use std::sync::Arc;

/// Which positions get logits.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Logits {
    /// Only the last position of each row: decoding.
    Last,
    /// Every position: scoring text (perplexity, fixtures).
    All,
}

/// What every layer of one forward pass shares: the rotations and masks of its positions.
struct Step {
    global: Rope,
    /// Sliding-window layers' rotation (gemma3's local base), where the model has them.
    local: Option<Rope>,
    global_mask: Option<Tensor>,
    local_mask: Option<Tensor>,
    t: usize,
}

impl Step {
    /// The rotation and mask of a layer.
    fn layer(&self, local: bool) -> At<'_> {
        match (&self.local, local) {
            (Some(rope), true) => At {
                rope,
                mask: self.local_mask.as_ref(),
            },
            _ => At {
                rope: &self.global,
                mask: self.global_mask.as_ref(),
            },
        }
    }
}

pub struct Transformer {
    embed: Arc<QTensor>,
    blocks: Vec<Block>,
    norm: RmsNorm,
    output: Proj,
    /// RoPE frequencies of the global layers, and of the sliding-window ones where there are.
    freqs: Frequencies,
    local_freqs: Option<Frequencies>,
    cfg: Config,
    device: Device,
}

impl Transformer {
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn vocab_size(&self) -> usize {
        self.embed.shape().dims()[0]
    }

    /// An empty cache for `batch` sequences of at most `max_len` positions.
    pub fn new_cache(&self, batch: usize, max_len: usize) -> Result<KvCache> {
        let c = &self.cfg;
        let max_len = max_len.min(c.ctx_len);
        KvCache::new(
            c.n_layer,
            batch,
            c.n_kv_head,
            c.head_dim,
            max_len,
            &self.device,
        )
    }

    /// tokens: [B, T] u32, appended after what `cache` holds → the f32 logits of `which`
    /// positions in `out`, `[B][T or 1][vocab]`, in the allocation `out` already has.
    pub fn forward(
        &self,
        tokens: &Tensor,
        cache: &mut KvCache,
        which: Logits,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        if self.device.is_cpu() {
            self.forward_rows(tokens, cache, which, out)
        } else {
            self.forward_tensors(tokens, cache, which, out)
        }
    }

    /// `forward` on the CPU's rows.
    fn forward_rows(
        &self,
        tokens: &Tensor,
        cache: &mut KvCache,
        which: Logits,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (b, t) = tokens.dims2()?;
        let (x, step) = self.begin(tokens, cache)?;
        let x: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut x = Rows { x, b, t };
        self.layers(&mut x, &step, cache)?;
        let e = x.width();
        let x = match which {
            Logits::Last if t > 1 => {
                let last = |row: &[f32]| row[(t - 1) * e..].to_vec();
                x.x.chunks_exact(t * e).flat_map(last).collect()
            }
            _ => x.x,
        };
        let x = self.norm.rows(&x)?;
        projection::mul_rows(&[&self.output], &x, e, std::slice::from_mut(out))
    }

    /// `forward` on a GPU's tensors.
    fn forward_tensors(
        &self,
        tokens: &Tensor,
        cache: &mut KvCache,
        which: Logits,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let t = tokens.dim(1)?;
        let (mut x, step) = self.begin(tokens, cache)?;
        self.layers(&mut x, &step, cache)?;
        if which == Logits::Last && t > 1 {
            x = x.narrow(1, t - 1, 1)?;
        }
        let logits = projection::mul_tensor(&self.output, &self.norm.tensor(&x)?)?;
        *out = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(())
    }

    /// Every layer on x ([B·T, E], in place), then the step's positions marked written.
    fn layers<A: Acts>(&self, x: &mut A, step: &Step, cache: &mut KvCache) -> Result<()> {
        for (i, block) in self.blocks.iter().enumerate() {
            block.forward(x, &step.layer(block.local), cache, i)?;
        }
        cache.advance(step.t);
        Ok(())
    }

    /// The embeddings of `tokens` ([B, T, E]) and what every layer of their step shares.
    fn begin(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<(Tensor, Step)> {
        let (b, t) = tokens.dims2()?;
        anyhow::ensure!(
            b == cache.batch(),
            "batch {b} != cache batch {}",
            cache.batch()
        );
        cache.reserve(t)?;
        let starts = cache.lens().to_vec();
        let mut x = self.embed.embedding(tokens)?; // [B, T, E]
        if let Some(s) = self.cfg.embed_scale {
            x = (x * s as f64)?;
        }
        let style = self.cfg.rope_style;
        let global = Rope::new(&self.freqs, style, &starts, t, &self.device)?;
        let local = match &self.local_freqs {
            Some(f) => Some(Rope::new(f, style, &starts, t, &self.device)?),
            None => None,
        };
        let n_rep = self.cfg.n_head / self.cfg.n_kv_head;
        let step = Step {
            global_mask: self.mask(&starts, t, None, n_rep)?,
            local_mask: self.mask(&starts, t, self.cfg.sliding_window, n_rep)?,
            global,
            local,
            t,
        };
        Ok((x, step))
    }

    /// Additive mask hiding future positions, positions past a row's own length (rows of
    /// different requests share the batch) and, with a window, positions at distance ≥ window
    /// (llama.cpp's standard SWA rule). `[n_rep·T, L]` when every row starts at the same
    /// position, else `[B, 1, n_rep·T, L]`; None when it would hide nothing.
    fn mask(
        &self,
        starts: &[usize],
        t: usize,
        window: Option<usize>,
        n_rep: usize,
    ) -> Result<Option<Tensor>> {
        let l = starts.iter().max().copied().unwrap_or(0) + t;
        let uniform = starts.windows(2).all(|w| w[0] == w[1]);
        let hides_nothing = uniform && t == 1 && window.is_none_or(|w| l <= w);
        if hides_nothing {
            return Ok(None);
        }
        let rows = if uniform { &starts[..1] } else { starts };
        let mut m = Vec::with_capacity(rows.len() * n_rep * t * l);
        for &start in rows {
            for _ in 0..n_rep {
                for i in 0..t {
                    let q = start + i;
                    m.extend((0..l).map(|k| {
                        let visible = k <= q && window.is_none_or(|w| q - k < w);
                        if visible {
                            0f32
                        } else {
                            f32::NEG_INFINITY
                        }
                    }));
                }
            }
        }
        let mask = if uniform {
            Tensor::from_vec(m, (n_rep * t, l), &self.device)?
        } else {
            Tensor::from_vec(m, (rows.len(), 1, n_rep * t, l), &self.device)?
        };
        Ok(Some(mask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::GgufFile;

    /// The GPU's wiring, which cannot run on a GPU here, run on the CPU: over a batch's
    /// prefill and decode steps it gives the CPU rows' greedy tokens, and their logits but for
    /// candle's norm and activations in place of ours, whose last bits the 8-bit activations
    /// of the next products magnify (seen: up to 3.5 % of the largest logit).
    #[test]
    fn the_tensor_wiring_gives_the_rows_logits() {
        let path = crate::store::fetch::resolve("smollm2-135m", true).unwrap();
        let mut g = GgufFile::open(&path).unwrap();
        let cfg = Config::from_gguf(&g).unwrap();
        let model = Transformer::load(&mut g, cfg, &Device::Cpu).unwrap();
        let dev = Device::Cpu;
        let prompt = Tensor::new(
            &[
                [1u32, 504, 3458, 314, 4849, 30, 253],
                [1, 22, 8, 90, 17, 5, 3],
            ],
            &dev,
        )
        .unwrap();
        let (mut rows, mut tensors) = (
            model.new_cache(2, 64).unwrap(),
            model.new_cache(2, 64).unwrap(),
        );
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut tokens = prompt;
        for step in 0..4 {
            let which = if step == 0 { Logits::All } else { Logits::Last };
            model
                .forward_rows(&tokens, &mut rows, which, &mut a)
                .unwrap();
            model
                .forward_tensors(&tokens, &mut tensors, which, &mut b)
                .unwrap();
            let vocab = model.vocab_size();
            let mut next = Vec::new();
            for (ra, rb) in a.chunks_exact(vocab).zip(b.chunks_exact(vocab)) {
                let top = |r: &[f32]| {
                    let best = r.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1));
                    best.unwrap().0 as u32
                };
                let scale = ra.iter().fold(0f32, |m, v| m.max(v.abs()));
                // A near tie may go either way (seen with AVX-512, whose sums round
                // otherwise): the other wiring's pick must then be all but as likely.
                let (ta, tb) = (top(ra) as usize, top(rb) as usize);
                assert!(
                    ta == tb || ra[ta] - ra[tb] <= 0.01 * scale,
                    "step {step}: greedy {ta} vs {tb}, logits {} vs {} of {scale}",
                    ra[ta],
                    ra[tb]
                );
                let diff = ra
                    .iter()
                    .zip(rb)
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    diff <= 0.06 * scale,
                    "step {step}: logits {diff} apart of {scale}"
                );
                next.push(top(ra));
            }
            // The last position's greedy token of each row.
            let per_row = next.len() / 2;
            let last = [next[per_row - 1], next[2 * per_row - 1]];
            tokens = Tensor::new(&[[last[0]], [last[1]]], &dev).unwrap();
        }
    }
}
