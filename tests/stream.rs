//! Streamed ensembles over real HTTP: with `"conclave": {"events": true}` every agent's
//! start, text and end, and each decision, go out as `conclave.*` SSE events while the run
//! goes, then its trace, then the answer as OpenAI chunks; without it, plain OpenAI chunks.
//! And the server's store of recent traces (`/v1/conclave/traces`).
mod common;
use conclave::engine::Engine;
use conclave::ensemble::{Ensemble, Runner};
use conclave::server::Options;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const QWEN: &str = "qwen2.5-coder-0.5b";
const SMOL: &str = "smollm2-135m";
const KEY: &str = "sk-stream-test";

/// One engine for the servers of this binary (each model loaded once).
fn engine() -> Engine {
    common::engine(&[])
}

fn options(models: &[&str]) -> Options {
    Options {
        api_key: Some(KEY.into()),
        models: models.iter().map(|m| m.to_string()).collect(),
        ..Options::default()
    }
}

/// Serves qwen (so the vote8 preset) on the shared engine.
fn qwen_server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| common::serve_on(engine(), options(&[QWEN])))
}

/// Writes `files` (name, text) to a fresh directory; returns their paths.
fn configs(tag: &str, files: &[(&str, &str)]) -> Vec<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("conclave-stream-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    files
        .iter()
        .map(|(name, text)| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(600)) // a hang guard, not a speed check
        .build()
        .unwrap()
}

fn question(model: &str, text: &str, extra: Value) -> Value {
    let mut v = json!({"model": model, "seed": 7,
                       "messages": [{"role": "user", "content": text}]});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// One SSE event: its `event:` name (None for plain data), its data, and when it arrived.
#[derive(Debug)]
struct Sse {
    name: Option<String>,
    data: String,
    at: Instant,
}

/// Posts `body` and reads the SSE stream event by event, stamping each as it arrives.
async fn read_stream(url: &str, body: &Value) -> (Instant, Vec<Sse>) {
    let sent = Instant::now();
    let mut r = client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut buf = String::new();
    let mut out = Vec::new();
    while let Some(bytes) = r.chunk().await.unwrap() {
        buf.push_str(std::str::from_utf8(&bytes).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut e = Sse {
                name: None,
                data: String::new(),
                at: Instant::now(),
            };
            for line in block.trim_end().lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    e.name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    e.data = d.to_string();
                } else {
                    panic!("not an SSE line: {line:?} in {block:?}");
                }
            }
            out.push(e);
        }
    }
    assert!(buf.is_empty(), "a partial event at the end: {buf:?}");
    (sent, out)
}

/// A stream split into its parts, each checked for its framing.
struct Run {
    /// The `conclave.*` progress events, in order, with their `type` checked against the name.
    events: Vec<(Value, Instant)>,
    trace_id: String,
    trace: Value,
    /// The chunks' content, concatenated.
    content: String,
    /// The finish chunk's `conclave` field.
    conclave: Value,
}

impl Run {
    /// The `decision` events, in order.
    fn decisions(&self) -> Vec<&Value> {
        self.events
            .iter()
            .map(|(e, _)| e)
            .filter(|e| e["type"] == "decision")
            .collect()
    }
}

fn split(stream: Vec<Sse>) -> Run {
    let mut events = Vec::new();
    let mut trace = None;
    let mut chunks = Vec::new();
    let mut done = false;
    for e in stream {
        assert!(!done, "an event after [DONE]: {e:?}");
        match e.name.as_deref() {
            Some("conclave.trace") => {
                assert!(trace.is_none() && chunks.is_empty(), "{e:?}");
                trace = Some(serde_json::from_str::<Value>(&e.data).unwrap());
            }
            Some(name) => {
                assert!(trace.is_none(), "progress after the trace: {e:?}");
                let v: Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(
                    Some(name),
                    v["type"]
                        .as_str()
                        .map(|t| format!("conclave.{t}"))
                        .as_deref()
                );
                events.push((v, e.at));
            }
            None if e.data == "[DONE]" => done = true,
            None => {
                assert!(trace.is_some(), "a chunk before the trace: {e:?}");
                chunks.push(serde_json::from_str::<Value>(&e.data).unwrap());
            }
        }
    }
    assert!(done, "no [DONE]");
    let t = trace.expect("a conclave.trace event");
    let mut content = String::new();
    let mut conclave = Value::Null;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        let choice = &c["choices"][0];
        content.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        if !choice["finish_reason"].is_null() {
            conclave = c["conclave"].clone();
        }
    }
    Run {
        events,
        trace_id: t["id"].as_str().unwrap().to_string(),
        trace: t["trace"].clone(),
        content,
        conclave,
    }
}

