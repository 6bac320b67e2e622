//! The run's TensorBoard log: an [`Observer`] placed in front of the caller's that also writes
//! what it hears into an event file in the output folder, so `tensorboard --logdir models`
//! shows the run as PyTorch users see theirs (`SummaryWriter`).
//!
//! Written: loss, accuracy and images/s per epoch for training and validation and the epoch's
//! learning rate (step = epoch, the rows of `metrics.csv`); the training loss averaged over
//! every `every` batches (step = batches since the run began, continued by a resumed run); the
//! pictures the run makes; the settings and best figures for the hparams dashboard; and the
//! summary as text. A failure to write is told once and training goes on without the log.

use image::RgbImage;

use crate::config::{Hyper, Observer};
use crate::report::{EpochRecord, PhaseStats, Summary};
use crate::tensorboard::{EventWriter, HParam};

/// The scalar tags the hparams dashboard shows beside the settings.
const BEST_ACC: &str = "best/val_accuracy";
const BEST_LOSS: &str = "best/val_loss";
const BEST_EPOCH: &str = "best/epoch";

/// Batches between two points of the training-loss curve, unless told otherwise.
pub const DEFAULT_EVERY: usize = 10;

/// An observer that also logs to TensorBoard.
pub struct Board<'o> {
    inner: &'o mut dyn Observer,
    writer: Option<EventWriter>,
    every: usize,
    batch_size: usize,
    /// The training phase under way: its epoch (1-based), batches done and their loss sum.
    training: Option<usize>,
    batches: usize,
    seen: usize,
    loss_sum: f64,
    /// Batches per epoch, from the phase's image count, for the run-wide step.
    steps_per_epoch: usize,
    /// Since the last point: loss sum and images.
    window: (f64, usize),
    ended: bool,
}

impl<'o> Board<'o> {
    /// Logs into `writer` and passes everything on to `inner`. A fresh run (not a resumed one)
    /// records its settings for the hparams dashboard.
    pub fn new(writer: EventWriter, inner: &'o mut dyn Observer, hyper: &Hyper, fresh: bool, every: usize) -> Self {
        let mut b = Board {
            inner,
            writer: Some(writer),
            every: every.max(1),
            batch_size: hyper.batch_size.max(1),
            training: None,
            batches: 0,
            seen: 0,
            loss_sum: 0.0,
            steps_per_epoch: 0,
            window: (0.0, 0),
            ended: false,
        };
        if fresh {
            let settings = HParam::flatten(&hyper.describe());
            b.write(|w| w.hparams(&settings, &[BEST_ACC, BEST_LOSS, BEST_EPOCH, "accuracy/val", "loss/val"]));
        }
        b
    }

    /// Runs one write; the first failure is told and ends the log.
    fn write(&mut self, f: impl FnOnce(&mut EventWriter) -> std::io::Result<()>) {
        let Some(w) = &mut self.writer else { return };
        if let Err(e) = f(w) {
            let msg = format!("TensorBoard log {}: {e}; training goes on without it", w.path().display());
            self.writer = None;
            self.inner.warn(&msg);
        }
    }

    fn end(&mut self, success: bool) {
        if !self.ended {
            self.ended = true;
            self.write(|w| w.hparams_end(success).and_then(|_| w.flush()));
        }
    }
}

impl Drop for Board<'_> {
    /// A run that ended in an error is a stopped session.
    fn drop(&mut self) {
        self.end(false);
    }
}

