//! Program answers (`answer = "program"`, after PAL) on a real model, qwen2.5-coder-0.5b:
//! its agents write Python, the sandbox runs it, the number printed is the vote; a program
//! that crashes is recorded in the trace and casts no vote. The questions are written here
//! (not taken from a GSM8K split).
mod common;
use conclave::ensemble::aggregate::{self, WeightBy};
use conclave::ensemble::{Ensemble, Trace};
use conclave::tools::Status;
use std::path::Path;

const QWEN: &str = "qwen2.5-coder-0.5b";

fn run(ens: &Ensemble, question: &str) -> Trace {
    common::run_ensemble(common::engine(&[QWEN]), ens, question)
}

/// 4 trays × 6 muffins − 9 sold = 15.
const MUFFINS: &str = "A baker makes 4 trays of muffins with 6 muffins on each tray. She sells 9 \
                       muffins. How many muffins does she have left?";

#[test]
fn program_answers_vote_on_the_number_their_programs_print() {
    // No role given: a program-answer ensemble's agents get the `pal` role. Two greedy agents
    // write one program, which runs once.
    let ens = Ensemble::from_toml(
        &format!(
            "answer = \"program\"\nmax_tokens = 200\nseed = 5\n\
             [[member]]\nmodel = \"{QWEN}\"\ntemperature = 0.0\ncount = 2\n\
             [[member]]\nmodel = \"{QWEN}\"\ntemperature = 0.5\ncount = 2\n"
        ),
        Path::new("."),
    )
    .unwrap();
    let t = run(&ens, MUFFINS);
    let shown = serde_json::to_string_pretty(&t).unwrap();
    assert_eq!(t.answer.as_deref(), Some("15"), "{shown}");
    for a in &t.agents {
        assert_eq!(a.role, "pal");
        let p = a
            .program
            .as_ref()
            .expect("every agent's program is recorded");
        // An agent's answer is the number its program printed, and only that.
        let ran = p.status == Some(Status::Ok) && a.extracted.is_some();
        assert!(ran || a.extracted.is_none(), "{shown}");
    }
    let greedy = &t.agents[..2];
    for a in greedy {
        let p = a.program.as_ref().unwrap();
        assert_eq!(
            (p.status, a.extracted.as_deref()),
            (Some(Status::Ok), Some("15")),
            "{shown}"
        );
        assert!(p.stdout.ends_with("15"), "{shown}");
    }
    assert_eq!(greedy[0].text, greedy[1].text);
    let cached: Vec<bool> = greedy
        .iter()
        .map(|a| a.program.as_ref().unwrap().cached)
        .collect();
    assert_eq!(cached, [false, true], "one program, one run");
    let voters = t.agents.iter().filter(|a| a.extracted.is_some()).count();
    assert_eq!(t.votes.values().sum::<f64>(), voters as f64, "{shown}");
    let json = serde_json::to_value(&t).unwrap();
    assert_eq!(json["agents"][0]["program"]["status"], "ok");
}

#[test]
fn a_program_that_crashes_is_traced_and_casts_no_vote() {
    // Two agents as above, and two whose role asks for programs that read their numbers from
    // standard input, which the sandbox closes: `input()` raises EOFError, a real crash of a
    // real program, every time.
    let ens = Ensemble::from_toml(
        &format!(
            "answer = \"program\"\nmax_tokens = 200\nseed = 9\n\
             [roles.reader]\n\
             system = \"Solve the word problem with a short Python program in one ```python \
             block. The program must read every number of the problem from standard input \
             with int(input()), one per line, then print the final answer.\"\n\
             [[member]]\nmodel = \"{QWEN}\"\ntemperature = 0.0\ncount = 2\n\
             [[member]]\nmodel = \"{QWEN}\"\nrole = \"reader\"\ntemperature = 0.0\n\
             [[member]]\nmodel = \"{QWEN}\"\nrole = \"reader\"\ntemperature = 0.4\n"
        ),
        Path::new("."),
    )
    .unwrap();
    let t = run(&ens, MUFFINS);
    let shown = serde_json::to_string_pretty(&t).unwrap();
    let (solvers, readers) = t.agents.split_at(2);
    for a in readers {
        assert_eq!(a.role, "reader");
        let p = a.program.as_ref().expect("the crash is recorded");
        assert!(a.text.contains("input("), "{shown}");
        assert_eq!(
            (p.status, p.exit_code, a.extracted.as_deref()),
            (Some(Status::Error), Some(1), None),
            "{shown}"
        );
        assert!(
            p.stderr.contains("EOFError") && p.reason.contains("EOFError"),
            "{shown}"
        );
    }
    for a in solvers {
        assert_eq!(a.extracted.as_deref(), Some("15"), "{shown}");
    }
    // Only the programs that ran vote, whatever the strategy.
    assert_eq!(t.answer.as_deref(), Some("15"));
    assert_eq!(
        t.votes.iter().collect::<Vec<_>>(),
        [(&"15".to_string(), &2.0)],
        "{shown}"
    );
    let cands = t.candidates();
    assert_eq!(aggregate::vote(&cands).votes, t.votes);
    let weighted = aggregate::weighted(&cands, WeightBy::Weight);
    assert_eq!(weighted.votes.values().sum::<f64>(), 2.0);
    // The trace file says why: the status and the traceback's end.
    let json = serde_json::to_value(&t).unwrap();
    let p = &json["agents"][2]["program"];
    assert_eq!(p["status"], "error");
    assert!(p["stderr"].as_str().unwrap().contains("EOFError"), "{p}");
    assert!(json["agents"][2]["extracted"].is_null());
    // `conclave trace show` says so too.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trace.json");
    std::fs::write(&file, json.to_string()).unwrap();
    let (ok, out, err) = common::conclave(&[], &["trace", "show", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("reader · T 0.00 → - ·") && out.contains("program error: exit status 1"),
        "{out}"
    );
    assert!(
        out.contains("EOFError") && out.contains("program ran"),
        "{out}"
    );
}
