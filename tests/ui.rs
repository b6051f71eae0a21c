//! The `/ui` page in a real browser: headless Chromium (Debian's `chromium`) driven by
//! Playwright's Python package (tests/ui_client.py) against `conclave serve --config
//! configs/vote8.toml` with an API key. The screenshot of the answered page is kept as a test
//! artifact: target/ui-artifacts/vote8.png.
//!
//! Provisions what it needs: Chromium from apt when missing and we may install it, Playwright
//! into the tests' venv (driving that Chromium; it downloads no browser of its own).
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Debian's Chromium, installed with apt-get when it is missing and we are root.
fn chromium() -> &'static str {
    if Path::new(CHROMIUM).exists() {
        return CHROMIUM;
    }
    let root = is_root();
    let apt = Path::new("/usr/bin/apt-get").exists();
    assert!(
        root && apt,
        "this test drives Debian's Chromium at {CHROMIUM}: install it (`apt-get install \
         chromium`) and run it again"
    );
    eprintln!("installing chromium with apt-get (once)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "chromium"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    // A fresh machine's package lists may be empty: update them once and try again.
    let ok = install()
        || (Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .is_ok_and(|s| s.success())
            && install());
    assert!(
        ok && Path::new(CHROMIUM).exists(),
        "`apt-get install chromium` failed: install Debian's chromium package and run again"
    );
    CHROMIUM
}

/// Whether this process runs as root, read from /proc (no libc call needed).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A `conclave serve` child, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_conclave"))
        .arg("serve")
        .args(args)
        .args(["--port", "0"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("conclave serve ended before it listened"))
            .unwrap();
        eprintln!("{line}");
        if let Some(url) = line.strip_prefix("conclave serve: listening on ") {
            break url.to_string();
        }
    };
    // Keep reading its log so that the pipe never fills.
    std::thread::spawn(move || lines.for_each(|l| eprintln!("{}", l.unwrap_or_default())));
    Server { child, base }
}

/// Asks conclave/vote8 in the page; 8 columns fill as the agents stream, then the vote
/// table and one highlighted winner (the API trace's); the recent-trace list and the file
/// input draw the same. The screenshot goes to target/ui-artifacts/vote8.png.
#[test]
fn the_page_shows_vote8_agents_streaming_the_vote_and_the_winner() {
    let chromium = chromium();
    common::model_path("qwen2.5-coder-0.5b");
    let key = "ui-test-key";
    let server = serve(&[
        "--config",
        "configs/vote8.toml",
        "--models",
        "qwen2.5-coder-0.5b",
        "--api-key",
        key,
    ]);
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("ui-artifacts/vote8.png");
    let _ = std::fs::remove_file(&shot);
    let text = common::run_python(
        "ui_client.py",
        &[
            ("BASE", server.base.clone()),
            ("KEY", key.to_string()),
            ("CHROMIUM", chromium.to_string()),
            ("SHOT", shot.display().to_string()),
        ],
    );
    assert!(text.contains("ui ok: winner #"), "{text}");
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        shot.display()
    );
}
