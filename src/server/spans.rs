//! The span of one API request (HTTP server span, semantic-conventions v1.41.0
//! docs/http/http-spans.md: named `{method} {route}`), continuing the client's trace when the
//! request carries a W3C `traceparent` header. See [`crate::telemetry`] for when it is built.
use crate::telemetry::{remote_parent, TARGET};
use axum::extract::Request;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// A span for `req`, `route` being its endpoint's path (not the request's own, which may hold
/// a model id).
pub(super) fn request(req: &Request, route: &str) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = format!("{} {route}", req.method()),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = req.method().as_str(),
        http.route = route,
        http.response.status_code = Empty,
    );
    if !span.is_disabled() {
        // A malformed or absent header leaves the span a root; nothing to report.
        let _ = span.set_parent(remote_parent(req.headers()));
    }
    span
}

/// Records the response's status; a server error marks the span failed.
pub(super) fn responded(span: &Span, status: u16) {
    span.record("http.response.status_code", status as i64);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}
