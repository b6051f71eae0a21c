//! Generation on a real model through the engine: batched samples, streaming, limits.
mod common;
use conclave::engine::{Engine, Finish, Job, Message, Output, Prompt, SamplingParams};
use std::sync::atomic::Ordering;

fn sampling(temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        seed,
        ..Default::default()
    }
}

fn job(text: &str, max_tokens: usize, samples: Vec<SamplingParams>) -> Job {
    Job {
        model: "smollm2-135m".into(),
        prompt: Prompt::Chat(vec![Message::new("user", text)]),
        max_tokens,
        stop: vec![],
        samples,
        ignore_eos: false,
        stream: None,
        constraint: None,
    }
}

/// Runs `job` on a fresh engine; with `stream`, also what it streamed, per sample.
fn generate(mut job: Job, stream: bool) -> (Output, Vec<String>) {
    common::model_path("smollm2-135m");
    let mut streamed = vec![String::new(); job.samples.len()];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    job.stream = stream.then_some(tx);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let out = rt.block_on(Engine::start().generate(job)).unwrap();
    while let Ok(piece) = rx.try_recv() {
        streamed[piece.sample].push_str(&piece.text);
    }
    (out, streamed)
}

#[test]
fn streamed_pieces_make_the_final_text() {
    let req = job(
        "Count from one to five.",
        30,
        vec![sampling(0.7, 1), sampling(0.7, 2)],
    );
    let (out, streamed) = generate(req, true);
    for (s, c) in streamed.iter().zip(&out.completions) {
        assert_eq!(s, &c.text);
        assert!(!c.text.is_empty());
    }
}

/// The engine's counters show the prefills: four samples of one job, one.
#[test]
fn batched_samples_share_one_prefill_and_differ_by_seed() {
    common::model_path("smollm2-135m");
    let engine = Engine::start();
    let samples: Vec<_> = (0..4).map(|s| sampling(1.0, 100 + s)).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let out = rt
        .block_on(engine.generate(job("Tell me a fun fact.", 24, samples)))
        .unwrap();
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
    let q = "Name three fruits.";
    let (a, _) = generate(job(q, 16, vec![sampling(0.0, 0)]), false);
    let batch = vec![sampling(1.2, 9), sampling(0.0, 0), sampling(1.2, 10)];
    let (b, _) = generate(job(q, 16, batch), false);
    assert_eq!(a.completions[0].text, b.completions[1].text);
}

#[test]
fn max_tokens_and_eos_finish_reasons() {
    let (out, _) = generate(
        job(
            "Write a long story about a dragon.",
            5,
            vec![sampling(0.0, 0)],
        ),
        false,
    );
    assert_eq!(out.completions[0].finish, Finish::Length);
    assert_eq!(out.completions[0].tokens.len(), 5);

    let (out, _) = generate(job("Say only: yes", 64, vec![sampling(0.0, 0)]), false);
    assert_eq!(
        out.completions[0].finish,
        Finish::Eos,
        "{:?}",
        out.completions[0].text
    );
}
