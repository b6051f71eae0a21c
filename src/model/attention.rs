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
    if kl.stride()[3] != 1 || vl.stride()[3] != 1 {
        bail!("decode attention needs the cache's head dimension contiguous");
    }
    let view = |data, layout: &candle_core::Layout| View {
        data,
        start: layout.start_offset(),
        stride: [layout.stride()[0], layout.stride()[1], layout.stride()[2]],
    };

    let mut y = vec![0f32; b * h * d];
    let heads = Heads {
        q: &q,
        k: view(kc.as_slice::<f32>()?, kl),
        v: view(vc.as_slice::<f32>()?, vl),
        mask: &mask,
        per_row,
        kvh,
        n_rep,
        l,
        d,
        out: Out(y.as_mut_ptr()),
    };
    let fma = fma_here();
    // One task per (row, KV head): it writes the n_rep heads of that group.
    let task = |c: usize| {
        #[cfg(target_arch = "x86_64")]
        if fma {
            // SAFETY: this CPU has AVX2 and FMA (`fma_here`).
            return unsafe { heads.group_fma(c) };
        }
        heads.group::<false>(c)
    };
    if !pool::run(b * kvh, &task) {
        (0..b * kvh).for_each(task);
    }
    drop((ks, vs));
    Ok(Tensor::from_vec(y, (b, 1, h * d), k.device())?)
}

/// Whether the loops can be compiled for AVX2 + FMA here: the default build targets plain
/// x86-64 (SSE2), four lanes and no fused multiply-add.
fn fma_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A [B, KVH, L, D] cache view in its buffer: where it starts, and the steps of its first
/// three axes (the last is contiguous).
struct View<'a> {
    data: &'a [f32],
    start: usize,
    stride: [usize; 3],
}

impl View<'_> {
    /// Position i's D values of (row, KV head g).
    fn at(&self, row: usize, g: usize, i: usize, d: usize) -> &[f32] {
        let [b, h, l] = self.stride;
        &self.data[self.start + row * b + g * h + i * l..][..d]
    }
}

/// What every (row, KV head) task reads, and where it writes.
struct Heads<'a> {
    q: &'a [f32],
    k: View<'a>,
    v: View<'a>,
    mask: &'a [f32],
    per_row: bool,
    kvh: usize,
    n_rep: usize,
    l: usize,
    d: usize,
    out: Out,
}

impl Heads<'_> {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn group_fma(&self, c: usize) {
        self.group::<true>(c)
    }

    /// The n_rep query heads of task c's (row, KV head). With `FMA`, multiply-adds are fused
    /// (only where the caller enables the instruction: elsewhere `mul_add` is a library call).
    #[inline(always)]
    fn group<const FMA: bool>(&self, c: usize) {
        let madd = |a: f32, b: f32, acc: f32| if FMA { a.mul_add(b, acc) } else { a * b + acc };
        let (row, g) = (c / self.kvh, c % self.kvh);
        let (n_rep, l, d) = (self.n_rep, self.l, self.d);
        let h = self.kvh * n_rep;
        let query = |r: usize| &self.q[(row * h + g * n_rep + r) * d..][..d];
        let key = |i: usize| self.k.at(row, g, i, d);
        let value = |i: usize| self.v.at(row, g, i, d);
        // Weights of the group's n_rep heads, [n_rep][L]. Each key and value is read once
        // for all of them (they share the KV head), not once per head.
        let mut p = vec![0f32; n_rep * l];
        for i in 0..l {
            let k = key(i);
            for r in 0..n_rep {
                p[r * l + i] = dot::<FMA>(query(r), k);
            }
        }
        for (r, p) in p.chunks_exact_mut(l).enumerate() {
            let m = match (self.mask.is_empty(), self.per_row) {
                (true, _) => None,
                (false, false) => Some(&self.mask[r * l..][..l]),
                (false, true) => Some(&self.mask[(row * n_rep + r) * l..][..l]),
            };
            if let Some(m) = m {
                for (s, &m) in p.iter_mut().zip(m) {
                    *s += m;
                }
            }
            let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for s in p.iter_mut() {
                *s = exp(*s - max);
            }
            if let Some(m) = m {
                // A hidden position weighs exactly 0, not exp's floor e^−87.
                for (s, &m) in p.iter_mut().zip(m) {
                    *s = if m == f32::NEG_INFINITY { 0.0 } else { *s };
                }
            }
            let sum = sum8(p);
            for s in p.iter_mut() {
                *s /= sum;
            }
        }
        // SAFETY: task c alone writes the heads g·n_rep … (g + 1)·n_rep of row `row`, which
        // lie next to each other, and the output outlives the tasks.
        let y = unsafe { self.out.slice((row * h + g * n_rep) * d, n_rep * d) };
        // Four positions per pass over a head: a quarter of the loads and stores of its
        // output, added in the same order as one at a time.
        let mut i = 0;
        while i + 4 <= l {
            let (v0, v1, v2, v3) = (value(i), value(i + 1), value(i + 2), value(i + 3));
            for (yh, w) in y.chunks_exact_mut(d).zip(p.chunks_exact(l)) {
                for (j, y) in yh.iter_mut().enumerate() {
                    let acc = madd(w[i], v0[j], *y);
                    let acc = madd(w[i + 1], v1[j], acc);
                    let acc = madd(w[i + 2], v2[j], acc);
                    *y = madd(w[i + 3], v3[j], acc);
                }
            }
            i += 4;
        }
        for i in i..l {
            for (yh, w) in y.chunks_exact_mut(d).zip(p.chunks_exact(l)) {
                for (y, &v) in yh.iter_mut().zip(value(i)) {
                    *y = madd(w[i], v, *y);
                }
            }
        }
    }
}

