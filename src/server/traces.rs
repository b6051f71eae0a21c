//! The traces of the server's recent ensemble and agent answers, kept in memory (a bounded
//! number, most recent first) for `GET /v1/conclave/traces` and `GET /v1/conclave/traces/{id}`.
//! A trace's id is its response's `id`; the response's `conclave` field names it `trace_id`.
use super::errors::ApiError;
use super::openai::Meta;
use super::App;
use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Mutex;

/// The characters of the question a listing shows.
const QUESTION_CHARS: usize = 200;

/// What ran: an ensemble (`Trace`) or an agent (`RunTrace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Ensemble,
    Agent,
}

/// One entry of the listing.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub id: String,
    pub model: String,
    /// Unix seconds.
    pub created: u64,
    /// The start of the last user message.
    pub question: String,
    pub answer: String,
    pub kind: Kind,
}

/// The store: at most `kept` traces, newest first.
pub struct Traces {
    kept: usize,
    list: Mutex<VecDeque<(Summary, Value)>>,
}

impl Traces {
    pub fn new(kept: usize) -> Self {
        Self {
            kept,
            list: Mutex::new(VecDeque::new()),
        }
    }

    /// Keeps `trace` as the trace of the response `meta` (dropping the oldest past the
    /// bound), and returns that response's `conclave` field: the trace with its `trace_id`.
    pub fn keep(
        &self,
        meta: &Meta,
        question: &str,
        answer: &str,
        kind: Kind,
        trace: Value,
    ) -> Value {
        let mut tagged = trace.clone();
        if let Value::Object(m) = &mut tagged {
            m.insert("trace_id".into(), Value::String(meta.id.clone()));
        }
        if self.kept > 0 {
            let summary = Summary {
                id: meta.id.clone(),
                model: meta.model.clone(),
                created: meta.created,
                question: question.chars().take(QUESTION_CHARS).collect(),
                answer: answer.to_string(),
                kind,
            };
            let mut list = self.lock();
            list.push_front((summary, trace));
            list.truncate(self.kept);
        }
        tagged
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Summary, Value)>> {
        // A panic elsewhere while holding the lock leaves the list whole: keep using it.
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Serialize)]
pub struct Listing {
    object: &'static str,
    data: Vec<Summary>,
}

/// `GET /v1/conclave/traces`.
pub async fn list(State(app): State<App>) -> Json<Listing> {
    let data = app.0.traces.lock().iter().map(|(s, _)| s.clone()).collect();
    Json(Listing {
        object: "list",
        data,
    })
}

#[derive(Serialize)]
pub struct Detail {
    id: String,
    model: String,
    created: u64,
    kind: Kind,
    trace: Value,
}

/// `GET /v1/conclave/traces/{id}`: 404 once the trace has been dropped (or never was).
pub async fn get(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Detail>, ApiError> {
    let list = app.0.traces.lock();
    let (s, trace) = list.iter().find(|(s, _)| s.id == id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no trace `{id}` here: only the {} most recent are kept (GET /v1/conclave/traces \
             lists them); a response's `conclave.trace_id` names its trace",
            app.0.traces.kept
        ))
    })?;
    Ok(Json(Detail {
        id: s.id.clone(),
        model: s.model.clone(),
        created: s.created,
        kind: s.kind,
        trace: trace.clone(),
    }))
}
