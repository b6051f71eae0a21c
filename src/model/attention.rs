//! Attention for one new position per row (a decode step), read straight from the KV cache's
//! buffers. candle's batched matmul spends more on setting up each of the B·KV-heads tiny
//! products ([n_rep, D]·[D, L]) than on the arithmetic: with 8 rows on smollm2 its GEMM took
//! about a sixth of the step (`perf`).
use super::math::exp;
use super::qmatmul::pool;
use anyhow::{bail, Result};
use candle_core::{Storage, Tensor};

/// q: [B, H, 1, D], already scaled; k, v: [B, KVH, L, D], views of the cache whose last axis
/// is contiguous; mask: additive, [n_rep, L] or per row [B, 1, n_rep, L]. → [B, 1, H·D].
/// Query head h reads KV head h / n_rep, as the grouped layout of `Attention::forward` does.
pub fn decode(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (_, kvh, l, _) = k.dims4()?;
    if t != 1 || h % kvh != 0 {
        bail!("decode attention takes one position per row, and whole groups of heads");
    }
    let n_rep = h / kvh;
    let q: Vec<f32> = q.flatten_all()?.to_vec1()?;
    let (mask, per_row) = match mask {
        Some(m) => (m.flatten_all()?.to_vec1::<f32>()?, m.rank() == 4),
        None => (Vec::new(), false),
    };
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Storage::Cpu(kc), Storage::Cpu(vc)) = (&*ks, &*vs) else {
        bail!("decode attention runs on the CPU");
    };
    let (kd, vd) = (kc.as_slice::<f32>()?, vc.as_slice::<f32>()?);
    let (kst, vst) = (kl.stride(), vl.stride());
    if kst[3] != 1 || vst[3] != 1 {
        bail!("decode attention needs the cache's head dimension contiguous");
    }
    let (k0, v0) = (kl.start_offset(), vl.start_offset());

    let mut y = vec![0f32; b * h * d];
    let out = Out(y.as_mut_ptr());
    // One task per (row, KV head): it writes the n_rep heads of that group.
    let task = |c: usize| {
        let (row, g) = (c / kvh, c % kvh);
        let kb = k0 + row * kst[0] + g * kst[1];
        let vb = v0 + row * vst[0] + g * vst[1];
        let mut p = vec![0f32; l];
        for r in 0..n_rep {
            let head = g * n_rep + r;
            let qh = &q[(row * h + head) * d..][..d];
            let m = match (mask.is_empty(), per_row) {
                (true, _) => None,
                (false, false) => Some(&mask[r * l..][..l]),
                (false, true) => Some(&mask[(row * n_rep + r) * l..][..l]),
            };
            let mut max = f32::NEG_INFINITY;
            for (i, s) in p.iter_mut().enumerate() {
                *s = dot(qh, &kd[kb + i * kst[2]..][..d]) + m.map_or(0.0, |m| m[i]);
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in p.iter_mut() {
                // A hidden position weighs exactly 0, not exp's floor e^−87.
                *s = if *s == f32::NEG_INFINITY {
                    0.0
                } else {
                    exp(*s - max)
                };
                sum += *s;
            }
            // SAFETY: task c alone writes heads g·n_rep … of row `row`, and `y` outlives it.
            let yh = unsafe { out.slice((row * h + head) * d, d) };
            for (i, &w) in p.iter().enumerate() {
                let w = w / sum;
                for (y, &v) in yh.iter_mut().zip(&vd[vb + i * vst[2]..][..d]) {
                    *y += w * v;
                }
            }
        }
    };
    if !pool::run(b * kvh, &task) {
        (0..b * kvh).for_each(task);
    }
    drop((ks, vs));
    Ok(Tensor::from_vec(y, (b, 1, h * d), k.device())?)
}

/// Σ a·b in eight lanes, so the loop vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The output shared by the tasks, each writing its own heads.
#[derive(Clone, Copy)]
struct Out(*mut f32);
impl Out {
    /// # Safety
    /// `at..at + len` lies in the output, and no other task uses it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, at: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(at), len)
    }
}

// SAFETY: tasks write disjoint heads, and `decode` outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// candle's grouped attention, as `Attention::forward` computes it for longer inputs.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (b, h, _, d) = q.dims4().unwrap();
        let kvh = k.dim(1).unwrap();
        let q = q.reshape((b, kvh, h / kvh, d)).unwrap();
        let att = q.matmul(&k.t().unwrap()).unwrap();
        let att = match mask {
            Some(m) => att.broadcast_add(m).unwrap(),
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att).unwrap();
        att.matmul(&v.contiguous().unwrap())
            .unwrap()
            .reshape((b, 1, h * d))
            .unwrap()
    }

    #[test]
    fn matches_candles_attention_on_cache_views_with_masks() {
        let dev = Device::Cpu;
        let (b, kvh, n_rep, d, cap, l) = (3, 2, 3, 20, 16, 11);
        let q = Tensor::randn(0f32, 1.0, (b, kvh * n_rep, 1, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, kvh, cap, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, kvh, cap, d), &dev).unwrap();
        let (k, v) = (k.narrow(2, 0, l).unwrap(), v.narrow(2, 0, l).unwrap());
        // Hide the first 4 positions for every row, and per row a different tail.
        let shared: Vec<f32> = (0..n_rep * l)
            .map(|i| if i % l < 4 { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let shared = Tensor::from_vec(shared, (n_rep, l), &dev).unwrap();
        let rows: Vec<f32> = (0..b * n_rep * l)
            .map(|i| if i % l > 6 + i / (n_rep * l) { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let rows = Tensor::from_vec(rows, (b, 1, n_rep, l), &dev).unwrap();
        for mask in [None, Some(&shared), Some(&rows)] {
            let got = decode(&q, &k, &v, mask).unwrap();
            let want = reference(&q, &k, &v, mask);
            let diff = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max(D::Minus1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "max difference {diff}");
        }
    }
}
