//! `infer serve`: the model behind HTTP — the Open Inference Protocol (KServe v2 REST) that
//! KServe, Triton clients and load balancers speak, a plain `/v1/classify` for curl, and
//! Prometheus metrics — with concurrent requests merged into batches ([`batcher`]).
//!
//! Live as soon as it listens; ready once the model is loaded and has run (warm-up). SIGTERM or
//! SIGINT stop it accepting; requests in flight are finished, then it exits.

pub mod batcher;
pub mod metrics;
pub mod protocol;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::provider::ExecutionProvider;
use crate::Classifier;

/// The server's settings. [`ServeConfig::new`] gives the defaults, which the CLI shows.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model: PathBuf,
    pub host: String,
    /// 0 lets the system choose (the address is printed).
    pub port: u16,
    /// Images per model call at most (at least 1).
    pub max_batch: usize,
    /// How long the first request of a batch waits for others.
    pub max_delay: Duration,
    /// Requests waiting for the model at most (at least 1); more are answered 503.
    pub max_queue: usize,
    /// Largest request body, in bytes (at least 1 MB); larger ones are answered 413.
    pub max_body: usize,
    /// Bytes of request bodies held at once at most (at least `max_body`); a request that
    /// would go beyond is answered 503 with Retry-After before its body is read.
    pub max_inflight: usize,
    /// Serve the web page at `/`.
    pub ui: bool,
    /// The model's name in the protocol's routes.
    pub name: String,
    pub threads: Option<usize>,
    pub provider: ExecutionProvider,
    /// One log line per request, besides starts, stops and errors.
    pub log_requests: bool,
    /// After a stop signal, how long requests in flight may take (a stalled upload would
    /// otherwise hold the exit forever).
    pub drain: Duration,
}

impl ServeConfig {
    pub const DEFAULT_HOST: &'static str = "127.0.0.1";
    pub const DEFAULT_PORT: u16 = 8000;
    pub const DEFAULT_MAX_BATCH: usize = 32;
    pub const DEFAULT_MAX_DELAY_MS: u64 = 5;
    pub const DEFAULT_MAX_QUEUE: usize = 256;
    pub const DEFAULT_MAX_BODY_MB: usize = 20;
    /// Room for the bodies of 25 of the largest requests: with the model, the decoding
    /// threads' images and the runtime, the server stays within a 2 GB container.
    pub const DEFAULT_MAX_INFLIGHT_MB: usize = 512;
    /// Below Kubernetes' default 30 s grace period, so that the exit is ours.
    pub const DEFAULT_DRAIN_SECONDS: u64 = 25;

    /// The defaults for `model`, served under its file name without `.onnx`.
    pub fn new(model: impl Into<PathBuf>) -> ServeConfig {
        let model = model.into();
        ServeConfig {
            name: Self::default_name(&model),
            model,
            host: Self::DEFAULT_HOST.into(),
            port: Self::DEFAULT_PORT,
            max_batch: Self::DEFAULT_MAX_BATCH,
            max_delay: Duration::from_millis(Self::DEFAULT_MAX_DELAY_MS),
            max_queue: Self::DEFAULT_MAX_QUEUE,
            max_body: Self::DEFAULT_MAX_BODY_MB << 20,
            max_inflight: Self::DEFAULT_MAX_INFLIGHT_MB << 20,
            ui: true,
            threads: None,
            provider: ExecutionProvider::Auto,
            log_requests: false,
            drain: Duration::from_secs(Self::DEFAULT_DRAIN_SECONDS),
        }
    }

    /// A model's name in the routes: its file name without `.onnx`.
    pub fn default_name(model: &std::path::Path) -> String {
        model.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned())
    }

    /// The settings with each limit raised to its least workable value.
    fn clamped(mut self) -> ServeConfig {
        self.max_batch = self.max_batch.max(1);
        self.max_queue = self.max_queue.max(1);
        self.max_body = self.max_body.max(1 << 20);
        self.max_inflight = self.max_inflight.max(self.max_body);
        self
    }
}

/// Why the server could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the server's threads: {0}")]
    Threads(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error(transparent)]
    Model(#[from] crate::InferError),
    #[error("warm-up failed: {0}")]
    WarmUp(crate::InferError),
    #[error("server error: {0}")]
    Server(std::io::Error),
}

/// What exists once the model is loaded.
struct Ready {
    classifier: Arc<Classifier>,
    queue: batcher::Queue,
    metadata: Value,
}

/// Shared by every request.
pub(crate) struct App {
    config: ServeConfig,
    ready: OnceLock<Ready>,
    metrics: Arc<metrics::Metrics>,
    /// Request body bytes that may still be admitted, in KiB.
    inflight: Arc<tokio::sync::Semaphore>,
    /// Error lines logged recently, so that a flood of bad requests cannot flood the log.
    error_log: routes::RateLimitedLog,
}

/// One log line on stderr, with the time since the server started.
fn log(started: Instant, msg: &str) {
    eprintln!("[{:>9.3}s] {msg}", started.elapsed().as_secs_f64());
}

/// The model metadata of the protocol, with the classes and the preprocessing contract.
fn model_metadata(name: &str, c: &Classifier) -> Value {
    let m = c.metadata();
    let side = m.preprocess.crop_size;
    json!({
        "name": name,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": protocol::TENSOR_INPUT, "datatype": "FP32", "shape": [-1, 3, side, side]},
            {"name": protocol::IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}
        ],
        "outputs": [
            {"name": protocol::PROBABILITIES, "datatype": "FP32", "shape": [-1, m.classes.len()]},
            {"name": protocol::LABELS, "datatype": "BYTES", "shape": [-1]}
        ],
        "parameters": {
            "classes": m.classes,
            "preprocessing": m.preprocess,
            "execution_provider": c.provider(),
            "quantization": m.quantization,
            "arch": m.arch,
        }
    })
}

