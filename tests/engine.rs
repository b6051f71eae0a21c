//! The engine thread: concurrent jobs decode together, and a bad job fails alone.
mod common;
use conclave::engine::{Engine, Job, Message, Prompt, SamplingParams};
use std::sync::atomic::{AtomicUsize, Ordering};

fn job(max_tokens: usize, text: &str) -> Job {
    Job {
        model: "smollm2-135m".into(),
        prompt: Prompt::Chat(vec![Message::new("user", text)]),
        max_tokens,
        stop: vec![],
        samples: vec![SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }],
        ignore_eos: true,
        stream: None,
        constraint: None,
    }
}

#[test]
fn a_short_job_is_not_held_behind_a_long_one() {
    common::model_path("smollm2-135m");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = Engine::start();
        // Load the model first so both jobs below start from the same state.
        engine.generate(job(1, "hi")).await.unwrap();
        // Which job ends first, not how long it takes: with jobs run one after another the
        // short one, submitted second, would end second.
        let finished = std::sync::Arc::new(AtomicUsize::new(0));
        let (e1, e2, f1, f2) = (
            engine.clone(),
            engine.clone(),
            finished.clone(),
            finished.clone(),
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let long_job = Job {
            stream: Some(tx),
            ..job(120, "Tell a story.")
        };
        let long = tokio::spawn(async move {
            let out = e1.generate(long_job).await;
            (out, f1.fetch_add(1, Ordering::SeqCst))
        });
        // The long job is decoding before the short one is sent.
        rx.recv().await.expect("the long job streams text");
        let short = tokio::spawn(async move {
            let out = e2.generate(job(4, "Say hi.")).await;
            (out, f2.fetch_add(1, Ordering::SeqCst))
        });
        let (long_out, long_rank) = long.await.unwrap();
        let (short_out, short_rank) = short.await.unwrap();
        assert_eq!(long_out.unwrap().completions[0].tokens.len(), 120);
        assert_eq!(short_out.unwrap().completions[0].tokens.len(), 4);
        assert_eq!(
            (short_rank, long_rank),
            (0, 1),
            "the short job waited for the long one"
        );
    });
}

#[test]
fn a_failing_job_does_not_stop_the_engine_and_text_streams() {
    common::model_path("smollm2-135m");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = Engine::start();
        let bad = Job {
            model: "/nonexistent/model.gguf".into(),
            ..job(4, "hi")
        };
        let err = format!("{:#}", engine.generate(bad).await.unwrap_err());
        assert!(err.contains("/nonexistent/model.gguf"), "{err}");

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let out = engine
            .generate(Job {
                stream: Some(tx),
                ..job(8, "Count to three.")
            })
            .await
            .unwrap();
        let mut streamed = String::new();
        while let Ok(piece) = rx.try_recv() {
            assert_eq!(piece.sample, 0);
            streamed.push_str(&piece.text);
        }
        assert_eq!(streamed, out.completions[0].text);
    });
}

/// Concurrent jobs with different prompts on one model share decode steps (continuous
/// batching) and still produce exactly what each produces alone.
#[test]
fn concurrent_jobs_share_decode_steps_and_answer_as_alone() {
    common::model_path("smollm2-135m");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = Engine::start();
        let prompts = [
            "Name a colour.",
            "What is two plus two?",
            "Say hello in French.",
        ];
        let mut alone = Vec::new();
        for p in prompts {
            let out = engine.generate(job(12, p)).await.unwrap();
            assert_eq!(out.peak_batch, 1);
            alone.push(out.completions[0].text.clone());
        }
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let e = engine.clone();
                let j = job(12, p);
                tokio::spawn(async move { e.generate(j).await })
            })
            .collect();
        for (h, want) in handles.into_iter().zip(&alone) {
            let out = h.await.unwrap().unwrap();
            assert_eq!(&out.completions[0].text, want, "batched text differs");
            assert!(
                out.peak_batch >= 2,
                "jobs did not share a step: {}",
                out.peak_batch
            );
        }
    });
}

#[test]
fn a_job_whose_stream_receiver_is_dropped_is_cancelled() {
    common::model_path("smollm2-135m");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = Engine::start();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let e = engine.clone();
        let long = tokio::spawn(async move {
            e.generate(Job {
                stream: Some(tx),
                ..job(2000, "Tell a story.")
            })
            .await
        });
        rx.recv().await.expect("the job streams text");
        drop(rx);
        let err = long.await.unwrap().unwrap_err();
        assert_eq!(
            err.downcast_ref::<conclave::engine::JobError>(),
            Some(&conclave::engine::JobError::Cancelled),
            "{err:#}"
        );
        assert_eq!(engine.stats().cancelled.load(Ordering::SeqCst), 1);
        // The engine goes on serving.
        let out = engine.generate(job(3, "hi")).await.unwrap();
        assert_eq!(out.completions[0].tokens.len(), 3);
    });
}
