//! The decoder forward pass shared by the llama, qwen2 and gemma3 GGUFs.
//!
//! Shapes: `B` sequences in a batch, `T` new tokens each, `L` cached positions after this step,
//! `E` embedding width, `H`/`KVH` query/key-value heads, `D` head width.
use super::config::{Activation, Config, RopeStyle};
use super::gguf::GgufFile;
use super::kv_cache::KvCache;
use super::math::{self, simd_here};
use super::qmatmul;
use anyhow::{Context, Result};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use std::sync::Arc;

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Applies `norm` when the architecture has it (gemma's q/k and post norms).
    fn maybe(norm: &Option<RmsNorm>, x: Tensor) -> Result<Tensor> {
        match norm {
            Some(n) => n.forward(&x),
            None => Ok(x),
        }
    }

    /// `maybe` on a CPU step's values.
    fn maybe_rows(norm: &Option<RmsNorm>, x: Vec<f32>) -> Result<Vec<f32>> {
        match norm {
            Some(n) => n.rows(&x),
            None => Ok(x),
        }
    }

    /// On the CPU one pass over each row, compiled for AVX-512/AVX2 (candle's was 2 % of an
    /// 8-row smollm2 step); elsewhere candle's.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            return Ok(candle_nn::ops::rms_norm(
                &x.contiguous()?,
                &self.weight,
                self.eps,
            )?);
        }
        let y = math::with_f32(x, |x| self.rows(x))??;
        Ok(Tensor::from_vec(y, x.shape(), x.device())?)
    }

    /// `forward` on a CPU step's values: each row of the weight's length.
    fn rows(&self, x: &[f32]) -> Result<Vec<f32>> {
        let mut y = vec![0f32; x.len()];
        math::with_f32(&self.weight, |w| rms_norm_rows(&mut y, x, w, self.eps))??;
        Ok(y)
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

/// Below this many activation rows (decode, ensemble batches, prefills of up to 255 tokens),
/// formats with a kernel of our own use it: 8-bit integer dot products that reuse each weight
/// block across the rows. In `benches/kernels.rs` (one thread, weights in cache) the kernel
/// beats dequantize + f32 GEMM 2–4× at 32 rows and is about even at 128; in a real 128-token
/// prefill (`benches/generate.rs`, 2 threads, interleaved runs) it is faster still, because
/// the GEMM path dequantizes every weight on each call: qwen2.5-coder-0.5b (Q5_0) 97–108 →
/// 145–156 tok/s, gemma3-270m 283–309 → 439–461, smollm2 (Q4_1, cheap to dequantize) unchanged.
const KERNEL_MAX_ROWS: usize = 256;

/// From this many activation rows on, other quantized weights are dequantized and multiplied
/// with candle's f32 GEMM, whose SIMD kernels beat its scalar per-row quantized dot products
/// once the one-off dequantization is shared by enough rows. Measured on 2 cores with
/// smollm2 before our kernel existed: a 30-token prefill took 0.25 s instead of 1.6 s, and
/// batch-8 decode ran at 31 tok/s instead of 25. Batch-4 decode is slower this way (17 vs 20
/// tok/s), hence the threshold.
const GEMM_MIN_ROWS: usize = 8;

/// A quantized weight [out, in]: packed at load for the kernel paths that read it so
/// (`qmatmul::Simd::packs`: AMX and AVX-512), else candle's tensor.
enum Proj {
    Packed(qmatmul::Packed),
    Candle(QMatMul),
}

impl Proj {
    fn new(q: Arc<QTensor>) -> Result<Proj> {
        if q.device().is_cpu()
            && qmatmul::supported(q.dtype())
            && qmatmul::Simd::from_env()?.packs()
        {
            let (n, k) = q.shape().dims2()?;
            return Ok(Proj::Packed(qmatmul::pack(q.dtype(), &q.data()?, n, k)?));
        }
        Ok(Proj::Candle(QMatMul::from_arc(q)?))
    }

    /// Output width.
    fn out_dim(&self) -> Result<usize> {
        Ok(match self {
            Proj::Packed(p) => p.n,
            Proj::Candle(QMatMul::QTensor(q)) => q.shape().dims2()?.0,
            Proj::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.dim(0)?,
        })
    }
}

/// x: [.., in] times a quantized weight [out, in] → [.., out].
fn mul_weight(w: &Proj, x: &Tensor) -> Result<Tensor> {
    Ok(mul_weights(&[w], x)?.remove(0))
}

/// x: [.., in] times each of several quantized weights [out_i, in] → [.., out_i]. When our
/// kernel takes them all (`ours`), it does them in one call (`qmatmul::matmul_many`).
fn mul_weights(ws: &[&Proj], x: &Tensor) -> Result<Vec<Tensor>> {
    let in_dim = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / in_dim;
    if !x.device().is_cpu() || !ws.iter().all(|w| ours(w, rows)) {
        return ws
            .iter()
            .map(|w| match w {
                Proj::Candle(q) => mul_weight_other(q, x),
                Proj::Packed(_) => mul_weight(w, x),
            })
            .collect();
    }
    let outs = math::with_f32(x, |xs| kernel_rows(ws, xs, in_dim))??;
    outs.into_iter()
        .zip(ws)
        .map(|(out, w)| {
            let mut shape = x.dims().to_vec();
            *shape.last_mut().unwrap() = w.out_dim()?;
            Ok(Tensor::from_vec(out, shape, x.device())?)
        })
        .collect()
}

/// `mul_weights` on a CPU step's values, rows of `in_dim`.
fn mul_rows(ws: &[&Proj], x: &[f32], in_dim: usize) -> Result<Vec<Vec<f32>>> {
    let rows = x.len() / in_dim;
    if ws.iter().all(|w| ours(w, rows)) {
        return kernel_rows(ws, x, in_dim);
    }
    let x = Tensor::from_slice(x, (rows, in_dim), &Device::Cpu)?;
    mul_weights(ws, &x)?
        .into_iter()
        .map(|y| Ok(y.flatten_all()?.to_vec1()?))
        .collect()
}

/// `mul_rows` of one weight into `out`, reusing its allocation: a step's logits (1.5 MB at 8
/// smollm2 rows) then cost neither a fresh zeroed buffer nor a copy.
fn mul_rows_into(w: &Proj, x: &[f32], in_dim: usize, out: &mut Vec<f32>) -> Result<()> {
    if !ours(w, x.len() / in_dim) {
        *out = mul_rows(&[w], x, in_dim)?.remove(0);
        return Ok(());
    }
    kernel_rows_into(&[w], x, in_dim, std::slice::from_mut(out))
}

/// Whether our kernel takes `w` for `rows` CPU rows. Packed weights always go to it, having
/// no candle copy left: a 512-token smollm2 prefill ran at 630 tokens/s on the AVX-512
/// path's packed kernel against 280 with candle's dequantize + GEMM (`bench-speed
/// --prompt-tokens 512`), and the AMX path is faster still.
fn ours(w: &Proj, rows: usize) -> bool {
    match w {
        Proj::Packed(_) => true,
        Proj::Candle(QMatMul::QTensor(q)) => {
            rows < KERNEL_MAX_ROWS && q.device().is_cpu() && qmatmul::supported(q.dtype())
        }
        Proj::Candle(_) => false,
    }
}

/// x (rows of `in_dim`) times each weight, all of which `ours` takes, in one kernel call.
fn kernel_rows(ws: &[&Proj], x: &[f32], in_dim: usize) -> Result<Vec<Vec<f32>>> {
    let mut outs = vec![Vec::new(); ws.len()];
    kernel_rows_into(ws, x, in_dim, &mut outs)?;
    Ok(outs)
}

/// `kernel_rows` into `outs`, one per weight, each resized to its product (what it held is
/// overwritten, its allocation kept).
fn kernel_rows_into(ws: &[&Proj], x: &[f32], in_dim: usize, outs: &mut [Vec<f32>]) -> Result<()> {
    let rows = x.len() / in_dim;
    with_weights(ws, |weights| {
        for (out, w) in outs.iter_mut().zip(weights) {
            out.resize(rows * w.n(), 0.0);
        }
        let mut slices: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        qmatmul::matmul_many(weights, in_dim, x, &mut slices)
    })
}

/// `f` of the kernel's view of weights that `ours` takes.
fn with_weights<R>(ws: &[&Proj], f: impl FnOnce(&[qmatmul::Weight]) -> Result<R>) -> Result<R> {
    // The bytes of candle's tensors, which the weights below borrow.
    let data = ws
        .iter()
        .map(|w| match w {
            Proj::Candle(QMatMul::QTensor(q)) => q.data().map(Some),
            _ => Ok(None),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut weights = Vec::with_capacity(ws.len());
    for (w, data) in ws.iter().zip(&data) {
        weights.push(match (w, data) {
            (Proj::Packed(p), _) => qmatmul::Weight::Packed(p),
            (Proj::Candle(QMatMul::QTensor(q)), Some(data)) => qmatmul::Weight::Rows {
                dtype: q.dtype(),
                data,
                n: q.shape().dims2()?.0,
            },
            _ => unreachable!("`ours` takes packed weights and candle's quantized tensors"),
        });
    }
    f(&weights)
}

/// A product our kernel does not take: large batches and other formats or devices.
fn mul_weight_other(w: &QMatMul, x: &Tensor) -> Result<Tensor> {
    let in_dim = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / in_dim;
    match w {
        QMatMul::QTensor(q) if rows >= GEMM_MIN_ROWS && x.device().is_cpu() => {
            let wf = q.dequantize(x.device())?; // [out, in]
            let mut shape = x.dims().to_vec();
            *shape.last_mut().unwrap() = wf.dim(0)?;
            let y = x.reshape((rows, in_dim))?.matmul(&wf.t()?)?;
            Ok(y.reshape(shape)?)
        }
        _ => Ok(w.forward(x)?),
    }
}

/// A quantized projection with an optional bias (qwen2's q/k/v).
struct Linear {
    weight: Proj,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(Self::forward_many(&[self], x)?.remove(0))
    }

    /// `forward_many` on a CPU step's values, rows of `in_dim`.
    fn rows(ls: &[&Linear], x: &[f32], in_dim: usize) -> Result<Vec<Vec<f32>>> {
        let ws: Vec<&Proj> = ls.iter().map(|l| &l.weight).collect();
        let mut ys = mul_rows(&ws, x, in_dim)?;
        for (y, l) in ys.iter_mut().zip(ls) {
            if let Some(bias) = &l.bias {
                math::with_f32(bias, |bias| {
                    for row in y.chunks_exact_mut(bias.len()) {
                        row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
                    }
                })?;
            }
        }
        Ok(ys)
    }

    /// Several projections of one input, in one call to the kernel where it can.
    fn forward_many(ls: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        let ws: Vec<&Proj> = ls.iter().map(|l| &l.weight).collect();
        mul_weights(&ws, x)?
            .into_iter()
            .zip(ls)
            .map(|(y, l)| {
                Ok(match &l.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                })
            })
            .collect()
    }
}

/// cos/sin tables for the positions of one step, one pair per RoPE base: `[T, D/2]` when every
/// row starts at the same position, else `[B, T, D/2]`.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// The same values, for `apply_rows`.
    values: (Vec<f32>, Vec<f32>),
    style: RopeStyle,
}

