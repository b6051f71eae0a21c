//! `chat {model}` spans of engine jobs (GenAI semantic conventions, inference spans:
//! <https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/>).
//!
//! One job serves several samples (an ensemble's agents of one model and role share its
//! prefill and decode as one batch), so each sample gets its own span, under its agent's span
//! when the caller names one: the tree reads agent → chat. Every span of a job carries the
//! job's whole prompt as `gen_ai.usage.input_tokens` and its own sample's tokens as
//! `gen_ai.usage.output_tokens`. Summed over spans, output tokens equal an ensemble trace's
//! `usage.completion_tokens`, while input tokens count a shared prompt once per sample where
//! the trace's `usage.prompt_tokens` counts it once per job.
use super::generate::{Finish, Output};
use super::sampler::SamplingParams;
use crate::telemetry::TARGET;
use anyhow::Result;
use opentelemetry::{Array, StringValue, Value};
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// One open span per sample of a job on `model`, sample `i` under `parents[i]` (the current
/// span when `parents` is shorter); empty when the spans are disabled (no exporter), so
/// nothing is built.
pub(super) fn open(
    model: &str,
    max_tokens: usize,
    samples: &[SamplingParams],
    parents: &[Span],
) -> Vec<Span> {
    let mut spans = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let parent = parents.get(i).cloned().unwrap_or_else(Span::current);
        let span = tracing::info_span!(
            target: TARGET,
            parent: &parent,
            "chat",
            otel.name = format!("chat {model}"),
            otel.kind = "client",
            otel.status_code = Empty,
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = "conclave",
            gen_ai.request.model = model,
            gen_ai.request.temperature = crate::telemetry::decimal(s.temperature),
            gen_ai.request.max_tokens = max_tokens as i64,
            gen_ai.request.seed = i64::try_from(s.seed).ok(),
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            conclave.cached_tokens = Empty,
            conclave.sample = i as i64,
            "error.type" = Empty,
        );
        if span.is_disabled() {
            return Vec::new();
        }
        spans.push(span);
    }
    spans
}

/// Records each sample's usage and finish reason (or the job's error) on its span.
pub(super) fn close(spans: Vec<Span>, out: &Result<Output>) {
    for (i, span) in spans.into_iter().enumerate() {
        match out {
            Ok(o) => {
                span.record("gen_ai.usage.input_tokens", o.prompt_tokens as i64);
                span.record("conclave.cached_tokens", o.cached_tokens as i64);
                if let Some(c) = o.completions.get(i) {
                    span.record("gen_ai.usage.output_tokens", c.tokens.len() as i64);
                    // A string array, which tracing's fields cannot hold.
                    let reason = StringValue::from(finish_reason(c.finish));
                    span.set_attribute(
                        "gen_ai.response.finish_reasons",
                        Value::Array(Array::String(vec![reason])),
                    );
                }
            }
            Err(e) => {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", format!("{e:#}"));
            }
        }
    }
}

/// OpenAI's names, as the conventions' examples give them.
fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Eos | Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::DeadEnd => "dead_end",
        Finish::Unsure => "unsure",
    }
}
