//! A step's activations, `[B·T, width]`, and the few operations the block's one wiring
//! (`block`) runs on them, and what its attention takes (`Heads`, `At`): plain rows on the CPU (`Rows`), candle tensors on a GPU.
//!
//! On the CPU no tensor stands between the ops: at 8 smollm2 rows their copies, allocations
//! and zero-fills were about a tenth of a decode step (`perf`). Tensors remain there only
//! for the cache's K and V, and for products our kernel does not take
//! (`projection::mul_rows`).
use super::norm::RmsNorm;
use super::projection::{Linear, Mlp};
use super::rope::Rope;
use crate::model::attention;
use crate::model::kv_cache::{KvCache, LayerKv};
use anyhow::Result;
use candle_core::{Device, Tensor};

/// The head layout of a layer's attention.
#[derive(Clone, Copy)]
pub(super) struct Heads {
    /// H query heads, KVH key-value heads, D values each.
    pub h: usize,
    pub kvh: usize,
    pub d: usize,
    /// What scores are scaled by (applied to the queries).
    pub scale: f64,
}

/// What a layer's attention takes from its step: the rotation of its positions, and the
/// additive mask ([n_rep·T, L] or per row [B, 1, n_rep·T, L]; None when nothing is hidden).
pub(super) struct At<'a> {
    pub rope: &'a Rope,
    pub mask: Option<&'a Tensor>,
}

pub(super) trait Acts: Sized {
    /// Each row of the norm's width normed (the embedding's, or a head's).
    fn norm(&self, n: &RmsNorm) -> Result<Self>;
    /// self += h.
    fn add(&mut self, h: &Self) -> Result<()>;
    /// self · Wᵀ (+ bias) for each projection.
    fn project(&self, ls: &[&Linear]) -> Result<Vec<Self>>;
    fn mlp(&self, mlp: &Mlp) -> Result<Self>;
    /// Rotates q and k, scales q, appends k and v to the layer's cache, and attends:
    /// q [B·T, H·D], k and v [B·T, KVH·D] → [B·T, H·D].
    fn attend(
        q: Self,
        k: Self,
        v: Self,
        heads: Heads,
        at: &At,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Self>;
}

/// A CPU step's values: B rows of T positions, `[B, T, width]`.
pub(super) struct Rows {
    pub x: Vec<f32>,
    pub b: usize,
    pub t: usize,
}

impl Rows {
    pub fn width(&self) -> usize {
        self.x.len() / (self.b * self.t)
    }

    fn like(&self, x: Vec<f32>) -> Rows {
        Rows {
            x,
            b: self.b,
            t: self.t,
        }
    }
}

impl Acts for Rows {
    fn norm(&self, n: &RmsNorm) -> Result<Self> {
        Ok(self.like(n.rows(&self.x)?))
    }

    fn add(&mut self, h: &Self) -> Result<()> {
        self.x.iter_mut().zip(&h.x).for_each(|(x, h)| *x += h);
        Ok(())
    }

    fn project(&self, ls: &[&Linear]) -> Result<Vec<Self>> {
        let ys = Linear::rows(ls, &self.x, self.width())?;
        Ok(ys.into_iter().map(|y| self.like(y)).collect())
    }

    fn mlp(&self, mlp: &Mlp) -> Result<Self> {
        Ok(self.like(mlp.rows(&self.x, self.width())?))
    }

    fn attend(
        mut q: Self,
        mut k: Self,
        v: Self,
        heads: Heads,
        at: &At,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Self> {
        let Heads { h, kvh, d, scale } = heads;
        let (b, t) = (q.b, q.t);
        at.rope.rows(&mut q.x, b, d);
        at.rope.rows(&mut k.x, b, d);
        // As candle's `q * scale` (an affine map, v·mul + add).
        let scale = scale as f32;
        q.x.iter_mut().for_each(|q| *q = *q * scale + 0.0);
        // [B, T, KVH, D] viewed as [B, KVH, T, D]: for T = 1 the same layout.
        let dev = Device::Cpu;
        let k = Tensor::from_vec(k.x, (b, t, kvh, d), &dev)?.transpose(1, 2)?;
        let v = Tensor::from_vec(v.x, (b, t, kvh, d), &dev)?.transpose(1, 2)?;
        let kv = cache.append(layer, &k, &v)?;
        // q [B, T, H, D] as it is: every new position a row of the one CPU kernel.
        let y = attention::attend_rows(&q.x, (b, t, h, d), &kv, at.mask)?;
        Ok(Rows { x: y, b, t })
    }
}

/// A GPU step's activations, [B, T, width].
impl Acts for Tensor {
    fn norm(&self, n: &RmsNorm) -> Result<Self> {
        n.tensor(self)
    }

    fn add(&mut self, h: &Self) -> Result<()> {
        *self = (&*self + h)?;
        Ok(())
    }

    fn project(&self, ls: &[&Linear]) -> Result<Vec<Self>> {
        ls.iter().map(|l| l.tensor(self)).collect()
    }

    fn mlp(&self, mlp: &Mlp) -> Result<Self> {
        mlp.tensor(self)
    }

    fn attend(
        q: Self,
        k: Self,
        v: Self,
        heads: Heads,
        at: &At,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Self> {
        let Heads { h, kvh, d, scale } = heads;
        let (b, t, _) = q.dims3()?;
        let heads_first = |x: Tensor, n: usize| -> Result<Tensor> {
            Ok(x.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?)
        };
        let q = at.rope.tensor(&heads_first(q, h)?)?; // [B, H, T, D]
        let k = at.rope.tensor(&heads_first(k, kvh)?)?; // [B, KVH, T, D]
        let v = heads_first(v, kvh)?;
        let kv = cache.append(layer, &k, &v)?;
        attend_tensors(&(q * scale)?, &kv, at.mask)
    }
}

/// Grouped-query attention with candle's products: q [B, H, T, D], scaled, over the layer's
/// cache → [B, T, H·D]. The n_rep query heads that share a KV head are stacked along the row
/// axis, [B, H, T, D] → [B, KVH, n_rep·T, D].
fn attend_tensors(q: &Tensor, kv: &LayerKv, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (k, v) = kv.whole()?; // [B, KVH, L, D]
    let kvh = k.dim(1)?;
    let (k, v) = (k.to_dtype(q.dtype())?, v.to_dtype(q.dtype())?); // f16 cache → f32
    let q = q.reshape((b, kvh, h / kvh * t, d))?;
    let att = q.matmul(&k.t()?)?; // [B, KVH, n_rep·T, L]
    let att = match mask {
        Some(m) => att.broadcast_add(m)?,
        None => att,
    };
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    let y = att.matmul(&v)?; // [B, KVH, n_rep·T, D]
    Ok(y.reshape((b, h, t, d))?
        .transpose(1, 2)?
        .reshape((b, t, h * d))?)
}