impl Rope {
    fn new(base: f32, cfg: &Config, starts: &[usize], t: usize, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / base.powf(2.0 * i as f32 / cfg.head_dim as f32))
            .collect();
        let uniform = starts.windows(2).all(|w| w[0] == w[1]);
        let rows = if uniform { &starts[..1] } else { starts };
        let mut cos = Vec::with_capacity(rows.len() * t * half);
        let mut sin = Vec::with_capacity(rows.len() * t * half);
        for &start in rows {
            for p in start..start + t {
                for f in &inv {
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
            style: cfg.rope_style,
        })
    }

    /// x: [B, heads, T, D], contiguous.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(x, &self.cos, &self.sin)?,
            RopeStyle::Halves => candle_nn::rotary_emb::rope(x, &self.cos, &self.sin)?,
        })
    }

    /// `apply` in place on a one-position step's values (T = 1), x: [B, heads, D], with candle's
    /// arithmetic (`candle_nn::rotary_emb`'s CPU kernels): x₁·cos − x₂·sin, x₁·sin + x₂·cos.
    fn apply_rows(&self, x: &mut [f32], b: usize, d: usize) {
        let (cos, sin) = (&self.values.0, &self.values.1);
        let half = d / 2;
        let per_row = cos.len() > half;
        for (r, row) in x.chunks_exact_mut(x.len() / b).enumerate() {
            let at = if per_row { r * half } else { 0 };
            rope_row(row, &cos[at..][..half], &sin[at..][..half], self.style);
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

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    /// x: [B, T, E] → [B, T, E]. `mask`: additive, [n_rep·T, L] or per row [B, 1, n_rep·T, L],
    /// or None when nothing is hidden.
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kvh, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let [q, k, v]: [Tensor; 3] = Linear::forward_many(&[&self.q, &self.k, &self.v], x)?
            .try_into()
            .expect("three projections");
        let q = q.reshape((b, t, h, d))?;
        let k = k.reshape((b, t, kvh, d))?;
        let v = v.reshape((b, t, kvh, d))?;
        let q = RmsNorm::maybe(&self.q_norm, q)?;
        let k = RmsNorm::maybe(&self.k_norm, k)?;
        let q = rope.apply(&q.transpose(1, 2)?.contiguous()?)?; // [B, H, T, D]
        let k = rope.apply(&k.transpose(1, 2)?.contiguous()?)?; // [B, KVH, T, D]
        let v = v.transpose(1, 2)?.contiguous()?;
        let kv = cache.append(layer, &k, &v)?;
        let (k, v) = kv.whole()?; // [B, KVH, L, D]

        // Grouped-query attention: the n_rep query heads that share a KV head are stacked
        // along the row axis, [B, H, T, D] → [B, KVH, n_rep·T, D].
        let n_rep = h / kvh;
        let (k, v) = (k.to_dtype(q.dtype())?, v.to_dtype(q.dtype())?); // f16 cache → f32
        let q = (q * self.scale)?.reshape((b, kvh, n_rep * t, d))?;
        let att = q.matmul(&k.t()?)?; // [B, KVH, n_rep·T, L]
        let att = match mask {
            Some(m) => att.broadcast_add(m)?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?; // [B, KVH, n_rep·T, D]
        let y = y
            .reshape((b, h, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, h * d))?;
        self.o.forward(&y)
    }

    /// `forward` for a one-position step on the CPU, on plain values: x [B, E] → [B, E]. For
    /// T = 1, [B, T, H, D] and [B, H, T, D] are the same layout, so nothing is transposed.
    fn decode_rows(
        &self,
        x: &[f32],
        b: usize,
        rope: &Rope,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Vec<f32>> {
        let (h, d) = (self.n_head, self.head_dim);
        let [q, k, v]: [Vec<f32>; 3] = Linear::rows(&[&self.q, &self.k, &self.v], x, x.len() / b)?
            .try_into()
            .expect("three projections");
        let mut q = RmsNorm::maybe_rows(&self.q_norm, q)?;
        let mut k = RmsNorm::maybe_rows(&self.k_norm, k)?;
        rope.apply_rows(&mut q, b, d);
        rope.apply_rows(&mut k, b, d);
        // As candle's `q * scale` (an affine map, v·mul + add).
        let scale = self.scale as f32;
        q.iter_mut().for_each(|q| *q = *q * scale + 0.0);
        let kv = cache.append_rows(layer, &k, &v)?;
        let y = super::attention::decode_rows(&q, (b, h, d), &kv, mask)?; // [B, H·D]
        Ok(Linear::rows(&[&self.o], &y, h * d)?.remove(0))
    }
}

struct Mlp {
    gate: Proj,
    up: Proj,
    down: Proj,
    activation: Activation,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [gate, up]: [Tensor; 2] = mul_weights(&[&self.gate, &self.up], x)?
            .try_into()
            .expect("two projections");
        mul_weight(&self.down, &gated(&gate, &up, self.activation)?)
    }

    /// `forward` on a CPU step's values, rows of `in_dim`. Where our kernel takes all three
    /// weights, it applies the activation inside the products (`qmatmul::matmul_mlp`).
    fn rows(&self, x: &[f32], in_dim: usize) -> Result<Vec<f32>> {
        let rows = x.len() / in_dim;
        let act = self.activation;
        let ws = [&self.gate, &self.up, &self.down];
        if ws.iter().all(|w| ours(w, rows)) {
            return with_weights(&ws, |w| {
                let mut out = vec![0f32; rows * w[2].n()];
                let gate = |y: &mut [f32], g: &[f32], u: &[f32]| gate_values(y, g, u, act);
                qmatmul::matmul_mlp([w[0], w[1], w[2]], in_dim, x, &gate, &mut out)?;
                Ok(out)
            });
        }
        let [gate, up]: [Vec<f32>; 2] = mul_rows(&[&self.gate, &self.up], x, in_dim)?
            .try_into()
            .expect("two projections");
        let mut y = vec![0f32; gate.len()];
        gate_values(&mut y, &gate, &up, act);
        Ok(mul_rows(&[&self.down], &y, y.len() / rows)?.remove(0))
    }
}

/// act(gate)·up. On the CPU one pass with `math`'s exp, compiled for AVX-512/AVX2: candle's
/// SiLU and GELU call libm's `expf`/`tanhf` per value (SiLU's was 3–4 % of smollm2's 8-row
/// decode, GELU an eighth of gemma's prefill), and the product is a second pass.
fn gated(gate: &Tensor, up: &Tensor, activation: Activation) -> Result<Tensor> {
    if !gate.device().is_cpu() || gate.dtype() != DType::F32 {
        let gate = match activation {
            Activation::Silu => candle_nn::ops::silu(gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        return Ok((gate * up)?);
    }
    let mut y = vec![0f32; gate.elem_count()];
    math::with_f32(gate, |g| {
        math::with_f32(up, |u| gate_values(&mut y, g, u, activation))
    })??;
    Ok(Tensor::from_vec(y, gate.shape(), gate.device())?)
}

fn gate_values(y: &mut [f32], g: &[f32], u: &[f32], activation: Activation) {
    simd_here!(gate_values_body(y, g, u, activation))
}

#[inline(always)]
fn gate_values_body(y: &mut [f32], g: &[f32], u: &[f32], activation: Activation) {
    // One loop per function, each inlined and vectorized (a function pointer would not be).
    let each = y.iter_mut().zip(g.iter().zip(u));
    match activation {
        Activation::Silu => each.for_each(|(y, (g, u))| *y = math::silu(*g) * u),
        Activation::GeluTanh => each.for_each(|(y, (g, u))| *y = math::gelu_tanh(*g) * u),
    }
}

struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: Option<RmsNorm>,
    ffn_norm: RmsNorm,
    mlp: Mlp,
    post_ffn_norm: Option<RmsNorm>,
    local: bool,
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let h = self
            .attn
            .forward(&self.attn_norm.forward(x)?, rope, mask, cache, layer)?;
        let h = RmsNorm::maybe(&self.post_attn_norm, h)?;
        let x = (x + h)?;
        let h = self.mlp.forward(&self.ffn_norm.forward(&x)?)?;
        let h = RmsNorm::maybe(&self.post_ffn_norm, h)?;
        Ok((x + h)?)
    }

    /// `forward` for a one-position step on the CPU: x [B, E] in place, without a candle
    /// tensor between the ops. At 8 smollm2 rows their copies, allocations and zero-fills
    /// were about a tenth of the step (`perf`).
    fn decode_rows(
        &self,
        x: &mut [f32],
        b: usize,
        rope: &Rope,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<()> {
        let e = x.len() / b;
        let h = self.attn_norm.rows(x)?;
        let h = self.attn.decode_rows(&h, b, rope, mask, cache, layer)?;
        let h = RmsNorm::maybe_rows(&self.post_attn_norm, h)?;
        x.iter_mut().zip(&h).for_each(|(x, h)| *x += h);
        let h = self.mlp.rows(&self.ffn_norm.rows(x)?, e)?;
        let h = RmsNorm::maybe_rows(&self.post_ffn_norm, h)?;
        x.iter_mut().zip(&h).for_each(|(x, h)| *x += h);
        Ok(())
    }
}

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
    cpu: bool,
}

impl Step {
    /// The rotation and mask of a layer.
    fn layer(&self, local: bool) -> (&Rope, Option<&Tensor>) {
        match (&self.local, local) {
            (Some(r), true) => (r, self.local_mask.as_ref()),
            _ => (&self.global, self.global_mask.as_ref()),
        }
    }

    /// Whether the step runs on plain buffers: one position per row, on the CPU, in f32.
    fn on_rows(&self, x: &Tensor) -> bool {
        self.t == 1 && self.cpu && x.dtype() == DType::F32
    }
}

pub struct Transformer {
    embed: Arc<QTensor>,
    blocks: Vec<Block>,
    norm: RmsNorm,
    output: Proj,
    cfg: Config,
    device: Device,
}

impl Transformer {
    pub fn load(g: &mut GgufFile, cfg: Config, device: &Device) -> Result<Self> {
        let mut loader = Loader { g, device };
        let embed = Arc::new(loader.qtensor("token_embd.weight")?);
        // Small models tie the output head to the embedding table.
        let output = if loader.has("output.weight") {
            loader.weight("output.weight")?
        } else {
            Proj::new(embed.clone())?
        };
        let norm = loader.norm("output_norm.weight", cfg.rms_eps)?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let opt_norm = |l: &mut Loader, name: &str, on: bool| -> Result<Option<RmsNorm>> {
                if on {
                    Ok(Some(l.norm(&format!("{p}.{name}.weight"), cfg.rms_eps)?))
                } else {
                    Ok(None)
                }
            };
            let attn = Attention {
                q: loader.linear(&format!("{p}.attn_q"))?,
                k: loader.linear(&format!("{p}.attn_k"))?,
                v: loader.linear(&format!("{p}.attn_v"))?,
                o: loader.linear(&format!("{p}.attn_output"))?,
                q_norm: opt_norm(&mut loader, "attn_q_norm", cfg.qk_norm)?,
                k_norm: opt_norm(&mut loader, "attn_k_norm", cfg.qk_norm)?,
                n_head: cfg.n_head,
                n_kv_head: cfg.n_kv_head,
                head_dim: cfg.head_dim,
                scale: cfg.attn_scale as f64,
            };
            blocks.push(Block {
                attn_norm: loader.norm(&format!("{p}.attn_norm.weight"), cfg.rms_eps)?,
                attn,
                post_attn_norm: opt_norm(&mut loader, "post_attention_norm", cfg.post_norms)?,
                ffn_norm: loader.norm(&format!("{p}.ffn_norm.weight"), cfg.rms_eps)?,
                mlp: Mlp {
                    gate: loader.weight(&format!("{p}.ffn_gate.weight"))?,
                    up: loader.weight(&format!("{p}.ffn_up.weight"))?,
                    down: loader.weight(&format!("{p}.ffn_down.weight"))?,
                    activation: cfg.activation,
                },
                post_ffn_norm: opt_norm(&mut loader, "post_ffw_norm", cfg.post_norms)?,
                local: cfg.window(i).is_some(),
            });
        }
        Ok(Self {
            embed,
            blocks,
            norm,
            output,
            cfg,
            device: device.clone(),
        })
    }

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

    /// tokens: [B, T] u32, appended after what `cache` holds → logits [B, T or 1, vocab].
    pub fn forward(&self, tokens: &Tensor, cache: &mut KvCache, logits: Logits) -> Result<Tensor> {
        let b = tokens.dim(0)?;
        let (x, step) = self.begin(tokens, cache)?;
        if step.on_rows(&x) {
            let mut out = Vec::new();
            self.decode_rows(x, b, &step, cache, &mut out)?;
            let vocab = out.len() / b;
            return Ok(Tensor::from_vec(out, (b, 1, vocab), &self.device)?);
        }
        self.layers(x, &step, cache, logits)
    }

    /// `forward`'s logits of the last position of each row, as f32 `[B][vocab]` in `out`.
    /// A one-position CPU step writes them there straight from the output product, into the
    /// allocation `out` already has.
    pub fn forward_into(
        &self,
        tokens: &Tensor,
        cache: &mut KvCache,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let b = tokens.dim(0)?;
        let (x, step) = self.begin(tokens, cache)?;
        if step.on_rows(&x) {
            return self.decode_rows(x, b, &step, cache, out);
        }
        let logits = self.layers(x, &step, cache, Logits::Last)?;
        *out = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(())
    }

    /// The layers on tensors, any number of positions, and the logits of `which`.
    fn layers(
        &self,
        mut x: Tensor,
        step: &Step,
        cache: &mut KvCache,
        which: Logits,
    ) -> Result<Tensor> {
        for (i, block) in self.blocks.iter().enumerate() {
            let (rope, mask) = step.layer(block.local);
            x = block.forward(&x, rope, mask, cache, i)?;
        }
        cache.advance(step.t);
        if which == Logits::Last && step.t > 1 {
            x = x.narrow(1, step.t - 1, 1)?;
        }
        let x = self.norm.forward(&x)?;
        mul_weight(&self.output, &x)
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
        let global = Rope::new(self.cfg.rope_base, &self.cfg, &starts, t, &self.device)?;
        let local = match self.cfg.sliding_window {
            Some(_) => Some(Rope::new(
                self.cfg.rope_base_local,
                &self.cfg,
                &starts,
                t,
                &self.device,
            )?),
            None => None,
        };
        let n_rep = self.cfg.n_head / self.cfg.n_kv_head;
        let step = Step {
            global_mask: self.mask(&starts, t, None, n_rep)?,
            local_mask: self.mask(&starts, t, self.cfg.sliding_window, n_rep)?,
            global,
            local,
            t,
            cpu: self.device.is_cpu(),
        };
        Ok((x, step))
    }

    /// A one-position CPU step on plain buffers (`Block::decode_rows`), its logits into `out`.
    fn decode_rows(
        &self,
        x: Tensor,
        b: usize,
        step: &Step,
        cache: &mut KvCache,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let mut xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        for (i, block) in self.blocks.iter().enumerate() {
            let (rope, mask) = step.layer(block.local);
            block.decode_rows(&mut xs, b, rope, mask, cache, i)?;
        }
        cache.advance(1);
        let x = self.norm.rows(&xs)?;
        mul_rows_into(&self.output, &x, xs.len() / b, out)
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

/// Reads named tensors out of a GGUF, naming the tensor in every error.
struct Loader<'a> {
    g: &'a mut GgufFile,
    device: &'a Device,
}

impl Loader<'_> {
    fn has(&self, name: &str) -> bool {
        self.g.content.tensor_infos.contains_key(name)
    }

    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        let GgufFile { content, file } = &mut *self.g;
        content
            .tensor(file, name, self.device)
            .with_context(|| format!("cannot read tensor `{name}`"))
    }

    fn weight(&mut self, name: &str) -> Result<Proj> {
        Proj::new(Arc::new(self.qtensor(name)?))
    }

    fn norm(&mut self, name: &str, eps: f32) -> Result<RmsNorm> {
        let weight = self
            .qtensor(name)?
            .dequantize(self.device)?
            .to_dtype(DType::F32)?;
        Ok(RmsNorm { weight, eps })
    }

    fn linear(&mut self, prefix: &str) -> Result<Linear> {
        let weight = self.weight(&format!("{prefix}.weight"))?;
        let bias_name = format!("{prefix}.bias");
        let bias = if self.has(&bias_name) {
            Some(self.qtensor(&bias_name)?.dequantize(self.device)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our RMS norm against candle's, on widths with and without a tail past 16 lanes; rows
    /// that are not whole are an error.
    #[test]
    fn rms_norm_matches_candles() {
        let dev = Device::Cpu;
        for width in [20, 64, 576] {
            let x = Tensor::randn(0f32, 3.0, (3, 2, width), &dev).unwrap();
            let weight = Tensor::randn(1f32, 0.5, width, &dev).unwrap();
            let norm = RmsNorm {
                weight: weight.clone(),
                eps: 1e-6,
            };
            let got = norm.forward(&x).unwrap();
            let want = candle_nn::ops::rms_norm(&x, &weight, 1e-6).unwrap();
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
