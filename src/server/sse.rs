//! Streaming as OpenAI does it: Server-Sent Events of `data: {chunk}\n\n`, a first chunk per
//! choice with the role, text deltas with the choice's `index`, a last chunk per choice with
//! its `finish_reason`, a usage chunk when `stream_options.include_usage`, then
//! `data: [DONE]`.
//!
//! A streamed ensemble sends its progress first, when the request opts in: each
//! [`Progress`] event as `event: conclave.<type>`, then `event: conclave.trace`, then the
//! answer as chunks (see `progress`).
//!
//! A task pumps the engine's text pieces into the response. When the client goes away the
//! response body is dropped, the task sees it and drops its engine job, which the engine
//! then cancels before its next step.
use super::errors::ApiError;
use super::openai::{self, Meta};
use super::tools::Held;
use super::App;
use crate::engine::{Finish, Job, Piece};
use crate::ensemble::calls::Tools;
use crate::ensemble::Event as Progress;
use crate::wire::Usage;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::Future;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// Events buffered for a slow client before the pump waits for it.
const BUFFER: usize = 64;

fn data(v: &impl Serialize) -> Event {
    // The wire types have string keys only and no fallible fields: serializing cannot fail.
    Event::default().data(serde_json::to_string(v).expect("a wire type serializes"))
}

fn done() -> Event {
    Event::default().data("[DONE]")
}

/// The request timed out: an error event once the stream has begun, else a plain 504.
async fn timed_out(
    tx: &mpsc::Sender<Result<Event, ApiError>>,
    started: bool,
    deadline: Option<std::time::Duration>,
) {
    let secs = deadline.map(|d| d.as_secs_f64()).unwrap_or_default();
    let _ = tx
        .send(if started {
            Ok(data(&ApiError::timeout(secs).body()))
        } else {
            Err(ApiError::timeout(secs))
        })
        .await;
}

/// Streams one engine job. Answers a plain HTTP error instead when the job fails before its
/// first token (a prompt over the context is still a 400, as without streaming). With
/// `tools`, each choice's text is held back from where a call may start, and its calls go
/// out as OpenAI's `tool_calls` deltas when it ends.
pub async fn generate(
    app: App,
    mut job: Job,
    meta: Meta,
    include_usage: bool,
    tools: Option<Tools>,
    grammar_param: Option<&'static str>,
    permit: OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    let (piece_tx, pieces) = mpsc::unbounded_channel();
    job.stream = Some(piece_tx);
    let (tx, rx) = mpsc::channel::<Result<Event, ApiError>>(BUFFER);
    let n = job.samples.len();
    let out = Out {
        meta,
        n,
        include_usage,
        tools,
        grammar_param,
    };
    // The job's `chat` span goes under the request's, though the pump outlives the handler.
    let pump = pump(app, job, out, pieces, tx, permit);
    tokio::spawn(tracing::Instrument::in_current_span(pump));
    open(rx).await
}

/// The response for what a pump sends: a stream once its first event is there, or the
/// error it sent first as a plain HTTP error.
async fn open(mut rx: mpsc::Receiver<Result<Event, ApiError>>) -> Result<Response, ApiError> {
    match rx.recv().await {
        Some(Ok(first)) => {
            let head = futures_util::stream::once(async move { Ok::<_, Infallible>(first) });
            // Dropping the body (a client that left) drops `rx`, which the pump notices.
            let tail = futures_util::stream::unfold(rx, |mut rx| async move {
                match rx.recv().await {
                    Some(Ok(e)) => Some((Ok(e), rx)),
                    _ => None,
                }
            });
            Ok(Sse::new(head.chain(tail)).into_response())
        }
        Some(Err(e)) => Err(e),
        None => Err(ApiError::internal(&anyhow::anyhow!(
            "the stream ended before it began"
        ))),
    }
}

