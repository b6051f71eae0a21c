//! What an ensemble of N samples of one prompt costs against one sample: the structure
//! (one prefill, one batched forward per step) should make N = 8 far cheaper than 8 runs.
//!
//! `cargo bench --bench ensemble`; CONCLAVE_BENCH_MODEL picks the model.
use conclave::engine::{self, generate, Message, Request, SamplingParams};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

const TOKENS: usize = 32;

fn bench(c: &mut Criterion) {
    let name = std::env::var("CONCLAVE_BENCH_MODEL").unwrap_or_else(|_| "smollm2-135m".into());
    let model = engine::load(&name).expect("load model");
    let prompt = model
        .encode_chat(&[Message::new("user", "Write a haiku about the sea.")])
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
        let req = Request {
            prompt: prompt.clone(),
            max_tokens: TOKENS,
            samples,
            ignore_eos: true,
            ..Default::default()
        };
        // Throughput in generated tokens, so N = 8 and N = 1 compare as tokens/s.
        group.throughput(Throughput::Elements((n * TOKENS) as u64));
        group.bench_with_input(BenchmarkId::new("samples", n), &req, |b, req| {
            b.iter(|| generate(&model, req, &mut |_, _| {}).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