/// The events of one (path, agent): starts, deltas' text, dones.
#[derive(Debug, Default)]
struct Seen {
    starts: usize,
    deltas: usize,
    text: String,
    dones: Vec<Value>,
}

/// An agent's key in [`by_agent`]: its path (as JSON text) and index.
fn at(path: Value, agent: u64) -> (String, u64) {
    (path.to_string(), agent)
}

fn by_agent(events: &[(Value, Instant)]) -> BTreeMap<(String, u64), Seen> {
    let mut seen: BTreeMap<(String, u64), Seen> = BTreeMap::new();
    for (e, _) in events {
        if e["type"] == "decision" {
            continue;
        }
        let key = at(e["path"].clone(), e["agent"].as_u64().unwrap());
        let s = seen.entry(key).or_default();
        match e["type"].as_str().unwrap() {
            "agent_start" => s.starts += 1,
            "delta" => {
                s.deltas += 1;
                s.text.push_str(e["text"].as_str().unwrap());
            }
            "agent_done" => s.dones.push(e.clone()),
            t => panic!("unknown event type {t}"),
        }
    }
    seen
}

#[tokio::test]
async fn vote8_streams_each_agent_then_its_trace_then_the_answer() {
    let url = qwen_server();
    let body = question(
        "conclave/vote8",
        "What is 12 + 30?",
        json!({"max_tokens": 48, "stream": true, "conclave": {"events": true},
               "stream_options": {"include_usage": true}}),
    );
    let (sent, stream) = read_stream(url, &body).await;
    let run = split(stream);
    let trace = &run.trace;
    let agents = trace["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 8);
    let seen = by_agent(&run.events);
    assert_eq!(seen.len(), 8, "8 distinct agents: {:?}", seen.keys());
    for (i, a) in agents.iter().enumerate() {
        let s = &seen[&at(json!([]), i as u64)];
        assert_eq!(s.starts, 1, "agent {i}");
        assert!(s.deltas >= 1, "agent {i} streamed nothing");
        assert_eq!(s.text, a["text"].as_str().unwrap(), "agent {i}'s deltas");
        assert_eq!(s.dones.len(), 1, "agent {i}");
        let d = &s.dones[0];
        assert_eq!(d["extracted"], a["extracted"], "agent {i}");
        assert_eq!(d["tokens"], a["tokens"], "agent {i}");
        assert_eq!(d["finish"], a["finish"], "agent {i}");
    }
    let decisions = run.decisions();
    assert_eq!(decisions.len(), 1);
    let d = decisions[0];
    assert_eq!(d["path"], json!([]));
    assert_eq!(d["strategy"], "vote");
    assert_eq!(d["winner"], trace["winner"]);
    assert_eq!(d["votes"], trace["votes"]);
    assert_eq!(d["answer"], trace["answer"]);
    assert_eq!(run.content, trace["text"].as_str().unwrap());
    assert_eq!(run.conclave["trace_id"], run.trace_id.as_str());
    // Really streamed: the first delta came well before the last agent was done (an answer
    // dumped at the end would bring them together).
    let first_delta = run
        .events
        .iter()
        .find(|(e, _)| e["type"] == "delta")
        .unwrap()
        .1;
    let last_done = run
        .events
        .iter()
        .rfind(|(e, _)| e["type"] == "agent_done")
        .unwrap()
        .1;
    let whole = last_done - sent;
    assert!(
        last_done - first_delta > whole / 4,
        "the first delta came {:?} before the last agent_done, of {whole:?}",
        last_done - first_delta
    );
    // The same request not streamed: the same answer and votes (the seed fixes the run).
    let mut plain = body.clone();
    for k in ["stream", "conclave", "stream_options"] {
        plain.as_object_mut().unwrap().remove(k);
    }
    let r = client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&plain)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], run.content.as_str());
    assert_eq!(v["conclave"]["votes"], trace["votes"]);
}

#[test]
fn the_openai_client_streams_an_ensemble_as_plain_chunks() {
    let url = qwen_server();
    common::run_python(
        "stream_client.py",
        &[
            ("CONCLAVE_URL", url.to_string()),
            ("CONCLAVE_KEY", KEY.to_string()),
            ("CONCLAVE_MODEL", "conclave/vote8".to_string()),
        ],
    );
}

