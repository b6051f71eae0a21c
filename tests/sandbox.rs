//! The sandbox against hostile code: each attack is stopped or contained, reported with a
//! reason, and the host is unharmed. Properties that depend on one isolation layer are checked
//! where `isolation()` says the layer is active (here, as root: all of them).
use conclave::tools::{isolation, run_python, Limits, Outcome, Status};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn limits(timeout_s: f64) -> Limits {
    Limits {
        timeout: Duration::from_secs_f64(timeout_s),
        cpu_seconds: timeout_s.ceil() as u64 + 1,
        ..Limits::default()
    }
}

/// Where no pids cgroup exists, the process cap (RLIMIT_NPROC) is per user and so shared
/// with concurrent runs: the fork bomb runs alone, everything else shares this lock.
static FORKS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn run(code: &str, l: &Limits) -> Outcome {
    let _shared = FORKS.read().unwrap_or_else(|e| e.into_inner());
    run_python(code, None, l).unwrap_or_else(|e| panic!("{e:#}"))
}

fn has(layer: &str) -> bool {
    let label = isolation().unwrap().label();
    label.split('+').any(|l| l == layer)
}

/// Host processes whose command line contains `marker`.
fn host_processes_with(marker: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(marker) {
            out.push(name);
        }
    }
    out
}

#[test]
fn a_plain_program_runs_and_reports_its_isolation() {
    let shared = FORKS.read().unwrap_or_else(|e| e.into_inner());
    let o = run_python(
        "import sys\nprint(sys.stdin.read().upper())",
        Some("hello"),
        &limits(5.0),
    )
    .unwrap();
    assert_eq!((o.status, o.exit_code), (Status::Ok, Some(0)), "{o:?}");
    assert_eq!(o.stdout.trim(), "HELLO");
    assert!(o.isolation.ends_with("rlimits"), "{}", o.isolation);
    assert_eq!(o.isolation, isolation().unwrap().label());
    let json = serde_json::to_value(&o).unwrap();
    for key in [
        "status",
        "exit_code",
        "stdout",
        "stderr",
        "reason",
        "isolation",
    ] {
        assert!(json.get(key).is_some(), "missing {key}: {json}");
    }
    assert_eq!(json["status"], "ok");
    drop(shared);

    let o = run("raise ValueError('bad input')", &limits(5.0));
    assert_eq!((o.status, o.exit_code), (Status::Error, Some(1)));
    assert!(o.reason.ends_with("ValueError: bad input"), "{}", o.reason);
}

#[test]
fn an_infinite_loop_times_out() {
    let o = run("while True:\n    pass", &limits(1.5));
    assert_eq!(o.status, Status::Timeout, "{o:?}");
    assert!(
        o.reason.contains("wall-clock limit of 1.5 s"),
        "{}",
        o.reason
    );
}

#[test]
fn cpu_time_is_limited_apart_from_wall_time() {
    let l = Limits {
        timeout: Duration::from_secs(8),
        cpu_seconds: 1,
        ..Limits::default()
    };
    let o = run("while True:\n    pass", &l);
    assert_eq!(o.status, Status::Timeout, "{o:?}");
    assert!(o.reason.contains("CPU time limit of 1 s"), "{}", o.reason);
}

#[test]
fn a_fork_bomb_is_contained_and_the_host_can_still_spawn() {
    let marker = "MARK-fork-bomb-71c3";
    let code = format!(
        "import os, sys, time\n\
         # {marker}\n\
         while True:\n\
         \x20   try:\n\
         \x20       os.fork()\n\
         \x20   except OSError as e:\n\
         \x20       print('fork refused:', e.strerror, flush=True)\n\
         \x20       break\n\
         time.sleep(60)\n"
    );
    let alone = FORKS.write().unwrap_or_else(|e| e.into_inner());
    let o = run_python(&code, None, &limits(2.0)).unwrap();
    drop(alone);
    assert_ne!(o.status, Status::Ok, "{o:?}");
    assert!(!o.reason.is_empty());
    if has("pids-cgroup") || has("nobody") {
        // A process cap holds: forks were refused long before the host ran out.
        assert!(o.stdout.contains("fork refused"), "{o:?}");
    }
    let ok = Command::new("true").status().unwrap().success();
    assert!(ok, "the host cannot spawn processes after the fork bomb");
    let after = run("print('still here')", &limits(5.0));
    assert_eq!(after.stdout.trim(), "still here");
}

#[test]
fn a_memory_hog_is_stopped_with_a_reason() {
    let code = "x = []\nwhile True:\n    x.append(bytearray(32 * 1024 * 1024))";
    let l = Limits {
        memory_mb: 256,
        ..limits(10.0)
    };
    let o = run(code, &l);
    assert!(matches!(o.status, Status::Error | Status::Killed), "{o:?}");
    assert!(o.reason.contains("memory limit of 256 MB"), "{}", o.reason);
}

#[test]
fn the_network_is_unreachable() {
    // A port on the host's loopback, and a public DNS server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!(
        "import socket\n\
         for host, port in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:\n\
         \x20   try:\n\
         \x20       socket.create_connection((host, port), timeout=1).close()\n\
         \x20       print('connected', host)\n\
         \x20   except OSError as e:\n\
         \x20       print('refused', host, e.errno)\n"
    );
    let o = run(&code, &limits(5.0));
    assert_eq!(o.status, Status::Ok, "{o:?}");
    if !has("netns") {
        eprintln!("no network namespace here: network isolation not checked");
        return;
    }
    assert!(!o.stdout.contains("connected"), "{}", o.stdout);
    assert_eq!(o.stdout.matches("refused").count(), 2, "{}", o.stdout);
    assert!(
        listener.accept().is_err(),
        "the host's listener got a connection"
    );
}

