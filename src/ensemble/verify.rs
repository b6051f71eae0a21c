//! Verifying candidates with tools: running code against tests in the sandbox, or checking
//! stated arithmetic with the calculator; and execution-based selection over the results.
use super::aggregate::{Candidate, Decision};
use super::extract::{extract, AnswerKind};
use crate::tools::calc::check_statements;
use crate::tools::{run_python, Limits, Status, Tool};
use anyhow::Result;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// How a candidate is checked.
#[derive(Debug, Clone)]
pub enum Verifier {
    /// A HumanEval-style item: the candidate completes `prompt` (or rewrites its function);
    /// `test` defines `check(candidate)`, which is called with `entry_point`. `inputs` are
    /// argument lists (`"[1, 2], 3"`) the function is also run on, to group candidates that
    /// behave alike.
    CodeTests {
        prompt: String,
        test: String,
        entry_point: String,
        inputs: Vec<String>,
    },
    /// Every "a op b = c" the candidate states must hold (and it must state one).
    Calculator,
}

/// A verifier's result for one candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub passed: bool,
    /// Why it failed, trimmed for a prompt: the failing test, the error, the wrong sum.
    pub feedback: String,
    /// For code: a short hash of (pass, output on `inputs`); equal hashes behave alike.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub behaviour: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    pub seconds: f64,
}

/// Feedback longer than this is cut (keeping the end, where Python puts the error).
const FEEDBACK_CHARS: usize = 600;

/// Limits for one candidate's program: HumanEval programs finish in milliseconds.
pub fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(5),
        cpu_seconds: 5,
        max_output_bytes: 64 << 10,
        ..Limits::default()
    }
}

impl Verifier {
    /// The tool this verifier uses, which every agent it checks must be allowed.
    pub fn tool(&self) -> Tool {
        match self {
            Verifier::CodeTests { .. } => Tool::Python,
            Verifier::Calculator => Tool::Calculator,
        }
    }

    /// A code verifier whose tests are the examples in `prompt`'s docstring — the tests a
    /// solver may see, unlike HumanEval's hidden `test`. None when it has no examples.
    pub fn from_examples(prompt: &str, entry_point: &str) -> Option<Verifier> {
        let examples = examples(prompt, entry_point);
        if examples.is_empty() {
            return None;
        }
        Some(Verifier::CodeTests {
            prompt: prompt.to_string(),
            test: example_test(entry_point, &examples),
            entry_point: entry_point.to_string(),
            inputs: examples.into_iter().map(|(args, _)| args).collect(),
        })
    }

    /// The visible-tests verifier for a code problem: its docstring's examples, or, for a
    /// prompt without any, a check that the code runs (a syntax or import error fails it).
    pub fn for_code(prompt: &str, entry_point: &str) -> Verifier {
        Self::from_examples(prompt, entry_point).unwrap_or_else(|| Verifier::CodeTests {
            prompt: prompt.to_string(),
            test: "def check(candidate):\n    pass\n".into(),
            entry_point: entry_point.to_string(),
            inputs: Vec::new(),
        })
    }

    /// Checks one candidate's full reply (blocking: it may run a program).
    pub fn check(&self, reply: &str, limits: &Limits) -> Result<Verdict> {
        match self {
            Verifier::Calculator => Ok(calculator(reply)),
            Verifier::CodeTests {
                prompt,
                test,
                entry_point,
                inputs,
            } => {
                let code = code_of(reply);
                let with_probe = format!("{}\n{}", probe(entry_point, inputs), test);
                let program = program(prompt, &code, &with_probe, entry_point);
                let o = run_python(&program, None, limits)?;
                let passed = o.status == Status::Ok;
                let feedback = if passed {
                    String::new()
                } else if o.status == Status::Error {
                    tail(&short_paths(&o.stderr), FEEDBACK_CHARS)
                } else {
                    o.reason.clone()
                };
                // Only what the probe prints is behaviour: a candidate's own example
                // `print`s, which run before it, would split alike candidates apart.
                let probed = o.stdout.rsplit_once(PROBE_MARK).map_or(&*o.stdout, |p| p.1);
                let mut h = Sha256::new();
                h.update([passed as u8]);
                h.update(probed.as_bytes());
                let behaviour: String = format!("{:x}", h.finalize()).chars().take(12).collect();
                Ok(Verdict {
                    passed,
                    feedback,
                    behaviour,
                    status: Some(o.status),
                    seconds: o.seconds,
                })
            }
        }
    }

