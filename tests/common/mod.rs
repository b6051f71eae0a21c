//! Shared helpers for tests that need a real model.
#![allow(dead_code)]
use std::path::PathBuf;

/// Local file of a catalog model; tests run after `.ci/run` has pulled them.
pub fn model_path(name: &str) -> PathBuf {
    let file = match name {
        "smollm2-135m" => "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma3-270m" => "gemma-3-270m-q4_k_m.gguf",
        "qwen2.5-coder-0.5b" => "qwen2.5-coder-0.5b-instruct-q4.gguf",
        other => panic!("unknown test model {other}"),
    };
    let home = std::env::var_os("CONCLAVE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/conclave")
        });
    home.join("models").join(file)
}

use conclave::engine::Model;
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
