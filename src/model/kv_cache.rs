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
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// Capacity grows in multiples of this many positions.
const CHUNK: usize = 256;

pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    batch: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Positions cached, per row.
    lens: Vec<usize>,
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

    /// Whether every row holds the same number of positions.
    pub fn is_uniform(&self) -> bool {
        self.lens.windows(2).all(|w| w[0] == w[1])
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

    /// Writes `k`, `v` (`[batch, kv_heads, t, head_dim]`, contiguous) after each row's cached
    /// positions in `layer` and returns views up to the longest row, new entries included,
    /// in the cache's type (f16 on the CPU).
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let (k, v) = (&k.to_dtype(self.dtype)?, &v.to_dtype(self.dtype)?);
        let (kc, vc) = &self.layers[layer];
        if self.is_uniform() {
            kc.slice_set(k, 2, self.lens[0])?;
            vc.slice_set(v, 2, self.lens[0])?;
        } else {
            // A row of a contiguous tensor is a contiguous view of the same storage, so each
            // row is written in place at its own length.
            for (r, &at) in self.lens.iter().enumerate() {
                kc.narrow(0, r, 1)?.slice_set(&k.narrow(0, r, 1)?, 2, at)?;
                vc.narrow(0, r, 1)?.slice_set(&v.narrow(0, r, 1)?, 2, at)?;
            }
        }
        let l = self.len() + t;
        Ok((kc.narrow(2, 0, l)?, vc.narrow(2, 0, l)?))
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

    /// A cache of `n` rows, each a copy of row 0: one prompt prefilled once, sampled `n` ways.
    pub fn fork(&self, n: usize) -> Result<Self> {
        let rows = Tensor::from_vec(vec![0u32; n], n, &self.device)?;
        self.select(&rows, vec![self.lens[0]; n])
    }

    /// Keeps only the given rows, in that order (sequences that finished leave the batch).
    pub fn retain(&mut self, rows: &[usize]) -> Result<()> {
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let lens = rows.iter().map(|&r| self.lens[r]).collect();
        let ids = Tensor::from_vec(ids, rows.len(), &self.device)?;
        *self = self.select(&ids, lens)?;
        Ok(())
    }

    fn select(&self, rows: &Tensor, lens: Vec<usize>) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| Ok((k.index_select(rows, 0)?, v.index_select(rows, 0)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            batch: lens.len(),
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            lens,
            capacity: self.capacity,
            max_len: self.max_len,
            dtype: self.dtype,
            device: self.device.clone(),
        })
    }
}
