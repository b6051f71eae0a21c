//! Rotary position embeddings: the cos/sin tables of one step's positions, and their rotation.
use crate::model::config::RopeStyle;
use crate::model::math::simd_here;
use anyhow::Result;
use candle_core::{Device, Tensor};

/// cos/sin tables for the positions of one step, for one RoPE base: `[T, D/2]` when every row
/// starts at the same position, else `[B, T, D/2]`.
pub(super) struct Rope {
    /// The tables as tensors on the model's device, for a GPU.
    cos: Tensor,
    sin: Tensor,
    /// The same values, for the CPU's rows.
    values: (Vec<f32>, Vec<f32>),
    /// Positions per row (T).
    t: usize,
    per_row: bool,
    style: RopeStyle,
}

/// The angle per position of each pair of a head's dimensions, fixed per model and base.
pub(super) struct Frequencies {
    inv: Vec<f32>,
}

impl Frequencies {
    /// base^(−2i/D) for pair i, times `scale` (linear scaling), divided by `factors[i]` where
    /// the GGUF has them: llama 3's `rope_freqs` tensor, which ggml's rope divides each
    /// pair's angle by (ggml-cpu/ops.cpp, `ggml_rope_cache_init`: `theta/ff`).
    pub fn new(base: f32, head_dim: usize, scale: f32, factors: Option<&[f32]>) -> Self {
        let inv = (0..head_dim / 2)
            .map(|i| {
                let f = 1.0 / base.powf(2.0 * i as f32 / head_dim as f32);
                scale * f / factors.map_or(1.0, |ff| ff[i])
            })
            .collect();
        Self { inv }
    }
}

impl Rope {
    pub fn new(
        freqs: &Frequencies,
        style: RopeStyle,
        starts: &[usize],
        t: usize,
        device: &Device,
    ) -> Result<Self> {
        let half = freqs.inv.len();
        let inv = &freqs.inv;
        let uniform = starts.windows(2).all(|w| w[0] == w[1]);
        let rows = if uniform { &starts[..1] } else { starts };
        let mut cos = Vec::with_capacity(rows.len() * t * half);
        let mut sin = Vec::with_capacity(rows.len() * t * half);
        for &start in rows {
            for p in start..start + t {
                for f in inv {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let shape: &[usize] = if uniform {
            &[t, half]
        } else {
            &[rows.len(), t, half]
        };
        Ok(Self {
            cos: Tensor::from_slice(&cos, shape, device)?,
            sin: Tensor::from_slice(&sin, shape, device)?,
            values: (cos, sin),
            t,
            per_row: !uniform,
            style,
        })
    }

    /// x: [B, heads, T, D], contiguous, on a GPU.
    pub fn tensor(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(x, &self.cos, &self.sin)?,
            RopeStyle::Halves => candle_nn::rotary_emb::rope(x, &self.cos, &self.sin)?,
        })
    }

    /// In place on a step's values x: [B, T, heads, D], with candle's arithmetic
    /// (`candle_nn::rotary_emb`'s CPU kernels): x₁·cos − x₂·sin, x₁·sin + x₂·cos.
    pub fn rows(&self, x: &mut [f32], b: usize, d: usize) {
        let (cos, sin) = (&self.values.0, &self.values.1);
        let half = d / 2;
        for (i, heads) in x.chunks_exact_mut(x.len() / (b * self.t)).enumerate() {
            // Position i is row i / T's (i mod T)-th.
            let at = if self.per_row { i } else { i % self.t } * half;
            rope_row(heads, &cos[at..][..half], &sin[at..][..half], self.style);
        }
    }
}

/// Rotates each head of D = 2·cos.len() values in `x`.
fn rope_row(x: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    simd_here!(rope_row_body(x, cos, sin, style))
}

#[inline(always)]
fn rope_row_body(x: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = cos.len();
    for head in x.chunks_exact_mut(2 * half) {
        match style {
            RopeStyle::Interleaved => {
                for ((p, c), s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                    let (a, b) = (p[0], p[1]);
                    p[0] = a * c - b * s;
                    p[1] = a * s + b * c;
                }
            }
            RopeStyle::Halves => {
                let (lo, hi) = head.split_at_mut(half);
                for (((a, b), c), s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
                    let (x1, x2) = (*a, *b);
                    *a = x1 * c - x2 * s;
                    *b = x1 * s + x2 * c;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU's rotation gives candle's bits (the GPU's, and the CPU prefill's before the
    /// one wiring), for several positions per row, rows at the same or their own positions,
    /// in both styles.
    #[test]
    fn rows_rotate_as_candle_does() {
        let dev = Device::Cpu;
        let (heads, d, t) = (3, 16, 5);
        for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
            for starts in [vec![7, 7], vec![0, 9]] {
                let b = starts.len();
                let per_row = starts[0] != starts[1];
                let rows = if per_row { b } else { 1 };
                let n = rows * t * d / 2;
                let cos: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).cos()).collect();
                let sin: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
                let shape: &[usize] = if per_row { &[b, t, d / 2] } else { &[t, d / 2] };
                let rope = Rope {
                    cos: Tensor::from_slice(&cos, shape, &dev).unwrap(),
                    sin: Tensor::from_slice(&sin, shape, &dev).unwrap(),
                    values: (cos, sin),
                    t,
                    per_row,
                    style,
                };
                let x = Tensor::randn(0f32, 1.0, (b, t, heads, d), &dev).unwrap();
                let mut got: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                rope.rows(&mut got, b, d);
                let want = rope
                    .tensor(&x.transpose(1, 2).unwrap().contiguous().unwrap())
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap();
                let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{style:?}, starts {starts:?}");
            }
        }
    }
}
