//! The engine thread: the one place where model work runs.
//!
//! candle's CPU thread pool spin-waits, so two threads running models at once on two cores
//! collapse to a fraction of one. Every front end therefore sends jobs over a channel to a
//! single thread that owns the loaded models and runs them one batch at a time.
use super::generate::{generate, Output, Request};
use super::load::load;
use super::sampler::SamplingParams;
use crate::model::chat::Message;
use crate::model::Model;
use anyhow::{anyhow, Result};
use std::collections::HashMap;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// What to generate: a conversation (rendered with the model's chat template) or raw text.
#[derive(Debug, Clone)]
pub enum Prompt {
    Chat(Vec<Message>),
    Text(String),
}

/// A request to the engine: N samples of one prompt on one model, sharing one prefill.
#[derive(Debug, Clone)]
pub struct Job {
    /// Catalog name or `.gguf` path; loaded on first use and kept.
    pub model: String,
    pub prompt: Prompt,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub samples: Vec<SamplingParams>,
    pub ignore_eos: bool,
}

struct Envelope {
    job: Job,
    reply: oneshot::Sender<Result<Output>>,
}

/// A handle to the engine thread; cheap to clone and safe to share between tasks.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Envelope>,
}

impl Engine {
    /// Starts the engine thread. It ends when the last handle is dropped.
    pub fn start() -> Self {
        let (tx, rx) = mpsc::channel::<Envelope>();
        std::thread::Builder::new()
            .name("conclave-engine".into())
            .spawn(move || {
                let mut models: HashMap<String, Model> = HashMap::new();
                for Envelope { job, reply } in rx {
                    let _ = reply.send(run(&mut models, &job));
                }
            })
            .expect("spawning the engine thread");
        Self { tx }
    }

    /// Runs `job` on the engine thread and waits for it without blocking the async runtime.
    pub async fn generate(&self, job: Job) -> Result<Output> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Envelope { job, reply })
            .map_err(|_| anyhow!("the engine thread has stopped"))?;
        rx.await
            .map_err(|_| anyhow!("the engine thread stopped mid-job"))?
    }
}

fn run(models: &mut HashMap<String, Model>, job: &Job) -> Result<Output> {
    if !models.contains_key(&job.model) {
        let model = load(&job.model)?;
        models.insert(job.model.clone(), model);
    }
    let model = &models[&job.model];
    let (prompt, extra_stops) = match &job.prompt {
        Prompt::Chat(messages) => (model.encode_chat(messages)?, model.default_stops()),
        Prompt::Text(text) => (model.encode_text(text)?, Vec::new()),
    };
    let mut stop = job.stop.clone();
    stop.extend(extra_stops);
    let req = Request {
        prompt,
        max_tokens: job.max_tokens,
        stop,
        samples: job.samples.clone(),
        ignore_eos: job.ignore_eos,
    };
    generate(model, &req, &mut |_, _| {})
}
