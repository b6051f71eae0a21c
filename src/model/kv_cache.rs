//! A preallocated key/value cache for a batch of sequences that advance together.
//!
//! Every layer holds K and V as `[batch, kv_heads, capacity, head_dim]`. New entries are written
//! in place (`slice_set`) and attention reads a view up to the current length, so a decode step
//! copies nothing but the new token's keys and values. Capacity grows in chunks, not per step.
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// Capacity grows in multiples of this many positions.
const CHUNK: usize = 256;

pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    batch: usize,
    kv_heads: usize,
    head_dim: usize,
    len: usize,
    capacity: usize,
    max_len: usize,
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
            len: 0,
            capacity: 0,
            max_len,
            device: device.clone(),
        };
        cache.layers = (0..n_layer)
            .map(|_| Ok((cache.zeros(0)?, cache.zeros(0)?)))
            .collect::<Result<_>>()?;
        Ok(cache)
    }

    fn zeros(&self, cap: usize) -> Result<Tensor> {
        let shape = (self.batch, self.kv_heads, cap, self.head_dim);
        Ok(Tensor::zeros(shape, DType::F32, &self.device)?)
    }

    /// Positions already cached (the same for every row of the batch).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Makes room for `extra` more positions.
    pub fn reserve(&mut self, extra: usize) -> Result<()> {
        let need = self.len + extra;
        if need > self.max_len {
            bail!(
                "context is full: {need} tokens needed but the model's context is {}",
                self.max_len
            );
        }
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

    /// Writes `k`, `v` (`[batch, kv_heads, t, head_dim]`, contiguous) at the current length of
    /// `layer` and returns views of everything cached for it, new entries included.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let (kc, vc) = &self.layers[layer];
        kc.slice_set(k, 2, self.len)?;
        vc.slice_set(v, 2, self.len)?;
        Ok((
            kc.narrow(2, 0, self.len + t)?,
            vc.narrow(2, 0, self.len + t)?,
        ))
    }

    /// Marks `t` positions written by every layer.
    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// A cache of `n` rows, each a copy of row 0: one prompt prefilled once, sampled `n` ways.
    pub fn fork(&self, n: usize) -> Result<Self> {
        let rows = Tensor::from_vec(vec![0u32; n], n, &self.device)?;
        self.select(&rows, n)
    }

    /// Keeps only the given rows, in that order (sequences that finished leave the batch).
    pub fn retain(&mut self, rows: &[usize]) -> Result<()> {
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let ids = Tensor::from_vec(ids, rows.len(), &self.device)?;
        *self = self.select(&ids, rows.len())?;
        Ok(())
    }

    fn select(&self, rows: &Tensor, n: usize) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| Ok((k.index_select(rows, 0)?, v.index_select(rows, 0)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            batch: n,
            ..self.clone_empty()
        })
    }

    fn clone_empty(&self) -> Self {
        Self {
            layers: Vec::new(),
            batch: self.batch,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            len: self.len,
            capacity: self.capacity,
            max_len: self.max_len,
            device: self.device.clone(),
        }
    }
}
