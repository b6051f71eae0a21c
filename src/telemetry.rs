//! Logging to stderr, and OpenTelemetry traces over OTLP/HTTP when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.
//!
//! Conclave's spans follow the GenAI semantic conventions
//! (<https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-agent-spans/> and
//! `gen-ai-spans/`): `invoke_agent {name}` for ensembles and agents, `chat {model}` for engine
//! jobs, `execute_tool {tool}` for sandbox runs and agent tool calls, plus `conclave.*`
//! attributes for what the conventions do not name (the vote). They all have the target
//! [`TARGET`] at level INFO: the stderr log's default filter (`warn`) disables them, so with no
//! endpoint set no span is built at all (the `span!` macros check a cached per-call-site
//! interest before evaluating a field), and with one set only the OTLP layer sees them.
//!
//! Counts are recorded as `i64`: tracing-opentelemetry sends a `u64` field as a string.
use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::Mutex;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// The target of every span meant for OpenTelemetry.
pub const TARGET: &str = "conclave::otel";

/// The service name when `OTEL_SERVICE_NAME` is unset.
const SERVICE: &str = "conclave";

/// The exporting provider, while there is one: [`shutdown`] takes it.
static PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);

/// Exports the spans still batched and stops the export thread; later spans are dropped.
/// Call it before the process ends (`main` returning or `std::process::exit`, which skips
/// destructors): the batch exporter sends every few seconds, and a short command would
/// otherwise lose its spans.
pub fn shutdown() {
    let provider = PROVIDER.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(p) = provider {
        if let Err(e) = p.shutdown() {
            eprintln!("warning: could not export the last OpenTelemetry spans: {e}");
        }
    }
}

/// The OTLP endpoint from the environment, if one is set (and not empty).
fn endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok())
    .find(|v| !v.trim().is_empty())
}

/// Installs the global subscriber: the stderr log filtered by `CONCLAVE_LOG` (default `warn`),
/// and, when an OTLP endpoint is set, a batch exporter of conclave's spans. A broken OTLP
/// set-up is reported and the program goes on without export.
pub fn init() {
    let fmt = log_layer();
    let provider = match endpoint().map(|_| provider()) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            eprintln!("warning: OpenTelemetry export is off: {e:#}");
            None
        }
    };
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("conclave"))
            // Busy and idle times would cost two clock reads per poll of a span's future.
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(TARGET, tracing::Level::INFO))
    });
    tracing_subscriber::registry().with(fmt).with(otel).init();
    *PROVIDER.lock().unwrap_or_else(|e| e.into_inner()) = provider;
}

/// The stderr log, filtered by `CONCLAVE_LOG` (default `warn`) on its own, so that the OTLP
/// layer's spans are not formatted.
fn log_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let log = EnvFilter::try_from_env("CONCLAVE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(log)
}

/// A tracer provider exporting in batches over OTLP/HTTP (protobuf) to the endpoint the
/// `OTEL_EXPORTER_OTLP_*` variables name; `OTEL_BSP_*` tune the batches.
fn provider() -> Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .context("cannot make the OTLP exporter: check OTEL_EXPORTER_OTLP_ENDPOINT")?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| SERVICE.into());
    // `Resource::builder` also reads OTEL_RESOURCE_ATTRIBUTES.
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The W3C trace context in `headers` (`traceparent`, `tracestate`), for a server span's
/// parent; an empty context when there is none.
pub fn remote_parent(headers: &axum::http::HeaderMap) -> opentelemetry::Context {
    struct Headers<'a>(&'a axum::http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)))
}

/// `x` as the `f64` of its shortest decimal form: 0.7f32 becomes 0.7, as a trace file writes
/// it, not 0.699999988 (`x as f64`).
pub fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_endpoint_the_spans_are_not_built() {
        if std::env::var_os("CONCLAVE_LOG").is_some() {
            return; // a log level asked for may enable them
        }
        let subscriber = tracing_subscriber::registry().with(log_layer());
        tracing::subscriber::with_default(subscriber, || {
            let built = std::cell::Cell::new(false);
            let span = tracing::info_span!(
                target: TARGET,
                "invoke_agent",
                otel.name = {
                    built.set(true);
                    "invoke_agent x"
                }
            );
            assert!(span.is_disabled());
            assert!(!built.get(), "a disabled span's fields were evaluated");
            // What the stderr log shows is still on.
            assert!(tracing::enabled!(target: "conclave", tracing::Level::WARN));
        });
    }
}
