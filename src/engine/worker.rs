//! The engine thread: the one place where model work runs.
//!
//! candle's CPU thread pool spin-waits, so two threads running models at once on two cores
//! collapse to a fraction of one. Every front end therefore sends jobs over a channel to a
//! single thread that owns the loaded models. Each job is prefilled once when it arrives; then
//! the thread takes one batched decode step of every job in flight in turn, whatever its
//! model, so a short job never waits for a long one to end.
use super::generate::{Generation, Output, Request};
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

impl Prompt {
    /// The prompt's tokens, and the stop strings its format implies (the plain chat format's
    /// next-turn marker; raw text implies none).
    pub fn encode(&self, model: &Model) -> Result<(Vec<u32>, Vec<String>)> {
        Ok(match self {
            Prompt::Chat(messages) => (model.encode_chat(messages)?, model.default_stops()),
            Prompt::Text(text) => (model.encode_text(text)?, Vec::new()),
        })
    }
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
    /// Receives `(sample, text)` pieces as they are decoded.
    pub stream: Stream,
}

/// Where a job's text goes while it is decoded.
pub type Stream = Option<tokio::sync::mpsc::UnboundedSender<(usize, String)>>;

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
            .spawn(move || serve(rx))
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

/// A job between its prefill and its last token.
struct InFlight {
    model: String,
    generation: Generation,
    stream: Stream,
    reply: oneshot::Sender<Result<Output>>,
}

fn serve(rx: mpsc::Receiver<Envelope>) {
    let mut models: HashMap<String, Model> = HashMap::new();
    let mut flight: Vec<InFlight> = Vec::new();
    loop {
        // Idle: wait for work. Busy: take whatever has arrived, without waiting.
        let mut arrived: Vec<Envelope> = Vec::new();
        if flight.is_empty() {
            match rx.recv() {
                Ok(e) => arrived.push(e),
                Err(_) => return, // every handle is gone
            }
        }
        arrived.extend(rx.try_iter());
        for Envelope { job, reply } in arrived {
            match start(&mut models, &job) {
                Ok(generation) => flight.push(InFlight {
                    model: job.model,
                    generation,
                    stream: job.stream,
                    reply,
                }),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        // One step of every job in flight, then hand back the ones that ended.
        let mut i = 0;
        while i < flight.len() {
            let f = &mut flight[i];
            let result = f
                .generation
                .step(&models[&f.model], &mut forward(&f.stream));
            if result.is_err() || f.generation.is_done() {
                let f = flight.swap_remove(i);
                let _ = f.reply.send(result.map(|_| f.generation.finish()));
            } else {
                i += 1;
            }
        }
    }
}

/// Loads the model if needed, renders the prompt and prefills it.
fn start(models: &mut HashMap<String, Model>, job: &Job) -> Result<Generation> {
    if !models.contains_key(&job.model) {
        let model = load(&job.model)?;
        models.insert(job.model.clone(), model);
    }
    let model = &models[&job.model];
    let (prompt, mut stop) = job.prompt.encode(model)?;
    stop.extend(job.stop.iter().cloned());
    let req = Request {
        prompt,
        max_tokens: job.max_tokens,
        stop,
        samples: job.samples.clone(),
        ignore_eos: job.ignore_eos,
    };
    Generation::start(model, req, &mut forward(&job.stream))
}

/// A text callback that forwards pieces to the job's stream, if it has one. A receiver that
/// has gone away is not an error: the job still completes for its reply.
fn forward(stream: &Stream) -> impl FnMut(usize, &str) + '_ {
    move |sample, piece| {
        if let Some(s) = stream {
            let _ = s.send((sample, piece.to_string()));
        }
    }
}
