//! A preallocated key/value cache for a batch of sequences decoded together.
//!
//! Every layer holds K and V as `[batch, kv_heads, capacity, head_dim]`. New entries are written
//! in place (`slice_set`) and attention reads a view up to the longest row, so a decode step
//! copies nothing but the new token's keys and values. Capacity grows in chunks, not per step.
//!
//! On the CPU keys and values are stored as f16, as llama.cpp stores them by default: a decode
//! step reads the whole cache of every row, and at 8 rows that read, not the arithmetic, is
//! what attention costs. Elsewhere they stay f32.
//!
//! Rows may hold different lengths: samples of different requests share one batch (continuous
//! batching). Each row writes at its own length; attention masks what lies past it.
//!
//! The samples of one request continue one prompt. On the CPU, `fork` shares that prompt's
//! keys and values (a `Prefix`) between the rows instead of copying them, and each row's
//! buffer holds only the positions after it: at 8 rows, a decode step then reads the prompt
//! once from cache instead of 8 copies from memory.
use super::math::with_f32;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// Capacity grows in multiples of this many positions.
const CHUNK: usize = 256;

/// The keys and values of a prompt that several rows continue: per layer, views
/// `[1, kv_heads, len, head_dim]` of the cache it was prefilled in (or a copy of them).
pub struct Prefix {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    /// Memory these views keep alive: the whole buffer they are views of.
    bytes: usize,
}

impl Prefix {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory this prefix keeps alive (its buffer's, not only its own positions').
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Its first `len` positions, sharing its buffer.
    fn first(&self, len: usize) -> Result<Prefix> {
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| Ok((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?)))
            .collect::<Result<_>>()?;
        Ok(Prefix {
            layers,
            len,
            bytes: self.bytes,
        })
    }
}

/// One layer's cached keys and values after `append`, new entries included.
pub struct LayerKv {
    /// `[batch, kv_heads, L_own, head_dim]`: the rows' own positions, those after their prefix.
    pub k: Tensor,
    pub v: Tensor,
    /// Per row, the shared prefix its own positions follow (`[1, kv_heads, P, head_dim]` each).
    pub prefix: Vec<Option<(Tensor, Tensor)>>,
    /// Positions in the longest row, prefix included.
    pub len: usize,
}

impl LayerKv {
    /// Positions of row `r` held in its prefix.
    pub fn prefix_len(&self, r: usize) -> usize {
        self.prefix[r]
            .as_ref()
            .map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    /// `[batch, kv_heads, len, head_dim]` K and V: each row's prefix, then its own positions,
    /// then zeros up to the longest row (the mask hides them). Without prefixes these are the
    /// cache's views themselves; with them a copy, which only longer-than-one-token steps on
    /// forked rows need (decode attention reads the parts in place).
    pub fn whole(&self) -> Result<(Tensor, Tensor)> {
        if self.prefix.iter().all(Option::is_none) {
            return Ok((self.k.clone(), self.v.clone()));
        }
        let own = self.k.dim(2)?;
        let row = |r: usize, t: &Tensor, p: Option<&Tensor>| -> Result<Tensor> {
            let mut parts: Vec<Tensor> = p.into_iter().cloned().collect();
            let p = self.prefix_len(r);
            let take = own.min(self.len - p);
            parts.push(t.narrow(0, r, 1)?.narrow(2, 0, take)?);
            if p + take < self.len {
                let (_, h, _, d) = t.dims4()?;
                parts.push(Tensor::zeros(
                    (1, h, self.len - p - take, d),
                    t.dtype(),
                    t.device(),
                )?);
            }
            Ok(Tensor::cat(&parts, 2)?)
        };
        let batch = self.k.dim(0)?;
        let mut ks = Vec::with_capacity(batch);
        let mut vs = Vec::with_capacity(batch);
        for r in 0..batch {
            let (pk, pv) = match &self.prefix[r] {
                Some((k, v)) => (Some(k), Some(v)),
                None => (None, None),
            };
            ks.push(row(r, &self.k, pk)?);
            vs.push(row(r, &self.v, pv)?);
        }
        Ok((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?))
    }
}

pub struct KvCache {
    /// Each row's own positions (those after its prefix): `[batch, kv_heads, capacity, head_dim]`.
    layers: Vec<(Tensor, Tensor)>,
    batch: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Positions cached, per row, prefix included.
    lens: Vec<usize>,
    /// Per row, the prefix it shares with other rows.
    prefixes: Vec<Option<Arc<Prefix>>>,
    /// Own positions each row can hold.
    capacity: usize,
    max_len: usize,
    dtype: DType,
    device: Device,
}

impl KvCache {
    pub fn new(
        n_layer: usize,
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        max_len: usize,
        device: &Device,
    ) -> Result<Self> {
        let mut cache = Self {
            layers: Vec::new(),
            batch,
            kv_heads,
            head_dim,
            lens: vec![0; batch],
            prefixes: vec![None; batch],
            capacity: 0,
            max_len,
            dtype: if device.is_cpu() {
                DType::F16
            } else {
                DType::F32
            },
            device: device.clone(),
        };
        cache.layers = (0..n_layer)
            .map(|_| Ok((cache.zeros(0)?, cache.zeros(0)?)))
            .collect::<Result<_>>()?;
        Ok(cache)
    }

