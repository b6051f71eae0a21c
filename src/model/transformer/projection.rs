//! Products with quantized weights, x · Wᵀ: our kernel (`qmatmul`) where it takes the weights
//! and the rows, else candle's; and the gated MLP made of three of them.
use crate::model::config::Activation;
use crate::model::math::{self, simd_here};
use crate::model::qmatmul;
use anyhow::{bail, Result};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor, D};
use std::sync::Arc;

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
pub(super) enum Proj {
    Packed(qmatmul::Packed),
    Candle(QMatMul),
}

impl Proj {
    pub fn new(q: Arc<QTensor>) -> Result<Proj> {
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

    /// Whether our kernel takes this weight for `rows` CPU rows. Packed weights always go to
    /// it, having no other layout.
    fn ours(&self, rows: usize) -> bool {
        match self {
            Proj::Packed(_) => true,
            Proj::Candle(QMatMul::QTensor(q)) => {
                rows < KERNEL_MAX_ROWS && q.device().is_cpu() && qmatmul::supported(q.dtype())
            }
            Proj::Candle(_) => false,
        }
    }
}

/// x (CPU rows of `in_dim`) times each weight [out_i, in] into `outs[i]` ([rows][out_i]),
/// each resized to its product and its allocation kept (a step's logits, 1.5 MB at 8 smollm2
/// rows, then cost neither a fresh zeroed buffer nor a copy). Where our kernel takes every
/// weight it does them all in one call (`qmatmul::matmul_many`): a layer's q, k and v cost
/// one wake-up of the thread pool.
pub(super) fn mul_rows(
    ws: &[&Proj],
    x: &[f32],
    in_dim: usize,
    outs: &mut [Vec<f32>],
) -> Result<()> {
    let rows = x.len() / in_dim;
    if ws.iter().all(|w| w.ours(rows)) {
        return with_weights(ws, |weights| {
            for (out, w) in outs.iter_mut().zip(weights) {
                out.resize(rows * w.n(), 0.0);
            }
            let mut slices: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            qmatmul::matmul_many(weights, in_dim, x, &mut slices)
        });
    }
    let x = Tensor::from_slice(x, (rows, in_dim), &Device::Cpu)?;
    for (w, out) in ws.iter().zip(outs) {
        *out = mul_tensor(w, &x)?.flatten_all()?.to_vec1()?;
    }
    Ok(())
}

/// x: [.., in] times a weight [out, in] → [.., out], on tensors: a GPU's products, and the
/// CPU's that our kernel does not take (large batches, other formats).
pub(super) fn mul_tensor(w: &Proj, x: &Tensor) -> Result<Tensor> {
    let in_dim = x.dim(D::Minus1)?;
    let rows = x.elem_count() / in_dim;
    let cpu = x.device().is_cpu();
    let mut shape = x.dims().to_vec();
    *shape.last_mut().unwrap() = w.out_dim()?;
    if cpu && w.ours(rows) {
        let mut out = [Vec::new()];
        math::with_f32(x, |xs| mul_rows(&[w], xs, in_dim, &mut out))??;
        let [out] = out;
        return Ok(Tensor::from_vec(out, shape, x.device())?);
    }
    match w {
        Proj::Candle(QMatMul::QTensor(q)) if rows >= GEMM_MIN_ROWS && cpu => {
            let wf = q.dequantize(x.device())?; // [out, in]
            let y = x.reshape((rows, in_dim))?.matmul(&wf.t()?)?;
            Ok(y.reshape(shape)?)
        }
        Proj::Candle(q) => Ok(q.forward(x)?),
        Proj::Packed(_) => bail!("packed weights multiply CPU values only"),
    }
}

/// `f` of the kernel's view of weights that it takes (`Proj::ours`).
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
            _ => bail!("our kernel takes packed weights and candle's quantized tensors only"),
        });
    }
    f(&weights)
}

/// A quantized projection with an optional bias (qwen2's q/k/v).
pub(super) struct Linear {
    pub weight: Proj,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Several projections of CPU rows of `in_dim`, in one call to the kernel where it can.
    pub fn rows(ls: &[&Linear], x: &[f32], in_dim: usize) -> Result<Vec<Vec<f32>>> {
        let ws: Vec<&Proj> = ls.iter().map(|l| &l.weight).collect();
        let mut ys = vec![Vec::new(); ls.len()];
        mul_rows(&ws, x, in_dim, &mut ys)?;
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

    /// x: [.., in] → [.., out] on a GPU.
    pub fn tensor(&self, x: &Tensor) -> Result<Tensor> {
        let y = mul_tensor(&self.weight, x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// A gated MLP: down(act(gate · x) · (up · x)).
pub(super) struct Mlp {
    pub gate: Proj,
    pub up: Proj,
    pub down: Proj,
    pub activation: Activation,
}

impl Mlp {
    /// CPU rows of `in_dim`. Where our kernel takes all three weights, it applies the
    /// activation inside the products (`qmatmul::matmul_mlp`).
    pub fn rows(&self, x: &[f32], in_dim: usize) -> Result<Vec<f32>> {
        let rows = x.len() / in_dim;
        let act = self.activation;
        let ws = [&self.gate, &self.up, &self.down];
        if ws.iter().all(|w| w.ours(rows)) {
            return with_weights(&ws, |w| {
                let mut out = vec![0f32; rows * w[2].n()];
                let gate = |y: &mut [f32], g: &[f32], u: &[f32]| gate_values(y, g, u, act);
                qmatmul::matmul_mlp([w[0], w[1], w[2]], in_dim, x, &gate, &mut out)?;
                Ok(out)
            });
        }
        let mut gate_up = [Vec::new(), Vec::new()];
        mul_rows(&[&self.gate, &self.up], x, in_dim, &mut gate_up)?;
        let [gate, up] = gate_up;
        let mut y = vec![0f32; gate.len()];
        gate_values(&mut y, &gate, &up, act);
        let mut out = [Vec::new()];
        mul_rows(&[&self.down], &y, y.len() / rows, &mut out)?;
        let [out] = out;
        Ok(out)
    }

    /// x: [.., E] → [.., E] on a GPU, with candle's activations.
    pub fn tensor(&self, x: &Tensor) -> Result<Tensor> {
        let gate = mul_tensor(&self.gate, x)?;
        let up = mul_tensor(&self.up, x)?;
        let gate = match self.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        mul_tensor(&self.down, &(gate * up)?)
    }
}

/// y = act(g)·u in one pass with `math`'s exp, compiled for AVX-512/AVX2: candle's SiLU and
/// GELU call libm's `expf`/`tanhf` per value (SiLU's was 3–4 % of smollm2's 8-row decode,
/// GELU an eighth of gemma's prefill), and the product is a second pass.
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
