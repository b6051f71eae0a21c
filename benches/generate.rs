//! Prefill and decode speed of the default model, in tokens per second, and decode with each
//! token's confidence signals kept (what the confidence strategies ask of the sampler).
//!
//! `cargo bench --bench generate`; set CONCLAVE_BENCH_MODEL to another catalog name or path.
use conclave::engine::{Engine, Job, Prompt, SamplingParams};
use conclave::model::Model;
use conclave::store::fetch;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

const PROMPT_TOKENS: usize = 128;
const DECODE_TOKENS: usize = 64;

fn bench(c: &mut Criterion) {
    let name = std::env::var("CONCLAVE_BENCH_MODEL").unwrap_or_else(|_| "smollm2-135m".into());
    // The prefill is the model's own forward pass; generation goes through the engine.
    let path = fetch::resolve(&name, true).expect("find the model");
    let model = Model::load(&path, &name, &candle_core::Device::Cpu).expect("load model");
    // A fixed 128-token prompt: token ids of ordinary text, repeated.
    let text =
        "The history of science is the study of how people came to understand the natural world. ";
    let mut prompt = model.encode_text(text).unwrap();
    while prompt.len() < PROMPT_TOKENS {
        prompt.extend_from_within(..prompt.len().min(PROMPT_TOKENS - prompt.len()));
    }
    let mut group = c.benchmark_group(&name);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));

    group.throughput(Throughput::Elements(PROMPT_TOKENS as u64));
    group.bench_function("prefill_128", |b| {
        b.iter(|| {
            let mut cache = model.new_cache(1, PROMPT_TOKENS).unwrap();
            model.step(&[prompt.clone()], &mut cache).unwrap()
        })
    });

    // Exactly 64 tokens each time: end-of-turn tokens are ignored.
    let job = Job {
        model: name.clone(),
        prompt: Prompt::Text(text.into()),
        max_tokens: DECODE_TOKENS,
        stop: vec![],
        samples: vec![SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }],
        ignore_eos: true,
        stream: None,
        constraint: None,
    };
    let engine = Engine::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    group.throughput(Throughput::Elements(DECODE_TOKENS as u64));
    group.bench_function("generate_64", |b| {
        b.iter(|| rt.block_on(engine.generate(job.clone())).unwrap())
    });
    let mut with_signals = job.clone();
    with_signals.samples[0].confidence_k = Some(20);
    group.bench_function("generate_64_signals", |b| {
        b.iter(|| rt.block_on(engine.generate(with_signals.clone())).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
