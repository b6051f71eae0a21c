//! The endpoints: `/v1/chat/completions`, `/v1/completions`, `/v1/models`, `/health`,
//! `/metrics`, behind the API key check and the request metrics.
use super::errors::{self, ApiError};
use super::openai::{self, Answer, Meta, Params, Shape};
use super::served::ENSEMBLE_PREFIX;
use super::tools;
use super::traces::{self, Kind};
use super::{agent, metrics, responses, spans, sse, ui, App};
use crate::engine::{Constraint, Finish, Grammar, Job, Message, Prompt};
use crate::ensemble::calls::Tools;
use crate::ensemble::{AnswerKind, Ask, Runner, Trace};
use crate::wire::{ChatRequest, Common, CompletionRequest, ModelCard, ModelList, Usage};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use std::time::Instant;
use tracing::Instrument;

pub fn router(app: App) -> Router {
    let limit = app.0.opts.body_limit;
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/responses", post(responses))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/v1/conclave/traces", get(traces::list))
        .route("/v1/conclave/traces/{id}", get(traces::get))
        .route("/metrics", get(metrics_text))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .merge(protected)
        .merge(ui::router())
        .route("/health", get(health))
        .fallback(|| async { ApiError::not_found("no such endpoint: see /v1/models, /v1/chat/completions, /v1/completions, /v1/responses, /health, /metrics") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(app.clone(), record))
        .with_state(app)
}

/// 401 unless the request carries the server's key (when it has one).
async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.0.opts.api_key {
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(sent.trim().as_bytes(), key.as_bytes()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Compares in time that depends on the lengths only, not on where the bytes first differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts every answered request by endpoint and status, and times it to its response head;
/// the request's span covers the handler (a streamed body's work is not in it).
async fn record(State(app): State<App>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let endpoint = match req.uri().path() {
        p if p.starts_with("/v1/models") => "/v1/models".to_string(),
        p if p.starts_with("/v1/conclave/traces") => "/v1/conclave/traces".to_string(),
        p @ ("/v1/chat/completions"
        | "/v1/completions"
        | "/v1/responses"
        | "/health"
        | "/metrics") => p.into(),
        _ => "other".into(),
    };
    let span = spans::request(&req, &endpoint);
    let resp = next.run(req).instrument(span.clone()).await;
    spans::responded(&span, resp.status().as_u16());
    app.0.metrics.request(
        &endpoint,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

/// `/health`: Conclave's own, not OpenAI's.
#[derive(Serialize)]
struct Health<'a> {
    status: &'a str,
    models: &'a [String],
}

async fn health(State(app): State<App>) -> Response {
    let served = &app.0.served;
    Json(Health {
        status: "ok",
        models: &served.models,
    })
    .into_response()
}

async fn metrics_text(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        app.0.metrics.encode(),
    )
        .into_response()
}

async fn models(State(app): State<App>) -> Json<ModelList> {
    let served = &app.0.served;
    let data = served
        .models
        .iter()
        .cloned()
        .chain(served.ensemble_ids())
        .map(|id| ModelCard::new(&id, "conclave"))
        .collect();
    Json(ModelList::new(data))
}

async fn model(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    let served = &app.0.served;
    if served.models.contains(&id) || served.ensemble_ids().contains(&id) {
        Ok(Json(ModelCard::new(&id, "conclave")))
    } else {
        Err(ApiError::model_not_found(
            &id,
            "GET /v1/models lists what is served",
        ))
    }
}

/// `/v1/responses`: translated to a chat request, answered by `chat`, translated back.
async fn responses(
    State(app): State<App>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req = errors::parse(&body(&app, raw)?)?;
    let (chat_req, asked) = responses::to_chat(&req)?;
    let chat_body = serde_json::to_vec(&chat_req).map_err(|e| ApiError::internal(&e.into()))?;
    responses::answer(chat(State(app), Ok(chat_body.into())).await, asked).await
}

/// The body, or 413 past the size limit.
fn body(app: &App, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(app.0.opts.body_limit)
        } else {
            ApiError::invalid(None, r.body_text())
        }
    })
}

