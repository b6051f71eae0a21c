//! Finding and loading a model by catalog name or path.
use crate::model::tokenizer::GgufTokenizer;
use crate::model::{default_device, gguf::GgufFile, Model};
use crate::store::fetch;
use anyhow::{Context, Result};
use std::path::Path;

/// Resolves `spec` (a catalog name, a `.gguf` path or `hf:ORG/REPO[:QUANT|FILE]`), pulling a
/// catalog or hub model on first use, and loads it on the default device.
pub(crate) fn load(spec: &str) -> Result<Model> {
    let path = fetch::resolve(spec, true)?;
    let name = model_name(spec);
    tracing::info!("loading {} from {}", name, path.display());
    Model::load(&path, &name, &default_device())
}

/// The name a model goes by in outputs: the catalog name, or a `.gguf` path's file stem.
pub fn model_name(spec: &str) -> String {
    if Path::new(spec).exists() || spec.ends_with(".gguf") {
        Path::new(spec)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.to_string())
    } else {
        spec.to_string()
    }
}

/// Loads only the tokenizer of `spec`: tokenizing needs no weights.
pub fn load_tokenizer(spec: &str) -> Result<GgufTokenizer> {
    let path = fetch::resolve(spec, true)?;
    let g = GgufFile::open(&path)?;
    GgufTokenizer::from_gguf(&g.content).with_context(|| path.display().to_string())
}
