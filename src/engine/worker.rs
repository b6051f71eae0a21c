//! The engine thread: the one place where model work runs.
//!
//! candle's CPU thread pool spin-waits, so two threads running models at once on two cores
//! collapse to a fraction of one. Every front end therefore sends jobs over a channel to a
//! single thread that owns the loaded models. Each job is prefilled once when it arrives; then
//! the thread takes one batched decode step of every job in flight in turn, whatever its
//! model, so a short job never waits for a long one to end.
//!
//! A job whose caller has gone (its reply future or its stream receiver dropped, e.g. an HTTP
//! client that disconnected) is dropped before its next step, freeing its KV cache.
use super::generate::{Generation, JobError, Output, Request};
use super::load::load;
use super::sampler::SamplingParams;
use crate::model::chat::Message;
use crate::model::Model;
use anyhow::{anyhow, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
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
    stats: Arc<Stats>,
}

/// Counters the engine thread keeps, readable from any thread (the server's queue metrics).
#[derive(Debug, Default)]
pub struct Stats {
    /// Jobs sent and not yet taken up by the engine thread.
    pub queued: AtomicUsize,
    /// Jobs between their prefill and their last token.
    pub running: AtomicUsize,
    /// Jobs dropped because their caller went away.
    pub cancelled: AtomicU64,
}

impl Engine {
    /// Starts the engine thread. It ends when the last handle is dropped.
    pub fn start() -> Self {
        let (tx, rx) = mpsc::channel::<Envelope>();
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("conclave-engine".into())
            .spawn(move || serve(rx, &thread_stats))
            .expect("spawning the engine thread");
        Self { tx, stats }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Runs `job` on the engine thread and waits for it without blocking the async runtime.
    pub async fn generate(&self, job: Job) -> Result<Output> {
        let (reply, rx) = oneshot::channel();
        self.stats.queued.fetch_add(1, Ordering::SeqCst);
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

impl InFlight {
    fn abandoned(&self) -> bool {
        abandoned(&self.reply, &self.stream)
    }
}

/// True when nobody will read the job's result: its reply or its stream receiver is gone.
fn abandoned(reply: &oneshot::Sender<Result<Output>>, stream: &Stream) -> bool {
    reply.is_closed() || stream.as_ref().is_some_and(|s| s.is_closed())
}

fn serve(rx: mpsc::Receiver<Envelope>, stats: &Stats) {
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
        stats.queued.fetch_sub(arrived.len(), Ordering::SeqCst);
        for Envelope { job, reply } in arrived {
            if abandoned(&reply, &job.stream) {
                stats.cancelled.fetch_add(1, Ordering::SeqCst);
                let _ = reply.send(Err(JobError::Cancelled.into()));
                continue;
            }
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
            if flight[i].abandoned() {
                let f = flight.swap_remove(i);
                stats.cancelled.fetch_add(1, Ordering::SeqCst);
                let _ = f.reply.send(Err(JobError::Cancelled.into()));
                continue;
            }
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
        stats.running.store(flight.len(), Ordering::SeqCst);
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