/// Σ q·k in eight lanes, so the loop vectorizes.
#[inline(always)]
fn dot<const FMA: bool>(q: &[f32], k: &[f32]) -> f32 {
    let madd = |a: f32, b: f32, acc: f32| if FMA { a.mul_add(b, acc) } else { a * b + acc };
    let mut lanes = [0f32; 8];
    for (q, k) in q.chunks_exact(8).zip(k.chunks_exact(8)) {
        for j in 0..8 {
            lanes[j] = madd(q[j], k[j], lanes[j]);
        }
    }
    let whole = q.len() - q.len() % 8;
    let mut dot = lanes.iter().sum::<f32>();
    for j in whole..q.len() {
        dot = madd(q[j], k[j], dot);
    }
    dot
}

/// Σ x in eight lanes, position i in lane i mod 8 (the tail too). A row shorter than the
/// batch's longest has zeros past its end, and adding a zero to a lane is exact, so the row
/// sums to the same bits at any batch length: a job answers the same alone and batched.
#[inline(always)]
fn sum8(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for c in x.chunks(8) {
        for (lane, &v) in lanes.iter_mut().zip(c) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>()
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

    /// A row's output has the same bits whatever the batch's longest row: the engine's
    /// continuous batching relies on a job answering exactly as it does alone.
    #[test]
    fn a_row_gives_the_same_bits_under_a_longer_batch() {
        let dev = Device::Cpu;
        let (kvh, n_rep, d, cap) = (2, 3, 64, 64);
        let q = Tensor::randn(0f32, 1.0, (1, kvh * n_rep, 1, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, kvh, cap, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, kvh, cap, d), &dev).unwrap();
        for own in [5, 13, 31, 39] {
            let view = |t: &Tensor, l| t.narrow(2, 0, l).unwrap();
            let alone = decode(&q, &view(&k, own), &view(&v, own), None).unwrap();
            for longest in [own + 1, own + 9, cap] {
                let hide: Vec<f32> = (0..n_rep * longest)
                    .map(|i| {
                        if i % longest < own {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                    .collect();
                let mask = Tensor::from_vec(hide, (1, 1, n_rep, longest), &dev).unwrap();
                let (k, v) = (view(&k, longest), view(&v, longest));
                let batched = decode(&q, &k, &v, Some(&mask)).unwrap();
                let bits = |t: &Tensor| -> Vec<u32> {
                    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                    v.iter().map(|x| x.to_bits()).collect()
                };
                assert_eq!(bits(&alone), bits(&batched), "length {own} under {longest}");
            }
        }
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
            .map(|i| {
                if i % l > 6 + i / (n_rep * l) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
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
