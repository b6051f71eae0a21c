//! The engine thread: the one place where model work runs.
//!
//! candle's CPU thread pool spin-waits, so two threads running models at once on two cores
//! collapse to a fraction of one. Every front end therefore sends jobs over a channel to a
//! single thread that owns the loaded models. Each job is prefilled once when it arrives and
//! its samples then join that model's batch: every decode step is one forward pass over the
//! rows of all jobs in flight on the model (continuous batching), so concurrent requests share
//! the weight reads, and a short job never waits for a long one to end.
//!
//! A long prompt that arrives while others decode is prefilled in chunks between their decode
//! steps (chunked prefill), so the streams in flight keep flowing while it goes in; `Pace`
//! sizes the chunks.
//!
//! A job whose caller has gone (its reply future or its stream receiver dropped, e.g. an HTTP
//! client that disconnected) is dropped before its next step, freeing its rows of the batch.
use super::constraint::{Constraint, Vocab};
use super::error::JobError;
use super::generate::{Batch, Generation, Output, Piece, Prefill, Request};
use super::load::load;
use super::pace::Pace;
use super::prefix::{PrefixStore, PREFIX_CACHE_BYTES};
use super::sampler::SamplingParams;
use super::spans;
use crate::model::chat::Message;
use crate::model::tool_call::ToolDef;
use crate::model::Model;
use anyhow::{anyhow, Result};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;
use tokio::sync::oneshot;

/// What to generate: a conversation (rendered with the model's chat template) or raw text.
#[derive(Debug, Clone)]
pub enum Prompt {
    Chat(Vec<Message>),
    /// A conversation that offers the model functions to call (`Chat` offers none).
    ChatTools {
        messages: Vec<Message>,
        tools: Vec<ToolDef>,
    },
    Text(String),
    /// Exactly `tokens` prompt tokens: `text`'s tokens repeated, no template (what
    /// llama-bench's `-p` measures).
    Filler {
        text: String,
        tokens: usize,
    },
}