    fn zeros(&self, cap: usize) -> Result<Tensor> {
        let shape = (self.batch, self.kv_heads, cap, self.head_dim);
        Ok(Tensor::zeros(shape, self.dtype, &self.device)?)
    }

    /// Positions cached in the longest row.
    pub fn len(&self) -> usize {
        self.lens.iter().copied().max().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positions cached, per row: where each row's next token goes.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    fn prefix_len(&self, r: usize) -> usize {
        self.prefixes[r].as_ref().map_or(0, |p| p.len)
    }

    /// Positions row `r` holds in its own buffer.
    fn own(&self, r: usize) -> usize {
        self.lens[r] - self.prefix_len(r)
    }

    fn own_max(&self) -> usize {
        (0..self.batch).map(|r| self.own(r)).max().unwrap_or(0)
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Makes room for `extra` more positions.
    pub fn reserve(&mut self, extra: usize) -> Result<()> {
        let need = self.len() + extra;
        if need > self.max_len {
            bail!(
                "context is full: {need} tokens needed but the model's context is {}",
                self.max_len
            );
        }
        let need = self.own_max() + extra;
        if need <= self.capacity {
            return Ok(());
        }
        let cap = (need.max(self.capacity * 2).div_ceil(CHUNK) * CHUNK).min(self.max_len);
        for i in 0..self.layers.len() {
            let (k, v) = &self.layers[i];
            let (nk, nv) = (self.zeros(cap)?, self.zeros(cap)?);
            if self.capacity > 0 {
                nk.slice_set(k, 2, 0)?;
                nv.slice_set(v, 2, 0)?;
            }
            self.layers[i] = (nk, nv);
        }
        self.capacity = cap;
        Ok(())
    }

    /// Writes `k`, `v` (`[batch, kv_heads, t, head_dim]`, in any layout) after each row's
    /// cached positions in `layer` and returns what the layer holds, new entries included, in
    /// the cache's type (f16 on the CPU).
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<LayerKv> {
        let (k, v) = (self.stored(k)?, self.stored(v)?);
        self.append_same(layer, &k, &v)
    }

    /// `x` in the cache's type, contiguous. f32 CPU values are narrowed to f16 with `half`'s
    /// slice conversion (F16C where the CPU has it) instead of candle's `to_dtype`, which
    /// converted one value per call (with the write, 3–4 % of an 8-row smollm2 step).
    fn stored(&self, x: &Tensor) -> Result<Tensor> {
        if self.dtype == DType::F16 && x.device().is_cpu() && x.dtype() == DType::F32 {
            use half::slice::HalfFloatSliceExt;
            let h = with_f32(x, |x| {
                let mut h = vec![half::f16::ZERO; x.len()];
                h.convert_from_f32_slice(x);
                h
            })?;
            return Ok(Tensor::from_vec(h, x.shape(), &self.device)?);
        }
        Ok(x.to_dtype(self.dtype)?.contiguous()?)
    }

    /// `append` of k and v already in the cache's type.
    fn append_same(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<LayerKv> {
        let t = k.dim(2)?;
        let (kc, vc) = &self.layers[layer];
        let own: Vec<usize> = (0..self.batch).map(|r| self.own(r)).collect();
        if own.windows(2).all(|w| w[0] == w[1]) {
            kc.slice_set(k, 2, own[0])?;
            vc.slice_set(v, 2, own[0])?;
        } else {
            // A row of a contiguous tensor is a contiguous view of the same storage, so each
            // row is written in place at its own length.
            for (r, &at) in own.iter().enumerate() {
                kc.narrow(0, r, 1)?.slice_set(&k.narrow(0, r, 1)?, 2, at)?;
                vc.narrow(0, r, 1)?.slice_set(&v.narrow(0, r, 1)?, 2, at)?;
            }
        }
        let l = self.own_max() + t;
        let prefix = self
            .prefixes
            .iter()
            .map(|p| p.as_ref().map(|p| p.layers[layer].clone()))
            .collect();
        Ok(LayerKv {
            k: kc.narrow(2, 0, l)?,
            v: vc.narrow(2, 0, l)?,
            prefix,
            len: self.len() + t,
        })
    }

    /// Marks `t` positions written by every layer, in every row.
    pub fn advance(&mut self, t: usize) {
        for l in self.lens.iter_mut() {
            *l += t;
        }
    }

    /// Appends the rows of `other` after this cache's rows: a request joins a running batch.
    pub fn join(&mut self, other: KvCache) -> Result<()> {
        if self.batch == 0 {
            *self = other;
            return Ok(());
        }
        self.max_len = self.max_len.max(other.max_len);
        let cap = self.capacity.max(other.capacity);
        let (mut a, mut b) = (std::mem::take(&mut self.layers), other.layers);
        for (layers, from) in [(&mut a, self.capacity), (&mut b, other.capacity)] {
            if from < cap {
                for (k, v) in layers.iter_mut() {
                    *k = self.grown(k, cap)?;
                    *v = self.grown(v, cap)?;
                }
            }
        }
        self.layers = a
            .into_iter()
            .zip(b)
            .map(|((ka, va), (kb, vb))| {
                Ok((Tensor::cat(&[ka, kb], 0)?, Tensor::cat(&[va, vb], 0)?))
            })
            .collect::<Result<_>>()?;
        self.batch += other.batch;
        self.lens.extend(other.lens);
        self.prefixes.extend(other.prefixes);
        self.capacity = cap;
        Ok(())
    }

    /// `t` (`[rows, kv_heads, cap, head_dim]`) copied into a larger capacity.
    fn grown(&self, t: &Tensor, cap: usize) -> Result<Tensor> {
        let rows = t.dim(0)?;
        let out = Tensor::zeros(
            (rows, self.kv_heads, cap, self.head_dim),
            self.dtype,
            &self.device,
        )?;
        if t.dim(2)? > 0 {
            out.slice_set(t, 2, 0)?;
        }
        Ok(out)
    }

    /// A cache of `n` rows, each continuing row 0: one prompt prefilled once, sampled `n`
    /// ways. On the CPU the rows share row 0's positions as their prefix; elsewhere, or when
    /// row 0 already continues a prefix, each row gets a copy.
    pub fn fork(&self, n: usize) -> Result<Self> {
        if !self.device.is_cpu() || self.prefixes[0].is_some() {
            return self.select(&vec![0; n]);
        }
        let prefix = Arc::new(self.row_prefix()?);
        let mut forked = self.empty(n)?;
        forked.lens = vec![prefix.len; n];
        forked.prefixes = vec![Some(prefix); n];
        Ok(forked)
    }

    /// An empty cache of `n` rows shaped as this one.
    fn empty(&self, n: usize) -> Result<Self> {
        Self::new(
            self.layers.len(),
            n,
            self.kv_heads,
            self.head_dim,
            self.max_len,
            &self.device,
        )
    }

    /// Every position row 0 holds, as a [`Prefix`] other caches can start from: views of
    /// this cache's buffer when the row holds them all (no copy; the buffer stays alive as
    /// long as the prefix does, and later writes go past them), else a copy joining the
    /// row's prefix and its own positions.
    pub fn row_prefix(&self) -> Result<Prefix> {
        let len = self.lens[0];
        let layers = self.row_layers(0, false)?;
        let positions = if self.prefixes[0].is_some() {
            len
        } else {
            self.capacity
        };
        let bytes = self.layers.len()
            * 2
            * self.batch.max(1)
            * self.kv_heads
            * positions
            * self.head_dim
            * self.dtype.size_in_bytes();
        Ok(Prefix { layers, len, bytes })
    }

    /// Per layer, row `r`'s keys and values, `[1, kv_heads, len, head_dim]`: its prefix and
    /// its own positions joined (a copy), or with no prefix views of this cache's buffer,
    /// copied only if `copy`.
    fn row_layers(&self, r: usize, copy: bool) -> Result<Vec<(Tensor, Tensor)>> {
        let own = self.own(r);
        let pre = self.prefixes[r].as_ref();
        self.layers
            .iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let (k, v) = (
                    k.narrow(0, r, 1)?.narrow(2, 0, own)?,
                    v.narrow(0, r, 1)?.narrow(2, 0, own)?,
                );
                Ok(match pre {
                    None if copy => (k.copy()?, v.copy()?),
                    None => (k, v),
                    Some(p) => {
                        let (pk, pv) = &p.layers[i];
                        (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?)
                    }
                })
            })
            .collect()
    }

