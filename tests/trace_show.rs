//! `conclave trace show FILE` on real traces: a nested ensemble's (`conclave ask --config`
//! on smollm2) and an agent run's (`conclave agent`, qwen2.5-coder-0.5b with the
//! calculator), as written and as the server's `GET /v1/conclave/traces/{id}` wraps them.
mod common;

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};

/// `conclave trace show FILE`: (success, stdout, stderr).
fn show(file: &Path) -> (bool, String, String) {
    let (ok, out, err) = common::conclave(&[], &["trace", "show", file.to_str().unwrap()]);
    eprintln!("--- trace show {}\n{out}{err}", file.display());
    (ok, out, err)
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The line of `out` that holds agent `#n` of an ensemble, at any depth, after `from`.
fn agent_line(out: &str, from: usize, n: usize) -> &str {
    out[from..]
        .lines()
        .find(|l| {
            l.trim_start_matches([' ', '*'])
                .starts_with(&format!("#{n} "))
        })
        .unwrap_or_else(|| panic!("no line for agent #{n}:\n{out}"))
}

#[test]
fn an_ensemble_trace_shows_every_agent_the_votes_and_the_winner() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    std::fs::write(
        p("inner.toml"),
        "name = \"inner\"\nstrategy = \"vote\"\nanswer = \"number\"\nmax_tokens = 24\n\
         [[member]]\nmodel = \"smollm2-135m\"\ntemperature = 0.7\ncount = 2\n",
    )
    .unwrap();
    std::fs::write(
        p("outer.toml"),
        "name = \"outer\"\nstrategy = \"vote\"\nanswer = \"number\"\nmax_tokens = 24\n\
         [[member]]\nmodel = \"smollm2-135m\"\ntemperature = 0.0\n\
         [[member]]\nmodel = \"smollm2-135m\"\ntemperature = 0.9\n\
         [[member]]\nensemble = \"inner.toml\"\n",
    )
    .unwrap();
    let trace_file = p("trace.json");
    let (ok, _, err) = common::conclave(
        &["smollm2-135m"],
        &[
            "ask",
            "What is 2+3?",
            "--config",
            p("outer.toml").to_str().unwrap(),
            "--trace",
            trace_file.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let trace = read(&trace_file);
    let (ok, out, err) = show(&trace_file);
    assert!(ok, "{err}");
    // Piped, not a terminal: no colour.
    assert!(!out.contains('\x1b'), "{out}");
    assert!(out.starts_with("ensemble outer · vote"), "{out}");

    // Each agent's line: its model, temperature and extracted answer; the nested
    // ensemble's head and agents below it, indented.
    let agents = trace["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 3);
    for (i, a) in agents.iter().enumerate() {
        let line = agent_line(&out, 0, i + 1);
        assert!(line.contains(a["model"].as_str().unwrap()), "{line}");
        assert!(
            line.contains(&format!("T {:.2}", a["temperature"].as_f64().unwrap())),
            "{line}"
        );
        let shown = a["extracted"].as_str().unwrap_or("-");
        assert!(line.contains(&format!("→ {shown} ")), "{line}");
    }
    let nested = out
        .find("ensemble inner · vote")
        .unwrap_or_else(|| panic!("no nested ensemble:\n{out}"));
    let depth = |l: &str| l.len() - l.trim_start().len();
    let head_depth = nested - out[..nested].rfind('\n').unwrap() - 1;
    assert!(head_depth > depth(agent_line(&out, 0, 3)), "{out}");
    let inner = agents[2]["ensemble"]["agents"].as_array().unwrap();
    for (i, a) in inner.iter().enumerate() {
        let line = agent_line(&out, nested, i + 1);
        assert!(
            depth(line) > head_depth,
            "nested agents are indented:\n{out}"
        );
        let shown = a["extracted"].as_str().unwrap_or("-");
        assert!(line.contains(&format!("→ {shown} ")), "{line}");
    }

    // The winner: its agent line marked `*`, and a winner line with the answer.
    match trace["winner"].as_u64() {
        Some(w) => {
            let w = w as usize;
            let answer = trace["answer"].as_str().unwrap();
            assert!(
                agent_line(&out, 0, w + 1).trim_start().starts_with("* "),
                "{out}"
            );
            for i in (0..agents.len()).filter(|&i| i != w) {
                assert!(
                    !agent_line(&out, 0, i + 1).trim_start().starts_with('*'),
                    "{out}"
                );
            }
            assert!(
                out.contains(&format!("* winner #{}: {answer}\n", w + 1)),
                "{out}"
            );
            assert!(out.contains(&format!("votes: {answer} = ")), "{out}");
        }
        None => assert!(out.contains("no winner"), "{out}"),
    }
}

#[test]
fn an_agent_trace_shows_its_steps_calls_and_totals() {
    common::model_path("qwen2.5-coder-0.5b");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[agent]\nmodel = \"qwen2.5-coder-0.5b\"\ntemperature = 0.0\nstep_max_tokens = 256\n\
         tool_timeout_s = 20\ntools = [\"calculator\"]\nmax_steps = 3\n",
    )
    .unwrap();
    let run = dir.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args([
            "agent",
            "What is 1234 * 5678? Use the calculator tool, then answer.",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--dir")
        .arg(&run)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{stderr}");
    let trace_file = run.join("trace.json");
    let trace = read(&trace_file);

    let (ok, out, err) = show(&trace_file);
    assert!(ok, "{err}");
    assert!(out.starts_with("agent agent · task: What is 1234"), "{out}");
    let steps = trace["steps"].as_array().unwrap();
    let mut calls = 0;
    for s in steps {
        let u = &s["usage"];
        let head = format!(
            "step {} · {} prompt ({} cached) + {} completion tokens",
            s["step"], u["prompt_tokens"], u["cached_tokens"], u["completion_tokens"]
        );
        assert!(out.contains(&head), "no `{head}`:\n{out}");
        for c in s["calls"].as_array().unwrap() {
            calls += 1;
            let line = out
                .lines()
                .find(|l| {
                    l.trim_start()
                        .starts_with(&format!("call {} ", c["name"].as_str().unwrap()))
                })
                .unwrap_or_else(|| panic!("no line for call {c}:\n{out}"));
            assert!(
                line.contains(&format!(
                    "{} by {}",
                    c["decision"].as_str().unwrap(),
                    c["by"].as_str().unwrap()
                )),
                "{line}"
            );
            let first = c["output"].as_str().unwrap().lines().next().unwrap_or("");
            assert!(line.ends_with(&format!("→ {first}")), "{line}");
        }
    }
    assert!(calls > 0, "the run made no call:\n{out}");
    let u = &trace["usage"];
    let total = format!(
        "stop: {} after {} step(s) · total {} prompt ({} cached) + {} completion tokens",
        trace["stop"].as_str().unwrap(),
        steps.len(),
        u["prompt_tokens"],
        u["cached_tokens"],
        u["completion_tokens"]
    );
    assert!(out.contains(&total), "no `{total}`:\n{out}");
    if let Some(a) = trace["answer"].as_str() {
        assert!(out.contains(&format!("answer: {a}\n")), "{out}");
    }

    // The server's stored form shows the same tree under a head naming the trace.
    let served = dir.path().join("served.json");
    let wrapped = json!({"id": "t-1", "model": "conclave/calc", "created": 1, "kind": "agent", "trace": trace});
    std::fs::write(&served, wrapped.to_string()).unwrap();
    let (ok, out2, err) = show(&served);
    assert!(ok, "{err}");
    let (head, rest) = out2.split_once('\n').unwrap();
    assert_eq!(head, "trace t-1 · agent · conclave/calc · created 1");
    assert_eq!(rest, out);
}

#[test]
fn a_file_that_is_not_a_trace_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "torn.json",
            "{\"name\": \"outer\", \"strategy\": ",
            "not JSON",
        ),
        (
            "other.json",
            "{\"object\": \"list\", \"data\": []}",
            "neither `strategy`",
        ),
    ];
    for (name, text, why) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let (ok, out, err) = show(&file);
        assert!(!ok && out.is_empty(), "{out}");
        assert!(
            err.contains(&format!("{} is not a conclave trace", file.display())),
            "{err}"
        );
        assert!(
            err.contains("an agent run trace"),
            "what was expected: {err}"
        );
        assert!(err.contains(why), "{err}");
    }
    let missing = dir.path().join("missing.json");
    let (ok, _, err) = show(&missing);
    assert!(
        !ok && err.contains(&format!("cannot read trace file {}", missing.display())),
        "{err}"
    );
}

