//! Ensembles on a real model (smollm2-135m): every strategy runs, and every decision can be
//! recomputed from its trace.
mod common;
use conclave::engine::Finish;
use conclave::ensemble::aggregate;
use conclave::ensemble::{AnswerKind, Ensemble, Strategy, Trace};
use std::path::Path;

fn run(ens: &Ensemble, question: &str) -> Trace {
    common::run_ensemble(common::engine(&["smollm2-135m"]), ens, question)
}

fn toml(text: &str) -> Ensemble {
    Ensemble::from_toml(text, Path::new(".")).unwrap()
}

const AGENTS4: &str = r#"
[[member]]
model = "smollm2-135m"
role = "solver"
temperature = 0.9
count = 4
"#;

/// The candidates of a trace read back from its JSON.
fn candidates_in(trace: &serde_json::Value) -> Vec<aggregate::Candidate> {
    trace["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| aggregate::Candidate {
            text: a["text"].as_str().unwrap().to_string(),
            extracted: a["extracted"].as_str().map(String::from),
            logprob_mean: a["logprob_mean"].as_f64().unwrap() as f32,
            weight: a["weight"].as_f64().unwrap() as f32,
            signals: serde_json::from_value(a["signals"].clone()).unwrap_or_default(),
        })
        .collect()
}

#[test]
fn vote_preset_runs_and_the_trace_recomputes_the_winner() {
    let mut ens = Ensemble::load("vote8").unwrap();
    ens.max_tokens = 48;
    let t = run(&ens, "What is 12 + 30?");
    assert_eq!(t.agents.len(), 8);
    let seeds: std::collections::HashSet<u64> = t.agents.iter().map(|a| a.seed).collect();
    assert_eq!(seeds.len(), 8, "every agent has its own seed");
    // Recompute the decision from the trace file alone, as a user of --trace would.
    let file = tempfile::NamedTempFile::new().unwrap();
    serde_json::to_writer(file.as_file(), &t).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file.path()).unwrap()).unwrap();
    let recorded: aggregate::Decision = serde_json::from_value(json.clone()).unwrap();
    let again = aggregate::vote(&candidates_in(&json));
    assert_eq!(recorded, again);
    assert!(recorded.answer.is_some(), "{json}");
    let counted: f64 = recorded.votes.values().sum();
    assert_eq!(
        counted as usize,
        t.agents.iter().filter(|a| a.extracted.is_some()).count()
    );
    // One shared prefill: prompt tokens are counted once for the batch of eight.
    assert!(t.usage.prompt_tokens < 100, "{}", t.usage.prompt_tokens);
}

#[test]
fn weighted_and_medoid_decide_from_the_trace() {
    let mut ens = toml(AGENTS4);
    ens.max_tokens = 40;
    ens.strategy = Strategy::Weighted;
    ens.answer = AnswerKind::Number;
    let t = run(&ens, "How many legs do 3 spiders have?");
    let again = aggregate::weighted(&t.candidates(), aggregate::WeightBy::Logprob);
    assert_eq!((t.answer.clone(), t.winner), (again.answer, again.winner));

    ens.strategy = Strategy::Medoid;
    let t = run(&ens, "Describe the sea in one sentence.");
    let again = aggregate::medoid(&t.candidates());
    assert_eq!(t.winner, again.winner);
    assert!(t.winner.is_some() && !t.text.is_empty());
}

#[test]
fn judge_picks_a_candidate_or_falls_back_to_the_vote() {
    let mut ens = Ensemble::load("judged").unwrap();
    ens.max_tokens = 40;
    let t = run(&ens, "What is the capital of France?");
    let judge = t.judge.as_ref().expect("the judge ran");
    assert!(judge.prompt.contains("Response 4:"));
    match judge.pick {
        Some(i) => assert_eq!(t.winner, Some(i)),
        None => {
            assert!(t.notes.iter().any(|n| n.contains("vote")));
            assert_eq!(t.winner, aggregate::vote(&t.candidates()).winner);
        }
    }
}

