//! Running untrusted Python in a confined child process (see `confine` for the layers).
//!
//! Every run gets a fresh work dir (its cwd, HOME and TMPDIR, removed afterwards), an empty
//! environment but for PATH, HOME, LANG and TMPDIR, limits on wall time, CPU time, memory,
//! file size, processes and output, and on any limit its whole process tree is killed.
use super::confine::{label, Confine, Limits, Plan, RunCgroup, NOBODY};
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Exited with status 0.
    Ok,
    /// Exited with another status (an exception, a failed assert, out of memory).
    Error,
    /// Ran past the wall-clock or CPU-time limit.
    Timeout,
    /// Stopped by a signal or for too much output.
    Killed,
}

/// How a run ended. `reason` always says why, in words.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub reason: String,
    /// The isolation layers this run had, e.g. "netns+ro-fs+pidns+nobody+pids-cgroup+rlimits".
    pub isolation: String,
    pub seconds: f64,
    /// stdout or stderr was cut at `max_output_bytes`.
    pub truncated: bool,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.status == Status::Ok
    }
}

/// Runs `run` (one sandbox run) in a `sandbox python` span under the current span (the
/// `execute_tool` span of an agent's call or of a candidate's check), and records how it
/// ended and under which isolation.
pub(crate) fn traced(run: impl FnOnce() -> Result<Outcome>) -> Result<Outcome> {
    let span = tracing::info_span!(
        target: crate::telemetry::TARGET,
        "sandbox",
        otel.name = "sandbox python",
        otel.status_code = tracing::field::Empty,
        conclave.sandbox.status = tracing::field::Empty,
        conclave.sandbox.exit_code = tracing::field::Empty,
        conclave.sandbox.isolation = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
    );
    let out = span.in_scope(run);
    if !span.is_disabled() {
        match &out {
            Ok(o) => {
                span.record(
                    "conclave.sandbox.status",
                    format!("{:?}", o.status).to_lowercase(),
                );
                span.record("conclave.sandbox.isolation", o.isolation.as_str());
                if let Some(c) = o.exit_code {
                    span.record("conclave.sandbox.exit_code", c);
                }
            }
            Err(e) => {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", format!("{e:#}"));
            }
        }
    }
    out
}

/// One run under `plan` (the probe uses this to try plans): `code` as `main.py` in a fresh
/// work dir, removed afterwards.
pub(crate) fn run_with(
    plan: &Plan,
    python: &Path,
    cgroup_base: Option<&Path>,
    code: &str,
    stdin: Option<&str>,
    limits: &Limits,
) -> Result<Outcome> {
    let dir = tempfile::Builder::new()
        .prefix("conclave-sandbox-")
        .tempdir()
        .context("cannot make the sandbox's work dir")?;
    let script = dir.path().join("main.py");
    std::fs::write(&script, code).context("cannot write the sandbox's main.py")?;
    if plan.nobody {
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY))?;
        std::os::unix::fs::chown(&script, Some(NOBODY), Some(NOBODY))?;
    }
    run_in(
        plan,
        python,
        cgroup_base,
        dir.path(),
        None,
        &["-B", "main.py"],
        stdin,
        limits,
    )
}

