//! Opening a GGUF file with checks that turn every bad file into one clear sentence.
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The first four bytes of every GGUF file (ggml's `gguf.h`: GGUF_MAGIC "GGUF").
const MAGIC: &[u8; 4] = b"GGUF";

/// A parsed GGUF header plus the open file that holds the tensor data.
pub struct GgufFile {
    pub content: Content,
    pub file: File,
}

impl GgufFile {
    /// Opens `path`, checks the magic, parses the header and checks that every tensor's bytes
    /// lie inside the file, so a truncated download fails here and not halfway through a load.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display();
        let mut file =
            File::open(path).with_context(|| format!("cannot open model file {shown}"))?;
        let len = file.metadata()?.len();
        let mut magic = [0u8; 4];
        if file.read_exact(&mut magic).is_err() {
            bail!("{shown} is not a GGUF file: it is only {len} bytes long");
        }
        if &magic != MAGIC {
            bail!(
                "{shown} is not a GGUF file: it starts with {:?} instead of \"GGUF\"",
                String::from_utf8_lossy(&magic)
            );
        }
        let mut file = File::open(path)?;
        let content = Content::read(&mut file)
            .map_err(|e| anyhow::anyhow!("{shown} has a corrupt GGUF header: {e}"))?;
        let needed = content
            .tensor_infos
            .values()
            .map(|t| {
                let dtype = t.ggml_dtype;
                let bytes = t.shape.elem_count() / dtype.block_size() * dtype.type_size();
                content.tensor_data_offset + t.offset + bytes as u64
            })
            .max()
            .unwrap_or(0);
        if needed > len {
            bail!("{shown} is truncated: its tensors need {needed} bytes but the file has {len}; pull it again");
        }
        Ok(Self { content, file })
    }

    pub fn architecture(&self) -> Result<String> {
        self.get("general.architecture")?
            .to_string()
            .cloned()
            .map_err(|e| anyhow::anyhow!("general.architecture: {e}"))
    }

    pub fn get(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .with_context(|| format!("the GGUF has no `{key}` metadata"))
    }

    pub fn u32(&self, key: &str) -> Result<u32> {
        let v = self.get(key)?;
        // Writers differ in the integer width they pick for counts.
        match v {
            Value::U64(x) => Ok(*x as u32),
            Value::I32(x) => Ok(*x as u32),
            Value::I64(x) => Ok(*x as u32),
            _ => v
                .to_u32()
                .with_context(|| format!("`{key}` is not an integer")),
        }
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        let v = self.get(key)?;
        v.to_string()
            .map(String::as_str)
            .with_context(|| format!("`{key}` is not a string"))
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        let v = self.get(key)?;
        match v {
            Value::F64(x) => Ok(*x as f32),
            _ => v
                .to_f32()
                .with_context(|| format!("`{key}` is not a float")),
        }
    }
}
