//! Verifiers and the strategies that use them: the code verifier runs real programs in the
//! sandbox; `refine` and `exec-vote` run on a real model (smollm2-135m). With so small a
//! model these show that the loop runs and is recorded, not that it is smart.
mod common;
use conclave::engine::Engine;
use conclave::ensemble::verify::exec_vote;
use conclave::ensemble::{Ensemble, Runner, Strategy, Trace, Verifier};
use std::path::Path;

fn engine() -> Engine {
    common::engine(&["smollm2-135m"])
}

fn run(ens: &Ensemble, question: &str, verifier: Option<&Verifier>) -> anyhow::Result<Trace> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut runner = Runner::new(engine());
        match verifier {
            Some(v) => runner.run_verified(ens, question, v).await,
            None => runner.run(ens, question).await,
        }
    })
}

const ADD: &str = "def add(a, b):\n    \"\"\"Add two numbers.\n    >>> add(2, 3)\n    5\n    \
                   add(-1, 1) == 0\n    \"\"\"\n";

#[test]
fn the_code_verifier_runs_the_examples_and_groups_by_behaviour() {
    let v = Verifier::from_examples(ADD, "add").expect("two examples");
    let l = conclave::ensemble::verify::limits();
    let good = v
        .check("```python\ndef add(a, b):\n    return a + b\n```", &l)
        .unwrap();
    assert!(good.passed, "{good:?}");
    let also_good = v.check("    return b + a\n", &l).unwrap();
    assert!(also_good.passed, "{also_good:?}");
    assert_eq!(
        good.behaviour, also_good.behaviour,
        "same outputs, same group"
    );

    let wrong = v.check("def add(a, b):\n    return a * b", &l).unwrap();
    assert!(!wrong.passed);
    assert_ne!(wrong.behaviour, good.behaviour);
    assert!(
        wrong.feedback.contains("add(2, 3) returned 6, expected 5"),
        "{}",
        wrong.feedback
    );
    assert!(
        wrong.feedback.contains("File \"main.py\""),
        "{}",
        wrong.feedback
    );

    let broken = v.check("def add(a, b) return", &l).unwrap();
    assert!(
        !broken.passed && broken.feedback.contains("SyntaxError"),
        "{}",
        broken.feedback
    );
    let spin = v.check("def add(a, b):\n    while True: pass", &l).unwrap();
    assert!(
        !spin.passed && spin.feedback.contains("limit"),
        "{}",
        spin.feedback
    );
}

#[test]
fn refine_records_every_round_with_the_feedback_in_the_next_prompt() {
    let ens = Ensemble::from_toml(
        "strategy = \"refine\"\nrounds = 2\nanswer = \"code\"\nmax_tokens = 40\nseed = 3\n\
         [[member]]\nmodel = \"smollm2-135m\"\nrole = \"programmer\"\ncount = 2\n\
         tools = [\"python\"]",
        Path::new("."),
    )
    .unwrap();
    // A test no reply can pass, so that both rounds run.
    let v = Verifier::CodeTests {
        prompt: "def inc(x):\n    \"\"\"Return x plus one.\"\"\"\n".into(),
        test: "def check(f):\n    assert f(1) == 'never', 'inc(1) must be never'\n".into(),
        entry_point: "inc".into(),
        inputs: vec!["1".into()],
    };
    let t = run(
        &ens,
        "Write a Python function inc(x) that returns x + 1.",
        Some(&v),
    )
    .unwrap();
    assert_eq!(t.strategy, Strategy::Refine);
    assert_eq!((t.rounds.len(), t.agents.len(), t.prompts.len()), (1, 2, 2));
    for a in t.rounds[0].iter().chain(&t.agents) {
        let verdict = a.verdict.as_ref().expect("every candidate is verified");
        assert!(!verdict.passed);
    }
    let second = &t.prompts[1];
    assert!(
        second.starts_with("Write a Python function inc(x)"),
        "{second}"
    );
    assert!(
        second.contains("Earlier attempts failed a check"),
        "{second}"
    );
    let feedback = &t.rounds[0]
        .iter()
        .max_by(|a, b| a.logprob_mean.total_cmp(&b.logprob_mean));
    let fb = &feedback.unwrap().verdict.as_ref().unwrap().feedback;
    assert!(
        second.contains(fb.trim()),
        "feedback {fb:?} not in {second}"
    );
    assert!(
        t.notes.iter().any(|n| n.contains("no candidate passed")),
        "{:?}",
        t.notes
    );
    let json = serde_json::to_value(&t).unwrap();
    assert_eq!(json["strategy"], "refine");
    assert!(json["rounds"][0][0]["verdict"]["feedback"].is_string());
}

#[test]
fn exec_vote_checks_arithmetic_and_its_decision_recomputes_from_the_trace() {
    let ens = Ensemble::from_toml(
        "strategy = \"exec-vote\"\nanswer = \"number\"\nmax_tokens = 48\nseed = 5\n\
         [[member]]\nmodel = \"smollm2-135m\"\nrole = \"step-by-step\"\ntemperature = 0.9\n\
         count = 4\ntools = [\"calculator\"]",
        Path::new("."),
    )
    .unwrap();
    let t = run(&ens, "What is 12 * 4 + 2?", None).unwrap();
    assert_eq!(t.agents.len(), 4);
    assert!(t.agents.iter().all(|a| a.verdict.is_some()));
    let verdicts: Vec<_> = t.agents.iter().map(|a| a.verdict.clone()).collect();
    let (again, _) = exec_vote(&t.candidates(), &verdicts);
    assert_eq!((t.winner, t.answer.clone()), (again.winner, again.answer));
    assert!(t
        .votes
        .keys()
        .all(|k| k.starts_with("pass ") || k.starts_with("fail ")));
    let passing = t
        .agents
        .iter()
        .filter(|a| a.verdict.as_ref().unwrap().passed)
        .count();
    assert_eq!(passing > 0, t.votes.keys().any(|k| k.starts_with("pass ")));
}

#[test]
fn strategies_refuse_agents_without_the_tool_and_code_without_tests() {
    let no_tools = Ensemble::from_toml(
        "strategy = \"exec-vote\"\nanswer = \"code\"\n[[member]]\nmodel = \"smollm2-135m\"\n\
         role = \"programmer\"",
        Path::new("."),
    )
    .unwrap();
    let v = Verifier::from_examples(ADD, "add").unwrap();
    let err = format!("{:#}", run(&no_tools, "add", Some(&v)).unwrap_err());
    assert!(
        err.contains("strategy `exec-vote` checks answers with the `python` tool")
            && err.contains("tools = [\"python\"]"),
        "{err}"
    );
    let mut refine = Ensemble::load("refine").unwrap();
    refine.members.truncate(1);
    let err = format!("{:#}", run(&refine, "add", None).unwrap_err());
    assert!(err.contains("needs a verifier for `code` answers"), "{err}");
}