    /// What of a reply goes back to the agents in a refine prompt: its code, or its text.
    pub fn shown(&self, reply: &str) -> String {
        match self {
            Verifier::CodeTests { .. } => format!("```python\n{}\n```", code_of(reply)),
            Verifier::Calculator => reply.trim().to_string(),
        }
    }
}

/// The code in a reply: its first fenced block, else the whole reply (a bare continuation).
pub fn code_of(reply: &str) -> String {
    extract(AnswerKind::Code, reply).unwrap_or_else(|| reply.trim_end().to_string())
}

/// HumanEval's test program for a candidate's code.
///
/// human_eval/execution.py (`check_correctness`) runs
/// `prompt + completion + "\n" + test + "\n" + f"check({entry_point})"`. Chat models reply
/// with the whole function rather than a continuation of the prompt; the prompt still comes
/// first (for its imports and helpers) and the reply's `def` then replaces the prompt's stub,
/// whose docstring alone is a valid body.
pub fn program(prompt: &str, code: &str, test: &str, entry_point: &str) -> String {
    let def = format!("def {entry_point}(");
    let defines = code.lines().any(|l| l.trim_start().starts_with(&def));
    let sep = if defines { "\n" } else { "" };
    format!("{prompt}{sep}{code}\n{test}\ncheck({entry_point})\n")
}

/// The line the probe prints before its results.
const PROBE_MARK: &str = "--conclave-probe--";

/// Python that prints the function's result (or the exception it raises) on each input.
fn probe(entry_point: &str, inputs: &[String]) -> String {
    let mut p = format!("print({PROBE_MARK:?})\n");
    if inputs.is_empty() {
        return p;
    }
    p.push_str("for __conclave_args in [\n");
    for args in inputs {
        p.push_str(&format!("    lambda: {entry_point}({args}),\n"));
    }
    p.push_str(
        "]:\n    try:\n        print(repr(__conclave_args()))\n    except BaseException as e:\n        \
         print('raised', type(e).__name__)\n",
    );
    p
}

/// `(arguments, expected)` pairs from a docstring: doctest lines (`>>> f(1, 2)` then the
/// expected value on the next line) and one-line examples (`f(1, 2) == 3`, `f(1, 2) ➞ 3`,
/// `f(1, 2) => 3`, `f(1, 2) -> 3`), the forms HumanEval's prompts use.
pub fn examples(prompt: &str, entry_point: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = prompt.lines().map(str::trim).collect();
    let call = format!("{entry_point}(");
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let text = line.strip_prefix(">>>").map(str::trim).unwrap_or(line);
        let Some(start) = text.find(&call).filter(|&s| s == 0) else {
            continue;
        };
        let open = start + call.len();
        let Some(close) = closing_paren(text, open) else {
            continue;
        };
        let args = text[open..close].trim().to_string();
        let rest = text[close + 1..].trim();
        let expected = if line.starts_with(">>>") && rest.is_empty() {
            lines.get(i + 1).map(|l| l.to_string()).unwrap_or_default()
        } else {
            ["==>", "==", "➞", "=>", "->"]
                .iter()
                .find_map(|sep| rest.strip_prefix(sep))
                .map(|e| e.trim().trim_end_matches(['.', ',']).to_string())
                .unwrap_or_default()
        };
        let fresh = !out.iter().any(|e| e.0 == args);
        if fresh && literal(&args) && !expected.is_empty() && literal(&expected) {
            out.push((args, expected));
        }
    }
    out
}

