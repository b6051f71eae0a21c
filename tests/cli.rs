//! The `conclave` binary as a user runs it, on the default model.
mod common;

fn conclave(args: &[&str]) -> (bool, String, String) {
    common::conclave(&["smollm2-135m"], args)
}

fn json(args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = conclave(args);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// "Answer in one sentence.": to the bare question smollm2's greedy first token is a near
/// tie, which llama.cpp on the same GGUF answers in French ("L'Étoile, …").
#[test]
fn ask_answers_paris() {
    let (ok, out, err) = conclave(&[
        "ask",
        "What is the capital of France? Answer in one sentence.",
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
        "What is the capital of France? Answer in one sentence.",
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

#[test]
fn ensemble_config_prints_agents_votes_and_a_recomputable_trace() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.json");
    let (ok, out, err) = conclave(&[
        "ask",
        "--config",
        "configs/vote8.toml",
        "--answer",
        "number",
        "-n",
        "40",
        "--trace",
        trace.to_str().unwrap(),
        "What is 12 + 30?",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("votes:") && out.contains("agreement"), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("qwen2.5-coder-0.5b"))
            .count(),
        8,
        "{out}"
    );
    assert!(err.contains("agents finished: 8/8"), "{err}");

    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(trace).unwrap()).unwrap();
    for key in [
        "answer",
        "strategy",
        "agreement",
        "votes",
        "agents",
        "usage",
        "seconds",
    ] {
        assert!(t.get(key).is_some(), "trace lacks {key}");
    }
    // Recount the votes from the agents' extracted answers alone.
    let mut counts = std::collections::BTreeMap::<String, f64>::new();
    for a in t["agents"].as_array().unwrap() {
        for key in [
            "model",
            "role",
            "temperature",
            "seed",
            "text",
            "extracted",
            "logprob_mean",
            "tokens",
            "seconds",
        ] {
            assert!(a.get(key).is_some(), "agent lacks {key}");
        }
        if let Some(x) = a["extracted"].as_str() {
            *counts.entry(x.to_string()).or_default() += 1.0;
        }
    }
    let votes: std::collections::BTreeMap<String, f64> =
        serde_json::from_value(t["votes"].clone()).unwrap();
    assert_eq!(votes, counts);
    let best = counts.values().cloned().fold(0.0, f64::max);
    if let Some(answer) = t["answer"].as_str() {
        assert_eq!(counts[answer], best, "the winner has the most votes");
    }
}

#[test]
fn agents_flag_builds_an_ensemble_from_the_command_line() {
    let v = json(&[
        "ask",
        "--agents",
        "3",
        "--temperatures",
        "0.2,0.7,1.0",
        "--roles",
        "concise,solver",
        "--strategy",
        "vote",
        "--answer",
        "number",
        "-n",
        "24",
        "--json",
        "What is 5 + 4?",
    ]);
    let agents = v["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 3);
    let temps: Vec<f64> = agents
        .iter()
        .map(|a| a["temperature"].as_f64().unwrap())
        .collect();
    assert!(
        (temps[0] - 0.2).abs() < 1e-6 && (temps[2] - 1.0).abs() < 1e-6,
        "{temps:?}"
    );
    assert_eq!(agents[0]["role"], "concise");
    assert_eq!(agents[1]["role"], "solver");
    assert_eq!(v["strategy"], "vote");
}

#[test]
fn bench_speed_reports_each_size() {
    let v = json(&[
        "bench-speed",
        "--sizes",
        "1,2",
        "--max-tokens",
        "8",
        "--prompt-tokens",
        "40",
        "--repeats",
        "2",
        "--json",
    ]);
    assert_eq!(v["prompt_tokens"], 40);
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows[0]["prefill_tok_s"].as_f64().unwrap() > 0.0);
    assert_eq!(rows[0]["ratio"], 1.0);
    assert!(rows[1]["decode_tok_s"].as_f64().unwrap() > 0.0);
    // Each turn's N = 1 is its own base; the ratio of the means lies within the turns' range.
    assert_eq!(rows[0]["wall_ratio_min"], 1.0);
    assert_eq!(rows[0]["wall_ratio_max"], 1.0);
    let f = |k: &str| rows[1][k].as_f64().unwrap();
    let (lo, mean, hi) = (f("wall_ratio_min"), f("wall_ratio"), f("wall_ratio_max"));
    assert!(
        0.0 < lo && lo <= mean * (1.0 + 1e-9) && mean <= hi * (1.0 + 1e-9),
        "{lo} {mean} {hi}"
    );
}
