//! `conclave serve` over real HTTP (reqwest) on smollm2-135m: OpenAI shapes, every status
//! path, SSE framing, n choices, ensembles, cancellation, a load check, graceful shutdown and
//! remote ensemble members served by a second `conclave serve` process.
//!
//! Servers run in this process on one shared engine (one loaded model) where they can; the
//! shutdown and remote tests start the binary, as a user would.
mod common;
use conclave::engine::Engine;
use conclave::ensemble::{Ensemble, Runner};
use conclave::server::Options;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const MODEL: &str = "smollm2-135m";
const KEY: &str = "sk-test-key";

fn engine() -> Engine {
    common::engine(&[MODEL])
}

/// Starts a server in this process on a free loopback port; returns its base URL.
fn start(opts: Options) -> String {
    common::serve_on(engine(), opts)
}

/// A server on an engine of its own, for tests that read the engine's counters in /metrics:
/// no other test's jobs run there.
fn start_alone(opts: Options) -> String {
    common::model_path(MODEL);
    common::serve_on(Engine::start(), opts)
}

fn options() -> Options {
    Options {
        api_key: Some(KEY.into()),
        models: vec![MODEL.into()],
        body_limit: 256 * 1024,
        ..Options::default()
    }
}

/// The server most tests share: a key, smollm2 only, a tiny ensemble file as `conclave/tiny`.
fn shared() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("conclave-server-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tiny = dir.join("tiny.toml");
        std::fs::write(&tiny, common::TINY).unwrap();
        start(Options {
            configs: vec![tiny],
            ..options()
        })
    })
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(600)) // a hang guard, not a speed check
        .build()
        .unwrap()
}

async fn post(url: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("{url}{path}"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

async fn chat(body: Value) -> (u16, Value) {
    post(shared(), "/v1/chat/completions", &body).await
}

fn ask(text: &str, extra: Value) -> Value {
    // SmolLM2's template puts a long persona prompt in when there is no system message, and
    // the 135M model answers poorly under it (see `conclave ask`'s DEFAULT_SYSTEM).
    let mut v = json!({"model": MODEL, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text}]});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// Asserts OpenAI's error shape and returns the error object.
fn error(status: u16, v: &Value, want: u16) -> Value {
    assert_eq!(status, want, "{v}");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    for k in ["param", "code"] {
        assert!(e.get(k).is_some(), "error without `{k}`: {v}");
    }
    e.clone()
}

/// The `data:` payloads of an SSE body, checking the framing on the way.
fn events(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "{body:?}");
    body.trim_end_matches("\n\n")
        .split("\n\n")
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .to_string()
        })
        .collect()
}

