//! Generation on a real model: batched samples, streaming, limits.
mod common;
use conclave::engine::{generate, Engine, Finish, Job, Message, Prompt, Request, SamplingParams};
use std::sync::atomic::Ordering;

fn prompt(text: &str) -> Vec<u32> {
    common::smollm2()
        .encode_chat(&[Message::new("user", text)])
        .unwrap()
}

fn sampling(temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        seed,
        ..Default::default()
    }
}

#[test]
fn streamed_pieces_make_the_final_text() {
    let model = common::smollm2();
    let req = Request {
        prompt: prompt("Count from one to five."),
        max_tokens: 30,
        stop: vec![],
        samples: vec![sampling(0.7, 1), sampling(0.7, 2)],
        ..Default::default()
    };
    let mut streamed = vec![String::new(); 2];
    let out = generate(model, &req, &mut |i, piece| streamed[i].push_str(piece)).unwrap();
    for (s, c) in streamed.iter().zip(&out.completions) {
        assert_eq!(s, &c.text);
        assert!(!c.text.is_empty());
    }
}

/// Through the engine, whose counters show the prefills: four samples of one job, one.
#[test]
fn batched_samples_share_one_prefill_and_differ_by_seed() {
    common::model_path("smollm2-135m");
    let engine = Engine::start();
    let job = Job {
        model: "smollm2-135m".into(),
        prompt: Prompt::Chat(vec![Message::new("user", "Tell me a fun fact.")]),
        max_tokens: 24,
        stop: vec![],
        samples: (0..4).map(|s| sampling(1.0, 100 + s)).collect(),
        ignore_eos: false,
        stream: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = rt.block_on(engine.generate(job)).unwrap();
    assert_eq!(engine.stats().prefills.load(Ordering::SeqCst), 1);
    assert_eq!(out.completions.len(), 4);
    let texts: std::collections::HashSet<_> = out.completions.iter().map(|c| &c.text).collect();
    assert!(
        texts.len() >= 3,
        "seeds should give different samples: {texts:?}"
    );
}

#[test]
fn a_sample_in_a_batch_equals_the_same_sample_alone() {
    let model = common::smollm2();
    let p = prompt("Name three fruits.");
    let alone = Request {
        prompt: p.clone(),
        max_tokens: 16,
        stop: vec![],
        samples: vec![sampling(0.0, 0)],
        ..Default::default()
    };
    let batch = Request {
        prompt: p,
        max_tokens: 16,
        stop: vec![],
        samples: vec![sampling(1.2, 9), sampling(0.0, 0), sampling(1.2, 10)],
        ..Default::default()
    };
    let a = generate(model, &alone, &mut |_, _| {}).unwrap();
    let b = generate(model, &batch, &mut |_, _| {}).unwrap();
    assert_eq!(a.completions[0].text, b.completions[1].text);
}

#[test]
fn max_tokens_and_eos_finish_reasons() {
    let model = common::smollm2();
    let req = Request {
        prompt: prompt("Write a long story about a dragon."),
        max_tokens: 5,
        stop: vec![],
        samples: vec![sampling(0.0, 0)],
        ..Default::default()
    };
    let out = generate(model, &req, &mut |_, _| {}).unwrap();
    assert_eq!(out.completions[0].finish, Finish::Length);
    assert_eq!(out.completions[0].tokens.len(), 5);

    let req = Request {
        prompt: prompt("Say only: yes"),
        max_tokens: 64,
        stop: vec![],
        samples: vec![sampling(0.0, 0)],
        ..Default::default()
    };
    let out = generate(model, &req, &mut |_, _| {}).unwrap();
    assert_eq!(
        out.completions[0].finish,
        Finish::Eos,
        "{:?}",
        out.completions[0].text
    );
}