/// One run of `python ARGS` under `plan` with `dir` as its work dir (cwd, HOME, TMPDIR), which
/// the caller has made writable by whoever the code runs as. With `shown_at` (only under
/// ro-fs, whose mount namespace allows it) the code sees `dir` mounted there instead.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_in(
    plan: &Plan,
    python: &Path,
    cgroup_base: Option<&Path>,
    dir: &Path,
    shown_at: Option<&Path>,
    args: &[&str],
    stdin: Option<&str>,
    limits: &Limits,
) -> Result<Outcome> {
    let cgroup = cgroup_base.and_then(|b| match RunCgroup::create(b, limits.max_processes) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("no pids cgroup for this run: {e}");
            None
        }
    });
    let cgroup_used = cgroup.is_some();
    let shown_at = shown_at.filter(|_| plan.readonly);
    let confine = Confine::new(plan, dir, shown_at, limits, cgroup.as_ref())?;
    let home = shown_at.unwrap_or(dir);

    let mut cmd = match &plan.unshare {
        Some(unshare) => {
            let mut c = Command::new(unshare);
            c.args(["--pid", "--fork", "--kill-child", "--mount-proc"]);
            if plan.nobody {
                // unshare needs root to make the namespace, then drops to nobody itself.
                let id = NOBODY.to_string();
                c.args(["--setgid", &id, "--setuid", &id]);
            }
            c.arg("--").arg(python);
            c
        }
        None => Command::new(python),
    };
    let bin_dir = python.parent().unwrap_or(Path::new("/usr/bin"));
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", bin_dir.display()),
        )
        .env("HOME", home)
        .env("TMPDIR", home)
        .env("LANG", "C.UTF-8")
        // glibc gives each thread's malloc arena 64 MiB of address space (mallopt(3),
        // M_ARENA_MAX); two arenas keep threaded code inside RLIMIT_AS.
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: `apply` makes only async-signal-safe system calls on data prepared above.
    unsafe { cmd.pre_exec(move || confine.apply()) };

    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", python.display()))?;
    let pid = child.id() as i32;
    let over = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::channel();
    let mut captures = Vec::new();
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as _),
        child.stderr.take().map(|p| Box::new(p) as _),
    ];
    for pipe in pipes.into_iter().flatten() {
        let cap = Arc::new(Mutex::new((Vec::new(), false)));
        let (c, o, tx) = (cap.clone(), over.clone(), done_tx.clone());
        let max = limits.max_output_bytes;
        std::thread::spawn(move || {
            drain(pipe, max, &c, || {
                o.store(true, Ordering::SeqCst);
                kill_group(pid);
            });
            let _ = tx.send(());
        });
        captures.push(cap);
    }
    if let (Some(mut pipe), Some(text)) = (child.stdin.take(), stdin) {
        let text = text.to_string();
        // A child that never reads its input must not block us: write from a thread.
        std::thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        });
    }
    let (wait_tx, wait_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = wait_tx.send(wait4(pid));
    });
    let (raw, cpu, timed_out) = match wait_rx.recv_timeout(limits.timeout) {
        Ok(r) => (r.0, r.1, false),
        Err(_) => {
            kill_group(pid);
            let r = wait_rx.recv().context("the sandbox's waiter thread died")?;
            (r.0, r.1, true)
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    // Whatever the code left running dies with it.
    kill_group(pid);
    drop(cgroup);
    // The pipes close once every holder is dead; a descendant that escaped every layer
    // (possible only without pidns and cgroup) is not waited for.
    for _ in 0..captures.len() {
        if done_rx.recv_timeout(Duration::from_secs(2)).is_err() {
            break;
        }
    }
    let text = |i: usize| {
        let c = captures[i].lock().unwrap_or_else(|e| e.into_inner());
        (String::from_utf8_lossy(&c.0).into_owned(), c.1)
    };
    let ((stdout, t1), (stderr, t2)) = (text(0), text(1));
    let exit_code = libc::WIFEXITED(raw).then(|| libc::WEXITSTATUS(raw));
    let signal = libc::WIFSIGNALED(raw).then(|| libc::WTERMSIG(raw));
    let (status, reason) = judge(
        limits,
        exit_code,
        signal,
        cpu,
        timed_out,
        over.load(Ordering::SeqCst),
        &stderr,
    );
    Ok(Outcome {
        status,
        exit_code,
        stdout,
        stderr,
        reason,
        isolation: label(plan, cgroup_used),
        seconds,
        truncated: t1 || t2,
    })
}

/// Status and reason from how the process ended.
fn judge(
    limits: &Limits,
    exit_code: Option<i32>,
    signal: Option<i32>,
    cpu_seconds: f64,
    timed_out: bool,
    too_much_output: bool,
    stderr: &str,
) -> (Status, String) {
    let cpu_limit = limits.cpu_seconds as f64;
    if timed_out {
        return (
            Status::Timeout,
            format!(
                "wall-clock limit of {:.1} s exceeded: the whole process tree was killed",
                limits.timeout.as_secs_f64()
            ),
        );
    }
    if too_much_output {
        return (
            Status::Killed,
            format!(
                "output passed the limit of {} bytes: stopped and cut there",
                limits.max_output_bytes
            ),
        );
    }
    // SIGXCPU may not reach us as such (util-linux unshare cannot re-raise it), so the CPU
    // time itself tells.
    if exit_code != Some(0) && cpu_seconds >= cpu_limit - 0.05 {
        return (
            Status::Timeout,
            format!("CPU time limit of {} s exceeded", limits.cpu_seconds),
        );
    }
    if let Some(sig) = signal {
        let name = match sig {
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGABRT => " (SIGABRT)",
            libc::SIGXFSZ => " (SIGXFSZ: file size limit)",
            _ => "",
        };
        return (Status::Killed, format!("killed by signal {sig}{name}"));
    }
    match exit_code {
        Some(0) => (Status::Ok, "exit status 0".into()),
        code => {
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty() && !l.starts_with("unshare: "))
                .unwrap_or("")
                .trim();
            let last: String = last.chars().take(300).collect();
            let code = code.unwrap_or(-1);
            let reason = if stderr.contains("MemoryError") {
                format!(
                    "memory limit of {} MB reached (MemoryError), exit status {code}",
                    limits.memory_mb
                )
            } else if stderr.contains("File too large") {
                format!(
                    "file size limit of {} MB reached, exit status {code}",
                    limits.file_size_mb
                )
            } else if last.is_empty() {
                format!("exit status {code}")
            } else {
                format!("exit status {code}: {last}")
            };
            (Status::Error, reason)
        }
    }
}