/// Loads the model, warms it up (a full batch and a single image) and starts batching.
fn load(config: &ServeConfig, metrics: &Arc<metrics::Metrics>) -> Result<(Ready, JoinHandle<()>), ServeError> {
    let mut builder = Classifier::builder(&config.model).execution_provider(config.provider);
    if let Some(t) = config.threads {
        builder = builder.intra_threads(t);
    }
    let classifier = Arc::new(builder.build()?);
    let len = classifier.metadata().preprocess.input_len();
    for n in [config.max_batch, 1] {
        classifier.run(&vec![0.0; n * len]).map_err(ServeError::WarmUp)?;
    }
    let (queue, handle) = batcher::start(
        Arc::clone(&classifier),
        config.max_batch,
        config.max_delay,
        config.max_queue,
        Arc::clone(metrics),
    );
    let metadata = model_metadata(&config.name, &classifier);
    Ok((Ready { classifier, queue, metadata }, handle))
}

/// Waits for SIGTERM or SIGINT.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = async { if let Some(t) = term.as_mut() { t.recv().await } else { std::future::pending().await } } => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// Runs the server until SIGTERM/SIGINT (`Ok`) or until it cannot serve (`Err`: the address is
/// taken, the model does not load).
pub fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("http")
        .build()
        .map_err(ServeError::Threads)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let config = config.clamped();
    let kib = (config.max_inflight >> 10).min(tokio::sync::Semaphore::MAX_PERMITS);
    let inflight = Arc::new(tokio::sync::Semaphore::new(kib));
    let error_log = routes::RateLimitedLog::default();
    let app = Arc::new(App { config, ready: OnceLock::new(), metrics, inflight, error_log });
    let result = runtime.block_on(run(Arc::clone(&app), started));
    // Connections cut at the drain limit still hold the app (and so the queue): ending the
    // runtime drops them. Then dropping the queue's last sender lets the batching thread
    // finish what is queued.
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(app);
    let Stopped { batcher, failed } = result?;
    if let Some(handle) = batcher {
        let _ = handle.join();
    }
    match failed {
        Some(e) => Err(e),
        None => {
            log(started, "stopped");
            Ok(())
        }
    }
}

/// How the server stopped: the batching thread to join, and the loading failure that stopped
/// it, if one did.
struct Stopped {
    batcher: Option<JoinHandle<()>>,
    failed: Option<ServeError>,
}

/// Listens, loads the model in the background, serves until a stop signal or a loading
/// failure, then drains.
async fn run(app: Arc<App>, started: Instant) -> Result<Stopped, ServeError> {
    let config = &app.config;
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Listen { addr: addr.clone(), source })?;
    let local: SocketAddr = listener.local_addr().map_err(|source| ServeError::Listen { addr, source })?;
    log(
        started,
        &format!("listening on http://{local} (model '{}': {}; loading)", config.name, config.model.display()),
    );
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<ServeError>();
    let loader = spawn_loader(Arc::clone(&app), started, failed_tx);
    let failure = Arc::new(std::sync::Mutex::new(None::<ServeError>));
    let stopping = Arc::new(tokio::sync::Notify::new());
    let shutdown = shutdown_on_signal_or_failure(started, failed_rx, Arc::clone(&failure), Arc::clone(&stopping));
    let server = axum::serve(listener, routes::router(Arc::clone(&app))).with_graceful_shutdown(shutdown);
    let drain = config.drain;
    let drained = async move {
        stopping.notified().await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        r = async { server.await } => r.map_err(ServeError::Server)?,
        () = drained => log(started, &format!("requests still open after {} s are cut", drain.as_secs())),
    }
    let batcher = loader.await.ok().flatten();
    let failed = failure.lock().ok().and_then(|mut f| f.take());
    Ok(Stopped { batcher, failed })
}

/// Loads the model on a blocking thread; the server is ready once it is in, or told through
/// `failed` that it never will be.
fn spawn_loader(
    app: Arc<App>,
    started: Instant,
    failed: tokio::sync::oneshot::Sender<ServeError>,
) -> tokio::task::JoinHandle<Option<JoinHandle<()>>> {
    tokio::task::spawn_blocking(move || match load(&app.config, &app.metrics) {
        Ok((ready, handle)) => {
            let provider = ready.classifier.provider().to_string();
            let _ = app.ready.set(ready);
            log(started, &format!("ready: model loaded and warmed up on {provider}"));
            Some(handle)
        }
        Err(e) => {
            let _ = failed.send(e);
            None
        }
    })
}

/// Resolves at SIGTERM/SIGINT or when loading fails (kept in `failure`); either way, tells
/// `stopping` that the drain period starts.
async fn shutdown_on_signal_or_failure(
    started: Instant,
    failed: tokio::sync::oneshot::Receiver<ServeError>,
    failure: Arc<std::sync::Mutex<Option<ServeError>>>,
    stopping: Arc<tokio::sync::Notify>,
) {
    tokio::select! {
        why = stop_signal() => log(started, &format!("{why}: stopping; finishing the requests in flight")),
        Ok(e) = failed => {
            log(started, &format!("error: {e}"));
            if let Ok(mut f) = failure.lock() { *f = Some(e); }
        }
    }
    stopping.notify_one();
}