    /// Every position row `r` holds (its prefix's and its own), copied into a [`Prefix`] of
    /// its own: a finished row of a batch, kept after the batch's buffer moves on.
    pub fn row_copy(&self, r: usize) -> Result<Prefix> {
        let layers = self.row_layers(r, true)?;
        let len = self.lens[r];
        let bytes = self.layers.len()
            * 2
            * self.kv_heads
            * len
            * self.head_dim
            * self.dtype.size_in_bytes();
        Ok(Prefix { layers, len, bytes })
    }

    /// Makes this empty one-row cache continue the first `len` positions of `prefix`: the
    /// next token written goes to position `len`. On the CPU the row reads them from the
    /// prefix's buffer, shared; elsewhere (where attention reads one buffer per row) they are
    /// copied into the row's own.
    pub fn start_from(&mut self, prefix: &Prefix, len: usize) -> Result<()> {
        self.start_from_as(prefix, len, self.device.is_cpu())
    }

    /// `start_from`, sharing the prefix or copying it.
    fn start_from_as(&mut self, prefix: &Prefix, len: usize, share: bool) -> Result<()> {
        if self.batch != 1 || !self.is_empty() {
            bail!("a cache starts from a prefix only when it is one empty row");
        }
        if len > prefix.len || len > self.max_len {
            bail!(
                "a prefix of {} positions has no first {len} for a cache of {}",
                prefix.len,
                self.max_len
            );
        }
        let prefix = prefix.first(len)?;
        if share {
            self.lens = vec![len];
            self.prefixes = vec![Some(Arc::new(prefix))];
            return Ok(());
        }
        self.reserve(len)?;
        for (i, (k, v)) in prefix.layers.iter().enumerate() {
            let (k, v) = (self.stored(k)?, self.stored(v)?);
            self.layers[i].0.slice_set(&k, 2, 0)?;
            self.layers[i].1.slice_set(&v, 2, 0)?;
        }
        self.lens = vec![len];
        Ok(())
    }