async fn chat(
    State(app): State<App>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = tools::parse_chat(&body(&app, raw)?)?;
    let mut params = openai::params(&req.common)?;
    params.set_logprobs(openai::chat_logprobs(&req)?);
    let messages = openai::messages(&req)?;
    let tools = tools::tools(&req)?;
    if let Some(name) = req.common.model.strip_prefix(ENSEMBLE_PREFIX) {
        if params.logprobs() {
            return Err(ApiError::invalid(
                Some("logprobs"),
                "an ensemble's answer is voted, not sampled, so it has no log-probabilities; \
                 leave logprobs out or ask a single model",
            ));
        }
        if let Some(cfg) = app.0.served.agent(name) {
            return agent::answer(app, cfg, &req.common, &params, messages, tools).await;
        }
        let events = req.conclave.as_ref().is_some_and(|c| c.events);
        return ensemble(app, name, &req.common, &params, &messages, tools, events).await;
    }
    if req.common.ensemble.is_some() {
        return Err(ApiError::invalid(
            Some("ensemble"),
            "`ensemble` goes with an ensemble model (`conclave/<preset>`)",
        ));
    }
    let model = app.0.served.model(&req.common.model)?;
    let prompt = match &tools {
        Some(t) => Prompt::ChatTools {
            messages,
            tools: t.defs.clone(),
        },
        None => Prompt::Chat(messages),
    };
    generate(app, &model, prompt, params, Shape::Chat, tools).await
}

async fn completions(
    State(app): State<App>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = errors::parse(&body(&app, raw)?)?;
    let mut params = openai::params(&req.common)?;
    params.set_logprobs(openai::text_logprobs(&req)?);
    let prompt = openai::prompt(&req)?;
    let model = app.0.served.model(&req.common.model)?;
    generate(app, &model, Prompt::Text(prompt), params, Shape::Text, None).await
}

/// One engine job: `n` choices from one prefill, whole or streamed; with `tools`, each
/// choice's calls are read out of its text.
async fn generate(
    app: App,
    model: &str,
    prompt: Prompt,
    params: Params,
    shape: Shape,
    tools: Option<Tools>,
) -> Result<Response, ApiError> {
    let permit = app.admit()?;
    let meta = Meta::new(model, shape);
    // A call's grammar comes from the tools; otherwise from `response_format`. Either names
    // its own param when it cannot compile.
    let (constraint, grammar_param) = match (&tools, &params.constraint) {
        (Some(t), _) => (Some(t.constraint()), Some("tools")),
        (None, Some((c, param))) => (Some(c.clone()), Some(*param)),
        (None, None) => (None, None),
    };
    let job = Job {
        model: model.to_string(),
        prompt,
        max_tokens: params.max_tokens,
        stop: params.stop.clone(),
        samples: params.samples.clone(),
        ignore_eos: false,
        stream: None,
        constraint,
    };
    if params.stream {
        return sse::generate(
            app,
            job,
            meta,
            params.include_usage,
            tools,
            grammar_param,
            permit,
        )
        .await;
    }
    let output = app
        .within(app.0.engine.generate(job))
        .await?
        .map_err(|e| ApiError::job(&e, grammar_param))?;
    drop(permit);
    app.0.metrics.generation(model, &output);
    let mut answers = openai::choices(&output);
    if let Some(t) = &tools {
        answers.iter_mut().for_each(|a| a.read_calls(t));
    }
    let body = meta.response(answers, openai::output_usage(&output));
    Ok(Json(body).into_response())
}

