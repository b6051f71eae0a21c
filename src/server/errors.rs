//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, so clients
//! (the `openai` packages among them) raise their usual exception for each status.
use crate::engine::JobError;
use crate::wire::{ErrorBody, ErrorCode, ErrorDetail, ResponseFormat};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `rate_limit_error`, `server_error`, …
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, sent as `Retry-After` (429 only).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: a field is missing, malformed or out of range; `param` names it.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            param: param.map(String::from),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 400 for a prompt the model's context cannot hold.
    pub fn context_exceeded(message: impl Into<String>) -> Self {
        Self {
            code: Some("context_length_exceeded"),
            ..Self::invalid(Some("messages"), message)
        }
    }

    pub fn model_not_found(model: &str, hint: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("the model `{model}` does not exist here; {hint}"),
            )
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing or wrong API key: send the server's key as `Authorization: Bearer KEY`",
            )
        }
    }

    pub fn busy(limit: usize, retry_after: u64) -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "the server is busy: {limit} requests are already queued or running \
                     (--max-queue); retry after {retry_after} s"
                ),
            )
        }
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    pub fn timeout(seconds: f64) -> Self {
        Self {
            code: Some("timeout"),
            ..Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                format!("the request took longer than the server's limit of {seconds} s (--request-timeout)"),
            )
        }
    }

    /// An engine failure: a prompt over the context is the client's fault, anything else
    /// the server's.
    pub fn engine(e: &anyhow::Error) -> Self {
        Self::job(e, None)
    }

    /// An engine failure of a job whose constraint came from the request field
    /// `grammar_param`: a grammar that does not compile is the client's fault, named by it.
    pub fn job(e: &anyhow::Error, grammar_param: Option<&str>) -> Self {
        match e.downcast_ref::<JobError>() {
            Some(JobError::PromptTooLong { .. }) => Self::context_exceeded(e.to_string()),
            Some(JobError::BadGrammar(_)) => Self::invalid(
                grammar_param,
                format!("{}: {e:#}", grammar_param.unwrap_or("the request")),
            ),
            _ => Self::internal(e),
        }
    }

    pub fn internal(e: &anyhow::Error) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("{e:#}"),
        )
    }

    /// The JSON body (also sent as an SSE event when a stream fails midway).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                param: self.param.clone(),
                code: self.code.map(|c| ErrorCode::Name(c.to_string())),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// Parses a JSON body into `T`, answering 400 with serde's reason when it does not fit.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        // A malformed `response_format` is named, as a bad value in it is.
        let bad_format = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("response_format").cloned())
            .is_some_and(|f| serde_json::from_value::<Option<ResponseFormat>>(f).is_err());
        ApiError::invalid(
            bad_format.then_some("response_format"),
            format!("the request body is not valid: {e}"),
        )
    })
}
