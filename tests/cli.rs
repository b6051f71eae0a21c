//! The `conclave` binary as a user runs it, on the default model.
mod common;
use std::process::Command;

fn conclave(args: &[&str]) -> (bool, String, String) {
    common::model_path("smollm2-135m");
    let out = Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(args)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

fn json(args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = conclave(args);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn ask_answers_paris() {
    let (ok, out, err) = conclave(&[
        "ask",
        "What is the capital of France?",
        "--temperature",
        "0",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("Paris"), "{out}");
}

#[test]
fn ask_json_reports_counts_and_speed() {
    let v = json(&[
        "ask",
        "Name a colour.",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--json",
    ]);
    for key in [
        "model",
        "answer",
        "prompt_tokens",
        "completion_tokens",
        "prefill_tok_s",
        "decode_tok_s",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["model"], "smollm2-135m");
    assert!(v["prompt_tokens"].as_u64().unwrap() > 5);
    let n = v["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&n), "{v}");
    assert!(v["decode_tok_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn same_seed_same_answer_other_seed_other_answer() {
    let run = |seed: &str| {
        let args = [
            "ask",
            "Write a sentence about the sea.",
            "-t",
            "1.0",
            "-n",
            "24",
            "--seed",
            seed,
            "--json",
        ];
        json(&args)["answer"].as_str().unwrap().to_string()
    };
    assert_eq!(run("5"), run("5"));
    assert_ne!(run("5"), run("6"));
}

#[test]
fn stop_string_ends_the_answer() {
    let v = json(&[
        "ask",
        "What is the capital of France?",
        "-t",
        "0",
        "--stop",
        "Paris",
        "--json",
    ]);
    assert_eq!(v["finish_reason"], "stop");
    assert!(!v["answer"].as_str().unwrap().contains("Paris"), "{v}");
}

#[test]
fn tokenize_matches_the_llama_cpp_fixture_and_decodes_back() {
    let fx = common::fixture("tokenizer/smollm2-135m.json");
    let case = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["text"].as_str().unwrap().contains("<|im_start|>"))
        .unwrap();
    let text = case["text"].as_str().unwrap();
    let ids = json(&["tokenize", text]);
    assert_eq!(ids, case["ids"]);
    let (ok, out, _) = conclave(&["tokenize", "--decode", &ids.to_string()]);
    assert!(ok);
    assert_eq!(out.strip_suffix('\n').unwrap(), text);
}

#[test]
fn models_list_shows_the_catalog() {
    let (ok, out, _) = conclave(&["models", "list"]);
    assert!(ok);
    for name in [
        "smollm2-135m",
        "gemma3-270m",
        "qwen2.5-coder-0.5b",
        "qwen2.5-coder-1.5b",
    ] {
        assert!(out.contains(name), "{out}");
    }
}
