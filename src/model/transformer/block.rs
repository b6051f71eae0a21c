//! One decoder layer, wired once for every device: the operations it calls are those of its
//! activations (`Acts`), plain rows on the CPU and candle tensors on a GPU.
//!
//! Shapes: `B` sequences in a batch, `T` new tokens each, `E` embedding width, `H`/`KVH`
//! query/key-value heads, `D` head width.
use super::acts::{Acts, At, Heads};
use super::norm::RmsNorm;
use super::projection::{Linear, Mlp};
use crate::model::kv_cache::KvCache;
use anyhow::Result;

pub(super) struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub heads: Heads,
}

impl Attention {
    /// x: [B·T, E] → [B·T, E].
    fn forward<A: Acts>(&self, x: &A, at: &At, cache: &mut KvCache, layer: usize) -> Result<A> {
        let [q, k, v] = <[A; 3]>::try_from(x.project(&[&self.q, &self.k, &self.v])?)
            .ok()
            .expect("three projections");
        let q = maybe(&self.q_norm, q)?; // per head
        let k = maybe(&self.k_norm, k)?;
        let y = A::attend(q, k, v, self.heads, at, cache, layer)?; // [B·T, H·D]
        Ok(y.project(&[&self.o])?.remove(0))
    }
}

pub(super) struct Block {
    pub attn_norm: RmsNorm,
    pub attn: Attention,
    pub post_attn_norm: Option<RmsNorm>,
    pub ffn_norm: RmsNorm,
    pub mlp: Mlp,
    pub post_ffn_norm: Option<RmsNorm>,
    /// A sliding-window layer (gemma3's local ones).
    pub local: bool,
}

impl Block {
    /// x: [B·T, E], in place.
    pub fn forward<A: Acts>(
        &self,
        x: &mut A,
        at: &At,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<()> {
        let h = self
            .attn
            .forward(&x.norm(&self.attn_norm)?, at, cache, layer)?;
        x.add(&maybe(&self.post_attn_norm, h)?)?;
        let h = x.norm(&self.ffn_norm)?.mlp(&self.mlp)?;
        x.add(&maybe(&self.post_ffn_norm, h)?)
    }
}

/// `x` normed where the architecture has the norm (gemma's q/k and post norms).
fn maybe<A: Acts>(norm: &Option<RmsNorm>, x: A) -> Result<A> {
    match norm {
        Some(n) => x.norm(n),
        None => Ok(x),
    }
}
