//! Grammar-constrained decoding with real models: every row of a job follows its JSON Schema,
//! regex or Lark grammar on its own, a grammar that cannot compile is a typed error, and a
//! grammar with no way on ends the row as a dead end.
mod common;
use conclave::engine::{
    Constraint, Engine, Finish, Grammar, Job, JobError, Message, Output, Prompt, SamplingParams,
};
use serde_json::{json, Value};

fn job(model: &str, text: &str, constraint: Option<Constraint>, seeds: &[u64]) -> Job {
    Job {
        model: model.into(),
        prompt: Prompt::Chat(vec![Message::new("user", text)]),
        max_tokens: 120,
        stop: vec![],
        samples: seeds
            .iter()
            .map(|&seed| SamplingParams {
                temperature: 1.0,
                seed,
                ..Default::default()
            })
            .collect(),
        ignore_eos: false,
        stream: None,
        constraint,
    }
}

fn run(job: Job) -> anyhow::Result<Output> {
    common::model_path(&job.model);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(Engine::start().generate(job))
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3}
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": false
    })
}

/// Checks an output against `person_schema` by hand.
fn is_person(text: &str) -> bool {
    let Ok(Value::Object(o)) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    let name = o.get("name").and_then(Value::as_str);
    let age = o.get("age").and_then(Value::as_i64);
    let pets = o.get("pets").and_then(Value::as_array);
    o.len() == 3
        && name.is_some_and(|n| n.chars().count() <= 20)
        && age.is_some_and(|a| (0..=150).contains(&a))
        && pets.is_some_and(|p| {
            p.len() <= 3
                && p.iter()
                    .all(|x| matches!(x.as_str(), Some("cat" | "dog" | "fish")))
        })
}

#[test]
fn every_row_of_a_job_follows_a_json_schema_on_its_own() {
    let seeds = [1, 2, 3, 4, 5, 6];
    let out = run(job(
        "smollm2-135m",
        "Describe a person as JSON.",
        Some(Constraint::Full(Grammar::JsonSchema(person_schema()))),
        &seeds,
    ))
    .unwrap();
    let texts: Vec<&str> = out.completions.iter().map(|c| c.text.as_str()).collect();
    for c in &out.completions {
        assert!(is_person(&c.text), "not a person: {:?}", c.text);
        assert_ne!(c.finish, Finish::Length, "{:?}", c.text);
    }
    let mut distinct = texts.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() > 1,
        "the rows did not sample apart: {texts:?}"
    );
    // Unconstrained, the same model and seeds write no such JSON.
    let free = run(job(
        "smollm2-135m",
        "Describe a person as JSON.",
        None,
        &seeds,
    ))
    .unwrap();
    assert!(
        free.completions.iter().any(|c| !is_person(&c.text)),
        "the test cannot tell a constraint from none"
    );
}

#[test]
fn a_regex_and_a_lark_grammar_hold() {
    let out = run(job(
        "smollm2-135m",
        "Write a part number.",
        Some(Constraint::Full(Grammar::Regex("[A-Z]{2}-[0-9]{3}".into()))),
        &[7, 8, 9],
    ))
    .unwrap();
    for c in &out.completions {
        let b = c.text.as_bytes();
        assert!(
            b.len() == 6
                && b[..2].iter().all(u8::is_ascii_uppercase)
                && b[2] == b'-'
                && b[3..].iter().all(u8::is_ascii_digit),
            "{:?}",
            c.text
        );
        assert_eq!(c.finish, Finish::Stop);
    }
    let lark = r#"
        start: "Answer: " choice "."
        choice: "yes" | "no" | "maybe"
    "#;
    let out = run(job(
        "qwen2.5-coder-0.5b",
        "Is the sky blue?",
        Some(Constraint::Full(Grammar::Lark(lark.into()))),
        &[1, 2, 3],
    ))
    .unwrap();
    for c in &out.completions {
        assert!(
            ["Answer: yes.", "Answer: no.", "Answer: maybe."].contains(&c.text.as_str()),
            "{:?}",
            c.text
        );
    }
}

#[test]
fn a_grammar_that_cannot_compile_is_a_bad_grammar_error() {
    for grammar in [
        Grammar::Lark("start: undefined_rule".into()),
        Grammar::Regex("[a-".into()),
        Grammar::JsonSchema(json!({"type": "no-such-type"})),
    ] {
        let err = run(job(
            "smollm2-135m",
            "hi",
            Some(Constraint::Full(grammar.clone())),
            &[1],
        ))
        .unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<JobError>(),
                Some(JobError::BadGrammar(_))
            ),
            "{grammar:?}: {err:#}"
        );
    }
}
