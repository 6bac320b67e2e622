//! Dynamic batching: requests' preprocessed images wait in a bounded queue; one thread takes
//! the first, gathers more for up to `max_delay` or until `max_batch` images, runs the model
//! once on all of them, and hands each request its rows. Inference calls thus take turns on
//! the one session, and concurrent requests share its batches.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::guard;
use crate::Classifier;

/// One request's images, and where its rows go.
pub struct Job {
    /// `n × 3 × side × side` values.
    pub inputs: Vec<f32>,
    pub n: usize,
    pub reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

/// The queue's sending side; dropping every clone stops the batching thread once the queue
/// is empty.
#[derive(Clone)]
pub struct Queue {
    tx: Sender<Job>,
}

/// Why a job was not queued.
pub enum Refused {
    /// The queue is full: the client should retry later (503).
    Full,
    /// The server is stopping.
    Closed,
}

impl Queue {
    /// Queues a job without waiting.
    pub fn submit(&self, job: Job, metrics: &Metrics) -> Result<(), Refused> {
        let r = self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Disconnected(_) => Refused::Closed,
        });
        metrics.set_queue(self.tx.len());
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
    let handle = std::thread::Builder::new()
        .name("batcher".into())
        .spawn(move || run(&classifier, &rx, max_batch.max(1), max_delay, &metrics))
        .expect("spawn the batching thread");
    (Queue { tx }, handle)
}

fn run(classifier: &Classifier, rx: &Receiver<Job>, max_batch: usize, max_delay: Duration, metrics: &Metrics) {
    let mut carried: Option<Job> = None;
    loop {
        let Some(first) = carried.take().or_else(|| rx.recv().ok()) else { return };
        let deadline = Instant::now() + max_delay;
        let mut images = first.n;
        let mut jobs = vec![first];
        while images < max_batch {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(job) if images + job.n > max_batch => {
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
        metrics.set_queue(rx.len());
        serve_batch(classifier, jobs, images, metrics);
    }
}

/// Runs one batch and answers its jobs; a model error or a panic fails this batch's jobs only.
fn serve_batch(classifier: &Classifier, jobs: Vec<Job>, images: usize, metrics: &Metrics) {
    let mut input = Vec::with_capacity(jobs.iter().map(|j| j.inputs.len()).sum());
    for j in &jobs {
        input.extend_from_slice(&j.inputs);
    }
    let outputs = guard::isolate("the batching thread", || classifier.run(&input))
        .map_err(|p| p.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    metrics.batch(images);
    let classes = classifier.metadata().classes.len();
    let mut at = 0;
    for job in jobs {
        let rows = match &outputs {
            Ok(o) => Ok(o[at * classes..(at + job.n) * classes].to_vec()),
            Err(e) => Err(e.clone()),
        };
        at += job.n;
        let _ = job.reply.send(rows); // a client that went away is no error
    }
}