    /// Keeps only the given rows, in that order (sequences that finished leave the batch).
    pub fn retain(&mut self, rows: &[usize]) -> Result<()> {
        *self = self.select(rows)?;
        Ok(())
    }

    /// A cache of the given rows, in that order, each with its length and prefix.
    fn select(&self, rows: &[usize]) -> Result<Self> {
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let ids = Tensor::from_vec(ids, rows.len(), &self.device)?;
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| Ok((k.index_select(&ids, 0)?, v.index_select(&ids, 0)?)))
            .collect::<Result<_>>()?;
        let lens: Vec<usize> = rows.iter().map(|&r| self.lens[r]).collect();
        let prefixes = rows.iter().map(|&r| self.prefixes[r].clone()).collect();
        Ok(Self {
            layers,
            batch: lens.len(),
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            lens,
            prefixes,
            capacity: self.capacity,
            max_len: self.max_len,
            dtype: self.dtype,
            device: self.device.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(b: usize, t: usize) -> Tensor {
        Tensor::randn(0f32, 1.0, (b, 2, t, 4), &Device::Cpu).unwrap()
    }

    /// The values as the CPU cache stores them (f16).
    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Forked rows read the prompt through one shared prefix, and whole() lays each row
    /// out as a copy would: prompt, own positions, zeros up to the longest row; the rows
    /// keep their prefix through join and retain.
    #[test]
    fn forked_rows_share_the_prompt_and_read_as_copies() {
        let dev = Device::Cpu;
        let mut c = KvCache::new(1, 1, 2, 4, 64, &dev).unwrap();
        let (pk, pv) = (random(1, 5), random(1, 5));
        c.reserve(5).unwrap();
        c.append(0, &pk, &pv).unwrap();
        c.advance(5);
        let mut f = c.fork(3).unwrap();
        assert_eq!(f.lens(), &[5, 5, 5]);
        let (nk, nv) = (random(3, 1), random(3, 1));
        f.reserve(1).unwrap();
        let kv = f.append(0, &nk, &nv).unwrap();
        f.advance(1);
        assert_eq!((kv.k.dim(2).unwrap(), kv.len, kv.prefix_len(2)), (1, 6, 5));
        let (k, _) = kv.whole().unwrap();
        for r in 0..3 {
            let want = Tensor::cat(&[pk.clone(), nk.narrow(0, r, 1).unwrap()], 2).unwrap();
            assert_eq!(
                values(&k.narrow(0, r, 1).unwrap()),
                values(&want),
                "row {r}"
            );
        }

        // A 2-position request joins; rows 2 and the newcomer stay.
        let mut other = KvCache::new(1, 1, 2, 4, 64, &dev).unwrap();
        let (ok, ov) = (random(1, 2), random(1, 2));
        other.reserve(2).unwrap();
        other.append(0, &ok, &ov).unwrap();
        other.advance(2);
        f.join(other).unwrap();
        f.retain(&[2, 3]).unwrap();
        assert_eq!(f.lens(), &[6, 2]);
        let (mk, mv) = (random(2, 1), random(2, 1));
        f.reserve(1).unwrap();
        let kv = f.append(0, &mk, &mv).unwrap();
        let (k, _) = kv.whole().unwrap();
        assert_eq!(k.dims4().unwrap(), (2, 2, 7, 4));
        let row2 = Tensor::cat(
            &[
                pk.clone(),
                nk.narrow(0, 2, 1).unwrap(),
                mk.narrow(0, 0, 1).unwrap(),
            ],
            2,
        )
        .unwrap();
        assert_eq!(values(&k.narrow(0, 0, 1).unwrap()), values(&row2));
        // A row copied out of the batch holds its prefix and own positions, written ones only.
        f.advance(1);
        let copy = f.row_copy(0).unwrap();
        assert_eq!((copy.len(), copy.layers[0].0.dim(2).unwrap()), (7, 7));
        assert_eq!(values(&copy.layers[0].0), values(&row2));
        let copy = f.row_copy(1).unwrap();
        assert_eq!(copy.len(), 3);
        let newcomer3 = Tensor::cat(&[ok.clone(), mk.narrow(0, 1, 1).unwrap()], 2).unwrap();
        assert_eq!(values(&copy.layers[0].0), values(&newcomer3));
        let zeros = Tensor::zeros((1, 2, 4, 4), DType::F32, &dev).unwrap();
        let newcomer = Tensor::cat(&[ok, mk.narrow(0, 1, 1).unwrap(), zeros], 2).unwrap();
        assert_eq!(values(&k.narrow(0, 1, 1).unwrap()), values(&newcomer));
    }

    /// A cache started from the first positions of another's row reads as the cache that
    /// wrote them all itself, whether it shares the prefix's buffer (the CPU) or copies it
    /// (other devices), also when forked into samples; a cache that already continues a
    /// prefix gives its whole row as one copy.
    #[test]
    fn a_cache_started_from_a_prefix_reads_as_one_written_whole() {
        let dev = Device::Cpu;
        let (first, rest) = (random(1, 7), random(1, 3));
        let mut whole = KvCache::new(1, 1, 2, 4, 64, &dev).unwrap();
        for x in [&first, &rest] {
            whole.reserve(x.dim(2).unwrap()).unwrap();
            whole.append(0, x, x).unwrap();
            whole.advance(x.dim(2).unwrap());
        }
        let mut src = KvCache::new(1, 1, 2, 4, 64, &dev).unwrap();
        let longer = Tensor::cat(&[first.clone(), random(1, 2)], 2).unwrap();
        src.reserve(9).unwrap();
        src.append(0, &longer, &longer).unwrap();
        src.advance(9);
        let prefix = src.row_prefix().unwrap();
        assert_eq!(prefix.len(), 9);
        let want = values(&whole.row_prefix().unwrap().layers[0].0);
        for share in [true, false] {
            let mut c = KvCache::new(1, 1, 2, 4, 64, &dev).unwrap();
            c.start_from_as(&prefix, 7, share).unwrap();
            assert_eq!(c.lens(), &[7]);
            assert_eq!(c.prefixes[0].is_some(), share);
            c.reserve(3).unwrap();
            let kv = c.append(0, &rest, &rest).unwrap();
            c.advance(3);
            let (k, _) = kv.whole().unwrap();
            assert_eq!(values(&k), want, "share: {share}");
            // Its whole row as a prefix is one copy of all ten positions.
            let again = c.row_prefix().unwrap();
            assert_eq!(values(&again.layers[0].0), want, "share: {share}");
            let f = c.fork(2).unwrap();
            assert_eq!(f.lens(), &[10, 10]);
            let mut f = f;
            let (nk, nv) = (random(2, 2), random(2, 2));
            f.reserve(2).unwrap();
            let kv = f.append(0, &nk, &nv).unwrap();
            let (k, _) = kv.whole().unwrap();
            assert_eq!(
                values(&k.narrow(2, 0, 10).unwrap().narrow(0, 1, 1).unwrap()),
                want
            );
        }
        assert!(KvCache::new(1, 1, 2, 4, 64, &dev)
            .unwrap()
            .start_from(&prefix, 10)
            .is_err());
    }

    /// append takes the rows' layout, [batch, t, kv_heads, head_dim] seen as [batch, kv_heads,
    /// t, head_dim], and narrows f32 to f16 as candle does (to the nearest, ties to even),
    /// after each row's own length.
    #[test]
    fn append_narrows_a_view_as_candle_does() {
        let dev = Device::Cpu;
        let (mut a, mut b) = (
            KvCache::new(1, 2, 2, 4, 64, &dev).unwrap(),
            KvCache::new(1, 2, 2, 4, 64, &dev).unwrap(),
        );
        let before = random(2, 3);
        for c in [&mut a, &mut b] {
            c.reserve(3).unwrap();
            c.append(0, &before, &before).unwrap();
            c.advance(3);
        }
        // [2, 3, 2, 4] values, 1/3 apart: most need rounding to f16.
        let rows: Vec<f32> = (0..48).map(|i| 1.0 + i as f32 / 3.0).collect();
        let rows = Tensor::from_vec(rows, (2, 3, 2, 4), &dev).unwrap();
        let view = rows.transpose(1, 2).unwrap();
        let by_view = a.append(0, &view, &view).unwrap();
        let copy = view.contiguous().unwrap().to_dtype(DType::F16).unwrap();
        let by_copy = b.append(0, &copy, &copy).unwrap();
        assert_eq!(by_view.len, 6);
        let bits = |t: &Tensor| -> Vec<u16> {
            let v: Vec<half::f16> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        assert_eq!(bits(&by_view.k), bits(&by_copy.k));
        assert_eq!(bits(&by_view.v.narrow(2, 3, 3).unwrap()), bits(&copy));
    }
}
