//! The `code` task: a reply's code, assembled into HumanEval's test program and run in the
//! sandbox (`src/tools`). The hidden `test` only scores; it is never shown to a solver.
use super::dataset::Problem;
use crate::ensemble::verify;
use crate::tools::{run_python, Limits, Status};
use anyhow::Result;

/// HumanEval's test program for a reply's code (see [`verify::program`]).
pub fn program(p: &Problem, code: &str) -> String {
    verify::program(&p.prompt, code, &p.test, &p.entry_point)
}

/// Whether `program` runs to the end without an error, in the sandbox with the limits a
/// verifier gives one candidate.
pub fn passes(program: &str) -> Result<bool> {
    passes_within(program, &verify::limits())
}

fn passes_within(program: &str, limits: &Limits) -> Result<bool> {
    Ok(run_python(program, None, limits)?.status == Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        let second = Limits {
            timeout: Duration::from_secs(1),
            cpu_seconds: 1,
            ..verify::limits()
        };
        assert!(!passes_within(&program(&problem(), spin), &second).unwrap());
        let hog = "def area(r):\n    x = bytearray(4 << 30)\n    return math.pi";
        assert!(!passes(&program(&problem(), hog)).unwrap());
    }
}
