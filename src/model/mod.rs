//! Everything about one model: the GGUF file, its tokenizer and chat template, and the forward pass.
mod attention;
pub mod chat;
pub mod config;
pub mod gguf;
pub mod kv_cache;
pub mod math;
pub mod qmatmul;
pub mod tokenizer;
pub mod tool_call;
pub mod transformer;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use chat::{ChatTemplate, Message, Piece};
use config::Config;
use gguf::GgufFile;
use std::path::{Path, PathBuf};
use tokenizer::GgufTokenizer;
use tool_call::ToolDef;
use transformer::{Logits, Transformer};

pub use kv_cache::KvCache;
/// Runs independent tasks on the threads the forward pass uses (the engine samples rows so).
pub use qmatmul::pool::for_each as for_each_task;

/// A loaded model: weights, tokenizer and chat template from one GGUF.
pub struct Model {
    pub name: String,
    pub path: PathBuf,
    pub tokenizer: GgufTokenizer,
    pub chat: ChatTemplate,
    transformer: Transformer,
    device: Device,
}

/// The device to run on: the first CUDA GPU when built with `cuda` and one is present.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return d;
    }
    Device::Cpu
}

/// Fixes the thread count candle's CPU matmul asks for. Without `RAYON_NUM_THREADS`, candle
/// (0.11, `utils::get_num_threads`) recounts physical cores on every f32 matmul, which on
/// Linux reads /proc/cpuinfo: in a decode profile of smollm2 that was 3–5 % of the time, two
/// reads per layer per token.
fn pin_thread_count() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            // Set before the first model runs; nothing else in the process writes it.
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    });
}

impl Model {
    /// Loads a GGUF; every error names the file.
    pub fn load(path: &Path, name: &str, device: &Device) -> Result<Self> {
        pin_thread_count();
        let load = || -> Result<Self> {
            let mut g = GgufFile::open(path)?;
            let cfg = Config::from_gguf(&g)?;
            let tokenizer = GgufTokenizer::from_gguf(&g.content).context("tokenizer")?;
            let template = g
                .get("tokenizer.chat_template")
                .ok()
                .and_then(|v| v.to_string().ok().cloned());
            let text =
                |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
            let chat = ChatTemplate::new(template, text(tokenizer.bos), text(tokenizer.eos));
            let transformer = Transformer::load(&mut g, cfg, device)?;
            Ok(Self {
                name: name.to_string(),
                path: path.to_path_buf(),
                tokenizer,
                chat,
                transformer,
                device: device.clone(),
            })
        };
        load().map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
    }

    pub fn config(&self) -> &Config {
        self.transformer.config()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn vocab_size(&self) -> usize {
        self.transformer.vocab_size()
    }

    /// Context length of the model, in tokens.
    pub fn ctx_len(&self) -> usize {
        self.config().ctx_len
    }

    /// Prompt tokens for a conversation offering `tools`, ending where the assistant's reply starts. Message
    /// text is encoded without special tokens; BOS is added when the GGUF asks for it.
    pub fn encode_chat(&self, messages: &[Message], tools: &[ToolDef]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for piece in self.chat.render(messages, tools, true)? {
            match piece {
                Piece::Template(t) => ids.extend(self.tokenizer.encode(&t, true)?),
                Piece::Content(c) => ids.extend(self.tokenizer.encode(&c, false)?),
            }
        }
        Ok(self.with_bos(ids))
    }

    /// Prompt tokens for raw text (no chat template), BOS added when the GGUF asks for it.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.with_bos(self.tokenizer.encode(text, true)?))
    }

    fn with_bos(&self, mut ids: Vec<u32>) -> Vec<u32> {
        if let (true, Some(bos)) = (self.tokenizer.add_bos, self.tokenizer.bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        ids
    }

    /// Stop strings implied by the prompt format (the plain format's next-turn marker).
    pub fn default_stops(&self) -> Vec<String> {
        if self.chat.has_template() {
            Vec::new()
        } else {
            chat::PLAIN_STOPS.iter().map(|s| s.to_string()).collect()
        }
    }

    pub fn new_cache(&self, batch: usize, max_len: usize) -> Result<KvCache> {
        self.transformer.new_cache(batch, max_len)
    }

    /// Runs `tokens` (`[batch][t]`, equal lengths) after what `cache` holds and returns the
    /// logits of the last position of each row as `[batch][vocab]`.
    pub fn step(&self, tokens: &[Vec<u32>], cache: &mut KvCache) -> Result<Vec<Vec<f32>>> {
        let mut logits = RowLogits::default();
        self.step_into(tokens, cache, &mut logits)?;
        Ok(logits.rows().map(<[f32]>::to_vec).collect())
    }

    /// `step`, its logits written into `logits`, whose buffer the next step reuses.
    pub fn step_into(
        &self,
        tokens: &[Vec<u32>],
        cache: &mut KvCache,
        logits: &mut RowLogits,
    ) -> Result<()> {
        let input = self.input(tokens)?;
        self.transformer
            .forward(&input, cache, Logits::Last, &mut logits.values)?;
        logits.rows = tokens.len();
        Ok(())
    }

    /// Logits for every position of one sequence: `[t][vocab]` (scoring and tests).
    pub fn score(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<Vec<f32>>> {
        let input = self.input(&[tokens.to_vec()])?;
        let mut logits = Vec::new();
        self.transformer
            .forward(&input, cache, Logits::All, &mut logits)?;
        Ok(logits
            .chunks_exact(self.vocab_size())
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// `tokens` as a [B, T] tensor.
    fn input(&self, tokens: &[Vec<u32>]) -> Result<Tensor> {
        let (b, t) = (tokens.len(), tokens[0].len());
        let flat: Vec<u32> = tokens.concat();
        anyhow::ensure!(flat.len() == b * t, "rows of unequal length");
        Ok(Tensor::from_vec(flat, (b, t), &self.device)?)
    }
}

/// The logits of a step's rows, `[rows][vocab]` in one buffer that the next step reuses. At 8
/// smollm2 rows a step makes 1.5 MB of them: a fresh zeroed buffer each step and a copy into
/// one vector per row were about 5 % of the step's main thread (`perf`: memset, memmove).
#[derive(Default)]
pub struct RowLogits {
    values: Vec<f32>,
    rows: usize,
}

impl RowLogits {
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Row i's logits.
    pub fn row(&self, i: usize) -> &[f32] {
        let vocab = self.values.len() / self.rows;
        &self.values[i * vocab..][..vocab]
    }

    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        (0..self.rows).map(|i| self.row(i))
    }
}