const OUTER: &str = r#"
name = "outer"
strategy = "vote"
answer = "number"
max_tokens = 12
[[member]]
model = "smollm2-135m"
role = "solver"
temperature = 0.5
[[member]]
ensemble = "tiny.toml"
"#;

#[tokio::test]
async fn a_nested_ensemble_streams_under_its_path() {
    let files = configs(
        "nested",
        &[("tiny.toml", common::TINY), ("outer.toml", OUTER)],
    );
    let url = &common::serve_on(
        engine(),
        Options {
            configs: vec![files[1].clone()],
            ..options(&[SMOL])
        },
    );
    let body = question(
        "conclave/outer",
        "What is 2 + 2?",
        json!({"stream": true, "conclave": {"events": true}}),
    );
    let run = split(read_stream(url, &body).await.1);
    let seen = by_agent(&run.events);
    let keys: Vec<(String, u64)> = seen.keys().cloned().collect();
    let want = [
        (json!([]), 0),
        (json!([]), 1),
        (json!([1]), 0),
        (json!([1]), 1),
    ];
    let mut want = want.map(|(p, a)| at(p, a));
    want.sort();
    assert_eq!(keys, want);
    let top = &run.trace["agents"];
    let inner = &top[1]["ensemble"];
    assert_eq!(
        seen[&at(json!([]), 0)].text,
        top[0]["text"].as_str().unwrap()
    );
    for j in 0..2u64 {
        let s = &seen[&at(json!([1]), j)];
        assert_eq!(
            s.text,
            inner["agents"][j as usize]["text"].as_str().unwrap()
        );
        assert!(s.deltas >= 1 && s.starts == 1 && s.dones.len() == 1);
    }
    // The nested member shows as one agent of the top: its start, and its answer as done.
    let member = &seen[&at(json!([]), 1)];
    assert_eq!((member.starts, member.deltas), (1, 0));
    assert_eq!(member.dones[0]["extracted"], inner["answer"]);
    let decisions = run.decisions();
    assert_eq!(decisions.len(), 2);
    assert_eq!(
        decisions[0]["path"],
        json!([1]),
        "the inner one decides first"
    );
    assert_eq!(decisions[0]["votes"], inner["votes"]);
    assert_eq!(decisions[1]["path"], json!([]));
    assert_eq!(decisions[1]["votes"], run.trace["votes"]);
}

async fn get(url: &str, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = client().get(format!("{url}{path}"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn recent_traces_are_kept_newest_first_within_the_bound() {
    let files = configs("store", &[("tiny.toml", common::TINY)]);
    let url = &common::serve_on(
        engine(),
        Options {
            configs: files,
            traces_kept: 3,
            ..options(&[SMOL])
        },
    );
    // Four answers: three whole, one streamed with events; the bound keeps the last three.
    let mut ids = Vec::new();
    let mut traces = Vec::new();
    for q in ["What is 1 + 1?", "What is 2 + 5?", "What is 3 + 3?"] {
        let r = client()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&question("conclave/tiny", q, json!({})))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        let mut trace = v["conclave"].clone();
        let id = trace.as_object_mut().unwrap().remove("trace_id").unwrap();
        assert_eq!(id, v["id"]);
        ids.push(id.as_str().unwrap().to_string());
        traces.push(trace);
    }
    let body = question(
        "conclave/tiny",
        "What is 4 + 4?",
        json!({"stream": true, "conclave": {"events": true}}),
    );
    let run = split(read_stream(url, &body).await.1);
    ids.push(run.trace_id.clone());
    traces.push(run.trace.clone());

    let (s, list) = get(url, "/v1/conclave/traces", Some(KEY)).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["object"], "list");
    let listed: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [&ids[3], &ids[2], &ids[1]],
        "newest first, three kept"
    );
    let newest = &list["data"][0];
    assert_eq!(newest["model"], "conclave/tiny");
    assert_eq!(newest["kind"], "ensemble");
    assert_eq!(newest["question"], "What is 4 + 4?");
    assert_eq!(newest["answer"], run.content.as_str());
    assert!(newest["created"].as_u64().unwrap() > 1_700_000_000);

    for i in 1..4 {
        let (s, v) = get(url, &format!("/v1/conclave/traces/{}", ids[i]), Some(KEY)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["id"], ids[i].as_str());
        assert_eq!(v["kind"], "ensemble");
        assert_eq!(v["trace"], traces[i], "trace {i} as its response gave it");
    }
    // The first was dropped past the bound.
    let (s, v) = get(url, &format!("/v1/conclave/traces/{}", ids[0]), Some(KEY)).await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(&ids[0]),
        "{v}"
    );
    assert!(v["error"]["type"].is_string());
    // Both endpoints are behind the key.
    for path in [
        "/v1/conclave/traces".to_string(),
        format!("/v1/conclave/traces/{}", ids[3]),
    ] {
        assert_eq!(get(url, &path, None).await.0, 401, "{path}");
        assert_eq!(get(url, &path, Some("sk-wrong")).await.0, 401, "{path}");
    }
}

