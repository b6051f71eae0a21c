//! Finding and loading a model by catalog name or path, for the front ends.
use crate::model::{default_device, fetch, Model};
use anyhow::Result;
use std::path::Path;

/// Resolves `spec` (a catalog name or a `.gguf` path), pulling a catalog model on first use,
/// and loads it on the default device.
pub fn load(spec: &str) -> Result<Model> {
    let path = fetch::resolve(spec, true)?;
    let name = if Path::new(spec).exists() || spec.ends_with(".gguf") {
        Path::new(spec)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.to_string())
    } else {
        spec.to_string()
    };
    tracing::info!("loading {} from {}", name, path.display());
    Model::load(&path, &name, &default_device())
}

/// Loads only the tokenizer of `spec`: tokenizing needs no weights.
pub fn load_tokenizer(spec: &str) -> Result<crate::model::tokenizer::GgufTokenizer> {
    let path = fetch::resolve(spec, true)?;
    let g = crate::model::gguf::GgufFile::open(&path)?;
    crate::model::tokenizer::GgufTokenizer::from_gguf(&g.content)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
}
