//! Bad input gets one clear error and loses nothing.
mod common;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use conclave::engine::{Engine, Job, Prompt, SamplingParams};
use conclave::model::Model;
use std::path::Path;
use std::process::Command;

fn load_err(path: &Path) -> String {
    match Model::load(path, "test", &Device::Cpu) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn tiny_gguf(path: &Path, arch: &str) {
    let t = Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
    let arch = Value::String(arch.to_string());
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &q)],
    )
    .unwrap();
}

#[test]
fn missing_file() {
    let err = load_err(Path::new("/nonexistent/model.gguf"));
    assert!(
        err.contains("/nonexistent/model.gguf") && err.contains("cannot open"),
        "{err}"
    );
}

#[test]
fn wrong_magic_empty_and_corrupt_header() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.gguf");
    std::fs::write(&p, b"this is a text file, not a model").unwrap();
    let err = load_err(&p);
    assert!(
        err.contains("notes.gguf") && err.contains("not a GGUF file"),
        "{err}"
    );

    std::fs::write(&p, b"").unwrap();
    assert!(load_err(&p).contains("only 0 bytes"));

    std::fs::write(&p, b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
    let err = load_err(&p);
    assert!(err.contains("corrupt GGUF header"), "{err}");
}

#[test]
fn truncated_file() {
    let src = std::fs::read(common::model_path("smollm2-135m")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("half.gguf");
    std::fs::write(&p, &src[..src.len() / 2]).unwrap();
    let err = load_err(&p);
    assert!(
        err.contains("half.gguf") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn unknown_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mamba.gguf");
    tiny_gguf(&p, "mamba");
    let err = load_err(&p);
    assert!(err.contains("unsupported architecture `mamba`"), "{err}");
    assert!(err.contains("llama, qwen2, qwen3, phi3, gemma3"), "{err}");
}

#[test]
fn over_long_prompt_is_refused_before_any_work() {
    common::model_path("smollm2-135m");
    let job = Job {
        model: "smollm2-135m".into(),
        // More words than smollm2's 8192 tokens of context.
        prompt: Prompt::Text("hello ".repeat(9000)),
        max_tokens: 8,
        stop: vec![],
        samples: vec![SamplingParams::default()],
        ignore_eos: false,
        stream: None,
        constraint: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = rt.block_on(Engine::start().generate(job)).unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("context of 8192 tokens"), "{err}");
}

#[test]
fn cli_errors_are_one_line_on_stderr_with_failure_status() {
    let out = Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(["ask", "--model", "/nonexistent/x.gguf", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(err.contains("/nonexistent/x.gguf"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(["ask", "--model", "no-such-model", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("smollm2-135m"),
        "unknown names should list known ones: {err}"
    );
}
