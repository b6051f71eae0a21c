//! Architectures that no catalog model has, on tiny random-weight GGUFs, against llama.cpp's
//! logits (tests/fixtures/arch/*.gguf and *.json, written by tests/fixtures/make_arch_fixtures.py):
//! qwen3 (q/k norms), phi3 (fused qkv and gate+up), llama 3's `rope_freqs` and linear rope
//! scaling. Each sequence runs as one prefill and token by token through the KV cache.
mod common;
use conclave::engine::sampler::argmax;
use conclave::model::Model;
use std::path::PathBuf;

/// Largest allowed |ours − llama.cpp's| on a logit, relative to the largest |logit| of the
/// sequence. The fixtures' weights are f32, so the two sides differ only where their
/// arithmetic does: llama.cpp's flash attention on the CPU rounds Q to f16 (both keep K/V in
/// f16), its rope builds each angle by repeated multiplication (`ggml_rope_cache_init`) where
/// we take a power, and sums run in other orders. Seen: at most 0.15 % of the largest logit
/// over the four fixtures. A broken part (a norm left out, the wrong half of a fused tensor,
/// rope factors ignored) moves logits by several percent.
const REL_TOL: f32 = 0.005;

fn fixture_model(case: &str) -> (Model, serde_json::Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/arch")
        .join(format!("{case}.gguf"));
    let model =
        Model::load(&path, case, &candle_core::Device::Cpu).unwrap_or_else(|e| panic!("{e:#}"));
    (model, common::fixture(&format!("arch/{case}.json")))
}

fn check(case: &str) {
    let (model, fx) = fixture_model(case);
    for seq in fx["sequences"].as_array().unwrap() {
        let tokens: Vec<u32> = seq["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<Vec<f32>> = serde_json::from_value(seq["logits"].clone()).unwrap();
        let mut cache = model.new_cache(1, tokens.len()).unwrap();
        let prefill = model.score(&tokens, &mut cache).unwrap();
        let mut cache = model.new_cache(1, tokens.len()).unwrap();
        let decode: Vec<Vec<f32>> = tokens
            .iter()
            .map(|&t| model.step(&[vec![t]], &mut cache).unwrap().remove(0))
            .collect();
        let scale = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        let tol = REL_TOL * scale;
        for (path, got) in [("prefill", &prefill), ("decode", &decode)] {
            let mut worst = 0f32;
            for (pos, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.len(), w.len(), "{case} {path}: vocabulary size");
                let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                worst = worst.max(diff);
                assert!(
                    diff <= tol,
                    "{case} {path}, {} tokens, position {pos}: logits {diff} apart \
                     (tolerance {tol}, largest logit {scale})",
                    tokens.len()
                );
                // Top-1 must agree wherever llama.cpp's top two are further apart than the
                // two sides' differences could close.
                let mut sorted = w.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                if sorted[0] - sorted[1] > 2.0 * diff {
                    assert_eq!(
                        argmax(g),
                        argmax(w),
                        "{case} {path}, {} tokens, position {pos}: top-1",
                        tokens.len()
                    );
                }
            }
            eprintln!(
                "{case} {path} {} tokens: max |diff| {worst:.5} ({:.3} % of the largest logit {scale:.2})",
                tokens.len(),
                100.0 * worst / scale
            );
        }
    }
}

#[test]
fn qwen3_matches_llama_cpp() {
    check("qwen3");
}

#[test]
fn phi3_matches_llama_cpp() {
    check("phi3");
}

#[test]
fn llama3_rope_freqs_match_llama_cpp() {
    check("llama3-rope");
}

#[test]
fn llama_linear_rope_scaling_matches_llama_cpp() {
    check("llama-linear");
}