#[test]
fn fuse_synthesizes_and_debate_keeps_every_round() {
    let mut ens = toml(AGENTS4);
    ens.max_tokens = 32;
    ens.strategy = Strategy::Fuse;
    let t = run(&ens, "Name a primary colour.");
    let call = t.judge.as_ref().expect("the synthesizer ran");
    assert_eq!(t.text, call.text);
    assert!(!t.text.is_empty());

    ens.strategy = Strategy::Debate;
    ens.rounds = 2;
    ens.answer = AnswerKind::Number;
    let t = run(&ens, "What is 7 times 6?");
    assert_eq!(
        t.rounds.len(),
        1,
        "round one is kept, round two is `agents`"
    );
    assert_eq!(t.rounds[0].len(), 4);
    // Round two's prompt is the question with every round-one answer in it.
    assert_eq!(t.prompts.len(), 2, "{:?}", t.prompts);
    assert_eq!(t.prompts[0], "What is 7 times 6?");
    let second = &t.prompts[1];
    assert!(second.starts_with("What is 7 times 6?"), "{second}");
    for (i, a) in t.rounds[0].iter().enumerate() {
        let answer = a.text.trim();
        let head: String = answer.chars().take(80).collect();
        assert!(
            second.contains(&format!("Agent {}: {head}", i + 1)),
            "agent {i}'s answer is not in round two's prompt:\n{second}"
        );
    }
    assert_eq!(t.winner, aggregate::vote(&t.candidates()).winner);
}

#[test]
fn nested_ensemble_runs_within_the_shared_token_budget() {
    let ens = toml(
        r#"
        strategy = "vote"
        answer = "number"
        max_tokens = 64
        token_budget = 120

        [[member]]
        ensemble = "judged"

        [[member]]
        model = "smollm2-135m"
        role = "concise"
        count = 2
        "#,
    );
    let t = run(&ens, "What is 2 + 2?");
    assert_eq!(t.agents.len(), 3);
    let inner = t.agents[0]
        .ensemble
        .as_ref()
        .expect("the nested trace is kept");
    assert_eq!(inner.agents.len(), 4);
    assert!(
        t.usage.completion_tokens <= 120,
        "budget exceeded: {}",
        t.usage.completion_tokens
    );
}

/// A budget smaller than the ensemble would spend cuts it: the first batch gets an equal
/// share and stops at it, the next finds the budget spent and does not run.
#[test]
fn a_token_budget_cuts_the_run_short() {
    let ens = toml(
        r#"
        strategy = "vote"
        answer = "text"
        max_tokens = 64
        token_budget = 40

        [[member]]
        model = "smollm2-135m"
        role = "solver"
        temperature = 0.9
        count = 4

        [[member]]
        model = "smollm2-135m"
        role = "concise"
        count = 2
        "#,
    );
    let t = run(&ens, "Write a long story about a dragon.");
    assert_eq!(t.agents.len(), 6);
    for a in &t.agents[..4] {
        assert_eq!(
            (a.tokens, a.finish),
            (10, Some(Finish::Length)),
            "40 tokens over 4 agents: {a:?}"
        );
    }
    for a in &t.agents[4..] {
        assert_eq!((a.tokens, a.text.as_str()), (0, ""), "{a:?}");
    }
    assert!(
        t.notes
            .iter()
            .any(|n| n.contains("token budget spent: 2 agent(s)")),
        "{:?}",
        t.notes
    );
    assert_eq!(t.usage.completion_tokens, 40);
}

