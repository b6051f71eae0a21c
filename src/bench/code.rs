//! The `code` task: a reply's code, assembled into HumanEval's test program and run.
use super::dataset::Problem;
use anyhow::{Context, Result};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// HumanEval's test program for a reply's code.
///
/// human_eval/execution.py (`check_correctness`) runs
/// `prompt + completion + "\n" + test + "\n" + f"check({entry_point})"`. Chat models reply
/// with the whole function rather than a continuation of the prompt; the prompt still comes
/// first (for its imports and helpers) and the reply's `def` then replaces the prompt's stub,
/// whose docstring alone is a valid body.
pub fn program(p: &Problem, code: &str) -> String {
    let defines = code.lines().any(|l| {
        l.trim_start()
            .starts_with(&format!("def {}(", p.entry_point))
    });
    let sep = if defines { "\n" } else { "" };
    format!(
        "{}{sep}{code}\n{}\ncheck({})\n",
        p.prompt, p.test, p.entry_point
    )
}

/// Wall-clock limit for one program.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `program` runs to the end without an error.
///
/// STAND-IN until `src/tools/sandbox.rs` is merged: replace the body with the sandbox's
/// `run_python(program, "", &Limits)` and test its outcome's status. Until then: `python3 -I`
/// in a throw-away directory with an empty environment, 1 GiB of address space and 10 s of
/// CPU (rlimits set by the child itself), killed after 10 s of wall time. It does not cut
/// the network.
pub fn passes(program: &str) -> Result<bool> {
    passes_within(program, TIMEOUT)
}

fn passes_within(program: &str, timeout: Duration) -> Result<bool> {
    let dir = tempfile::tempdir().context("cannot make a temporary directory for the test")?;
    std::fs::write(dir.path().join("prog.py"), program)?;
    let cpu = timeout.as_secs().max(1);
    let guard = format!(
        "import resource, runpy\n\
         resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n\
         resource.setrlimit(resource.RLIMIT_CPU, ({cpu}, {cpu}))\n\
         runpy.run_path('prog.py', run_name='__main__')\n"
    );
    let mut child = Command::new("python3")
        .args(["-I", "-c", &guard])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run python3, which scores the code task: install Python 3")?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem() -> Problem {
        Problem {
            prompt: "import math\n\ndef area(r):\n    \"\"\"Circle area.\"\"\"\n".into(),
            entry_point: "area".into(),
            test: "def check(f):\n    assert abs(f(1) - math.pi) < 1e-9\n".into(),
        }
    }

    #[test]
    fn whole_functions_and_continuations_both_assemble() {
        let whole = "def area(r):\n    return math.pi * r * r";
        let p = program(&problem(), whole);
        assert!(
            p.starts_with("import math") && p.ends_with("check(area)\n"),
            "{p}"
        );
        assert!(passes(&p).unwrap());
        let body = "    return math.pi * r * r";
        assert!(passes(&program(&problem(), body)).unwrap());
        let wrong = "def area(r):\n    return 2 * math.pi * r";
        assert!(!passes(&program(&problem(), wrong)).unwrap());
    }

    #[test]
    fn endless_and_greedy_programs_fail_rather_than_hang() {
        let spin = "def area(r):\n    while True:\n        pass";
        let second = Duration::from_secs(1);
        assert!(!passes_within(&program(&problem(), spin), second).unwrap());
        let hog = "def area(r):\n    x = bytearray(4 << 30)\n    return math.pi";
        assert!(!passes(&program(&problem(), hog)).unwrap());
    }
}
