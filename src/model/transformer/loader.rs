//! Builds a `Transformer` from a GGUF's named tensors.
use super::acts::Heads;
use super::block::{Attention, Block};
use super::norm::RmsNorm;
use super::projection::{Linear, Mlp, Proj};
use super::rope::Frequencies;
use super::Transformer;
use crate::model::config::Config;
use crate::model::gguf::GgufFile;
use anyhow::{Context, Result};
use candle_core::quantized::{ggml_file, QTensor};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

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
            let [q, k, v] = loader.qkv(&p, &cfg)?;
            let (gate, up) = loader.gate_up(&p)?;
            let attn = Attention {
                q,
                k,
                v,
                o: loader.linear(&format!("{p}.attn_output"))?,
                q_norm: opt_norm(&mut loader, "attn_q_norm", cfg.qk_norm)?,
                k_norm: opt_norm(&mut loader, "attn_k_norm", cfg.qk_norm)?,
                heads: Heads {
                    h: cfg.n_head,
                    kvh: cfg.n_kv_head,
                    d: cfg.head_dim,
                    scale: cfg.attn_scale as f64,
                },
            };
            blocks.push(Block {
                attn_norm: loader.norm(&format!("{p}.attn_norm.weight"), cfg.rms_eps)?,
                attn,
                post_attn_norm: opt_norm(&mut loader, "post_attention_norm", cfg.post_norms)?,
                ffn_norm: loader.norm(&format!("{p}.ffn_norm.weight"), cfg.rms_eps)?,
                mlp: Mlp {
                    gate,
                    up,
                    down: loader.weight(&format!("{p}.ffn_down.weight"))?,
                    activation: cfg.activation,
                },
                post_ffn_norm: opt_norm(&mut loader, "post_ffw_norm", cfg.post_norms)?,
                local: cfg.window(i).is_some(),
            });
        }
        // Only llama's graph passes `rope_freqs` to its rope (llama.cpp's models/llama.cpp,
        // `get_rope_factors`); llama 3.1+ GGUFs carry it, one divisor per pair of dimensions.
        let factors = if cfg.arch == "llama" && loader.has("rope_freqs.weight") {
            let f = loader.values("rope_freqs.weight")?;
            anyhow::ensure!(
                f.len() == cfg.head_dim / 2,
                "rope_freqs.weight has {} values for a head of {}; expected half",
                f.len(),
                cfg.head_dim
            );
            Some(f)
        } else {
            None
        };
        let freqs = Frequencies::new(
            cfg.rope_base,
            cfg.head_dim,
            cfg.rope_freq_scale,
            factors.as_deref(),
        );
        let local_freqs = cfg
            .sliding_window
            .map(|_| Frequencies::new(cfg.rope_base_local, cfg.head_dim, 1.0, None));
        Ok(Self {
            embed,
            blocks,
            norm,
            output,
            freqs,
            local_freqs,
            cfg,
            device: device.clone(),
        })
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

    /// A small tensor's values as f32.
    fn values(&mut self, name: &str) -> Result<Vec<f32>> {
        let t = self.qtensor(name)?.dequantize(self.device)?;
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
    }

    /// A weight [Σ rows, in] cut into consecutive blocks of `rows[i]` rows: each row is whole
    /// quantization blocks, so the cut is one of bytes.
    fn split_rows(&mut self, name: &str, rows: &[usize]) -> Result<Vec<QTensor>> {
        let GgufFile { content, file } = &mut *self.g;
        let whole = content
            .tensor(file, name, &Device::Cpu)
            .with_context(|| format!("cannot read tensor `{name}`"))?;
        let (n, k) = whole.shape().dims2()?;
        anyhow::ensure!(
            rows.iter().sum::<usize>() == n,
            "`{name}` has {n} rows, expected {} ({rows:?})",
            rows.iter().sum::<usize>()
        );
        let data = whole.data()?;
        let row_bytes = data.len() / n;
        let mut at = 0;
        let mut parts = Vec::with_capacity(rows.len());
        for &r in rows {
            let bytes = &data[at * row_bytes..(at + r) * row_bytes];
            parts.push(ggml_file::qtensor_from_ggml(
                whole.dtype(),
                bytes,
                vec![r, k],
                self.device,
            )?);
            at += r;
        }
        Ok(parts)
    }

    /// A layer's q, k and v: separate tensors, or rows of one fused `attn_qkv` (phi3; llama.cpp's
    /// `build_qkv` views it as q, then k, then v).
    fn qkv(&mut self, p: &str, cfg: &Config) -> Result<[Linear; 3]> {
        let fused = format!("{p}.attn_qkv");
        if !self.has(&format!("{fused}.weight")) {
            return Ok([
                self.linear(&format!("{p}.attn_q"))?,
                self.linear(&format!("{p}.attn_k"))?,
                self.linear(&format!("{p}.attn_v"))?,
            ]);
        }
        let rows = [
            cfg.n_head * cfg.head_dim,
            cfg.n_kv_head * cfg.head_dim,
            cfg.n_kv_head * cfg.head_dim,
        ];
        let weights = self.split_rows(&format!("{fused}.weight"), &rows)?;
        let mut biases: Vec<Option<Tensor>> = vec![None, None, None];
        if self.has(&format!("{fused}.bias")) {
            let b = self
                .qtensor(&format!("{fused}.bias"))?
                .dequantize(self.device)?;
            let mut at = 0;
            for (slot, r) in biases.iter_mut().zip(rows) {
                *slot = Some(b.narrow(0, at, r)?.contiguous()?);
                at += r;
            }
        }
        let mut out = Vec::with_capacity(3);
        for (w, bias) in weights.into_iter().zip(biases) {
            out.push(Linear {
                weight: Proj::new(Arc::new(w))?,
                bias,
            });
        }
        Ok(<[Linear; 3]>::try_from(out).ok().expect("three parts"))
    }

    /// A layer's MLP gate and up: separate tensors, or one `ffn_up` of gate rows then up rows
    /// (phi3; llama.cpp's `ggml_swiglu` takes silu of the first half times the second).
    fn gate_up(&mut self, p: &str) -> Result<(Proj, Proj)> {
        let gate = format!("{p}.ffn_gate.weight");
        let up = format!("{p}.ffn_up.weight");
        if self.has(&gate) {
            return Ok((self.weight(&gate)?, self.weight(&up)?));
        }
        let n = self.g.content.tensor_infos[&up].shape.dims()[0];
        let mut parts = self.split_rows(&up, &[n / 2, n / 2])?;
        let u = parts.pop().expect("two parts");
        let g = parts.pop().expect("two parts");
        Ok((Proj::new(Arc::new(g))?, Proj::new(Arc::new(u))?))
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
