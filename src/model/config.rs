//! Hyper-parameters of a decoder, read from the GGUF's `<arch>.*` metadata.
use super::gguf::GgufFile;
use anyhow::{bail, Result};

/// How RoPE pairs up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeStyle {
    /// Adjacent pairs (x0,x1),(x2,x3)…: ggml's normal mode, used for `llama` GGUFs, whose
    /// converter permutes Q/K rows to suit it.
    Interleaved,
    /// First half against second half: ggml's NEOX mode, used for `qwen2`, `qwen3`, `phi3` and
    /// `gemma3`.
    Halves,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Silu,
    /// tanh-approximated GELU, which is what ggml's `gelu` computes (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub arch: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub ctx_len: usize,
    pub rms_eps: f32,
    pub rope_style: RopeStyle,
    pub rope_base: f32,
    /// Multiplies every angle of the global layers: 1/factor with `rope.scaling.type = linear`
    /// (llama-model.cpp, `rope_freq_scale_train`), else 1.
    pub rope_freq_scale: f32,
    /// Sliding-window layers (gemma3) use their own RoPE base, unscaled, and window.
    pub rope_base_local: f32,
    pub sliding_window: Option<usize>,
    /// With a sliding window, layer `i` is global when `(i + 1) % swa_period == 0`.
    pub swa_period: usize,
    pub embed_scale: Option<f32>,
    pub activation: Activation,
    pub attn_scale: f32,
    pub qk_norm: bool,
    pub post_norms: bool,
}

/// Architectures with a forward pass here.
pub const SUPPORTED: &[&str] = &["llama", "qwen2", "qwen3", "phi3", "gemma3"];

impl Config {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.architecture()?;
        if !SUPPORTED.contains(&arch.as_str()) {
            bail!(
                "unsupported architecture `{arch}` (supported: {})",
                SUPPORTED.join(", ")
            );
        }
        let key = |k: &str| format!("{arch}.{k}");
        let n_embd = g.u32(&key("embedding_length"))? as usize;
        let n_head = g.u32(&key("attention.head_count"))? as usize;
        let n_kv_head = g
            .u32(&key("attention.head_count_kv"))
            .unwrap_or(n_head as u32) as usize;
        let head_dim = g
            .u32(&key("attention.key_length"))
            .map(|x| x as usize)
            .unwrap_or(n_embd / n_head);
        let rope_base = g.f32(&key("rope.freq_base")).unwrap_or(10_000.0);
        if let Ok(n_rot) = g.u32(&key("rope.dimension_count")) {
            if n_rot as usize != head_dim {
                bail!("RoPE on {n_rot} of a head's {head_dim} dimensions (partial rotary) is not supported");
            }
        }
        let gemma = arch == "gemma3";
        let cfg = Config {
            n_layer: g.u32(&key("block_count"))? as usize,
            n_embd,
            n_head,
            n_kv_head,
            head_dim,
            ctx_len: g.u32(&key("context_length")).unwrap_or(2048) as usize,
            rms_eps: g.f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_style: if arch == "llama" {
                RopeStyle::Interleaved
            } else {
                RopeStyle::Halves
            },
            rope_base,
            rope_freq_scale: rope_freq_scale(g, &arch)?,
            // llama.cpp's models/gemma3.cpp: 10000 unless `rope.freq_base_swa` says otherwise,
            // and no scaling (`rope_freq_scale_train_swa` stays 1).
            rope_base_local: if gemma {
                g.f32(&key("rope.freq_base_swa")).unwrap_or(10_000.0)
            } else {
                rope_base
            },
            sliding_window: if gemma {
                Some(g.u32(&key("attention.sliding_window"))? as usize)
            } else {
                None
            },
            // Gemma 3: five local layers then one global (llama.cpp: set_swa_pattern(6)).
            swa_period: 6,
            // Gemma scales embeddings by sqrt(n_embd) (llama.cpp's gemma3.cpp).
            embed_scale: gemma.then(|| (n_embd as f32).sqrt()),
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            qk_norm: gemma || arch == "qwen3",
            post_norms: gemma,
            arch,
        };
        if !cfg.n_head.is_multiple_of(cfg.n_kv_head) {
            bail!(
                "head_count {} is not a multiple of head_count_kv {}",
                cfg.n_head,
                cfg.n_kv_head
            );
        }
        Ok(cfg)
    }

    /// The sliding window of layer `i`, if it has one.
    pub fn window(&self, i: usize) -> Option<usize> {
        let w = self.sliding_window?;
        (!(i + 1).is_multiple_of(self.swa_period)).then_some(w)
    }
}

/// The factor on every RoPE angle from `<arch>.rope.scaling.*`, as llama-model.cpp's
/// `load_hparams` reads it: type `linear` (the default) scales by 1/`factor` (or the older
/// `rope.scale_linear`), `none` not at all. Llama 3's scaling needs no key: its converter
/// writes per-frequency divisors into the `rope_freqs` tensor instead (see `transformer::rope`).
fn rope_freq_scale(g: &GgufFile, arch: &str) -> Result<f32> {
    let key = |k: &str| format!("{arch}.rope.{k}");
    let kind = g.str(&key("scaling.type")).unwrap_or("linear");
    let factor = g
        .f32(&key("scaling.factor"))
        .or_else(|_| g.f32(&key("scale_linear")))
        .unwrap_or(0.0);
    match kind {
        "none" => Ok(1.0),
        "linear" if factor == 0.0 => Ok(1.0),
        "linear" => Ok(1.0 / factor),
        other => bail!(
            "rope scaling `{other}` is not supported (supported: none, linear, and llama 3's \
             `rope_freqs` factors); pick a GGUF of this model without it"
        ),
    }
}
