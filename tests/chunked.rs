//! Chunked prefill on a real model: a long prompt that arrives while another job streams goes
//! in a chunk at a time between that job's decode steps, so the stream keeps flowing; a short
//! one goes in whole and answers exactly as on an idle engine.
mod common;
use conclave::engine::{Engine, Job, Message, Output, Piece, Prompt, SamplingParams};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

const MODEL: &str = "smollm2-135m";

fn job(prompt: Prompt, max_tokens: usize, ignore_eos: bool) -> Job {
    Job {
        model: MODEL.into(),
        prompt,
        max_tokens,
        stop: vec![],
        samples: vec![SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }],
        ignore_eos,
        stream: None,
        constraint: None,
    }
}

/// A job that streams 300 tokens, started on `engine`; returns once its first piece is in.
async fn streaming(engine: &Engine) -> UnboundedReceiver<Piece> {
    let (tx, mut rx) = unbounded_channel();
    let mut long = job(
        Prompt::Text("Once upon a time, in a quiet harbour town,".into()),
        300,
        true,
    );
    long.stream = Some(tx);
    let e = engine.clone();
    tokio::spawn(async move { e.generate(long).await.unwrap() });
    rx.recv().await.expect("the stream's first piece");
    rx
}

fn short_chat() -> Job {
    job(
        Prompt::Chat(vec![Message::new(
            "user",
            "Name three colours of the rainbow.",
        )]),
        16,
        false,
    )
}

fn bits(o: &Output) -> (Vec<u32>, u32) {
    let c = &o.completions[0];
    (c.tokens.clone(), c.logprob_sum.to_bits())
}

/// While a 1,500-token prompt is prefilled, the job already streaming gets many tokens (with
/// the prompt prefilled in one go it would get none until the prompt is in).
#[test]
fn a_long_prompt_goes_in_between_decode_steps() {
    common::model_path(MODEL);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = Engine::start();
        let mut a = streaming(&engine).await;
        let (tx, mut b_rx) = unbounded_channel();
        let mut b = job(
            Prompt::Filler {
                text: "The lighthouse keeper wrote in the log every night. ".into(),
                tokens: 1500,
            },
            4,
            true,
        );
        b.stream = Some(tx);
        let e = engine.clone();
        let b = tokio::spawn(async move { e.generate(b).await.unwrap() });
        let mut during = 0;
        loop {
            tokio::select! {
                Some(_) = a.recv() => during += 1,
                Some(_) = b_rx.recv() => break,
            }
        }
        let out = b.await.unwrap();
        assert_eq!((out.prompt_tokens, out.cached_tokens), (1500, 0));
        assert_eq!(
            engine
                .stats()
                .prefills
                .load(std::sync::atomic::Ordering::SeqCst),
            2
        );
        assert!(
            during >= 10,
            "the stream got {during} pieces while the long prompt was prefilled"
        );
    });
}

/// A short prompt arriving while another job streams is prefilled whole, not in chunks: its
/// tokens and log-probabilities are the very ones an idle engine gives.
#[test]
fn a_short_prompt_answers_as_on_an_idle_engine() {
    common::model_path(MODEL);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = Engine::start();
        let idle = engine.generate(short_chat()).await.unwrap();
        let _a = streaming(&engine).await;
        let busy = engine.generate(short_chat()).await.unwrap();
        assert!(busy.peak_batch >= 2, "it ran beside the stream");
        assert_eq!(bits(&busy), bits(&idle));
    });
}
