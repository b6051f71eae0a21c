//! Builds a `Transformer` from a GGUF's named tensors.
use super::acts::Heads;
use super::block::{Attention, Block};
use super::norm::RmsNorm;
use super::projection::{Linear, Mlp, Proj};
use super::Transformer;
use crate::model::config::Config;
use crate::model::gguf::GgufFile;
use anyhow::{Context, Result};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device};
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
            let attn = Attention {
                q: loader.linear(&format!("{p}.attn_q"))?,
                k: loader.linear(&format!("{p}.attn_k"))?,
                v: loader.linear(&format!("{p}.attn_v"))?,
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