/// The summary as Markdown for the text dashboard.
fn summary_markdown(s: &Summary) -> String {
    let mut md = String::new();
    let best = s.best.map_or_else(
        || "none (no epoch finished)".to_string(),
        |b| format!("epoch {}, validation accuracy {:.4}, loss {:.4}", b.epoch, b.val_acc, b.val_loss),
    );
    let stopped = if s.interrupted { " (stopped before the last epoch)" } else { "" };
    md.push_str(&format!("**Best model:** {best}  \n"));
    md.push_str(&format!(
        "**Epochs:** {}{stopped} in {:.0} s on {}  \n",
        s.epochs_completed, s.total_seconds, s.device
    ));
    md.push_str(&format!("**Classes:** {}  \n", s.classes.join(", ")));
    md.push_str(&format!(
        "**Images:** {} training, {} validation  \n",
        s.train_counts.iter().sum::<usize>(),
        s.val_counts.iter().sum::<usize>()
    ));
    md.push_str(&format!("**Weights:** {}\n\n", s.weights));
    let json = serde_json::to_string_pretty(s).unwrap_or_default();
    // Indented, so the Markdown shows it as code.
    md.push_str("summary.json:\n\n");
    for line in json.lines() {
        md.push_str("    ");
        md.push_str(line);
        md.push('\n');
    }
    md
}

impl Observer for Board<'_> {
    fn info(&mut self, msg: &str) {
        self.inner.info(msg);
    }

    fn warn(&mut self, msg: &str) {
        self.inner.warn(msg);
    }

    fn download_progress(&mut self, done: u64, total: Option<u64>) {
        self.inner.download_progress(done, total);
    }

    fn phase_start(&mut self, epoch: usize, epochs: usize, phase: &'static str, images: usize) {
        self.training = None;
        if phase == "train" {
            self.training = Some(epoch);
            (self.batches, self.seen, self.loss_sum, self.window) = (0, 0, 0.0, (0.0, 0));
            self.steps_per_epoch = images.div_ceil(self.batch_size);
        }
        self.inner.phase_start(epoch, epochs, phase, images);
    }

    fn batch_done(&mut self, images: usize, loss: f64, acc: f64) {
        if let Some(epoch) = self.training {
            // The observer hears running means; the batch's own loss sum is the difference.
            let sum = loss * images as f64;
            self.window.0 += sum - self.loss_sum;
            self.window.1 += images.saturating_sub(self.seen);
            (self.loss_sum, self.seen) = (sum, images);
            self.batches += 1;
            if self.batches % self.every == 0 && self.window.1 > 0 {
                let step = ((epoch - 1) * self.steps_per_epoch + self.batches) as i64;
                let mean = self.window.0 / self.window.1 as f64;
                self.window = (0.0, 0);
                self.write(|w| w.scalar("loss/train_step", step, mean));
            }
        }
        self.inner.batch_done(images, loss, acc);
    }

    fn phase_end(&mut self, stats: &PhaseStats) {
        self.inner.phase_end(stats);
    }

    fn epoch_end(&mut self, r: &EpochRecord, epochs: usize, best: bool) {
        let step = r.epoch as i64;
        self.write(|w| {
            for (phase, s) in [("train", &r.train), ("val", &r.val)] {
                w.scalar(&format!("loss/{phase}"), step, s.loss)?;
                w.scalar(&format!("accuracy/{phase}"), step, s.acc)?;
                w.scalar(&format!("images_per_s/{phase}"), step, s.images_per_sec())?;
            }
            w.scalar("lr", step, r.lr)?;
            w.flush()
        });
        self.inner.epoch_end(r, epochs, best);
    }

    fn metric(&mut self, tag: &str, epoch: usize, value: f64) {
        self.write(|w| w.scalar(tag, epoch as i64, value));
        self.inner.metric(tag, epoch, value);
    }

    fn picture(&mut self, name: &str, epoch: usize, img: &RgbImage) {
        self.write(|w| w.image(&format!("pictures/{name}"), epoch as i64, img).and_then(|_| w.flush()));
        self.inner.picture(name, epoch, img);
    }

    fn finished(&mut self, s: &Summary) {
        if let Some(b) = s.best {
            let step = s.epochs_completed as i64;
            self.write(|w| {
                w.scalar(BEST_ACC, step, b.val_acc)?;
                w.scalar(BEST_LOSS, step, b.val_loss)?;
                w.scalar(BEST_EPOCH, step, b.epoch as f64)
            });
        }
        let md = summary_markdown(s);
        self.write(|w| w.text("summary", s.epochs_completed as i64, &md));
        self.end(!s.interrupted);
        self.inner.finished(s);
    }
}