/// A `conclave/vote8`-style ensemble served on qwen2.5-coder-0.5b answers a chat request with
/// `tools` with OpenAI `tool_calls`, and its trace shows each agent's call and the vote over
/// them: the winning ballot is the answer's call and the most voted.
#[test]
fn a_served_ensemble_votes_over_tool_calls() {
    use conclave::server::Options;
    use serde_json::{json, Value};
    const QWEN: &str = "qwen2.5-coder-0.5b";
    let url = common::serve(Options {
        models: vec![QWEN.into()],
        ..Options::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, body): (u16, Value) = rt.block_on(async {
        let weather = json!({"type": "function", "function": {"name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}});
        // vote8 as it is, shortened to four agents and short replies to keep the test quick.
        let req = json!({"model": "conclave/vote8", "seed": 3,
            "messages": [{"role": "user", "content": "What's the weather in Paris right now?"}],
            "tools": [weather], "tool_choice": "auto", "max_tokens": 60,
            "ensemble": {"members": [{"model": QWEN, "temperature": 0.5, "count": 4}]}});
        let r = reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .json(&req)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    });
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather", "{body}");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].as_str().unwrap().contains("Paris"), "{args}");

    let trace = &body["conclave"];
    let agents = trace["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 4);
    let mut ballots = std::collections::BTreeMap::<String, f64>::new();
    for a in agents {
        let ballot = a["extracted"].as_str().expect("every reply has a ballot");
        *ballots.entry(ballot.to_string()).or_default() += 1.0;
        match a["calls"].as_array() {
            // An agent's call is its ballot: name and canonical arguments.
            Some(calls) => {
                let c = &calls[0];
                let back = conclave::engine::ToolCall::new(
                    c["name"].as_str().unwrap(),
                    c["arguments"].clone(),
                );
                assert_eq!(ballot, back.canonical());
            }
            None => assert_eq!(ballot, "text"),
        }
    }
    let votes: std::collections::BTreeMap<String, f64> =
        serde_json::from_value(trace["votes"].clone()).unwrap();
    assert_eq!(votes, ballots, "the vote counts every agent's ballot");
    let top = votes.values().cloned().fold(0.0, f64::max);
    let answer = trace["answer"].as_str().unwrap();
    assert_eq!(votes[answer], top, "the answer is the most voted ballot");
    let won = &trace["calls"][0];
    assert_eq!(
        won["id"], call["id"],
        "the reply's call is the trace's answer"
    );
    assert_eq!(
        conclave::engine::ToolCall::new(won["name"].as_str().unwrap(), won["arguments"].clone())
            .canonical(),
        answer
    );
}

/// A served ensemble asked with `response_format: json_schema`: every agent writes under the
/// schema, the vote is over canonical JSON, and the reply is the winning object, valid.
#[test]
fn a_served_ensemble_answers_under_a_json_schema() {
    use conclave::server::Options;
    use serde_json::{json, Value};
    const QWEN: &str = "qwen2.5-coder-0.5b";
    let url = common::serve(Options {
        models: vec![QWEN.into()],
        ..Options::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, body): (u16, Value) = rt.block_on(async {
        let schema = json!({"type": "object", "additionalProperties": false,
            "properties": {"city": {"type": "string"},
                           "country": {"type": "string", "enum": ["France", "Italy", "Spain"]}},
            "required": ["city", "country"]});
        let req = json!({"model": "conclave/vote8", "seed": 5,
            "messages": [{"role": "user", "content": "Name the capital of France and its country as JSON."}],
            "response_format": {"type": "json_schema",
                "json_schema": {"name": "place", "schema": schema, "strict": true}},
            "max_tokens": 60,
            "ensemble": {"members": [{"model": QWEN, "temperature": 0.7, "count": 4}]}});
        let r = reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .json(&req)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    });
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    let answer: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(answer["city"].is_string(), "{answer}");
    assert!(
        ["France", "Italy", "Spain"].contains(&answer["country"].as_str().unwrap()),
        "{answer}"
    );
    let trace = &body["conclave"];
    let agents = trace["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 4);
    for a in agents {
        // Every agent's reply is JSON under the schema, so every agent has a ballot.
        let ballot = a["extracted"]
            .as_str()
            .expect("every agent's JSON is a ballot");
        let v: Value = serde_json::from_str(ballot).unwrap();
        assert!(v["city"].is_string() && v["country"].is_string(), "{v}");
    }
    let votes: std::collections::BTreeMap<String, f64> =
        serde_json::from_value(trace["votes"].clone()).unwrap();
    assert_eq!(votes.values().sum::<f64>(), 4.0, "{votes:?}");
    let answer_ballot = trace["answer"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(answer_ballot).unwrap(),
        answer,
        "the reply is the winning ballot"
    );
}
