//! OpenTelemetry export, read back from a real OTLP receiver: Arize Phoenix (in its own venv,
//! `common::python_with_phoenix`) started once on free ports. `conclave` runs as a child
//! process with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at it, on smollm2-135m; the span trees
//! read back through Phoenix's REST API (`GET /v1/projects/{project}/spans`, arize-phoenix
//! 20.26) must match what conclave wrote itself: names, parent links, the decision's
//! attributes and every agent's and ensemble's tokens.
mod common;

use common::{model_path, python_with_phoenix};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Phoenix's project for these spans (its `openinference.project.name` resource attribute).
const PROJECT: &str = "conclave-otel-test";

const INNER: &str = "name = \"inner\"\nstrategy = \"vote\"\nanswer = \"number\"\n\
    max_tokens = 24\nseed = 3\n[[member]]\nmodel = \"smollm2-135m\"\nrole = \"concise\"\n\
    temperature = 0.9\ncount = 2\n";

/// An ensemble whose third member is the ensemble `inner`.
const OUTER: &str = "name = \"outer\"\nstrategy = \"vote\"\nanswer = \"number\"\n\
    max_tokens = 24\nseed = 1\n[[member]]\nmodel = \"smollm2-135m\"\nrole = \"step-by-step\"\n\
    temperature = 0.7\ncount = 2\n[[member]]\nensemble = \"inner.toml\"\n";

/// Code answers checked in the sandbox.
const EXEC: &str = "name = \"exec\"\nstrategy = \"exec-vote\"\nanswer = \"code\"\n\
    max_tokens = 64\n[[member]]\nmodel = \"smollm2-135m\"\nrole = \"programmer\"\n\
    temperature = 0.8\ncount = 2\ntools = [\"python\"]\n";

struct Phoenix {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Drop for Phoenix {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Phoenix {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("phoenix.log")).unwrap_or_default()
    }

