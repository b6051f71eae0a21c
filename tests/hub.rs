//! `--model hf:ORG/REPO[:QUANT|FILE]` against a fake hub on the loopback: the endpoints hf-hub
//! calls (`/api/models/{repo}/revision/main` for the file list, `/{repo}/resolve/main/{file}`
//! with the `x-repo-commit`, `x-linked-etag` and `Content-Range` headers it reads), serving the
//! smollm2 GGUF the other tests use.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const REPO: &str = "test/smollm2";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const PROMPT: &str = "The capital of France is";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Good,
    /// Serves bytes that differ from the file its ETag names.
    WrongBytes,
    /// The first download breaks off halfway through its body.
    CutOnce,
}

struct FakeHub {
    addr: String,
    stop: Arc<AtomicBool>,
    /// Each request: "PATH RANGE AUTHORIZATION".
    log: Arc<Mutex<Vec<String>>>,
}

impl FakeHub {
    fn start(mode: Mode) -> Self {
        let path = common::model_path("smollm2-135m");
        let sha = conclave::store::digest::sha256_file(&path).unwrap();
        let mut data = std::fs::read(&path).unwrap();
        if mode == Mode::WrongBytes {
            let mid = data.len() / 2;
            data[mid] ^= 0xff;
        }
        let data = Arc::new(data);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stop2, log2) = (stop.clone(), log.clone());
        std::thread::spawn(move || {
            let cut = Arc::new(AtomicBool::new(mode == Mode::CutOnce));
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (data, sha, log, cut) = (data.clone(), sha.clone(), log2.clone(), cut.clone());
                std::thread::spawn(move || serve(conn, &data, &sha, &log, &cut));
            }
        });
        Self { addr, stop, log }
    }

    /// Stops accepting: later connections are refused, as with the network gone.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr.trim_start_matches("http://"));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(mut conn: TcpStream, data: &[u8], sha: &str, log: &Mutex<Vec<String>>, cut: &AtomicBool) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut range, mut auth) = (String::new(), String::new());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = v.trim().to_string();
            } else if k.eq_ignore_ascii_case("authorization") {
                auth = v.trim().to_string();
            }
        }
    }
    log.lock().unwrap().push(format!("{path} {range} {auth}"));
    let resolve = format!("/{REPO}/resolve/main/{FILE}");
    if path == format!("/api/models/{REPO}/revision/main") || path == format!("/api/models/{REPO}")
    {
        let body = format!(
            r#"{{"sha":"{COMMIT}","siblings":[{{"rfilename":"README.md"}},{{"rfilename":"{FILE}"}},{{"rfilename":"SmolLM2-135M-Instruct.Q8_0.gguf"}}]}}"#
        );
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(body.as_bytes());
    } else if path == resolve {
        let total = data.len();
        let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
            Some((a, b)) => (
                a.parse().unwrap_or(0),
                b.parse().unwrap_or(total - 1).min(total - 1),
            ),
            None => (0, total - 1),
        };
        let body = &data[start..=end];
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{total}\r\n\
             x-repo-commit: {COMMIT}\r\nx-linked-etag: \"{sha}\"\r\nETag: \"{sha}\"\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        // A whole-body request (not hf-hub's one-byte probe) is cut once, if asked.
        let body = if body.len() > 1 && cut.swap(false, Ordering::SeqCst) {
            &body[..body.len() / 2]
        } else {
            body
        };
        let _ = conn.write_all(body);
    } else {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

/// A fresh HF_HOME for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("hub")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `conclave ask --model MODEL -t 0 -n 8 PROMPT` with the hub at `endpoint` and no HF_TOKEN:
/// (ok, stdout, stderr).
fn ask(model: &str, endpoint: &str, home: &PathBuf) -> (bool, String, String) {
    ask_with_token(model, endpoint, home, None)
}

fn ask_with_token(
    model: &str,
    endpoint: &str,
    home: &PathBuf,
    token: Option<&str>,
) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conclave"));
    cmd.args(["ask", "--model", model, "-t", "0", "-n", "8", PROMPT])
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_TOKEN");
    if let Some(token) = token {
        cmd.env("HF_TOKEN", token);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn downloads_answers_then_works_offline_from_the_cache() {
    let home = scratch("offline");
    let hub = FakeHub::start(Mode::Good);
    let (ok, catalog, err) = ask("smollm2-135m", &hub.addr, &home);
    assert!(ok, "{err}");
    let model = format!("hf:{REPO}:q4_1");
    let (ok, answer, err) = ask(&model, &hub.addr, &home);
    assert!(ok, "{err}");
    assert_eq!(answer, catalog);
    assert!(
        hub.log().iter().any(|r| r.contains("resolve")),
        "{:?}",
        hub.log()
    );
    let blob = home
        .join("hub/models--test--smollm2/snapshots")
        .join(COMMIT)
        .join(FILE);
    assert!(
        blob.is_file(),
        "not in the hf-hub cache layout: {}",
        blob.display()
    );

    hub.stop();
    let (ok, offline, err) = ask(&model, &hub.addr, &home);
    assert!(ok, "offline run failed: {err}");
    assert_eq!(offline, catalog);
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let home = scratch("resume");
    let hub = FakeHub::start(Mode::CutOnce);
    let (ok, _, err) = ask(&format!("hf:{REPO}:{FILE}"), &hub.addr, &home);
    assert!(ok, "{err}");
    let log = hub.log();
    // The probe asks for bytes=0-0, the first download for bytes=0-, the resume for bytes=N-.
    let resumed = log.iter().any(|r| {
        r.contains("resolve")
            && r.split_whitespace()
                .nth(1)
                .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-'))
                .is_some_and(|n| n.parse::<u64>().unwrap_or(0) > 0)
    });
    assert!(resumed, "no request resumed from a byte offset: {log:?}");
}

#[test]
fn wrong_bytes_are_refused_and_removed() {
    let home = scratch("wrong");
    let hub = FakeHub::start(Mode::WrongBytes);
    let (ok, _, err) = ask(&format!("hf:{REPO}:Q4_1"), &hub.addr, &home);
    assert!(!ok, "a corrupt download was accepted");
    assert!(err.contains("sha256 mismatch"), "{err}");
    assert!(err.contains("run again"), "{err}");
    let blobs = home.join("hub/models--test--smollm2/blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| n.to_string_lossy().ends_with(".lock")),
        "the bad blob was kept: {left:?}"
    );
}

#[test]
fn an_unknown_quant_or_an_ambiguous_repo_lists_the_files_and_hf_token_is_sent() {
    let home = scratch("unknown");
    let hub = FakeHub::start(Mode::Good);
    for model in [format!("hf:{REPO}:Q5_K_S"), format!("hf:{REPO}")] {
        let (ok, _, err) = ask_with_token(&model, &hub.addr, &home, Some("hf_secret"));
        assert!(!ok, "{model} was accepted");
        assert!(
            err.contains(FILE) && err.contains("SmolLM2-135M-Instruct.Q8_0.gguf"),
            "{model}: {err}"
        );
    }
    let log = hub.log();
    assert!(
        log.iter().all(|r| r.ends_with("Bearer hf_secret")),
        "HF_TOKEN was not sent: {log:?}"
    );
}

#[test]
fn a_part_file_left_by_a_killed_run_is_resumed() {
    let home = scratch("killed");
    let hub = FakeHub::start(Mode::Good);
    // What a run killed halfway leaves: hf-hub's `.part` file next to the blob it becomes.
    let path = common::model_path("smollm2-135m");
    let sha = conclave::store::digest::sha256_file(&path).unwrap();
    let data = std::fs::read(&path).unwrap();
    let blobs = home.join("hub/models--test--smollm2/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let half = data.len() / 2;
    std::fs::write(blobs.join(format!("{sha}.part")), &data[..half]).unwrap();
    let (ok, _, err) = ask(&format!("hf:{REPO}:Q4_1"), &hub.addr, &home);
    assert!(ok, "{err}");
    let log = hub.log();
    let downloads: Vec<_> = log
        .iter()
        .filter(|r| r.contains("resolve") && !r.contains("bytes=0-0"))
        .collect();
    assert_eq!(downloads.len(), 1, "expected one download request: {log:?}");
    assert!(downloads[0].contains(&format!("bytes={half}-")), "{log:?}");
}