#[test]
fn writes_stay_inside_the_throwaway_work_dir() {
    let host = tempfile::tempdir().unwrap();
    let target = host.path().join("escaped.txt");
    let code = format!(
        "import os\n\
         open('mine.txt', 'w').write('ok')\n\
         print(os.getcwd())\n\
         print(os.environ['HOME'] == os.getcwd())\n\
         try:\n\
         \x20   open({target:?}, 'w').write('escaped')\n\
         \x20   print('wrote outside')\n\
         except OSError as e:\n\
         \x20   print('refused', e.errno)\n"
    );
    let o = run(&code, &limits(5.0));
    assert_eq!(o.status, Status::Ok, "{o:?}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    let workdir = Path::new(lines[0]);
    assert_eq!(lines[1], "True", "HOME is the work dir");
    assert!(!workdir.exists(), "the work dir is removed after the run");
    assert!(!workdir.starts_with(host.path()));
    if has("ro-fs") || has("nobody") {
        assert!(o.stdout.contains("refused"), "{}", o.stdout);
        assert!(!target.exists(), "the code wrote outside its work dir");
    }
}

/// A process alive for as long as the test needs it, killed when dropped.
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_callers_environment_secrets_are_not_visible() {
    let secret = "s3cret-4d1f-conclave";
    // In the caller's own environment, which a child would inherit by default.
    std::env::set_var("CONCLAVE_TEST_SECRET", secret);
    // And in the environment of another host process, alive while the code looks: what a
    // sandboxed run that sees the host's /proc could read from /proc/<pid>/environ.
    let holder = Holder(
        Command::new("sleep")
            .arg("60")
            .env("CONCLAVE_TEST_HOLDER_SECRET", secret)
            .spawn()
            .unwrap(),
    );
    let environ = format!("/proc/{}/environ", holder.0.id());
    let host_view = String::from_utf8_lossy(&std::fs::read(&environ).unwrap()).into_owned();
    assert!(
        host_view.contains(secret),
        "the host cannot see the holder's secret"
    );
    let code = format!(
        "import os, glob\n\
         print(os.environ.get('CONCLAVE_TEST_SECRET'))\n\
         print(sorted(os.environ))\n\
         print('holder visible:', os.path.exists({environ:?}))\n\
         for p in glob.glob('/proc/*/environ'):\n\
         \x20   try:\n\
         \x20       print(open(p, 'rb').read().decode('latin1'))\n\
         \x20   except OSError:\n\
         \x20       pass\n"
    );
    let o = run(&code, &limits(5.0));
    drop(holder);
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert!(!o.stdout.contains(secret), "{}", o.stdout);
    assert!(o.stdout.starts_with("None\n"), "{}", o.stdout);
    assert!(
        o.stdout
            .contains("['HOME', 'LANG', 'MALLOC_ARENA_MAX', 'PATH', 'TMPDIR']"),
        "{}",
        o.stdout
    );
}

#[test]
fn huge_output_is_capped_and_reported() {
    let l = Limits {
        max_output_bytes: 10_000,
        ..limits(5.0)
    };
    let o = run(
        "import sys\nsys.stdout.write('x' * 50_000_000)\nprint('end')",
        &l,
    );
    assert_eq!(o.status, Status::Killed, "{o:?}");
    assert!(o.truncated);
    assert_eq!(o.stdout.len(), 10_000);
    assert!(
        o.reason.contains("output passed the limit of 10000 bytes"),
        "{}",
        o.reason
    );
}

#[test]
fn a_grandchild_that_outlives_its_parent_is_killed() {
    let marker = "MARK-orphan-9b2e";
    let code = format!(
        "import os, sys\n\
         if os.fork() == 0:\n\
         \x20   os.setsid()\n\
         \x20   if os.fork() == 0:\n\
         \x20       os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60) # {marker}'])\n\
         \x20   os._exit(0)\n\
         os.wait()\n\
         print('parent exits')\n"
    );
    let o = run(&code, &limits(5.0));
    // Had the run waited for the orphan (60 s of sleep), it would have hit its 5 s limit.
    assert_eq!(o.status, Status::Ok, "the run waited for the orphan: {o:?}");
    let left = host_processes_with(marker);
    assert!(left.is_empty(), "orphans survived: {left:?}");
}

#[test]
fn conclave_exec_prints_the_outcome_as_json() {
    let _shared = FORKS.read().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.py");
    std::fs::write(&file, "print(6 * 7)").unwrap();
    let bin = env!("CARGO_BIN_EXE_conclave");
    let out = Command::new(bin)
        .args(["exec", "--timeout", "5", "--memory", "256"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["stdout"], "42\n");
    assert!(v["isolation"].as_str().unwrap().contains("rlimits"));

    let out = Command::new(bin)
        .args(["exec", "no-such-file.py"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot read no-such-file.py"),
        "{err}"
    );

    let out = Command::new(bin).args(["doctor"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sandbox isolation: "), "{text}");
    assert!(text.contains(&isolation().unwrap().label()), "{text}");
}
