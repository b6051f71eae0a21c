//! Agents served as models: a `--config` file with an `[agent]` section is `conclave/<name>`.
//! A request's messages are the task; the reply's content is the run's answer and its
//! `conclave` field the run's trace, as a served ensemble's is.
//!
//! Each request runs in a run directory of its own under the system's temp dir, removed
//! when the reply is made: the trace in the reply is the record, and a later request never
//! sees an earlier one's workspace.
use super::errors::ApiError;
use super::openai::{Answer, Meta, Params, Shape};
use super::traces::Kind;
use super::{sse, App};
use crate::engine::{Finish, Message};
use crate::ensemble::agent::{self, AgentConfig, RunOptions, Stop, Task};
use crate::ensemble::calls::Tools;
use crate::wire::{Common, Usage};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Runs `cfg` on the request's conversation and answers with its result.
pub async fn answer(
    app: App,
    cfg: AgentConfig,
    common: &Common,
    params: &Params,
    messages: Vec<Message>,
    tools: Option<Tools>,
) -> Result<Response, ApiError> {
    refuse(common, params, tools.as_ref())?;
    // The last user message names the run in the trace store.
    let Some(question) = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.clone())
    else {
        return Err(ApiError::invalid(
            Some("messages"),
            "an agent needs a user message: its task",
        ));
    };
    let dir = tempfile::Builder::new()
        .prefix("conclave-agent-")
        .tempdir()
        .map_err(|e| ApiError::internal(&anyhow::Error::from(e).context("no run directory")))?;
    let permit = app.admit()?;
    let engine = app.0.engine.clone();
    let opts = RunOptions::default();
    let path = dir.path().to_path_buf();
    let trace = app
        .within(async move {
            agent::run(engine, &cfg, Task::Conversation(messages), &path, &opts).await
        })
        .await?
        .map_err(|e| ApiError::internal(&e))?;
    drop(permit);
    app.0.metrics.tokens(
        &common.model,
        trace.usage.prompt_tokens,
        trace.usage.completion_tokens,
    );
    // A limit that stopped the run before an answer is OpenAI's "length": the content is
    // what the last step said, and the trace says which limit.
    let (text, finish) = match (&trace.answer, trace.stop) {
        (Some(a), Stop::Answer) => (a.clone(), Finish::Stop),
        (a, _) => (
            a.clone()
                .or_else(|| trace.steps.last().map(|s| s.text.clone()))
                .unwrap_or_default(),
            Finish::Length,
        ),
    };
    let usage = Usage::new(trace.usage.prompt_tokens, trace.usage.completion_tokens);
    let json = serde_json::to_value(&trace).map_err(|e| ApiError::internal(&e.into()))?;
    let meta = Meta::new(&common.model, Shape::Chat);
    let conclave = app
        .0
        .traces
        .keep(&meta, &question, &text, Kind::Agent, json);
    if params.stream {
        return Ok(sse::whole(
            meta,
            text,
            finish,
            usage,
            conclave,
            params.include_usage,
        ));
    }
    let mut body = meta.chat(vec![Answer::new(text, Some(finish))], usage);
    body.conclave = Some(conclave);
    Ok(Json(body).into_response())
}

/// What an agent request may not ask for, each a 400 naming its field.
fn refuse(common: &Common, params: &Params, tools: Option<&Tools>) -> Result<(), ApiError> {
    if tools.is_some() {
        return Err(ApiError::invalid(
            Some("tools"),
            "agents bring their own tools (the `tools` of their config): leave tools out",
        ));
    }
    if params.samples.len() > 1 {
        return Err(ApiError::invalid(
            Some("n"),
            "an agent gives one answer: n must be 1",
        ));
    }
    if let Some((_, param)) = &params.constraint {
        return Err(ApiError::invalid(
            Some(*param),
            "an agent answers in text after its tool calls; leave the response format out",
        ));
    }
    if common.ensemble.is_some() {
        return Err(ApiError::invalid(
            Some("ensemble"),
            "`ensemble` overrides an ensemble's settings; an agent's are in its config",
        ));
    }
    Ok(())
}
