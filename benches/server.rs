//! `conclave serve` under load, as clients see it: requests per second and latency
//! percentiles with 24 clients against a queue of 8, and n = 8 choices in one request against
//! 8 separate requests at once (one prefill and one batch against eight jobs that join one
//! batch). It prints numbers and ratios and asserts nothing: a speed depends on the machine
//! and on what else runs there, so it is no test.
//!
//! `cargo bench --bench server`; CONCLAVE_BENCH_MODEL picks the model (default smollm2-135m).
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

const TOKENS: usize = 32;

/// A `conclave serve` process on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(model: &str) -> Self {
        let bin = env!("CARGO_BIN_EXE_conclave");
        let pulled = Command::new(bin)
            .args(["models", "pull", model])
            .status()
            .expect("running conclave models pull");
        assert!(pulled.success(), "cannot pull {model}");
        let mut child = Command::new(bin)
            .args([
                "serve",
                "--port",
                "0",
                "--max-queue",
                "8",
                "--models",
                model,
            ])
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting conclave serve");
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
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn body(model: &str, text: &str, extra: Value) -> Value {
    let mut v = json!({"model": model, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text}]});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// Posts a chat completion; returns its status and the seconds it took.
async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, f64) {
    let t = Instant::now();
    let r = client
        .post(format!("{url}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .expect("the server answers");
    let status = r.status().as_u16();
    let _ = r.bytes().await;
    (status, t.elapsed().as_secs_f64())
}

async fn load(client: &reqwest::Client, url: &str, model: &str) {
    let start = Instant::now();
    let mut clients = Vec::new();
    for c in 0..24 {
        let (client, url, model) = (client.clone(), url.to_string(), model.to_string());
        clients.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..4 {
                let text = format!("Say a word about the number {}.", c * 4 + i);
                let b = body(&model, &text, json!({"max_tokens": 8}));
                out.push(post(&client, &url, &b).await);
            }
            out
        }));
    }
    let mut answered: Vec<f64> = Vec::new();
    let mut refused = 0;
    for c in clients {
        for (status, secs) in c.await.unwrap() {
            match status {
                200 => answered.push(secs),
                _ => refused += 1,
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    answered.sort_by(f64::total_cmp);
    let pct = |p: f64| answered[((answered.len() - 1) as f64 * p).round() as usize];
    println!(
        "load: 96 requests in {wall:.2} s: {} answered ({:.2} req/s), {refused} refused; \
         latency of answered p50 {:.2} s, p95 {:.2} s",
        answered.len(),
        answered.len() as f64 / wall,
        pct(0.5),
        pct(0.95),
    );
}

async fn n8_against_8_requests(client: &reqwest::Client, url: &str, model: &str) {
    let prompt = "Write one sentence about the sea.";
    let t = Instant::now();
    let one = body(
        model,
        prompt,
        json!({"n": 8, "max_tokens": TOKENS, "seed": 1}),
    );
    assert_eq!(post(client, url, &one).await.0, 200);
    let one = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let separate: Vec<_> = (0..8)
        .map(|seed| {
            let (client, url) = (client.clone(), url.to_string());
            let b = body(model, prompt, json!({"max_tokens": TOKENS, "seed": seed}));
            tokio::spawn(async move { post(&client, &url, &b).await })
        })
        .collect();
    for h in separate {
        assert_eq!(h.await.unwrap().0, 200);
    }
    let eight = t.elapsed().as_secs_f64();
    println!(
        "n = 8 in one request: {one:.2} s; 8 separate requests at once: {eight:.2} s \
         (up to {TOKENS} tokens each); ratio separate / one {:.2}",
        eight / one
    );
}

fn main() {
    // `cargo test --benches` runs bench targets with no `--bench`; do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let model = std::env::var("CONCLAVE_BENCH_MODEL").unwrap_or_else(|_| "smollm2-135m".into());
    let server = Server::start(&model);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        // The first request loads the model.
        let warm = body(&model, "hi", json!({"max_tokens": 2}));
        assert_eq!(post(&client, &server.url, &warm).await.0, 200);
        load(&client, &server.url, &model).await;
        n8_against_8_requests(&client, &server.url, &model).await;
    });
}
