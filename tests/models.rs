//! The two larger catalog models through `conclave ask`, and the presets that use them
//! (council: a nested judged ensemble and a synthesizer; mixed: three models, weighted).
mod common;
use serde_json::Value;

fn conclave(args: &[&str]) -> (bool, String, String) {
    common::conclave(&["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"], args)
}

fn json(args: &[&str]) -> Value {
    let (ok, out, err) = conclave(args);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Runs a preset with `--trace` and returns the trace file's JSON.
fn preset_trace(preset: &str, question: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.json");
    let (ok, out, err) = conclave(&[
        "ask",
        "--config",
        preset,
        "-n",
        "24",
        "--seed",
        "3",
        "--trace",
        trace.to_str().unwrap(),
        question,
    ]);
    assert!(ok, "{err}");
    assert!(!out.trim().is_empty(), "no answer printed: {err}");
    serde_json::from_str(&std::fs::read_to_string(trace).unwrap()).unwrap()
}

#[test]
fn gemma3_and_qwen_answer_through_the_cli() {
    for model in ["gemma3-270m", "qwen2.5-coder-0.5b"] {
        let v = json(&[
            "ask",
            "--model",
            model,
            "What is the capital of France?",
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--json",
        ]);
        assert_eq!(v["model"], model);
        assert!(v["answer"].as_str().unwrap().contains("Paris"), "{v}");
        let n = v["completion_tokens"].as_u64().unwrap();
        assert!((1..=24).contains(&n), "{v}");
    }
}

#[test]
fn council_preset_runs_end_to_end() {
    let t = preset_trace("council", "What is 2 + 3?");
    assert_eq!(t["strategy"], "fuse");
    let agents = t["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 3, "the judged ensemble and two agents");
    let inner = &agents[0]["ensemble"];
    assert_eq!(inner["strategy"], "judge");
    assert_eq!(inner["agents"].as_array().unwrap().len(), 4);
    assert!(inner["judge"]["prompt"].is_string(), "the inner judge ran");
    // The synthesizer read every member's answer and wrote the final text.
    let synth = &t["judge"];
    let prompt = synth["prompt"].as_str().unwrap();
    for (i, a) in agents.iter().enumerate() {
        let head: String = a["text"]
            .as_str()
            .unwrap()
            .trim()
            .chars()
            .take(60)
            .collect();
        let shown = format!("Response {}: {head}", i + 1);
        assert!(prompt.contains(&shown), "{shown:?} is not in {prompt}");
    }
    assert_eq!(t["text"], synth["text"]);
    assert!(!t["text"].as_str().unwrap().is_empty());
}

#[test]
fn mixed_preset_runs_three_models_and_weighs_their_votes() {
    let t = preset_trace("mixed", "What is 2 + 3? Answer with a number.");
    assert_eq!(t["strategy"], "weighted");
    let agents = t["agents"].as_array().unwrap();
    let models: std::collections::BTreeSet<&str> = agents
        .iter()
        .map(|a| a["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        models.into_iter().collect::<Vec<_>>(),
        ["gemma3-270m", "qwen2.5-coder-0.5b", "smollm2-135m"]
    );
    // Recompute the weighted vote from the file: each answer's votes are the sum of
    // exp(mean log-prob) of the agents that gave it.
    let mut votes = std::collections::BTreeMap::<String, f64>::new();
    for a in agents {
        if let Some(x) = a["extracted"].as_str() {
            *votes.entry(x.into()).or_default() += a["logprob_mean"].as_f64().unwrap().exp();
        }
    }
    let recorded: std::collections::BTreeMap<String, f64> =
        serde_json::from_value(t["votes"].clone()).unwrap();
    assert_eq!(
        recorded.keys().collect::<Vec<_>>(),
        votes.keys().collect::<Vec<_>>()
    );
    for (k, v) in &votes {
        assert!(
            (recorded[k] - v).abs() < 1e-4,
            "{k}: {} vs {v}",
            recorded[k]
        );
    }
    let best = votes.values().cloned().fold(0.0, f64::max);
    let answer = t["answer"].as_str().expect("an answer");
    assert!(
        (votes[answer] - best).abs() < 1e-9,
        "{answer} has not the most: {votes:?}"
    );
}
