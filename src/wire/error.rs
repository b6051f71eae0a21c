//! OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `rate_limit_error`, `server_error`, …
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The request field at fault, if one is.
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub code: Option<ErrorCode>,
}

/// A name in OpenAI's errors (`model_not_found`); some servers (llama.cpp's) send the HTTP
/// status there instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ErrorCode {
    Name(String),
    Status(u16),
}