/// Reads `pipe` to its end, keeping the first `max` bytes; past them calls `over` once.
fn drain(mut pipe: impl Read, max: usize, cap: &Mutex<(Vec<u8>, bool)>, over: impl Fn()) {
    let mut buf = [0u8; 8192];
    let mut fired = false;
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut c = cap.lock().unwrap_or_else(|e| e.into_inner());
        let room = max.saturating_sub(c.0.len());
        c.0.extend_from_slice(&buf[..n.min(room)]);
        if n > room {
            c.1 = true;
            if !fired {
                fired = true;
                over();
            }
        }
    }
}

/// SIGKILL to the child's process group (it leads one: `setsid` in `Confine::apply`).
fn kill_group(pid: i32) {
    unsafe { libc::kill(-pid, libc::SIGKILL) };
}

/// Waits for `pid`; its raw wait status and the CPU seconds it and its reaped children used.
fn wait4(pid: i32) -> (i32, f64) {
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (status, secs(ru.ru_utime) + secs(ru.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_names_the_limit_that_stopped_a_run() {
        let l = Limits::default();
        let j = |code, sig, cpu, t, o, err| judge(&l, code, sig, cpu, t, o, err);
        assert_eq!(j(Some(0), None, 0.1, false, false, "").0, Status::Ok);
        assert_eq!(j(None, Some(9), 0.1, true, false, "").0, Status::Timeout);
        let (s, r) = j(Some(1), None, 10.0, false, false, "");
        assert_eq!(s, Status::Timeout);
        assert!(r.contains("CPU time"), "{r}");
        let (s, r) = j(Some(1), None, 0.2, false, false, "Traceback\nMemoryError\n");
        assert_eq!(s, Status::Error);
        assert!(r.contains("memory limit of 512 MB"), "{r}");
        let (s, r) = j(
            Some(1),
            None,
            0.2,
            false,
            false,
            "x\nZeroDivisionError: division by zero\n",
        );
        assert_eq!(s, Status::Error);
        assert!(r.ends_with("ZeroDivisionError: division by zero"), "{r}");
        assert_eq!(j(None, Some(11), 0.2, false, false, "").0, Status::Killed);
        assert_eq!(j(Some(0), None, 0.2, false, true, "").0, Status::Killed);
    }
}