/// What a stream sends besides the pieces: its shape, its choices, and what was asked.
struct Out {
    meta: Meta,
    n: usize,
    include_usage: bool,
    tools: Option<Tools>,
    /// The request field the job's constraint came from, named by a 400 when its grammar
    /// does not compile.
    grammar_param: Option<&'static str>,
}

async fn pump(
    app: App,
    job: Job,
    out: Out,
    mut pieces: mpsc::UnboundedReceiver<Piece>,
    tx: mpsc::Sender<Result<Event, ApiError>>,
    _permit: OwnedSemaphorePermit,
) {
    let Out {
        meta,
        n,
        include_usage,
        tools,
        grammar_param,
    } = out;
    let model = job.model.clone();
    let job_logprobs = job.samples.iter().any(|s| s.top_logprobs.is_some());
    let engine = app.0.engine.clone();
    let generation = engine.generate(job);
    tokio::pin!(generation);
    let deadline = app.0.opts.request_timeout;
    let timer = tokio::time::sleep(deadline.unwrap_or(std::time::Duration::MAX / 4));
    tokio::pin!(timer);
    let send = |e: Event| {
        let tx = tx.clone();
        async move { tx.send(Ok(e)).await.is_ok() }
    };
    let mut started = false;
    // With log-probabilities asked for, each piece's tokens, and (for the legacy shape) how
    // many characters each choice has streamed, where its next token's text_offset starts.
    let logprobs = job_logprobs;
    let mut offsets = vec![0usize; n];
    let mut held: Vec<Held> = (0..n).map(|_| Held::default()).collect();
    // None when there is nothing to send yet (text held back, no log-probabilities).
    let mut piece_chunk = |p: &Piece| -> Option<Event> {
        let lp = logprobs.then_some((&p.logprobs[..], offsets[p.sample]));
        offsets[p.sample] += p
            .logprobs
            .iter()
            .map(|t| t.chosen.text.chars().count())
            .sum::<usize>();
        let text = match &tools {
            Some(_) => held[p.sample].push(&p.text),
            None => p.text.clone(),
        };
        (!text.is_empty() || logprobs).then(|| data(&meta.chunk(p.sample, false, &text, lp, None)))
    };
    // Role chunks go out once the prefill has worked (before it, an error is still a status).
    let start = |started: &mut bool| -> Vec<Event> {
        if *started || meta.shape != openai::Shape::Chat {
            *started = true;
            return Vec::new();
        }
        *started = true;
        (0..n)
            .map(|i| data(&meta.chunk(i, true, "", None, None)))
            .collect()
    };
    let result = loop {
        tokio::select! {
            biased;
            _ = tx.closed() => return, // the client left: dropping the job cancels it
            Some(piece) = pieces.recv() => {
                for e in start(&mut started) {
                    if !send(e).await { return; }
                }
                if let Some(e) = piece_chunk(&piece) {
                    if !send(e).await { return; }
                }
            }
            r = &mut generation => break r,
            _ = &mut timer => return timed_out(&tx, started, deadline).await,
        }
    };
    let output = match result {
        Ok(o) => o,
        Err(e) if !started => {
            let _ = tx.send(Err(ApiError::job(&e, grammar_param))).await;
            return;
        }
        Err(e) => {
            // Mid-stream there is no status left to set: OpenAI sends the error as an event.
            let _ = tx
                .send(Ok(data(&ApiError::job(&e, grammar_param).body())))
                .await;
            return;
        }
    };
    let mut events = start(&mut started);
    // Pieces decoded in the step that ended the job are already queued.
    while let Ok(piece) = pieces.try_recv() {
        events.extend(piece_chunk(&piece));
    }
    for (i, c) in output.completions.iter().enumerate() {
        if let Some(tools) = &tools {
            let (rest, calls) = held[i].finish(tools);
            if !rest.is_empty() {
                events.push(data(&meta.chunk(i, false, &rest, None, None)));
            }
            if !calls.is_empty() {
                events.extend(meta.tool_call_chunks(i, &calls).iter().map(data));
                continue;
            }
        }
        events.push(data(&meta.chunk(i, false, "", None, Some(c.finish))));
    }
    if include_usage {
        events.push(data(&meta.usage_chunk(openai::output_usage(&output))));
    }
    events.push(done());
    app.0.metrics.generation(&model, &output);
    for e in events {
        if !send(e).await {
            return;
        }
    }
}

