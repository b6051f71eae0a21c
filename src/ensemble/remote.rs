//! Agents answered by another OpenAI-compatible server (another `conclave serve`, llama.cpp's
//! llama-server, vLLM, Ollama), so an ensemble can outgrow one machine.
//!
//! One chat request per agent, each with its own seed: `n` > 1 is not honoured by every such
//! server, so the agents of one remote member do not share a prefill there. Each attempt has a
//! timeout; connection errors, timeouts, 429 and 5xx are retried with exponential backoff.
//! A member that still fails is reported, not fatal: the runner leaves it out of the vote.
use super::config::Remote;
use super::reply::{Replies, Reply};
use crate::engine::{Finish, Message, SamplingParams};
use crate::wire::{
    ChatCompletion, ChatMessage, ChatRequest, Common, ErrorBody, FinishReason, Usage,
};
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
) -> Replies {
    let calls = samplings
        .iter()
        .map(|s| chat(remote, messages, s, max_tokens));
    let results = futures_util::future::join_all(calls).await;
    let mut out = Replies::default();
    for r in results {
        match r {
            Ok((reply, usage)) => {
                out.prompt_tokens += usage.prompt_tokens;
                out.cached_tokens += usage.cached_tokens();
                out.completion_tokens += reply.tokens;
                out.replies.push(Ok(reply));
            }
            Err(e) => out.replies.push(Err(e)),
        }
    }
    out
}

/// One chat completion, retried as the member's `retries` allow. Returns the reply and the
/// usage the server reported (zeros where it reported none).
pub(crate) async fn chat(
    remote: &Remote,
    messages: &[Message],
    sampling: &SamplingParams,
    max_tokens: usize,
) -> Result<(Reply, Usage), String> {
    let url = format!("{}/chat/completions", remote.url.trim_end_matches('/'));
    let key = match &remote.api_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            format!("{url}: the environment variable {var} (api_key_env) is not set")
        })?),
        None => None,
    };
    let body = request(remote, messages, sampling, max_tokens);
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
            Ok(c) => return parse(c, start).map_err(|e| format!("{url}: {e}")),
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

/// The chat request for one agent: only what it sets, so any OpenAI-compatible server reads it.
fn request(
    remote: &Remote,
    messages: &[Message],
    sampling: &SamplingParams,
    max_tokens: usize,
) -> ChatRequest {
    ChatRequest {
        messages: messages
            .iter()
            .map(|m| ChatMessage::text(&m.role, &m.content))
            .collect(),
        common: Common {
            model: remote.model.clone(),
            max_tokens: Some(max_tokens),
            temperature: Some(sampling.temperature),
            top_p: Some(sampling.top_p),
            // Some servers read a 32-bit seed (llama-server's `seed` is a uint32).
            seed: Some((sampling.seed & 0x7fff_ffff) as i64),
            ..Common::default()
        },
        ..ChatRequest::default()
    }
}

async fn attempt_once(req: reqwest::RequestBuilder) -> Result<ChatCompletion, AttemptError> {
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
        return resp
            .json::<ChatCompletion>()
            .await
            .map_err(|e| AttemptError {
                message: format!("the reply is not an OpenAI chat completion: {e}"),
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
    let message = serde_json::from_str::<ErrorBody>(&text)
        .map(|b| b.error.message)
        .unwrap_or(text);
    Err(AttemptError {
        message: format!("HTTP {status}: {message}"),
        retry: status.as_u16() == 429 || status.is_server_error(),
        retry_after,
    })
}

/// The first choice of an OpenAI chat completion, and the usage the server reported.
fn parse(c: ChatCompletion, start: Instant) -> Result<(Reply, Usage), String> {
    let choice = c
        .choices
        .into_iter()
        .next()
        .ok_or("the reply has no choices")?;
    let text = match &choice.message.content {
        Some(content) => content
            .text()
            .map_err(|kind| format!("the reply's content has a part of type `{kind}`"))?,
        None => return Err("the reply's choices[0].message has no content".into()),
    };
    let finish = match choice.finish_reason {
        Some(FinishReason::Length) => Finish::Length,
        _ => Finish::Eos,
    };
    let usage = c.usage.unwrap_or_default();
    let reply = Reply {
        text,
        tokens: usage.completion_tokens,
        finish: Some(finish),
        // OpenAI-style replies carry no log-probs unless asked for, and not every server
        // gives them: a remote vote weighs as a neutral, certain one.
        logprob_mean: 0.0,
        seconds: start.elapsed().as_secs_f64(),
        signals: Default::default(),
    };
    Ok((reply, usage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: serde_json::Value) -> Result<(Reply, Usage), String> {
        let c: ChatCompletion = serde_json::from_value(v).map_err(|e| e.to_string())?;
        parse(c, Instant::now())
    }

    #[test]
    fn a_chat_completion_is_read() {
        let v = json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"},
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}
        });
        let (r, usage) = read(v).unwrap();
        assert_eq!(
            (r.text.as_str(), r.tokens, usage.prompt_tokens),
            ("42", 3, 20)
        );
        assert_eq!(r.finish, Some(Finish::Length));
        // Another server's reason, and no usage: an end, and no tokens counted.
        let v = json!({"choices": [{"index": 0, "finish_reason": "tool_calls",
                                    "message": {"role": "assistant", "content": "x"}}]});
        let (r, usage) = read(v).unwrap();
        assert_eq!(
            (r.finish, r.tokens, usage.prompt_tokens),
            (Some(Finish::Eos), 0, 0)
        );
        let err = read(json!({"choices": []})).unwrap_err();
        assert!(err.contains("no choices"), "{err}");
        let v = json!({"choices": [{"index": 0, "message": {"role": "assistant"}}]});
        let err = read(v).unwrap_err();
        assert!(err.contains("no content"), "{err}");
    }

    #[test]
    fn the_request_says_only_what_it_sets() {
        let remote = Remote {
            url: "http://x/v1".into(),
            model: "m".into(),
            api_key_env: None,
            timeout_s: 1.0,
            retries: 0,
        };
        let sampling = SamplingParams {
            temperature: 0.5,
            top_p: 0.75,
            seed: u64::MAX,
            ..SamplingParams::default()
        };
        let messages = [Message::new("system", "s"), Message::new("user", "q")];
        let body = serde_json::to_value(request(&remote, &messages, &sampling, 9)).unwrap();
        assert_eq!(
            body,
            json!({"model": "m", "max_tokens": 9, "temperature": 0.5, "top_p": 0.75,
                   "seed": 0x7fff_ffff, "messages": [{"role": "system", "content": "s"},
                                                    {"role": "user", "content": "q"}]})
        );
    }
}
