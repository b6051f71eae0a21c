//! What an ensemble of N samples of one prompt costs against one sample: the structure
//! (one prefill, one batched forward per step) should make N = 8 far cheaper than 8 runs.
//!
//! `cargo bench --bench ensemble`; CONCLAVE_BENCH_MODEL picks the model.
use conclave::engine::{Engine, Job, Message, Prompt, SamplingParams};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

const TOKENS: usize = 32;

fn bench(c: &mut Criterion) {
    let name = std::env::var("CONCLAVE_BENCH_MODEL").unwrap_or_else(|_| "smollm2-135m".into());
    let engine = Engine::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group(format!("{name}/ensemble"));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for n in [1usize, 8] {
        let samples = (0..n as u64)
            .map(|seed| SamplingParams {
                seed,
                ..Default::default()
            })
            .collect();
        let job = Job {
            model: name.clone(),
            prompt: Prompt::Chat(vec![Message::new("user", "Write a haiku about the sea.")]),
            max_tokens: TOKENS,
            stop: vec![],
            samples,
            ignore_eos: true,
            stream: None,
            constraint: None,
        };
        // Throughput in generated tokens, so N = 8 and N = 1 compare as tokens/s.
        group.throughput(Throughput::Elements((n * TOKENS) as u64));
        group.bench_with_input(BenchmarkId::new("samples", n), &job, |b, job| {
            b.iter(|| rt.block_on(engine.generate(job.clone())).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
