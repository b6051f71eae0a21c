//! Agents answered by another OpenAI-compatible server (another `conclave serve`, llama.cpp's
//! llama-server, vLLM, Ollama), so an ensemble can outgrow one machine.
//!
//! One chat request per agent, each with its own seed: `n` > 1 is not honoured by every such
//! server, so the agents of one remote member do not share a prefill there. Each attempt has a
//! timeout; connection errors, timeouts, 429 and 5xx are retried with exponential backoff.
//! A member that still fails is reported, not fatal: the runner leaves it out of the vote.
use super::config::Remote;
use super::run::{Batch, Reply};
use crate::engine::{Finish, Message, SamplingParams};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The first retry waits this long; each later one twice as long as the one before.
const BACKOFF: Duration = Duration::from_millis(250);
/// A server's `Retry-After` is honoured up to this long; a longer one is a failure.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// One client for every remote call, so connections to a server are reused.
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

/// Every agent's answer from `remote`, asked concurrently. Never fails as a whole: a failed
/// agent's reply is its error message.
pub(crate) async fn answer_all(
    remote: &Remote,
    samplings: &[SamplingParams],
    messages: &[Message],
    max_tokens: usize,
) -> Batch {
    let calls = samplings
        .iter()
        .map(|s| chat(remote, messages, s, max_tokens));
    let results = futures_util::future::join_all(calls).await;
    let mut batch = Batch::default();
    for r in results {
        match r {
            Ok((reply, prompt_tokens)) => {
                batch.prompt_tokens += prompt_tokens;
                batch.completion_tokens += reply.tokens;
                batch.replies.push(Ok(reply));
            }
            Err(e) => batch.replies.push(Err(e)),
        }
    }
    batch
}

/// One chat completion, retried as the member's `retries` allow. Returns the reply and the
/// prompt tokens the server reported.
pub(crate) async fn chat(
    remote: &Remote,
    messages: &[Message],
    sampling: &SamplingParams,
    max_tokens: usize,
) -> Result<(Reply, usize), String> {
    let url = format!("{}/chat/completions", remote.url.trim_end_matches('/'));
    let key = match &remote.api_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            format!("{url}: the environment variable {var} (api_key_env) is not set")
        })?),
        None => None,
    };
    let body = json!({
        "model": remote.model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        // Some servers read a 32-bit seed (llama-server's `seed` is a uint32).
        "seed": sampling.seed & 0x7fff_ffff,
    });
    let timeout = Duration::from_secs_f64(remote.timeout_s.max(0.001));
    let start = Instant::now();
    let mut wait = BACKOFF;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut req = client().post(&url).json(&body).timeout(timeout);
        if let Some(k) = &key {
            req = req.bearer_auth(k);
        }
        let err = match attempt_once(req).await {
            Ok(v) => return parse(&v, start).map_err(|e| format!("{url}: {e}")),
            Err(e) => e,
        };
        if !err.retry || attempt > remote.retries {
            let tries = if attempt > 1 {
                format!(" (after {attempt} attempts)")
            } else {
                String::new()
            };
            return Err(format!("{url}: {}{tries}", err.message));
        }
        tokio::time::sleep(err.retry_after.unwrap_or(wait)).await;
        wait *= 2;
    }
}

struct AttemptError {
    message: String,
    retry: bool,
    retry_after: Option<Duration>,
}

async fn attempt_once(req: reqwest::RequestBuilder) -> Result<Value, AttemptError> {
    let transport = |e: reqwest::Error| AttemptError {
        message: if e.is_timeout() {
            "timed out".to_string()
        } else {
            // The innermost cause says what happened ("Connection refused"), the outer ones where.
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            msg
        },
        retry: true,
        retry_after: None,
    };
    let resp = req.send().await.map_err(transport)?;
    let status = resp.status();
    if status.is_success() {
        return resp.json::<Value>().await.map_err(|e| AttemptError {
            message: format!("the reply is not JSON: {e}"),
            retry: false,
            retry_after: None,
        });
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .filter(|d| *d <= MAX_RETRY_AFTER);
    let text = resp.text().await.unwrap_or_default();
    // OpenAI-style servers explain themselves in `error.message`.
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or(text);
    Err(AttemptError {
        message: format!("HTTP {status}: {message}"),
        retry: status.as_u16() == 429 || status.is_server_error(),
        retry_after,
    })
}

/// The first choice of an OpenAI chat completion.
fn parse(v: &Value, start: Instant) -> Result<(Reply, usize), String> {
    let choice = &v["choices"][0];
    let text = choice["message"]["content"]
        .as_str()
        .ok_or_else(|| format!("the reply has no choices[0].message.content: {v}"))?
        .to_string();
    let finish = match choice["finish_reason"].as_str() {
        Some("length") => Finish::Length,
        _ => Finish::Eos,
    };
    let count = |k: &str| v["usage"][k].as_u64().unwrap_or(0) as usize;
    let reply = Reply {
        text,
        tokens: count("completion_tokens"),
        finish: Some(finish),
        // OpenAI-style replies carry no log-probs unless asked for, and not every server
        // gives them: a remote vote weighs as a neutral, certain one.
        logprob_mean: 0.0,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((reply, count("prompt_tokens")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_completion_is_read() {
        let v = json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"},
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}
        });
        let (r, prompt) = parse(&v, Instant::now()).unwrap();
        assert_eq!((r.text.as_str(), r.tokens, prompt), ("42", 3, 20));
        assert_eq!(r.finish, Some(Finish::Length));
        let err = parse(&json!({"choices": []}), Instant::now()).unwrap_err();
        assert!(err.contains("choices[0].message.content"), "{err}");
    }
}
