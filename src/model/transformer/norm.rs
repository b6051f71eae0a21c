//! RMS norm: one pass over each row on the CPU, candle's on a GPU.
use crate::model::math::{self, simd_here};
use anyhow::Result;
use candle_core::Tensor;

pub(super) struct RmsNorm {
    /// `[W]`: the width of the rows it norms (the embedding's, or a head's).
    pub weight: Tensor,
    pub eps: f32,
}

impl RmsNorm {
    /// x: rows of the weight's width, on the CPU. Compiled for AVX-512/AVX2 (candle's was 2 %
    /// of an 8-row smollm2 step).
    pub fn rows(&self, x: &[f32]) -> Result<Vec<f32>> {
        let mut y = vec![0f32; x.len()];
        math::with_f32(&self.weight, |w| rms_norm_rows(&mut y, x, w, self.eps))??;
        Ok(y)
    }

    /// x: [.., W·n] on a GPU, normed in rows of W.
    pub fn tensor(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.dim(0)?;
        let rows = x.reshape((x.elem_count() / w, w))?.contiguous()?;
        let y = candle_nn::ops::rms_norm(&rows, &self.weight, self.eps)?;
        Ok(y.reshape(x.shape())?)
    }
}

/// y = x / √(mean(x²) + eps) · w for each row of w's length.
fn rms_norm_rows(y: &mut [f32], x: &[f32], w: &[f32], eps: f32) -> Result<()> {
    anyhow::ensure!(
        !w.is_empty() && x.len().is_multiple_of(w.len()),
        "RMS norm: {} values are not rows of the weight's {}",
        x.len(),
        w.len()
    );
    rms_norm_simd(y, x, w, eps);
    Ok(())
}

fn rms_norm_simd(y: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    simd_here!(rms_norm_body(y, x, w, eps))
}

#[inline(always)]
fn rms_norm_body(y: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    for (y, x) in y.chunks_exact_mut(w.len()).zip(x.chunks_exact(w.len())) {
        // As ggml's `ggml_compute_forward_rms_norm_f32`: Σx² in double, scale = 1/√(mean + eps)
        // in float, y = x·scale, then the weight (ggml's separate `mul`). Sixteen running
        // sums, so the loop vectorizes.
        let mut lanes = [0f64; 16];
        let whole = x.len() - x.len() % 16;
        for c in x[..whole].chunks_exact(16) {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += (v * v) as f64;
            }
        }
        let tail: f64 = x[whole..].iter().map(|v| (v * v) as f64).sum();
        let mean = ((lanes.iter().sum::<f64>() + tail) / x.len() as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
            *y = x * scale * w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The CPU's rows against candle's norm (the GPU's), on widths with and without a tail
    /// past 16 lanes, normed in rows of a head's width too; rows that are not whole are an
    /// error.
    #[test]
    fn rms_norm_matches_candles() {
        let dev = Device::Cpu;
        for width in [20, 64, 576] {
            let x = Tensor::randn(0f32, 3.0, (3, 2, 4 * width), &dev).unwrap();
            let weight = Tensor::randn(1f32, 0.5, width, &dev).unwrap();
            let norm = RmsNorm {
                weight: weight.clone(),
                eps: 1e-6,
            };
            let values: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let got = Tensor::from_vec(norm.rows(&values).unwrap(), x.shape(), &dev).unwrap();
            let want = norm.tensor(&x).unwrap();
            let max_abs = |t: Tensor| -> f32 {
                let t = t.abs().unwrap().flatten_all().unwrap();
                t.max(0).unwrap().to_scalar().unwrap()
            };
            let diff = max_abs((got - &want).unwrap());
            let scale = max_abs(want);
            assert!(diff <= 1e-5 * scale, "width {width}: {diff}");
        }
        let mut y = [0f32; 10];
        assert!(rms_norm_rows(&mut y, &[1.0; 10], &[1.0; 4], 1e-6).is_err());
    }
}