#[tokio::test]
async fn a_client_that_leaves_an_ensemble_stream_cancels_its_jobs() {
    let files = configs("cancel", &[("tiny.toml", common::TINY)]);
    // An engine of its own, so its counters count this test's jobs only.
    common::model_path(SMOL);
    let url = &common::serve_on(
        Engine::start(),
        Options {
            configs: files,
            ..options(&[SMOL])
        },
    );
    let before = common::metric(url, KEY, "conclave_jobs_cancelled_total").await;
    let body = question(
        "conclave/tiny",
        "Write a long story about a dragon.",
        json!({"stream": true, "max_tokens": 4000, "conclave": {"events": true}}),
    );
    let mut r = client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    // Wait for a delta: the agents' job is decoding.
    let mut seen = String::new();
    while !seen.contains("event: conclave.delta") {
        let bytes = r.chunk().await.unwrap().expect("the stream ended early");
        seen.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    drop(r);
    let mut after = before;
    for _ in 0..600 {
        after = common::metric(url, KEY, "conclave_jobs_cancelled_total").await;
        if after > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after, before + 1.0, "the agents' one job was cancelled");
}

/// Runs `ens` on `q` with a listener; returns the trace and the events as JSON.
async fn listened(ens: &Ensemble, q: &str) -> (Value, Vec<Value>) {
    common::model_path(SMOL);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let mut runner = Runner::new(engine()).on_event(move |e| {
        sink.lock().unwrap().push(serde_json::to_value(&e).unwrap());
    });
    let trace = runner.run(ens, q).await.unwrap();
    let events = std::mem::take(&mut *seen.lock().unwrap());
    (serde_json::to_value(&trace).unwrap(), events)
}

/// Each round's agents streamed their texts of that round, as the trace keeps them (earlier
/// rounds in `rounds`, the last in `agents`), and one decision came last.
fn rounds_match(trace: &Value, events: &[Value]) {
    let mut rounds: Vec<&Value> = trace["rounds"]
        .as_array()
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    rounds.push(&trace["agents"]);
    for (r, agents) in rounds.iter().enumerate() {
        for (a, agent) in agents.as_array().unwrap().iter().enumerate() {
            let of = |kind: &str| -> Vec<&Value> {
                events
                    .iter()
                    .filter(|e| e["type"] == kind && e["round"] == r && e["agent"] == a)
                    .collect()
            };
            assert_eq!(of("agent_start").len(), 1, "round {r} agent {a}");
            let text: String = of("delta")
                .iter()
                .map(|e| e["text"].as_str().unwrap())
                .collect();
            assert_eq!(text, agent["text"].as_str().unwrap(), "round {r} agent {a}");
            assert_eq!(of("agent_done")[0]["extracted"], agent["extracted"]);
        }
    }
    let last = events.last().unwrap();
    assert_eq!(last["type"], "decision");
    assert_eq!(
        (&last["votes"], &last["winner"]),
        (&trace["votes"], &trace["winner"])
    );
    assert_eq!(events.iter().filter(|e| e["type"] == "decision").count(), 1);
}

#[tokio::test]
async fn debate_and_refine_rounds_stream_under_their_round() {
    let debate = r#"
name = "d"
strategy = "debate"
rounds = 2
answer = "number"
max_tokens = 12
[[member]]
model = "smollm2-135m"
role = "solver"
temperature = 0.8
count = 2
"#;
    let ens = Ensemble::from_toml(debate, Path::new(".")).unwrap();
    let (trace, events) = listened(&ens, "What is 6 + 7?").await;
    assert_eq!(trace["rounds"].as_array().unwrap().len(), 1);
    rounds_match(&trace, &events);
    // Refine: the calculator finds a small model's product wrong, and the agents try again.
    let refine = debate.replace("\"debate\"", "\"refine\"") + "tools = [\"calculator\"]\n";
    let ens = Ensemble::from_toml(&refine, Path::new(".")).unwrap();
    let (trace, events) = listened(&ens, "What is 17 * 23?").await;
    assert_eq!(
        trace["rounds"].as_array().map(Vec::len),
        Some(1),
        "two rounds"
    );
    rounds_match(&trace, &events);
}