/// Whether `s` looks like Python literals only: balanced brackets, no `=`, and no names but
/// True, False and None outside quotes. Prose such as `f(n) -> f(n-1) + 2` or `=> true`
/// is not an example.
fn literal(s: &str) -> bool {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut word = String::new();
    for c in s.chars().chain([' ']) {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        let is_name = word
            .chars()
            .next()
            .is_some_and(|w| w.is_alphabetic() || w == '_');
        if is_name && !["True", "False", "None"].contains(&word.as_str()) {
            return false;
        }
        word.clear();
        match c {
            '\'' | '"' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            '=' | '>' | '<' => return false,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0 && quote.is_none()
}

/// Byte offset of the `)` closing the call whose arguments start at `open`.
fn closing_paren(s: &str, open: usize) -> Option<usize> {
    let mut depth = 1;
    let mut quote: Option<char> = None;
    for (i, c) in s[open..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return (c == ')').then_some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// A `check(candidate)` asserting each example, with a message that says what came back.
fn example_test(entry_point: &str, examples: &[(String, String)]) -> String {
    let mut t = String::from("def check(candidate):\n");
    for (args, expected) in examples {
        // A JSON string literal is a valid Python string literal.
        let call = serde_json::to_string(&format!("{entry_point}({args})")).unwrap_or_default();
        let want = serde_json::to_string(expected).unwrap_or_default();
        t.push_str(&format!(
            "    __r = candidate({args})\n    assert __r == ({expected}), {call} + ' returned ' + \
             repr(__r) + ', expected ' + {want}\n"
        ));
    }
    t
}

fn calculator(reply: &str) -> Verdict {
    let checks = check_statements(reply);
    let wrong: Vec<String> = checks
        .iter()
        .filter(|c| !c.correct)
        .map(|c| c.describe())
        .collect();
    let feedback = if checks.is_empty() {
        "no computation of the form `a op b = c` to check: show each step's arithmetic".into()
    } else {
        wrong.join("; ")
    };
    Verdict {
        passed: !checks.is_empty() && wrong.is_empty(),
        feedback: tail(&feedback, FEEDBACK_CHARS),
        behaviour: String::new(),
        status: None,
        seconds: 0.0,
    }
}

/// Tracebacks name the throw-away work dir (`File "/tmp/conclave-sandbox-x1/main.py"`):
/// "main.py" says the same in a prompt.
pub(super) fn short_paths(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("File \"") {
        let (head, tail) = rest.split_at(i + 6);
        out.push_str(head);
        match tail.find('"') {
            Some(end) if tail[..end].ends_with("/main.py") => {
                out.push_str("main.py");
                rest = &tail[end..];
            }
            _ => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// The last `max` chars of `s`, trimmed, marked with "…" when cut.
pub(super) fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let cut: String = s.chars().skip(n - max).collect();
    format!("…{cut}")
}

/// Execution-based selection (Chen et al. 2022, "CodeT"; Li et al. 2022, "AlphaCode"):
/// candidates are grouped by behaviour (code: the verdict's `behaviour` hash; otherwise the
/// extracted answer) and by whether they passed; the largest passing group wins, ties going
/// to the higher mean log-prob, then to the group seen first. With no passing candidate the
/// largest group wins, and the returned note says so.
pub fn exec_vote(cands: &[Candidate], verdicts: &[Option<Verdict>]) -> (Decision, Option<String>) {
    // (passed, key) -> (members, log-prob sum), in order of first appearance.
    let mut groups: Vec<((bool, String), Vec<usize>, f64)> = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        let v = verdicts.get(i).and_then(Option::as_ref);
        let behaviour = v.map(|v| v.behaviour.clone()).filter(|b| !b.is_empty());
        let Some(key) = behaviour.or_else(|| c.extracted.clone()) else {
            continue;
        };
        let key = (v.is_some_and(|v| v.passed), key);
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => {
                g.1.push(i);
                g.2 += f64::from(c.logprob_mean);
            }
            None => groups.push((key, vec![i], f64::from(c.logprob_mean))),
        }
    }
    let any_pass = groups.iter().any(|g| g.0 .0);
    let mean = |g: &(_, Vec<usize>, f64)| g.2 / g.1.len() as f64;
    let best = groups
        .iter()
        .enumerate()
        .filter(|(_, g)| g.0 .0 || !any_pass)
        .max_by(|(ia, a), (ib, b)| {
            a.1.len()
                .cmp(&b.1.len())
                .then(mean(a).total_cmp(&mean(b)))
                .then(ib.cmp(ia))
        })
        .map(|(_, g)| g);
    let votes: BTreeMap<String, f64> = groups
        .iter()
        .map(|g| {
            let tag = if g.0 .0 { "pass" } else { "fail" };
            let key: String = g.0 .1.chars().take(24).collect();
            (format!("{tag} {key}"), g.1.len() as f64)
        })
        .collect();
    let total: usize = groups.iter().map(|g| g.1.len()).sum();
    let Some(best) = best else {
        let d = Decision {
            winner: None,
            answer: None,
            votes,
            agreement: 0.0,
            tie_break: None,
        };
        return (d, Some("no candidate gave an answer to verify".into()));
    };
    let w = best.1[0];
    let answer = cands[w]
        .extracted
        .clone()
        .or_else(|| Some(cands[w].text.trim().to_string()));
    let d = Decision {
        winner: Some(w),
        answer,
        votes,
        agreement: best.1.len() as f64 / total.max(1) as f64,
        tie_break: None,
    };
    let note =
        (!any_pass).then(|| "no candidate passed verification: the largest group won".into());
    (d, note)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(extracted: &str, lp: f32) -> Candidate {
        Candidate {
            text: extracted.into(),
            extracted: Some(extracted.into()),
            logprob_mean: lp,
            weight: 1.0,
            signals: Default::default(),
        }
    }

    fn verdict(passed: bool, behaviour: &str) -> Option<Verdict> {
        Some(Verdict {
            passed,
            feedback: String::new(),
            behaviour: behaviour.into(),
            status: None,
            seconds: 0.0,
        })
    }

    #[test]
    fn the_largest_passing_group_wins_over_a_larger_failing_one() {
        let cands: Vec<Candidate> = (0..6).map(|i| cand(&format!("c{i}"), -0.5)).collect();
        let v = vec![
            verdict(false, "aaa"),
            verdict(false, "aaa"),
            verdict(false, "aaa"),
            verdict(true, "bbb"),
            verdict(true, "ccc"),
            verdict(true, "bbb"),
        ];
        let (d, note) = exec_vote(&cands, &v);
        assert_eq!(d.winner, Some(3));
        assert_eq!(d.votes["pass bbb"], 2.0);
        assert_eq!(d.votes["fail aaa"], 3.0);
        assert!((d.agreement - 2.0 / 6.0).abs() < 1e-9);
        assert_eq!(note, None);
        // No pass at all: the largest group, with a note.
        let v: Vec<_> = v
            .into_iter()
            .map(|v| v.map(|v| Verdict { passed: false, ..v }))
            .collect();
        let (d, note) = exec_vote(&cands, &v);
        assert_eq!(d.winner, Some(0));
        assert!(note.unwrap().contains("no candidate passed"));
    }

    #[test]
    fn ties_go_to_the_surer_group_and_answers_group_without_behaviour() {
        let cands = vec![
            cand("7", -1.0),
            cand("8", -0.2),
            cand("7", -1.0),
            cand("8", -0.2),
        ];
        let v = vec![
            verdict(true, ""),
            verdict(true, ""),
            verdict(true, ""),
            verdict(true, ""),
        ];
        let (d, _) = exec_vote(&cands, &v);
        assert_eq!((d.winner, d.answer.as_deref()), (Some(1), Some("8")));
    }

    #[test]
    fn examples_come_from_doctests_and_arrows() {
        let p = "def f(a, b):\n    \"\"\" Adds.\n    >>> f(1, 2)\n    3\n    >>> f([1, (2)], ')')\n    \
                 'x'\n    f(0, 0) ➞ 0\n    f(5, 5) == 10\n    g(1) == 2\n    \"\"\"\n";
        let e = examples(p, "f");
        let want = [
            ("1, 2", "3"),
            ("[1, (2)], ')'", "'x'"),
            ("0, 0", "0"),
            ("5, 5", "10"),
        ];
        let got: Vec<(&str, &str)> = e.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(got, want);
        assert!(Verifier::from_examples("def f():\n    pass\n", "f").is_none());
        let runs = Verifier::for_code("def f():\n    pass\n", "f");
        let ok = runs.check("def f():\n    return 1", &limits()).unwrap();
        let broken = runs.check("def f(:\n    return 1", &limits()).unwrap();
        assert!(ok.passed && !broken.passed, "{ok:?} {broken:?}");
        assert!(broken.feedback.contains("SyntaxError"), "{broken:?}");
        // Prose is not an example: names, `=`, unbalanced or multi-line values.
        let prose = "f(n) -> f(n-1) + 1\nf(1, 4) => true\nf(1, 2) -> 3 = 3\nf(1, 3) == [1,\n";
        assert!(
            examples(prose, "f").is_empty(),
            "{:?}",
            examples(prose, "f")
        );
        let t = example_test("f", &e[..1]);
        assert!(
            t.contains("assert __r == (3), \"f(1, 2)\" + ' returned '"),
            "{t}"
        );
    }

    #[test]
    fn programs_assemble_whole_functions_and_continuations() {
        let prompt = "import math\n\ndef area(r):\n    \"\"\"Circle area.\"\"\"\n";
        let test = "def check(f):\n    assert f(1) == math.pi\n";
        let whole = program(
            prompt,
            "def area(r):\n    return math.pi * r * r",
            test,
            "area",
        );
        assert!(
            whole.contains("\"\"\"\n\ndef area(r):\n    return"),
            "{whole}"
        );
        assert!(whole.ends_with("check(area)\n"));
        let body = program(prompt, "    return math.pi * r * r", test, "area");
        assert!(body.contains("\"\"\"\n    return math.pi"), "{body}");
    }

    #[test]
    fn code_comes_from_the_first_fence_or_the_raw_reply() {
        assert_eq!(
            code_of("Here:\n```python\ndef f():\n    return 1\n```\nDone."),
            "def f():\n    return 1"
        );
        assert_eq!(code_of("    return 1\n\n"), "    return 1");
    }

    #[test]
    fn the_calculator_verdict_names_the_wrong_step() {
        let v = Verifier::Calculator
            .check("3 × 4 = 12, then 12 + 5 = 18. Answer: 18", &limits())
            .unwrap();
        assert!(!v.passed);
        assert_eq!(v.feedback, "12 + 5 = 18 is wrong: 12 + 5 = 17");
        let v = Verifier::Calculator
            .check("The answer is 17.", &limits())
            .unwrap();
        assert!(!v.passed && v.feedback.contains("no computation"));
        assert!(
            Verifier::Calculator
                .check("12 + 5 = 17", &limits())
                .unwrap()
                .passed
        );
    }

    #[test]
    fn behaviour_is_the_outputs_on_the_inputs_not_a_candidates_own_prints() {
        let prompt = "def half(x):\n    \"\"\"\n    >>> half(4)\n    2.0\n    \"\"\"\n";
        let v = Verifier::from_examples(prompt, "half").unwrap();
        let check = |code: &str| v.check(code, &limits()).unwrap();
        let plain = check("def half(x):\n    return x / 2");
        let chatty = check("def half(x):\n    return x / 2\n\n# Example usage:\nprint(half(9))");
        let floor = check("def half(x):\n    return float(x // 2)");
        assert!(plain.passed && chatty.passed && floor.passed);
        assert_eq!(plain.behaviour, chatty.behaviour);
        // Alike on the example, unlike on nothing else here: same behaviour too.
        assert_eq!(plain.behaviour, floor.behaviour);
        let wrong = check("def half(x):\n    return x");
        assert!(!wrong.passed && wrong.behaviour != plain.behaviour);
    }

    #[test]
    fn feedback_names_main_py_not_the_work_dir() {
        let tb =
            "Traceback:\n  File \"/tmp/conclave-sandbox-Ab1/main.py\", line 3, in <module>\n  \
                  File \"/usr/lib/python3.11/x.py\", line 1\nValueError";
        assert_eq!(
            short_paths(tb),
            "Traceback:\n  File \"main.py\", line 3, in <module>\n  File \
             \"/usr/lib/python3.11/x.py\", line 1\nValueError"
        );
    }
}