impl Prompt {
    /// The prompt's tokens, and the stop strings its format implies (the plain chat format's
    /// next-turn marker; raw text implies none).
    pub(crate) fn encode(&self, model: &Model) -> Result<(Vec<u32>, Vec<String>)> {
        Ok(match self {
            Prompt::Chat(messages) => (model.encode_chat(messages, &[])?, model.default_stops()),
            Prompt::ChatTools { messages, tools } => {
                (model.encode_chat(messages, tools)?, model.default_stops())
            }
            Prompt::Text(text) => (model.encode_text(text)?, Vec::new()),
            Prompt::Filler { text, tokens } => {
                let ids = model.encode_text(text)?;
                (
                    ids.iter().copied().cycle().take(*tokens).collect(),
                    Vec::new(),
                )
            }
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
    /// Keep going past end-of-turn tokens and the format's own stop strings (benchmarks that
    /// need a fixed length); `stop` still applies.
    pub ignore_eos: bool,
    /// Receives each sample's pieces as they are decoded.
    pub stream: Stream,
    /// A grammar every sample follows (None: free text).
    pub constraint: Option<Constraint>,
}

/// Where a job's text goes while it is decoded.
pub type Stream = Option<tokio::sync::mpsc::UnboundedSender<Piece>>;

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
    /// Jobs taken up and not yet ended (prefilling or decoding).
    pub running: AtomicUsize,
    /// Jobs dropped because their caller went away.
    pub cancelled: AtomicU64,
    /// Prompts prefilled: one per job, however many samples it has (they share it).
    pub prefills: AtomicU64,
    /// Prompt tokens taken from the prefix store instead of being prefilled.
    pub cached_tokens: AtomicU64,
}

impl Engine {
    /// Starts the engine thread without a prefix store: every job prefills its whole prompt.
    /// It ends when the last handle is dropped.
    ///
    /// A job started from a cached prefix prefills its new positions in a chunk of another
    /// size than a cold prefill would. On the CPU that changes no bit where our kernels
    /// take the products (attention always, `model::attention`; the weights' products in
    /// chunks under 256 rows, or any with AVX-512), but candle's GPU attention and its CPU
    /// GEMM for longer chunks sum in an order that follows the chunk's size, which can flip a
    /// near-tied greedy token. So only the agent loop, whose steps each extend the last, and
    /// a server started with `--prefix-cache-mb` keep a store ([`Engine::with_prefix_cache`]).
    pub fn start() -> Self {
        Self::with_prefix_cache(0)
    }

    /// Starts the engine thread with the default prefix store ([`PREFIX_CACHE_BYTES`]).
    pub fn with_default_prefix_cache() -> Self {
        Self::with_prefix_cache(PREFIX_CACHE_BYTES)
    }

    /// Starts the engine thread with a prefix store of at most `bytes` (0: every job
    /// prefills its whole prompt, as benchmarks of prefill need).
    pub fn with_prefix_cache(bytes: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Envelope>();
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("conclave-engine".into())
            .spawn(move || serve(rx, &thread_stats, PrefixStore::new(bytes)))
            .expect("spawning the engine thread");
        Self { tx, stats }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Runs `job` on the engine thread and waits for it without blocking the async runtime.
    pub async fn generate(&self, job: Job) -> Result<Output> {
        self.generate_for(job, &[]).await
    }

    /// Like [`Engine::generate`], with the `chat` span of sample `i` under `parents[i]` (an
    /// ensemble's agent), instead of under the current span (see [`super::spans`]).
    pub async fn generate_for(&self, job: Job, parents: &[tracing::Span]) -> Result<Output> {
        let spans = spans::open(&job.model, job.max_tokens, &job.samples, parents);
        let out = self.send(job).await;
        spans::close(spans, &out);
        out
    }

    async fn send(&self, job: Job) -> Result<Output> {
        let (reply, rx) = oneshot::channel();
        self.stats.queued.fetch_add(1, Ordering::SeqCst);
        self.tx
            .send(Envelope { job, reply })
            .map_err(|_| anyhow!("the engine thread has stopped"))?;
        rx.await
            .map_err(|_| anyhow!("the engine thread stopped mid-job"))?
    }
}

/// A job whose prompt is going in.
struct Waiting {
    key: u64,
    model: String,
    prefill: Prefill,
    /// Whether the job uses the prefix store (filler prompts neither start from it nor fill it).
    stored: bool,
    stream: Stream,
    reply: oneshot::Sender<Result<Output>>,
}

/// A job between its prefill and its last token.
struct InFlight {
    model: String,
    generation: Generation,
    stored: bool,
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

/// The engine thread's state: loaded models, their batches, and the jobs on their way.
struct Worker<'a> {
    stats: &'a Stats,
    prefixes: PrefixStore,
    models: HashMap<String, Model>,
    /// Each model's tokens for grammars, built on its first constrained job.
    vocabs: HashMap<String, Vocab>,
    batches: HashMap<String, Batch>,
    waiting: VecDeque<Waiting>,
    flight: HashMap<u64, InFlight>,
    pace: Pace,
    next_key: u64,
}

fn serve(rx: mpsc::Receiver<Envelope>, stats: &Stats, prefixes: PrefixStore) {
    let mut w = Worker {
        stats,
        prefixes,
        models: HashMap::new(),
        vocabs: HashMap::new(),
        batches: HashMap::new(),
        waiting: VecDeque::new(),
        flight: HashMap::new(),
        pace: Pace::default(),
        next_key: 0,
    };
    loop {
        // Idle: wait for work. Busy: take whatever has arrived, without waiting.
        let mut arrived: Vec<Envelope> = Vec::new();
        if w.flight.is_empty() && w.waiting.is_empty() {
            match rx.recv() {
                Ok(e) => arrived.push(e),
                Err(_) => return, // every handle is gone
            }
        }
        arrived.extend(rx.try_iter());
        stats.queued.fetch_sub(arrived.len(), Ordering::SeqCst);
        for Envelope { job, reply } in arrived {
            w.arrive(job, reply);
        }
        w.drop_abandoned();
        w.prefill();
        w.decode();
        w.hand_back();
        stats
            .running
            .store(w.flight.len() + w.waiting.len(), Ordering::SeqCst);
    }
}

impl Worker<'_> {
    /// Takes a job up: its model, grammar and prompt, and its start from the prefix store.
    fn arrive(&mut self, job: Job, reply: oneshot::Sender<Result<Output>>) {
        if abandoned(&reply, &job.stream) {
            self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let key = self.next_key;
        self.next_key += 1;
        // Filler prompts measure prefill: they neither start from the store nor fill it.
        let stored = !matches!(job.prompt, Prompt::Filler { .. });
        match self.begin(&job) {
            Ok(prefill) => self.waiting.push_back(Waiting {
                key,
                model: job.model,
                prefill,
                stored,
                stream: job.stream,
                reply,
            }),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Loads the model if needed, compiles the job's constraint and renders the prompt.
    fn begin(&mut self, job: &Job) -> Result<Prefill> {
        if !self.models.contains_key(&job.model) {
            let model = load(&job.model)?;
            self.models.insert(job.model.clone(), model);
        }
        let model = &self.models[&job.model];
        let constraint = match &job.constraint {
            Some(c) => {
                if !self.vocabs.contains_key(&job.model) {
                    self.vocabs.insert(job.model.clone(), Vocab::new(model)?);
                }
                Some(self.vocabs[&job.model].compile(c)?)
            }
            None => None,
        };
        let (prompt, mut stop) = job.prompt.encode(model)?;
        tracing::debug!("prompt tokens: {prompt:?}");
        if job.ignore_eos {
            // The plain format's next-turn marker ends a turn as an end-of-turn token does.
            stop.clear();
        }
        stop.extend(job.stop.iter().cloned());
        let req = Request {
            prompt,
            max_tokens: job.max_tokens,
            stop,
            samples: job.samples.clone(),
            ignore_eos: job.ignore_eos,
            constraint,
        };
        Prefill::begin(model, req)
    }

    /// Jobs nobody waits for leave before the next step: waiting ones, and in-flight ones
    /// with their rows of the batch.
    fn drop_abandoned(&mut self) {
        let stats = self.stats;
        self.waiting.retain(|w| {
            let gone = abandoned(&w.reply, &w.stream);
            if gone {
                stats.cancelled.fetch_add(1, Ordering::SeqCst);
            }
            !gone
        });
        let gone: Vec<u64> = self
            .flight
            .iter()
            .filter(|(_, f)| f.abandoned())
            .map(|(&k, _)| k)
            .collect();
        for k in gone {
            let f = self
                .flight
                .remove(&k)
                .expect("an abandoned job is in flight");
            if let Some(batch) = self.batches.get_mut(&f.model) {
                if let Err(e) = batch.retain(|key, _| key != k) {
                    tracing::warn!("dropping a cancelled job's rows: {e:#}");
                }
            }
            stats.cancelled.fetch_add(1, Ordering::SeqCst);
            let _ = f.reply.send(Err(JobError::Cancelled.into()));
        }
    }

    /// Prefills waiting prompts, first come first served: all of them whole when nothing
    /// decodes, else as much as [`Pace::chunk`] gives within this round's share of a step.
    fn prefill(&mut self) {
        let decoding = self.batches.values().any(|b| !b.is_empty());
        let began = Instant::now();
        let mut ran_any = false;
        while let Some(w) = self.waiting.front_mut() {
            let model = &self.models[&w.model];
            let left = self.pace.budget().saturating_sub(began.elapsed());
            if decoding && ran_any && left.is_zero() {
                break;
            }
            // The store is read when the prompt's turn comes, so that prompts that arrived
            // together start from what the first of them left there (a shared system prompt).
            let started = if w.stored && w.prefill.is_fresh() {
                w.prefill.start_from(&mut self.prefixes, &w.model)
            } else {
                Ok(())
            };
            let (new, remaining) = (w.prefill.new_tokens(), w.prefill.remaining());
            let n = self.pace.chunk(&w.model, new, remaining, decoding, left);
            let t = Instant::now();
            let ran = started.and_then(|()| w.prefill.run(model, n));
            if ran.is_ok() {
                self.pace.ran(&w.model, n, t.elapsed());
            }
            ran_any = true;
            if ran.is_ok() && w.prefill.remaining() > 0 {
                break; // a chunk of a long prompt: the streams' turn
            }
            let Waiting {
                key,
                model,
                prefill,
                stored,
                stream,
                reply,
            } = self.waiting.pop_front().expect("the front job is waiting");
            match ran.and_then(|()| self.join(key, &model, prefill, stored, &stream)) {
                Ok(generation) => {
                    let f = InFlight {
                        model,
                        generation,
                        stored,
                        stream,
                        reply,
                    };
                    self.flight.insert(key, f);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    /// Samples a prefilled job's first tokens and adds its rows to its model's batch.
    fn join(
        &mut self,
        key: u64,
        model: &str,
        prefill: Prefill,
        stored: bool,
        stream: &Stream,
    ) -> Result<Generation> {
        let m = &self.models[model];
        let store = stored.then_some((&mut self.prefixes, model));
        let (generation, cache) = prefill.finish(m, store, &mut forward(stream))?;
        let stats = self.stats;
        stats
            .prefills
            .fetch_add(generation.prefills() as u64, Ordering::SeqCst);
        stats
            .cached_tokens
            .fetch_add(generation.cached_tokens() as u64, Ordering::SeqCst);
        if let Some(cache) = cache {
            let batch = self.batches.entry(model.to_string()).or_default();
            batch.join(key, generation.active(), cache)?;
        }
        Ok(generation)
    }

    /// One decode step of every model's batch; a failed step fails every job in it and the
    /// batch starts over empty.
    fn decode(&mut self) {
        let began = Instant::now();
        let mut stepped = false;
        for (name, batch) in self.batches.iter_mut() {
            stepped |= !batch.is_empty();
            let model = &self.models[name];
            if let Err(e) = step(model, name, batch, &mut self.flight, &mut self.prefixes) {
                let keys: Vec<u64> = batch.rows().iter().map(|r| r.0).collect();
                for k in keys {
                    if let Some(f) = self.flight.remove(&k) {
                        let _ = f.reply.send(Err(anyhow!("{e:#}")));
                    }
                }
                *batch = Batch::default();
            }
        }
        if stepped {
            self.pace.stepped(began.elapsed());
        }
    }

    /// Hands back the jobs that ended.
    fn hand_back(&mut self) {
        let done: Vec<u64> = self
            .flight
            .iter()
            .filter(|(_, f)| f.generation.is_done())
            .map(|(&k, _)| k)
            .collect();
        for k in done {
            let f = self.flight.remove(&k).expect("a finished job is in flight");
            debug_assert!(self
                .batches
                .get(&f.model)
                .is_none_or(|b| !b.rows().iter().any(|r| r.0 == k)));
            let _ = f.reply.send(Ok(f.generation.finish()));
        }
    }
}

/// One forward pass over a model's batch, then a token for each of its rows. A row that
/// ends leaves the batch; the single sample of a job that uses the prefix store leaves its
/// prompt and reply's keys and values there first, so that the next turn of a chat (or step
/// of an agent), which re-sends both, prefills only what follows them. (A job of several
/// samples keeps only its prompt there: the next request continues at most one of them.)
fn step(
    model: &Model,
    name: &str,
    batch: &mut Batch,
    flight: &mut HashMap<u64, InFlight>,
    prefixes: &mut PrefixStore,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let t = Instant::now();
    batch.step(model, |k, s| flight[&k].generation.last_token(s))?;
    let logits = batch.logits();
    // Each job's rows, in batch order.
    let mut steps_of: HashMap<u64, Vec<(usize, &[f32])>> = HashMap::new();
    for (&(k, s), l) in batch.rows().iter().zip(logits.rows()) {
        steps_of.entry(k).or_default().push((s, l));
    }
    let mut rows_of = Vec::with_capacity(steps_of.len());
    for (k, steps) in steps_of {
        let f = flight
            .get_mut(&k)
            .expect("a batch row belongs to a job in flight");
        f.generation
            .advance(model, &steps, &mut forward(&f.stream))?;
        rows_of.push((k, steps.len()));
    }
    let seconds = t.elapsed().as_secs_f64();
    for (k, rows) in rows_of {
        let g = &mut flight.get_mut(&k).unwrap().generation;
        g.add_decode_step(seconds, rows, logits.len());
    }
    for (i, &(k, s)) in batch.rows().iter().enumerate() {
        let f = &flight[&k];
        let keep = prefixes.is_on() && f.stored && f.generation.samples() == 1;
        if keep && f.generation.is_finished(s) {
            let kv = batch.row_kv(i)?;
            let tokens = f.generation.sequence(s);
            prefixes.insert(name, &tokens[..kv.len()], Arc::new(kv));
        }
    }
    batch.retain(|k, s| !flight[&k].generation.is_finished(s))
}

/// A text callback that forwards pieces to the job's stream, if it has one. A receiver that
/// has gone away is not an error: the job still completes for its reply.
fn forward(stream: &Stream) -> impl FnMut(Piece) + '_ {
    move |piece| {
        if let Some(s) = stream {
            let _ = s.send(piece);
        }
    }
}
