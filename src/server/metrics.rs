//! `/metrics`: requests, tokens, queue depth, latencies and decode speed, in the text format
//! Prometheus scrapes (OpenMetrics, written by the `prometheus-client` crate).
use crate::engine::{Engine, Output};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// OpenMetrics' media type (the format `prometheus_client::encoding::text` writes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

fn latency_histogram() -> Histogram {
    // 10 ms to about 80 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    generation: Family<ModelLabels, Histogram, fn() -> Histogram>,
    prompt_tokens: Family<ModelLabels, Counter>,
    completion_tokens: Family<ModelLabels, Counter>,
    decode_tokens: Family<ModelLabels, Counter>,
    decode_seconds: Family<ModelLabels, Counter<f64, AtomicU64>>,
    decode_tok_s: Family<ModelLabels, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    /// `slots` is the server's admission semaphore, read at each scrape.
    pub fn new(engine: Engine, slots: Arc<Semaphore>, max_queue: usize) -> Self {
        let mut registry = Registry::with_prefix("conclave");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by endpoint and status",
            requests.clone(),
        );
        let latency: Family<EndpointLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time to the response head (for streams: to the first token)",
            latency.clone(),
        );
        let generation: Family<ModelLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "generation_duration_seconds",
            "Prefill plus decode time of finished generations",
            generation.clone(),
        );
        let prompt_tokens = Family::<ModelLabels, Counter>::default();
        registry.register(
            "prompt_tokens",
            "Prompt tokens prefilled",
            prompt_tokens.clone(),
        );
        let completion_tokens = Family::<ModelLabels, Counter>::default();
        registry.register(
            "completion_tokens",
            "Tokens generated",
            completion_tokens.clone(),
        );
        let decode_tokens = Family::<ModelLabels, Counter>::default();
        registry.register(
            "decode_tokens",
            "Tokens produced by decode steps",
            decode_tokens.clone(),
        );
        let decode_seconds = Family::<ModelLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "decode_seconds",
            "Time spent in decode steps",
            decode_seconds.clone(),
        );
        let decode_tok_s = Family::<ModelLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "decode_tokens_per_second",
            "Decode speed since the server started: decode tokens / decode seconds",
            decode_tok_s.clone(),
        );
        registry.register_collector(Box::new(Live {
            engine,
            slots,
            max_queue,
        }));
        Self {
            registry,
            requests,
            latency,
            generation,
            prompt_tokens,
            completion_tokens,
            decode_tokens,
            decode_seconds,
            decode_tok_s,
        }
    }

    pub fn request(&self, endpoint: &str, status: u16, seconds: f64) {
        let endpoint = endpoint.to_string();
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(seconds);
    }

    /// Token counts and speed of one finished generation.
    pub fn generation(&self, model: &str, o: &Output) {
        self.tokens(model, o.prompt_tokens, o.completion_tokens());
        let m = ModelLabels {
            model: model.to_string(),
        };
        self.generation
            .get_or_create(&m)
            .observe(o.prefill_seconds + o.decode_seconds);
        let tokens = self.decode_tokens.get_or_create(&m);
        tokens.inc_by(o.decode_tokens as u64);
        let seconds = self.decode_seconds.get_or_create(&m);
        seconds.inc_by(o.decode_seconds);
        if seconds.get() > 0.0 {
            self.decode_tok_s
                .get_or_create(&m)
                .set(tokens.get() as f64 / seconds.get());
        }
    }

    pub fn tokens(&self, model: &str, prompt: usize, completion: usize) {
        let m = ModelLabels {
            model: model.to_string(),
        };
        self.prompt_tokens.get_or_create(&m).inc_by(prompt as u64);
        self.completion_tokens
            .get_or_create(&m)
            .inc_by(completion as u64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Values read from the engine and the admission semaphore at scrape time.
struct Live {
    engine: Engine,
    slots: Arc<Semaphore>,
    max_queue: usize,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.engine.stats();
        let admitted = self.max_queue - self.slots.available_permits().min(self.max_queue);
        let gauges = [
            (
                "requests_admitted",
                "Requests queued or running in the server (at most --max-queue).",
                admitted as i64,
            ),
            (
                "queue_depth",
                "Engine jobs sent and not yet taken up by the engine thread.",
                s.queued.load(Ordering::SeqCst) as i64,
            ),
            (
                "jobs_running",
                "Engine jobs taken up and not yet ended (prefilling or decoding).",
                s.running.load(Ordering::SeqCst) as i64,
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let counters = [
            (
                "jobs_cancelled",
                "Engine jobs dropped because their client went away.",
                s.cancelled.load(Ordering::SeqCst),
            ),
            (
                "prefills",
                "Prompts prefilled by the engine: one per job, shared by its samples.",
                s.prefills.load(Ordering::SeqCst),
            ),
            (
                "cached_prompt_tokens",
                "Prompt tokens the engine took from its prefix cache instead of prefilling.",
                s.cached_tokens.load(Ordering::SeqCst),
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}