    /// Every span of the project, oldest first.
    fn spans(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/projects/{PROJECT}/spans?limit=1000", self.url);
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let Some((200, page)) = get(&url) else {
                return out; // no project before its first span
            };
            out.extend(page["data"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        out.reverse();
        out
    }

    /// The spans of the trace whose root (or whose span under `parent_id`) is named `name`,
    /// once Phoenix has stored them all (its count stops growing).
    fn trace_of(&self, name: &str, parent_id: Option<&str>) -> Vec<Value> {
        let start = Instant::now();
        let mut last = 0;
        loop {
            let spans = self.spans();
            let root = spans
                .iter()
                .find(|s| s["name"] == name && s["parent_id"].as_str() == parent_id);
            if let Some(root) = root {
                let id = root["context"]["trace_id"].clone();
                let trace: Vec<Value> = spans
                    .into_iter()
                    .filter(|s| s["context"]["trace_id"] == id)
                    .collect();
                if trace.len() == last {
                    return trace;
                }
                last = trace.len();
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "no span `{name}` under {parent_id:?} reached Phoenix; it has {} spans\n{}",
                self.spans().len(),
                self.log()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// GET `url`: the status and the body as JSON (Null if it is not), or None if unreachable.
fn get(url: &str) -> Option<(u16, Value)> {
    runtime().block_on(async {
        let r = reqwest::get(url).await.ok()?;
        let status = r.status().as_u16();
        let text = r.text().await.ok()?;
        Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    })
}

/// `phoenix serve` on free loopback ports, its database in a temp dir; waits until it answers.
fn phoenix() -> Phoenix {
    let python = python_with_phoenix();
    let dir = tempfile::tempdir().unwrap();
    let (http, grpc) = (free_port(), free_port());
    let log = std::fs::File::create(dir.path().join("phoenix.log")).unwrap();
    let child = Command::new(python.with_file_name("phoenix"))
        .arg("serve")
        .current_dir(dir.path())
        .env("PHOENIX_WORKING_DIR", dir.path())
        .env("PHOENIX_HOST", "127.0.0.1")
        .env("PHOENIX_PORT", http.to_string())
        .env("PHOENIX_GRPC_PORT", grpc.to_string())
        // Offline: nothing fetched from the network, nothing reported home.
        .env("PHOENIX_ALLOW_EXTERNAL_RESOURCES", "false")
        .env("PHOENIX_TELEMETRY_ENABLED", "false")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut p = Phoenix {
        child,
        url: format!("http://127.0.0.1:{http}"),
        dir,
    };
    let start = Instant::now();
    while get(&format!("{}/healthz", p.url)).is_none_or(|(s, _)| s != 200) {
        if let Some(status) = p.child.try_wait().unwrap() {
            panic!("phoenix serve exited ({status}):\n{}", p.log());
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "Phoenix did not answer in 5 minutes:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    p
}

/// `conclave` exporting to `p`, with the batch exporter's delay short (the export at exit
/// is what the test relies on; the short delay serves the server).
fn conclave(p: &Phoenix) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_conclave"));
    c.env("OTEL_EXPORTER_OTLP_ENDPOINT", &p.url)
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("openinference.project.name={PROJECT}"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME");
    c
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{c:?} failed:\n{err}");
    String::from_utf8(out.stdout).unwrap()
}

/// A span tree: the spans of one trace by span id, and the children of each.
struct Tree<'a> {
    children: HashMap<&'a str, Vec<&'a Value>>,
}

impl<'a> Tree<'a> {
    fn new(spans: &'a [Value]) -> Self {
        let mut children: HashMap<&str, Vec<&Value>> = HashMap::new();
        for s in spans {
            if let Some(p) = s["parent_id"].as_str() {
                children.entry(p).or_default().push(s);
            }
        }
        Tree { children }
    }

    fn children(&self, s: &Value) -> Vec<&'a Value> {
        let id = s["context"]["span_id"].as_str().unwrap();
        self.children.get(id).cloned().unwrap_or_default()
    }
}

fn attr<'v>(s: &'v Value, key: &str) -> &'v Value {
    &s["attributes"][key]
}

fn close(a: &Value, b: &Value) -> bool {
    (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-6
}

/// Checks the span of an ensemble run, its agents' spans (and their `chat` spans) and its
/// nested ensembles' against the run's trace `t`; returns the span's children that are
/// neither agents nor nested ensembles.
fn check_ensemble<'a>(tree: &Tree<'a>, span: &'a Value, t: &Value) -> Vec<&'a Value> {
    let name = t["name"].as_str().unwrap();
    let what = format!("ensemble {name}: {span:#}");
    assert_eq!(span["name"], format!("invoke_agent {name}"), "{what}");
    assert_eq!(
        attr(span, "gen_ai.operation.name"),
        "invoke_agent",
        "{what}"
    );
    assert_eq!(attr(span, "gen_ai.agent.name"), name, "{what}");
    assert_eq!(attr(span, "conclave.kind"), "ensemble", "{what}");
    assert_eq!(attr(span, "conclave.strategy"), &t["strategy"], "{what}");
    let votes: Value =
        serde_json::from_str(attr(span, "conclave.votes").as_str().expect(&what)).unwrap();
    assert_eq!(votes, t["votes"], "{what}");
    assert!(
        close(attr(span, "conclave.agreement"), &t["agreement"]),
        "{what}"
    );
    if !t["winner"].is_null() {
        assert_eq!(attr(span, "conclave.winner"), &t["winner"], "{what}");
    }
    if !t["answer"].is_null() {
        assert_eq!(attr(span, "conclave.answer"), &t["answer"], "{what}");
    }
    let usage = &t["usage"];
    assert_eq!(
        attr(span, "gen_ai.usage.output_tokens"),
        &usage["completion_tokens"],
        "{what}"
    );
    assert_eq!(
        attr(span, "gen_ai.usage.input_tokens"),
        &usage["prompt_tokens"],
        "{what}"
    );

    let children = tree.children(span);
    let kind = |s: &&Value, k: &str| attr(s, "conclave.kind") == k;
    let agent_spans: Vec<&Value> = children
        .iter()
        .copied()
        .filter(|s| kind(s, "agent"))
        .collect();
    let nested_spans: Vec<&Value> = children
        .iter()
        .copied()
        .filter(|s| kind(s, "ensemble"))
        .collect();
    let (nested, flat): (Vec<&Value>, Vec<&Value>) = t["agents"]
        .as_array()
        .unwrap()
        .iter()
        .partition(|a| a.get("ensemble").is_some());
    assert_eq!(agent_spans.len(), flat.len(), "{what}");
    assert_eq!(nested_spans.len(), nested.len(), "{what}");
    for (i, a) in flat.iter().enumerate() {
        let s = agent_spans
            .iter()
            .find(|s| attr(s, "conclave.agent") == i)
            .unwrap_or_else(|| panic!("no span of agent {i} under {what}"));
        check_agent(tree, s, a);
    }
    for n in nested {
        let sub = &n["ensemble"];
        let s = nested_spans
            .iter()
            .find(|s| attr(s, "gen_ai.agent.name") == &sub["name"])
            .unwrap_or_else(|| panic!("no span of {} under {what}", sub["name"]));
        let rest = check_ensemble(tree, s, sub);
        assert!(rest.is_empty(), "{rest:#?}");
    }
    children
        .into_iter()
        .filter(|s| !kind(s, "agent") && !kind(s, "ensemble"))
        .collect()
}

/// An agent's span against its part of the trace, and its one `chat` span.
fn check_agent(tree: &Tree, s: &Value, a: &Value) {
    let what = format!("agent {a:#}\nspan {s:#}");
    assert_eq!(
        s["name"],
        format!("invoke_agent {}", a["role"].as_str().unwrap()),
        "{what}"
    );
    assert_eq!(attr(s, "gen_ai.request.model"), &a["model"], "{what}");
    assert_eq!(attr(s, "conclave.role"), &a["role"], "{what}");
    assert!(
        close(attr(s, "gen_ai.request.temperature"), &a["temperature"]),
        "{what}"
    );
    assert_eq!(
        attr(s, "gen_ai.usage.output_tokens"),
        &a["tokens"],
        "{what}"
    );
    if !a["extracted"].is_null() {
        assert_eq!(attr(s, "conclave.extracted"), &a["extracted"], "{what}");
    }
    let chats = tree.children(s);
    assert_eq!(chats.len(), 1, "{what}\n{chats:#?}");
    let c = chats[0];
    let what = format!("{what}\nchat {c:#}");
    assert_eq!(
        c["name"],
        format!("chat {}", a["model"].as_str().unwrap()),
        "{what}"
    );
    assert_eq!(attr(c, "gen_ai.operation.name"), "chat", "{what}");
    assert_eq!(attr(c, "gen_ai.request.model"), &a["model"], "{what}");
    assert!(
        close(attr(c, "gen_ai.request.temperature"), &a["temperature"]),
        "{what}"
    );
    assert!(
        attr(c, "gen_ai.request.max_tokens").as_u64().unwrap() > 0,
        "{what}"
    );
    assert_eq!(
        attr(c, "gen_ai.usage.output_tokens"),
        &a["tokens"],
        "{what}"
    );
    assert!(
        attr(c, "gen_ai.usage.input_tokens").as_u64().unwrap() > 0,
        "{what}"
    );
    assert!(attr(c, "conclave.cached_tokens").is_u64(), "{what}");
    // OpenAI's names: an end-of-turn token or a stop string is "stop".
    let reason = match a["finish"].as_str().unwrap() {
        "length" => "length",
        "dead_end" => "dead_end",
        _ => "stop",
    };
    assert_eq!(
        attr(c, "gen_ai.response.finish_reasons"),
        &json!([reason]),
        "{what}"
    );
}

#[test]
fn spans_reach_an_otlp_receiver_as_the_trace_files_tell() {
    model_path("smollm2-135m");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("inner.toml"), INNER).unwrap();
    std::fs::write(d.join("outer.toml"), OUTER).unwrap();
    std::fs::write(d.join("exec.toml"), EXEC).unwrap();
    let p = phoenix();

    // A nested ensemble from the command line, with its trace file.
    let trace_file = d.join("outer.json");
    let mut c = conclave(&p);
    c.args(["ask", "--config"])
        .arg(d.join("outer.toml"))
        .arg("--trace")
        .arg(&trace_file)
        .arg("What is 7 + 5?");
    run_ok(c);
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&trace_file).unwrap()).unwrap();
    let spans = p.trace_of("invoke_agent outer", None);
    let tree = Tree::new(&spans);
    let root = spans.iter().find(|s| s["parent_id"].is_null()).unwrap();
    let rest = check_ensemble(&tree, root, &t);
    assert!(rest.is_empty(), "{rest:#?}");
    // Every span of the run is in the tree: 1 + 2 agents + (1 + 2 agents) nested, each
    // agent with its chat.
    assert_eq!(spans.len(), 1 + 2 * 2 + 1 + 2 * 2, "{spans:#?}");

    // exec-vote on a code item: each candidate checked in the sandbox under the ensemble.
    let out = d.join("bench");
    let mut c = conclave(&p);
    c.args([
        "bench",
        "--dataset",
        "tests/data/code_sample.jsonl",
        "--task",
        "code",
    ])
    .args(["--config", d.join("exec.toml").to_str().unwrap()])
    .args([
        "--sizes",
        "2",
        "--limit",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    run_ok(c);
    let rec: Value = common::first_sample(&out);
    let spans = p.trace_of("invoke_agent exec", None);
    let tree = Tree::new(&spans);
    let root = spans.iter().find(|s| s["parent_id"].is_null()).unwrap();
    assert_eq!(attr(root, "conclave.strategy"), "exec-vote");
    // The item's one run: its tokens are the ensemble's.
    assert_eq!(attr(root, "gen_ai.usage.output_tokens"), &rec["tokens"]);
    assert_eq!(
        attr(root, "gen_ai.usage.input_tokens"),
        &rec["prompt_tokens"]
    );
    let samples = rec["samples"].as_array().unwrap();
    let children = tree.children(root);
    // The span named `name` about agent `i`.
    let of = |name: &str, i: usize| {
        children
            .iter()
            .copied()
            .find(|s| s["name"] == name && attr(s, "conclave.agent") == i)
            .unwrap_or_else(|| panic!("no {name} span of agent {i}: {children:#?}"))
    };
    for (i, sample) in samples.iter().enumerate() {
        let agent = of("invoke_agent programmer", i);
        assert_eq!(attr(agent, "gen_ai.usage.output_tokens"), &sample["tokens"]);
        let chat = tree.children(agent);
        assert_eq!(chat.len(), 1);
        assert_eq!(
            attr(chat[0], "gen_ai.usage.output_tokens"),
            &sample["tokens"]
        );
        let check = of("execute_tool python", i);
        assert_eq!(attr(check, "gen_ai.operation.name"), "execute_tool");
        assert_eq!(attr(check, "gen_ai.tool.name"), "python");
        assert_eq!(attr(check, "conclave.passed"), &sample["check"]["passed"]);
        let runs = tree.children(check);
        assert_eq!(runs.len(), 1, "{runs:#?}");
        assert_eq!(runs[0]["name"], "sandbox python");
        assert!(attr(runs[0], "conclave.sandbox.status").is_string());
    }
    assert_eq!(children.len(), 2 * samples.len(), "{children:#?}");

    // The server continues a client's trace: its spans join the trace of `traceparent`,
    // under the client's span.
    let port = free_port();
    let mut server = conclave(&p)
        .args([
            "serve",
            "--models",
            "smollm2-135m",
            "--port",
            &port.to_string(),
        ])
        .arg("--config")
        .arg(d.join("outer.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while get(&format!("{url}/health")).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (trace_id, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let body = runtime().block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .header("traceparent", format!("00-{trace_id}-{parent}-01"))
            .json(&json!({
                "model": "conclave/outer",
                "messages": [{"role": "user", "content": "What is 2 + 2?"}],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    });
    // SIGTERM: the server shuts down gracefully and exports what is left.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert!(server.wait().unwrap().success());
    let spans = p.trace_of("POST /v1/chat/completions", Some(parent));
    let request = spans.iter().find(|s| s["parent_id"] == parent).unwrap();
    assert_eq!(request["context"]["trace_id"], trace_id);
    assert_eq!(attr(request, "http.response.status_code"), 200);
    let tree = Tree::new(&spans);
    let under = tree.children(request);
    assert_eq!(under.len(), 1, "{under:#?}");
    let rest = check_ensemble(&tree, under[0], &body["conclave"]);
    assert!(rest.is_empty(), "{rest:#?}");
}
