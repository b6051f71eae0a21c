//! `logprobs` / `top_logprobs` through `conclave serve` on smollm2-135m: OpenAI's chat shape
//! and the legacy completions shape, whole and streamed, and the bad-input 400s.
mod common;
use conclave::server::Options;
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Duration;

const MODEL: &str = "smollm2-135m";

/// One server in this process for every test, on a free loopback port.
fn url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        common::serve(Options {
            models: vec![MODEL.into()],
            ..Options::default()
        })
    })
}

/// POSTs `body`; the status and the JSON answer, or for a stream every data event but
/// `[DONE]`.
async fn post(path: &str, body: &Value) -> (u16, Vec<Value>) {
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(600)) // a hang guard, not a speed check
        .build()
        .unwrap()
        .post(format!("{}{path}", url()))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let events = if body["stream"] == true && status == 200 {
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    } else {
        vec![serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))]
    };
    (status, events)
}

fn chat(extra: Value) -> Value {
    let mut v = json!({"model": MODEL, "max_tokens": 24, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Name three colours of the rainbow."}]});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test]
async fn greedy_chat_logprobs_are_the_top_of_a_sorted_list_and_spell_the_content() {
    let (status, r) = post(
        "/v1/chat/completions",
        &chat(json!({"temperature": 0, "logprobs": true, "top_logprobs": 5})),
    )
    .await;
    assert_eq!(status, 200, "{}", r[0]);
    let choice = &r[0]["choices"][0];
    let content = choice["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty(), "{choice}");
    let mut text = String::new();
    let mut bytes = Vec::new();
    for t in content {
        let lp = f(&t["logprob"]);
        assert!(lp <= 0.0, "{t}");
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 5, "{t}");
        let tops: Vec<f64> = top.iter().map(|a| f(&a["logprob"])).collect();
        assert!(tops.windows(2).all(|w| w[0] >= w[1]), "not sorted: {t}");
        // Greedy: the sampled token is the most likely one, with the largest log-probability.
        assert_eq!((&top[0]["token"], tops[0]), (&t["token"], lp), "{t}");
        assert!(tops.iter().all(|&x| x <= lp && x <= 0.0), "{t}");
        text.push_str(t["token"].as_str().unwrap());
        bytes.extend(
            t["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
    }
    let answer = choice["message"]["content"].as_str().unwrap();
    assert_eq!(text, answer);
    assert_eq!(bytes, answer.as_bytes());
    // Not asked for: null, as OpenAI answers.
    let (_, r) = post("/v1/chat/completions", &chat(json!({"temperature": 0}))).await;
    assert_eq!(r[0]["choices"][0]["logprobs"], Value::Null);
}

#[tokio::test]
async fn streamed_logprobs_equal_the_whole_ones_for_the_same_seed() {
    let body = chat(json!({"temperature": 1.0, "seed": 11, "n": 2,
                           "logprobs": true, "top_logprobs": 3}));
    let (status, whole) = post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{}", whole[0]);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, chunks) = post("/v1/chat/completions", &streamed).await;
    assert_eq!(status, 200);
    let choices = whole[0]["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, choice) in choices.iter().enumerate() {
        let mut got = Vec::new();
        let mut text = String::new();
        for c in &chunks {
            let Some(ch) = c["choices"].as_array().and_then(|a| a.first()) else {
                continue;
            };
            if ch["index"] != i {
                continue;
            }
            text.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
            if let Some(lps) = ch["logprobs"]["content"].as_array() {
                got.extend(lps.iter().cloned());
            }
        }
        assert!(!got.is_empty(), "choice {i} streamed no logprobs");
        assert_eq!(
            Value::from(got),
            choice["logprobs"]["content"],
            "choice {i}"
        );
        assert_eq!(text, choice["message"]["content"]);
    }
}

#[tokio::test]
async fn completions_answer_the_legacy_shape_whole_and_streamed() {
    let body = json!({"model": MODEL, "prompt": "The capital of France is",
                      "max_tokens": 12, "temperature": 0, "logprobs": 3});
    let (status, r) = post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{}", r[0]);
    let choice = &r[0]["choices"][0];
    let lp = &choice["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), choice["text"].as_str().unwrap());
    let mut offset = 0;
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(lp["text_offset"][i], offset, "{lp}");
        offset += t.chars().count();
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!((1..=3).contains(&top.len()), "{lp}");
        let best = top.values().map(f).fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(f(&lp["token_logprobs"][i]), best, "{lp}");
        assert_eq!(f(&top[*t]), best, "{lp}");
    }
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (_, chunks) = post("/v1/completions", &streamed).await;
    let mut merged = json!({"tokens": [], "token_logprobs": [], "top_logprobs": [],
                            "text_offset": []});
    for c in &chunks {
        let Some(l) = c["choices"][0]["logprobs"].as_object() else {
            continue;
        };
        for (k, v) in l {
            merged[k]
                .as_array_mut()
                .unwrap()
                .extend(v.as_array().unwrap().iter().cloned());
        }
    }
    assert_eq!(&merged, lp);
}

#[tokio::test]
async fn bad_logprobs_requests_are_400_naming_the_param() {
    let cases = [
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": -1})),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"top_logprobs": 2})),
            "top_logprobs",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "Hi", "logprobs": 21}),
            "logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"model": "conclave/vote8", "logprobs": true})),
            "logprobs",
        ),
    ];
    for (path, body, param) in cases {
        let (status, r) = post(path, &body).await;
        assert_eq!(status, 400, "{body}: {}", r[0]);
        let e = &r[0]["error"];
        assert_eq!(
            (&e["type"], &e["param"]),
            (&json!("invalid_request_error"), &json!(param)),
            "{body}: {e}"
        );
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
}