async fn stream(url: &str, path: &str, body: &Value) -> (reqwest::header::HeaderMap, Vec<String>) {
    let r = client()
        .post(format!("{url}{path}"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    (headers, events(&r.text().await.unwrap()))
}

/// A greedy streamed story, open after its first chunk: a request that keeps its slot.
async fn open_story(url: &str, max_tokens: usize) -> reqwest::Response {
    let mut req = ask(
        "Write a long story about a dragon.",
        json!({"temperature": 0, "max_tokens": max_tokens}),
    );
    req["stream"] = json!(true);
    let mut r = client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.chunk().await.unwrap().expect("a first chunk");
    r
}

#[tokio::test]
async fn chat_completion_has_the_openai_shape_and_is_repeatable() {
    let req = ask(
        "What is the capital of France? Answer in one sentence.",
        json!({"temperature": 0, "max_tokens": 12}),
    );
    let (status, v) = chat(req.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let c = &v["choices"][0];
    assert_eq!(
        (c["index"].clone(), c["message"]["role"].clone()),
        (json!(0), json!("assistant"))
    );
    let text = c["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{v}");
    assert!(["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()));
    let u = &v["usage"];
    let (p, n) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 5 && (1..=12).contains(&n), "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + n);
    // Greedy decoding gives the same answer again.
    let (_, again) = chat(req).await;
    assert_eq!(
        again["choices"][0]["message"]["content"],
        c["message"]["content"]
    );
}

#[tokio::test]
async fn text_completions_continue_a_raw_prompt() {
    let body = json!({"model": MODEL, "prompt": "One, two, three,", "max_tokens": 6,
                      "temperature": 0, "stop": ["\n"]});
    let (status, v) = post(shared(), "/v1/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(!text.is_empty() && !text.contains('\n'), "{v}");
    let (status, v) = post(
        shared(),
        "/v1/completions",
        &json!({"model": MODEL, "prompt": ["a", "b"]}),
    )
    .await;
    assert_eq!(error(status, &v, 400)["param"], "prompt");
}

#[tokio::test]
async fn n_choices_share_one_prefill_and_follow_the_seed() {
    let url = start_alone(options());
    let req = ask(
        "Write a random sentence.",
        json!({"n": 3, "temperature": 1.0, "seed": 11, "max_tokens": 10}),
    );
    let prefills = common::metric(&url, KEY, "conclave_prefills_total").await;
    let (status, v) = post(&url, "/v1/chat/completions", &req).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        common::metric(&url, KEY, "conclave_prefills_total").await,
        prefills + 1.0,
        "three choices, one prefill"
    );
    let choices = v["choices"].as_array().unwrap();
    let idx: Vec<u64> = choices
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2]);
    let texts = |v: &Value| -> Vec<String> {
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["message"]["content"].as_str().unwrap().to_string())
            .collect()
    };
    let first = texts(&v);
    let distinct: std::collections::HashSet<&String> = first.iter().collect();
    assert!(
        distinct.len() > 1,
        "three samples at T=1 all alike: {first:?}"
    );
    let (_, again) = post(&url, "/v1/chat/completions", &req).await;
    assert_eq!(texts(&again), first, "the same seed gives the same choices");
}

#[tokio::test]
async fn streaming_is_framed_as_openai_and_matches_the_whole_answer() {
    let extra = json!({"n": 2, "temperature": 0.9, "seed": 3, "max_tokens": 10});
    let (_, whole) = chat(ask("Say something about cats.", extra.clone())).await;
    let mut req = ask("Say something about cats.", extra);
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let (headers, ev) = stream(shared(), "/v1/chat/completions", &req).await;
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]), "the usage chunk comes last");
    assert_eq!(
        usage["usage"]["prompt_tokens"],
        whole["usage"]["prompt_tokens"]
    );
    assert_eq!(
        usage["usage"]["completion_tokens"],
        whole["usage"]["completion_tokens"]
    );
    for i in 0..2 {
        let mine: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .collect();
        assert!(mine
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
        assert_eq!(
            mine[0]["choices"][0]["delta"]["role"], "assistant",
            "first chunk has the role"
        );
        let last = mine.last().unwrap();
        assert_eq!(
            last["choices"][0]["finish_reason"],
            whole["choices"][i]["finish_reason"]
        );
        assert!(mine[..mine.len() - 1]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null()));
        let text: String = mine
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(
            text,
            whole["choices"][i]["message"]["content"].as_str().unwrap(),
            "choice {i}"
        );
    }
    // Text completions stream too, without a usage chunk unless asked.
    let body =
        json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 5, "stream": true});
    let (_, ev) = stream(shared(), "/v1/completions", &body).await;
    let last: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(
        (ev.last().unwrap().as_str(), last["object"].as_str()),
        ("[DONE]", Some("text_completion"))
    );
    assert!(last["choices"][0]["finish_reason"].is_string());
}