/// An ensemble answers: the aggregated answer is `choices[0]`, the trace is `conclave`.
/// Streamed with `events`, its agents' progress goes out first.
async fn ensemble(
    app: App,
    name: &str,
    common: &Common,
    params: &Params,
    messages: &[Message],
    tools: Option<Tools>,
    events: bool,
) -> Result<Response, ApiError> {
    if tools.is_some() && params.stream {
        return Err(ApiError::invalid(
            Some("stream"),
            "an ensemble answers tool calls whole, after its vote: leave stream out",
        ));
    }
    if params.samples.len() > 1 {
        return Err(ApiError::invalid(
            Some("n"),
            "an ensemble gives one answer: n must be 1",
        ));
    }
    // Agents bring their own system prompts (their roles): the question is the last user turn.
    let question = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.clone())
        .ok_or_else(|| {
            ApiError::invalid(
                Some("messages"),
                "an ensemble needs a user message to answer",
            )
        })?;
    // With tools, every agent is sent the conversation and its tools; the vote is over calls.
    let ask = match &tools {
        Some(t) => {
            let mut ask = Ask::conversation(messages.to_vec(), t.defs.clone());
            ask.parallel = t.parallel;
            // Every agent's calls under the tool choice's grammar, as a single model's are.
            ask.constraint = Some(t.constraint());
            ask
        }
        // With a response format, every agent is sent the conversation and writes under its
        // grammar; JSON answers vote by their canonical form.
        None => match &params.constraint {
            Some((c, _)) => {
                let mut ask = Ask::conversation(messages.to_vec(), Vec::new());
                ask.constraint = Some(c.clone());
                ask
            }
            None => Ask::from(&question),
        },
    };
    let grammar_param = match (&tools, &params.constraint) {
        (Some(_), _) => Some("tools"),
        (None, Some((_, param))) => Some(*param),
        (None, None) => None,
    };
    let mut ens = app
        .0
        .served
        .ensemble(name, params.seed, common.ensemble.as_ref())?;
    if let (None, Some((Constraint::Full(g), _))) = (&tools, &params.constraint) {
        ens.answer = match g {
            Grammar::JsonObject | Grammar::JsonSchema(_) => AnswerKind::Json,
            Grammar::Regex(_) | Grammar::Lark(_) => AnswerKind::Text,
        };
    }
    if params.max_tokens_given {
        ens.max_tokens = params.max_tokens;
    }
    let permit = app.admit()?;
    let meta = Meta::new(&common.model, Shape::Chat);
    let engine = app.0.engine.clone();
    if params.stream && events {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let include_usage = params.include_usage;
        let state = app.clone();
        let run = async move {
            let trace = Runner::new(engine)
                .on_event(move |e| {
                    let _ = tx.send(e);
                })
                .run(&ens, ask)
                .await
                .map_err(|e| ApiError::job(&e, grammar_param))?;
            let (text, usage, conclave) = settle(&state, &meta, &question, &trace)?;
            let mut out = vec![sse::trace_event(&meta.id, &trace)];
            out.extend(sse::whole_events(
                &meta,
                &text,
                Finish::Stop,
                usage,
                conclave,
                include_usage,
            ));
            Ok(out)
        };
        return sse::progress(app, run, rx, permit).await;
    }
    let trace: Trace = app
        .within(async move { Runner::new(engine).run(&ens, ask).await })
        .await?
        .map_err(|e| ApiError::job(&e, grammar_param))?;
    drop(permit);
    let (text, usage, conclave) = settle(&app, &meta, &question, &trace)?;
    if params.stream {
        return Ok(sse::whole(
            meta,
            text,
            Finish::Stop,
            usage,
            conclave,
            params.include_usage,
        ));
    }
    // The winner's calls, with the ids the trace shows them by; its other text is the content.
    let mut answer = Answer::new(text, None);
    if let Some(t) = &tools {
        answer.text = t.read(&answer.text).content;
        answer.tool_calls = trace.calls.clone();
    }
    let mut body = meta.chat(vec![answer], usage);
    body.conclave = Some(conclave);
    Ok(Json(body).into_response())
}

/// What an ensemble's answer leaves behind: its token metrics and its kept trace. Returns the
/// answer's text, its usage, and the response's `conclave` field (the trace, with its id).
fn settle(
    app: &App,
    meta: &Meta,
    question: &str,
    trace: &Trace,
) -> Result<(String, Usage, serde_json::Value), ApiError> {
    app.0.metrics.tokens(
        &meta.model,
        trace.usage.prompt_tokens,
        trace.usage.completion_tokens,
    );
    let text = if trace.text.is_empty() {
        trace.answer.clone().unwrap_or_default()
    } else {
        trace.text.clone()
    };
    let usage = Usage::new(trace.usage.prompt_tokens, trace.usage.completion_tokens)
        .with_cached(trace.usage.cached_tokens);
    let json = serde_json::to_value(trace).map_err(|e| ApiError::internal(&e.into()))?;
    let conclave = app
        .0
        .traces
        .keep(meta, question, &text, Kind::Ensemble, json);
    Ok((text, usage, conclave))
}