/// An `early-stop` run's trace shows each agent's mean confidence and self-certainty, why a
/// stopped one ended (`unsure`), and the bar in the notes.
#[test]
fn an_early_stop_trace_shows_confidence_and_stopped_agents() {
    let dir = tempfile::tempdir().unwrap();
    let trace_file = dir.path().join("trace.json");
    let (ok, _, err) = common::conclave(
        &["smollm2-135m"],
        &[
            "ask",
            "Tom has 3 boxes of 7 apples. How many apples?",
            "--agents",
            "8",
            "--strategy",
            "early-stop",
            "--answer",
            "number",
            "-t",
            "1.0",
            "--seed",
            "3",
            "--max-tokens",
            "64",
            "--trace",
            trace_file.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let trace = read(&trace_file);
    let (ok, out, err) = show(&trace_file);
    assert!(ok, "{err}");
    assert!(out.starts_with("ensemble 8 agents · early-stop"), "{out}");
    assert!(out.contains("set the bar at"), "{out}");
    for (i, a) in trace["agents"].as_array().unwrap().iter().enumerate() {
        let line = agent_line(&out, 0, i + 1);
        let conf = a["signals"]["confidence"].as_array().unwrap();
        let mean = conf.iter().map(|c| c.as_f64().unwrap()).sum::<f64>() / conf.len() as f64;
        assert!(line.contains(&format!("confidence {mean:.2}")), "{line}");
        assert!(line.contains("certainty "), "{line}");
        let unsure = a["finish"] == "unsure";
        assert_eq!(line.contains("unsure"), unsure, "{line}");
        assert!(
            !unsure || a["extracted"].is_null(),
            "a stopped agent has no vote"
        );
    }
}