#[tokio::test]
async fn every_error_has_the_openai_shape_and_status() {
    let url = shared();
    let c = client();
    let chat_url = format!("{url}/v1/chat/completions");
    let good = ask("hi", json!({"max_tokens": 2}));
    // 401: no key, a wrong key.
    for key in [None, Some("sk-wrong")] {
        let mut r = c.post(&chat_url).json(&good);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let e = error(status, &r.json().await.unwrap(), 401);
        assert_eq!(e["code"], "invalid_api_key");
    }
    let r = c.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401, "metrics need the key too");
    let r = c.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200, "health needs no key");
    // 404: an unknown model, an unknown ensemble, an unknown endpoint.
    let (s, v) =
        chat(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})).await;
    let e = error(s, &v, 404);
    assert_eq!(
        (e["code"].as_str(), e["param"].as_str()),
        (Some("model_not_found"), Some("model"))
    );
    let (s, v) =
        chat(json!({"model": "conclave/nope", "messages": [{"role": "user", "content": "hi"}]}))
            .await;
    assert!(
        error(s, &v, 404)["message"]
            .as_str()
            .unwrap()
            .contains("conclave/tiny"),
        "{v}"
    );
    let (s, v) = post(url, "/v1/embeddings", &json!({})).await;
    error(s, &v, 404);
    // 400: bad JSON, a missing field, out-of-range values, unsupported roles and features.
    let r = c
        .post(&chat_url)
        .bearer_auth(KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    error(status, &r.json().await.unwrap(), 400);
    let (s, v) = chat(json!({"model": MODEL})).await;
    assert!(
        error(s, &v, 400)["message"]
            .as_str()
            .unwrap()
            .contains("messages"),
        "{v}"
    );
    for (extra, param) in [
        (json!({"temperature": 5}), "temperature"),
        (json!({"n": 0}), "n"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"tools": [{"type": "function"}]}), "tools"),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "messages[0]",
        ),
        (json!({"messages": []}), "messages"),
    ] {
        let (s, v) = chat(ask("hi", extra.clone())).await;
        assert_eq!(error(s, &v, 400)["param"], param, "{extra}");
    }
    let (s, v) = chat(
        json!({"model": "conclave/tiny", "n": 2, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(error(s, &v, 400)["param"], "n");
    // 400: a prompt over the context (8192 tokens), whole or streamed.
    let long = "hello ".repeat(9000);
    let (s, v) = chat(ask(&long, json!({"max_tokens": 2}))).await;
    let e = error(s, &v, 400);
    assert_eq!(e["code"], "context_length_exceeded");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("shorten the prompt"),
        "{e}"
    );
    let (s, v) = chat(ask(&long, json!({"max_tokens": 2, "stream": true}))).await;
    assert_eq!(error(s, &v, 400)["code"], "context_length_exceeded");
    // 400: tool use on a server started without --allow-tools, by strategy or by member.
    for ensemble in [
        json!({"strategy": "refine"}),
        json!({"members": [{"model": MODEL, "tools": ["calculator"]}]}),
    ] {
        let (s, v) = chat(json!({"model": "conclave/tiny", "ensemble": ensemble,
                                 "messages": [{"role": "user", "content": "hi"}]}))
        .await;
        let e = error(s, &v, 400);
        assert!(
            e["message"].as_str().unwrap().contains("--allow-tools"),
            "{e}"
        );
    }
    // 413: a body over the limit (256 KiB here).
    let (s, v) = chat(ask(&"x".repeat(300 * 1024), json!({}))).await;
    error(s, &v, 413);
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let url = start(Options {
        max_queue: 1,
        ..options()
    });
    // Greedy, this prompt runs far past 200 tokens, so the first request holds the one slot
    // while the second arrives.
    let mut first = open_story(&url, 200).await;
    let r = client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&ask("hi", json!({"max_tokens": 2})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let e = error(429, &r.json().await.unwrap(), 429);
    assert_eq!(e["code"], "rate_limit_exceeded");
    // Once the first stream ends, its slot is free again.
    while first.chunk().await.unwrap().is_some() {}
    let (s, v) = post(
        &url,
        "/v1/chat/completions",
        &ask("hi", json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn ensembles_answer_with_their_trace() {
    // A served config file, and a preset whose agents the request replaces inline.
    let q = "What is 2 + 3? Give the answer as a number.";
    let (s, v) = chat(
        json!({"model": "conclave/tiny", "messages": [{"role": "user", "content": q}], "seed": 4}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let t = &v["conclave"];
    assert_eq!(t["agents"].as_array().unwrap().len(), 2);
    assert_eq!(t["strategy"], "vote");
    assert_eq!(v["choices"][0]["message"]["content"], t["text"]);
    assert_eq!(
        v["usage"]["completion_tokens"],
        t["usage"]["completion_tokens"]
    );
    for a in t["agents"].as_array().unwrap() {
        assert!(
            a["tokens"].as_u64().unwrap() <= 16,
            "the file's max_tokens holds: {a}"
        );
    }
    let inline = json!({"strategy": "medoid", "max_tokens": 12,
                        "members": [{"model": MODEL, "role": "concise", "temperature": 0.8, "count": 3}]});
    let body = json!({"model": "conclave/tiny", "messages": [{"role": "user", "content": q}],
                      "ensemble": inline, "stream": true, "stream_options": {"include_usage": true}});
    let (_, ev) = stream(shared(), "/v1/chat/completions", &body).await;
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish = chunks
        .iter()
        .find(|c| c["choices"][0]["finish_reason"].is_string())
        .unwrap();
    let t = &finish["conclave"];
    assert_eq!(
        (
            t["strategy"].as_str(),
            t["agents"].as_array().unwrap().len()
        ),
        (Some("medoid"), 3)
    );
    assert!(t["agents"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["role"] == "concise"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], t["text"]);
    // /v1/models lists the served model and the ensembles, and nothing that is not served.
    let r = client()
        .get(format!("{}/v1/models", shared()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let m: Value = r.json().await.unwrap();
    let ids: Vec<&str> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    for want in [MODEL, "conclave/tiny"] {
        assert!(ids.contains(&want), "{ids:?}");
    }
    for preset in ["conclave/vote8", "conclave/mixed"] {
        assert!(
            !ids.contains(&preset),
            "{preset} needs models not served: {ids:?}"
        );
    }
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_generation() {
    let url = &start_alone(options());
    let before = common::metric(url, KEY, "conclave_jobs_cancelled_total").await;
    drop(open_story(url, 2000).await);
    // The engine drops the job before its next step; wait for it, boundedly.
    let mut after = before;
    for _ in 0..600 {
        after = common::metric(url, KEY, "conclave_jobs_cancelled_total").await;
        if after > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(after > before, "the cancelled-jobs metric did not rise");
    assert_eq!(after, before + 1.0, "one job cancelled, no other");
    let (s, v) = post(
        url,
        "/v1/chat/completions",
        &ask("hi", json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(s, 200, "the server still serves: {v}");
    let completed = common::metric(
        url,
        KEY,
        "conclave_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}",
    )
    .await;
    // The story's head went out as 200 before its client left, then the short answer.
    assert_eq!(completed, 2.0);
}

/// 24 clients × 4 requests against a queue of 8: every request answered 200 or 429, none
/// lost or hung. (Its speed, and n = 8 against 8 requests, are in benches/server.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_check_every_request_is_answered_or_refused() {
    let url = start(Options {
        max_queue: 8,
        ..options()
    });
    let mut clients = Vec::new();
    for c in 0..24 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..4 {
                let body = ask(
                    &format!("Say a word about the number {}.", c * 4 + i),
                    json!({"max_tokens": 8}),
                );
                let r = client()
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(KEY)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let retry = r.headers().get("retry-after").is_some();
                let v: Value = r.json().await.unwrap();
                out.push((status, retry, v));
            }
            out
        }));
    }
    let mut results = Vec::new();
    for c in clients {
        results.extend(c.await.unwrap());
    }
    assert_eq!(results.len(), 96);
    let mut answered = 0;
    for (status, retry, v) in &results {
        match status {
            200 => {
                assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
                answered += 1;
            }
            429 => assert!(retry, "a 429 without Retry-After"),
            s => panic!("unexpected status {s}: {v}"),
        }
    }
    assert!(
        answered >= 8,
        "at least a queue's worth is answered: {answered} of 96"
    );
}

/// A `conclave serve` process on a free loopback port, killed when dropped.
struct Process {
    child: Child,
    url: String,
    /// Its stderr lines after the one that says where it listens.
    log: std::sync::mpsc::Receiver<String>,
}

impl Process {
    fn start(args: &[&str]) -> Self {
        common::model_path(MODEL);
        let mut child = Command::new(env!("CARGO_BIN_EXE_conclave"))
            .args(["serve", "--port", "0", "--models", MODEL])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("the server exited before listening")
                .unwrap();
            if let Some(u) = line.strip_prefix("conclave serve: listening on ") {
                break u.to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, url, log }
    }

    /// Waits (boundedly) for a stderr line that contains `text`.
    fn wait_for_line(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(text) => return,
                Ok(_) => {}
                Err(e) => panic!("no line with {text:?} from the server: {e}"),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigterm_lets_the_stream_in_flight_finish_then_exits() {
    let mut p = Process::start(&[]);
    let mut req = ask(
        "Count from one to twenty.",
        json!({"temperature": 0, "max_tokens": 40}),
    );
    req["stream"] = json!(true);
    let mut r = client()
        .post(format!("{}/v1/chat/completions", p.url))
        .json(&req)
        .send()
        .await
        .unwrap();
    let mut body = String::from_utf8(r.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    p.signal("-TERM");
    while let Some(c) = r.chunk().await.unwrap() {
        body.push_str(std::str::from_utf8(&c).unwrap());
    }
    let ev = events(&body);
    assert_eq!(ev.last().unwrap(), "[DONE]", "the stream in flight was cut");
    let status = p.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        client()
            .get(format!("{}/health", p.url))
            .send()
            .await
            .is_err(),
        "still listening"
    );
}

/// SIGINT: the server stops taking connections at once, while the stream in flight goes on
/// to its end; then the process exits 0.
#[tokio::test]
async fn sigint_drains_the_request_in_flight_and_refuses_new_ones() {
    let mut p = Process::start(&[]);
    let mut r = open_story(&p.url, 120).await;
    p.signal("-INT");
    p.wait_for_line("shutting down");
    // A new connection is refused once the server has stopped accepting (a fresh client, so
    // no pooled connection is reused).
    let mut refused = false;
    for _ in 0..100 {
        let fresh = reqwest::Client::builder().build().unwrap();
        if fresh.get(format!("{}/health", p.url)).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "a new request was still served after SIGINT");
    // The story in flight still streams, past the moment new requests were refused.
    let mut body = String::new();
    while let Some(c) = r.chunk().await.unwrap() {
        body.push_str(std::str::from_utf8(&c).unwrap());
    }
    let ev = events(&body);
    assert_eq!(ev.last().unwrap(), "[DONE]", "the stream in flight was cut");
    assert!(ev.len() > 2, "no tokens came after SIGINT: {ev:?}");
    let status = p.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// A request that runs past --request-timeout is answered 504, in OpenAI's error shape, and
/// the server goes on serving.
#[tokio::test]
async fn a_request_past_the_timeout_is_answered_504() {
    let p = Process::start(&["--request-timeout", "0.2"]);
    let story = ask(
        "Write a long story about a dragon.",
        json!({"temperature": 0, "max_tokens": 2000}),
    );
    let (s, v) = post(&p.url, "/v1/chat/completions", &story).await;
    let e = error(s, &v, 504);
    assert!(
        e["message"].as_str().unwrap().contains("--request-timeout"),
        "{e}"
    );
    let r = client()
        .get(format!("{}/health", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// --insecure lets a server listen on every interface without a key, and it then serves
/// requests that carry none.
#[tokio::test]
async fn insecure_serves_a_public_address_without_a_key() {
    let p = Process::start(&["--host", "0.0.0.0", "--insecure"]);
    let port = p.url.rsplit(':').next().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let r = client()
        .post(format!("{url}/v1/chat/completions"))
        .json(&ask("hi", json!({"max_tokens": 2})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[test]
fn a_public_address_needs_a_key_or_insecure() {
    let out = Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(["serve", "--host", "0.0.0.0", "--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--api-key") && err.contains("--insecure"),
        "{err}"
    );
}

/// An ensemble whose members run on a second server process, one with a wrong key and one
/// at a dead address: the failures are dropped from the vote and reported, and the ensemble
/// still answers.
#[test]
fn remote_members_answer_and_failed_ones_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "sk-remote\n").unwrap();
    let p = Process::start(&["--api-key-file", key_file.to_str().unwrap()]);
    std::env::set_var("CONCLAVE_TEST_REMOTE_KEY", "sk-remote");
    std::env::set_var("CONCLAVE_TEST_WRONG_KEY", "sk-wrong");
    let text = format!(
        r#"
strategy = "vote"
answer = "number"
max_tokens = 24
[[member]]
model = "{MODEL}"
role = "solver"
[[member]]
remote = {{ url = "{url}/v1", model = "{MODEL}", api_key_env = "CONCLAVE_TEST_REMOTE_KEY" }}
role = "solver"
count = 2
[[member]]
remote = {{ url = "{url}/v1", model = "{MODEL}", api_key_env = "CONCLAVE_TEST_WRONG_KEY" }}
role = "skeptic"
[[member]]
remote = {{ url = "http://127.0.0.1:9/v1", model = "{MODEL}", retries = 1, timeout_s = 5 }}
role = "concise"
"#,
        url = p.url
    );
    let ens = Ensemble::from_toml(&text, Path::new(".")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = rt.block_on(async {
        Runner::new(engine())
            .run(&ens, "What is 6 + 7?")
            .await
            .unwrap()
    });
    assert_eq!(t.agents.len(), 5);
    let remote_ok = &t.agents[1..3];
    for a in remote_ok {
        assert_eq!(a.remote.as_deref(), Some(format!("{}/v1", p.url).as_str()));
        assert!(
            a.error.is_none() && !a.text.is_empty() && a.tokens > 0,
            "{a:?}"
        );
    }
    assert_ne!(
        remote_ok[0].text, remote_ok[1].text,
        "each remote agent has its own seed"
    );
    let wrong_key = &t.agents[3];
    let e = wrong_key.error.as_deref().unwrap();
    assert!(
        e.contains("401") && !e.contains("attempts"),
        "a 401 is not retried: {e}"
    );
    let dead = &t.agents[4];
    let e = dead.error.as_deref().unwrap();
    assert!(
        e.contains("127.0.0.1:9") && e.contains("after 2 attempts"),
        "{e}"
    );
    for a in [wrong_key, dead] {
        assert!(a.extracted.is_none() && a.text.is_empty());
    }
    assert_eq!(
        t.notes
            .iter()
            .filter(|n| n.contains("left out of the vote"))
            .count(),
        2,
        "{:?}",
        t.notes
    );
    let counted: f64 = t.votes.values().sum();
    let voters = t.agents.iter().filter(|a| a.extracted.is_some()).count();
    assert_eq!(counted as usize, voters);
    assert!(voters <= 3 && t.answer.is_some(), "{t:?}");
}

/// A stand-in for another OpenAI-compatible server, on loopback: each request to it is
/// answered by the next of `replies` (the last one repeats), and the time it came is kept.
/// A reply is (seconds to wait first, HTTP status, body).
struct FakeServer {
    url: String,
    arrivals: std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl FakeServer {
    fn start(replies: Vec<(f64, u16, String)>) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = arrivals.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                // Read the head, then the body its Content-Length announces.
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                let (head_end, length) = loop {
                    let n = stream.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break (0, 0);
                    }
                    data.extend_from_slice(&buf[..n]);
                    if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..i]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        break (i + 4, length);
                    }
                };
                while data.len() < head_end + length {
                    let n = stream.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    data.extend_from_slice(&buf[..n]);
                }
                let k = {
                    let mut a = seen.lock().unwrap();
                    a.push(Instant::now());
                    a.len() - 1
                };
                let (wait, status, body) = replies[k.min(replies.len() - 1)].clone();
                // Each reply on its own thread, so a slow one does not hold up the next.
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs_f64(wait));
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Self { url, arrivals }
    }

    /// The gaps between the requests that came, in seconds.
    fn gaps(&self) -> Vec<f64> {
        let a = self.arrivals.lock().unwrap();
        a.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect()
    }
}

/// A remote member retries a timeout, a 429 and a 5xx with a growing wait between tries,
/// then takes the answer that comes; one that runs out of tries is reported.
#[test]
fn remote_members_retry_timeouts_429_and_5xx_with_backoff() {
    let answer = json!({
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "6 + 7 = 13"}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
    })
    .to_string();
    let busy =
        json!({"error": {"message": "busy", "type": "x", "param": null, "code": null}}).to_string();
    // Too slow for the member's 0.5 s timeout, then 429, then 503, then the answer.
    let flaky = FakeServer::start(vec![
        (3.0, 200, answer.clone()),
        (0.0, 429, busy.clone()),
        (0.0, 503, busy.clone()),
        (0.0, 200, answer.clone()),
    ]);
    let down = FakeServer::start(vec![(0.0, 500, busy.clone())]);
    let text = format!(
        r#"
strategy = "vote"
answer = "number"
max_tokens = 8
[[member]]
remote = {{ url = "{flaky}", model = "m", retries = 3, timeout_s = 0.5 }}
role = "solver"
[[member]]
remote = {{ url = "{down}", model = "m", retries = 2, timeout_s = 5 }}
role = "skeptic"
"#,
        flaky = flaky.url,
        down = down.url
    );
    let ens = Ensemble::from_toml(&text, Path::new(".")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = rt.block_on(async {
        Runner::new(Engine::start())
            .run(&ens, "What is 6 + 7?")
            .await
    });
    let t = t.unwrap();
    let ok = &t.agents[0];
    assert!(ok.error.is_none(), "{ok:?}");
    assert_eq!((ok.text.as_str(), ok.tokens), ("6 + 7 = 13", 5));
    assert_eq!(t.answer.as_deref(), Some("13"), "{t:?}");
    let gaps = flaky.gaps();
    assert_eq!(gaps.len(), 3, "four tries: {gaps:?}");
    // The first try waits out its timeout, then 250 ms; each later wait is twice the last.
    // Arrivals are stamped by the server, a little after the client's clock starts: 50 ms of
    // slack, far below the doubling this checks.
    let slack = 0.05;
    assert!(gaps[0] >= 0.5 + 0.25 - slack, "{gaps:?}");
    assert!(
        gaps[1] >= 0.5 - slack && gaps[2] >= 1.0 - slack,
        "no growing backoff: {gaps:?}"
    );
    let failed = &t.agents[1];
    let e = failed.error.as_deref().unwrap();
    assert!(e.contains("500") && e.contains("after 3 attempts"), "{e}");
    assert_eq!(down.gaps().len(), 2, "three tries in all");
}

/// The official `openai` Python package against this server (tests/openai_client.py).
#[test]
fn the_openai_python_client_works() {
    let url = shared().to_string();
    let busy = start(Options {
        max_queue: 1,
        ..options()
    });
    let text = common::run_python(
        "openai_client.py",
        &[
            ("CONCLAVE_URL", format!("{url}/v1")),
            ("CONCLAVE_BUSY_URL", format!("{busy}/v1")),
            ("CONCLAVE_KEY", KEY.to_string()),
            ("CONCLAVE_METRICS_URL", format!("{url}/metrics")),
        ],
    );
    assert!(text.contains(" passed, 0 failed"), "{text}");
}
