//! `conclave serve`: an OpenAI-compatible HTTP API whose models may be ensembles.
//!
//! Requests become engine jobs (one per request; `n` choices share one prefill) or ensemble
//! runs. Admission is bounded: past `--max-queue` requests queued or running, the server
//! answers 429 with `Retry-After` rather than queueing without end.
mod agent;
mod errors;
mod metrics;
mod openai;
mod responses;
mod routes;
mod served;
mod spans;
mod sse;
mod tools;
mod traces;
mod ui;

pub use errors::ApiError;

use crate::engine::{Engine, Job, Prompt, SamplingParams};
use anyhow::{bail, Context, Result};
use metrics::Metrics;
use served::Served;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How a server is set up: the `conclave serve` flags, whose defaults are these attributes'.
#[derive(Debug, Clone, clap::Parser)]
pub struct Options {
    /// Address to listen on; anything but loopback needs --api-key or --insecure.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require this key as `Authorization: Bearer KEY`.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Listen on a non-loopback address without an API key.
    #[arg(long)]
    pub insecure: bool,
    /// Requests queued or running at once; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Seconds a request may take before it is answered 504 (0: no limit).
    #[arg(long, value_name = "SECONDS", default_value = "600", value_parser = timeout)]
    pub request_timeout: Timeout,
    /// Largest request body in bytes; larger are answered 413.
    #[arg(long = "max-body", value_name = "BYTES", default_value_t = 1 << 20)]
    pub body_limit: usize,
    /// Comma-separated models to serve [default: every catalog model already pulled].
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Ensemble file to serve as `conclave/<file stem>` (may be repeated); the presets
    /// (vote8, mixed, council, judged, debate) are served as well.
    #[arg(long = "config", value_name = "FILE")]
    pub configs: Vec<PathBuf>,
    /// Serve ensembles that use tools (`refine`, `exec-vote`, agents with `tools = [...]`);
    /// without it they are not listed and requests for them are refused, so a request
    /// cannot make the server run anything.
    #[arg(long)]
    pub allow_tools: bool,
    /// MiB of recent prompts' keys and values kept so that a request starting like an earlier
    /// one prefills only the rest (0: none). Off by default: on a GPU, or a long chunk
    /// on an AVX2 CPU, a cached start may change a greedy answer's last bits (see
    /// `Engine::start`).
    #[arg(long, default_value_t = 0)]
    pub prefix_cache_mb: usize,
    /// Traces of recent ensemble and agent answers kept in memory for
    /// /v1/conclave/traces (the oldest is dropped past this; 0: none).
    #[arg(long, default_value_t = 64)]
    pub traces_kept: usize,
}

/// Longest a request may take; None for no limit. A named alias so that clap takes the
/// whole `Option` from [`timeout`] instead of making the flag optional.
pub type Timeout = Option<Duration>;

/// `--request-timeout`: seconds, 0 for no limit.
fn timeout(s: &str) -> Result<Timeout, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(secs >= 0.0 && secs.is_finite()) {
        return Err("a number of seconds, 0 for no limit".into());
    }
    Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
}

impl Default for Options {
    /// The flags' defaults.
    fn default() -> Self {
        <Self as clap::Parser>::parse_from(["conclave-serve"])
    }
}

impl Options {
    /// The address to listen on, refusing a non-loopback one without a key unless
    /// `insecure`: anyone who can reach the port could otherwise use the machine's CPU.
    pub fn addr(&self) -> Result<SocketAddr> {
        let ip: IpAddr = if self.host == "localhost" {
            IpAddr::from([127, 0, 0, 1])
        } else {
            self.host
                .parse()
                .with_context(|| format!("--host {}: not an IP address", self.host))?
        };
        if !ip.is_loopback() && self.api_key.is_none() && !self.insecure {
            bail!(
                "refusing to listen on {ip} without an API key: anyone who can reach it could \
                 use this machine; set --api-key (or --api-key-file), or pass --insecure"
            );
        }
        if self.max_queue == 0 {
            bail!("--max-queue must be at least 1");
        }
        Ok(SocketAddr::new(ip, self.port))
    }
}

/// The state every handler shares.
#[derive(Clone)]
pub struct App(Arc<Inner>);

struct Inner {
    engine: Engine,
    served: Served,
    opts: Options,
    slots: Arc<Semaphore>,
    metrics: Metrics,
    traces: traces::Traces,
}

impl App {
    /// Checks the models and ensembles to serve and loads every model once, so the first
    /// request does not wait for a load and a bad file fails here rather than later.
    pub async fn new(opts: Options, engine: Engine) -> Result<Self> {
        opts.addr()?;
        let served = Served::new(&opts.models, &opts.configs, opts.allow_tools)?;
        for model in &served.models {
            engine
                .generate(warm_up(model))
                .await
                .with_context(|| format!("loading {model}"))?;
        }
        let slots = Arc::new(Semaphore::new(opts.max_queue));
        let metrics = Metrics::new(engine.clone(), slots.clone(), opts.max_queue);
        let traces = traces::Traces::new(opts.traces_kept);
        Ok(Self(Arc::new(Inner {
            engine,
            served,
            opts,
            slots,
            metrics,
            traces,
        })))
    }

    /// A place in the bounded queue, held until the response (or its stream) ends.
    fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.0
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::busy(self.0.opts.max_queue, 1))
    }

    /// Runs `fut` within the server's request timeout.
    async fn within<T>(&self, fut: impl Future<Output = T>) -> Result<T, ApiError> {
        match self.0.opts.request_timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| ApiError::timeout(t.as_secs_f64())),
            None => Ok(fut.await),
        }
    }

    pub fn router(&self) -> axum::Router {
        routes::router(self.clone())
    }
}

/// A one-token job that makes the engine load `model`.
fn warm_up(model: &str) -> Job {
    Job {
        model: model.to_string(),
        prompt: Prompt::Text("Hello".into()),
        max_tokens: 1,
        stop: Vec::new(),
        samples: vec![SamplingParams::default()],
        ignore_eos: true,
        stream: None,
        constraint: None,
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and lets the
/// requests in flight finish (streams included) before returning.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, app.router())
        .with_graceful_shutdown(shutdown)
        .await
        .context("the HTTP server failed")
}

/// Completes on the first SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("conclave serve: shutting down; finishing the requests in flight");
}

/// `conclave serve`: loads, listens, and serves until SIGINT or SIGTERM.
pub fn run(opts: Options) -> Result<()> {
    let addr = opts.addr()?;
    // The engine thread does the model work; two workers are plenty for the HTTP side.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let engine = Engine::with_prefix_cache(opts.prefix_cache_mb << 20);
        let app = App::new(opts, engine).await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        // Tests and scripts read the port from this line (with --port 0 the OS picks it).
        eprintln!("conclave serve: listening on http://{local}");
        eprintln!(
            "conclave serve: models: {}; ensembles: {}",
            app.0.served.models.join(", "),
            app.0.served.ensemble_ids().join(", ")
        );
        serve(listener, app, signal()).await
    })?;
    eprintln!("conclave serve: stopped");
    Ok(())
}
