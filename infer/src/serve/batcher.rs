//! Dynamic batching: requests' preprocessed images wait in a bounded queue; one thread takes
//! the first, gathers more for up to `max_delay` or until `max_batch` images, runs the model
//! once on all of them, and hands each request its rows. Inference calls thus take turns on
//! the one session, and concurrent requests share its batches.
//!
//! It waits only for requests that are on their way (announced, still being decoded): a lone
//! request goes to the model at once instead of paying `max_delay` for company that is not
//! coming.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::guard;
use crate::{Classifier, InferError};

/// One request's images, and where its rows go.
pub struct Job {
    /// `n × 3 × side × side` values.
    pub inputs: Vec<f32>,
    pub n: usize,
    pub reply: oneshot::Sender<Result<Vec<f32>, InferError>>,
}

/// The queue's sending side; dropping every clone stops the batching thread once the queue
/// is empty.
#[derive(Clone)]
pub struct Queue {
    tx: Sender<Job>,
    /// Requests announced and not yet queued (or given up).
    coming: Arc<AtomicUsize>,
}

/// A request on its way to the queue; dropping it (queued or failed) withdraws it.
pub struct Announced {
    coming: Arc<AtomicUsize>,
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.coming.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a job was not queued.
pub enum Refused {
    /// The queue is full: the client should retry later (503).
    Full,
    /// The server is stopping.
    Closed,
}

impl Queue {
    /// Says a request will be submitted soon, so that a batch forming now waits for it.
    pub fn announce(&self) -> Announced {
        self.coming.fetch_add(1, Ordering::SeqCst);
        Announced { coming: Arc::clone(&self.coming) }
    }

    /// Jobs waiting for the model.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }

    /// Queues a job without waiting; its announcement ends once it is in the queue.
    pub fn submit(&self, job: Job, announced: Announced) -> Result<(), Refused> {
        let r = self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Disconnected(_) => Refused::Closed,
        });
        drop(announced);
        r
    }
}

/// Starts the batching thread for `classifier`; the queue holds at most `max_queue` jobs.
pub fn start(
    classifier: Arc<Classifier>,
    max_batch: usize,
    max_delay: Duration,
    max_queue: usize,
    metrics: Arc<Metrics>,
) -> (Queue, JoinHandle<()>) {
    let (tx, rx) = bounded::<Job>(max_queue.max(1));
    let coming = Arc::new(AtomicUsize::new(0));
    let limits = Limits { max_batch: max_batch.max(1), max_delay, coming: Arc::clone(&coming) };
    let handle = std::thread::Builder::new()
        .name("batcher".into())
        .spawn(move || run(&classifier, &rx, &limits, &metrics))
        .expect("spawn the batching thread");
    (Queue { tx, coming }, handle)
}

struct Limits {
    max_batch: usize,
    max_delay: Duration,
    coming: Arc<AtomicUsize>,
}

fn run(classifier: &Classifier, rx: &Receiver<Job>, limits: &Limits, metrics: &Metrics) {
    let mut carried: Option<Job> = None;
    loop {
        let Some(first) = carried.take().or_else(|| rx.recv().ok()) else { return };
        let deadline = Instant::now() + limits.max_delay;
        let mut images = first.n;
        let mut jobs = vec![first];
        while images < limits.max_batch {
            let wait = match limits.coming.load(Ordering::SeqCst) {
                0 => Duration::ZERO,
                _ => deadline.saturating_duration_since(Instant::now()),
            };
            match rx.recv_timeout(wait) {
                Ok(job) if images + job.n > limits.max_batch => {
                    carried = Some(job);
                    break;
                }
                Ok(job) => {
                    images += job.n;
                    jobs.push(job);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        serve_batch(classifier, jobs, images, metrics);
    }
}

/// Runs one batch and answers its jobs. When a batch of several requests fails (a model error
/// or a panic), each request is run again alone, so that one request's bad input fails only
/// that request.
fn serve_batch(classifier: &Classifier, jobs: Vec<Job>, images: usize, metrics: &Metrics) {
    let mut input = Vec::with_capacity(jobs.iter().map(|j| j.inputs.len()).sum());
    for j in &jobs {
        input.extend_from_slice(&j.inputs);
    }
    let outputs = run_guarded(classifier, &input);
    metrics.batch(images, outputs.is_ok());
    if outputs.is_err() && jobs.len() > 1 {
        for job in jobs {
            let rows = run_guarded(classifier, &job.inputs);
            metrics.batch(job.n, rows.is_ok());
            let _ = job.reply.send(rows); // a client that went away is no error
        }
        return;
    }
    let classes = classifier.metadata().classes.len();
    let mut at = 0;
    for job in jobs {
        let rows = match &outputs {
            Ok(o) => Ok(o[at * classes..(at + job.n) * classes].to_vec()),
            Err(e) => Err(e.clone()),
        };
        at += job.n;
        let _ = job.reply.send(rows);
    }
}

/// One model run on the batching thread; a panic is an error like any other.
fn run_guarded(classifier: &Classifier, input: &[f32]) -> Result<Vec<f32>, InferError> {
    guard::isolate("the batching thread", || classifier.run(input))
        .unwrap_or_else(|p| Err(InferError::Run(p.to_string())))
}