/// A finished answer (an ensemble's) sent as a stream: role and text, finish (with the
/// trace in `conclave`), usage if asked, `[DONE]`.
pub fn whole(
    meta: Meta,
    text: String,
    finish: Finish,
    usage: Usage,
    conclave: Value,
    include_usage: bool,
) -> Response {
    let events = whole_events(&meta, &text, finish, usage, conclave, include_usage);
    let stream = futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>));
    Sse::new(stream).into_response()
}

/// The events of [`whole`].
pub fn whole_events(
    meta: &Meta,
    text: &str,
    finish: Finish,
    usage: Usage,
    conclave: Value,
    include_usage: bool,
) -> Vec<Event> {
    let mut last = meta.chat_chunk(0, false, "", None, Some(finish));
    last.conclave = Some(conclave);
    let mut events = vec![
        data(&meta.chat_chunk(0, true, text, None, None)),
        data(&last),
    ];
    if include_usage {
        events.push(data(&meta.usage_chunk(usage)));
    }
    events.push(done());
    events
}

/// `event: conclave.trace`: the run's whole trace, under the id the trace store keeps it by.
pub fn trace_event(id: &str, trace: &impl Serialize) -> Event {
    let body = json!({"id": id, "trace": trace});
    Event::default()
        .event("conclave.trace")
        .data(body.to_string())
}

fn progress_event(e: &Progress) -> Event {
    Event::default()
        .event(format!("conclave.{}", e.kind()))
        .data(serde_json::to_string(e).expect("an event serializes"))
}

/// Streams an ensemble run: each of its `events` as it comes, then what `run` ends with
/// (the trace event and the answer's chunks). When the client goes away, `run` is dropped,
/// and with it the run's engine jobs. An error before any event is a plain HTTP error.
pub async fn progress(
    app: App,
    run: impl Future<Output = Result<Vec<Event>, ApiError>> + Send + 'static,
    events: mpsc::UnboundedReceiver<Progress>,
    permit: OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    let (tx, rx) = mpsc::channel::<Result<Event, ApiError>>(BUFFER);
    // The ensemble's spans go under the request's, though the run outlives the handler.
    let pump = pump_run(app, run, events, tx, permit);
    tokio::spawn(tracing::Instrument::in_current_span(pump));
    open(rx).await
}

async fn pump_run(
    app: App,
    run: impl Future<Output = Result<Vec<Event>, ApiError>>,
    mut events: mpsc::UnboundedReceiver<Progress>,
    tx: mpsc::Sender<Result<Event, ApiError>>,
    _permit: OwnedSemaphorePermit,
) {
    tokio::pin!(run);
    let deadline = app.0.opts.request_timeout;
    let timer = tokio::time::sleep(deadline.unwrap_or(std::time::Duration::MAX / 4));
    tokio::pin!(timer);
    let mut started = false;
    let result = loop {
        tokio::select! {
            biased;
            _ = tx.closed() => return, // the client left: dropping `run` cancels its jobs
            Some(e) = events.recv() => {
                started = true;
                if tx.send(Ok(progress_event(&e))).await.is_err() {
                    return;
                }
            }
            r = &mut run => break r,
            _ = &mut timer => return timed_out(&tx, started, deadline).await,
        }
    };
    // Events sent in the run's last step are already queued.
    let mut out: Vec<Event> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| progress_event(&e))
        .collect();
    match result {
        Ok(tail) => out.extend(tail),
        Err(e) if !started && out.is_empty() => {
            let _ = tx.send(Err(e)).await;
            return;
        }
        Err(e) => out.push(data(&e.body())),
    }
    for e in out {
        if tx.send(Ok(e)).await.is_err() {
            return;
        }
    }
}
