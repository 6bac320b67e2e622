//! The `train` binary's console (with the `cli` feature): progress bars on a terminal, plain
//! lines otherwise, and the lines that report a finished run or export.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{Observer, LAST};
use crate::report::{EpochRecord, ExportReport, PhaseStats, Summary};

/// Console output: progress bars on a terminal, plain lines otherwise.
pub struct Console {
    tty: bool,
    bar: Option<ProgressBar>,
    label: String,
    phase_images: usize,
    /// When the phase started, and when the last plain line was printed.
    phase_started: Instant,
    last_line: Instant,
    downloading: bool,
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

impl Console {
    pub fn new() -> Console {
        Console {
            tty: std::io::stderr().is_terminal(),
            bar: None,
            label: String::new(),
            phase_images: 0,
            phase_started: Instant::now(),
            last_line: Instant::now(),
            downloading: false,
        }
    }

    fn print(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Removes a progress bar still shown, before an error is printed.
    pub fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn stats(s: &PhaseStats) -> String {
    format!("loss {:.4} acc {:.4} ({:.1} s, {:.1} img/s)", s.loss, s.acc, s.seconds, s.images_per_sec())
}

/// Seconds as `1h 02m`, `3m 05s` or `42s`.
fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

/// A plain progress line: the rate is over the whole phase so far (every image since the
/// phase started, over the time since it started), and the ETA follows from it.
fn progress_line(label: &str, images: usize, total: usize, loss: f64, acc: f64, elapsed: Duration) -> String {
    let rate = images as f64 / elapsed.as_secs_f64().max(1e-9);
    let eta = total.saturating_sub(images) as f64 / rate.max(1e-9);
    format!("{label} {images}/{total} loss {loss:.4} acc {acc:.4} {rate:.1} img/s eta {}", duration(eta))
}

impl Observer for Console {
    fn info(&mut self, msg: &str) {
        self.print(msg);
    }

    fn warn(&mut self, msg: &str) {
        self.print(&format!("warning: {msg}"));
    }

    fn download_progress(&mut self, done: u64, total: Option<u64>) {
        if !self.tty {
            // Plain output: one line when the download starts, one when it ends.
            if !self.downloading {
                self.downloading = true;
                eprintln!("downloading pretrained weights ({:.0} MB)", total.unwrap_or(0) as f64 / 1e6);
            }
            if total == Some(done) {
                self.downloading = false;
                eprintln!("downloaded {:.0} MB", done as f64 / 1e6);
            }
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(total.unwrap_or(0));
            bar.set_style(
                ProgressStyle::with_template("downloading weights [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar
        });
        bar.set_position(done);
        if total == Some(done) {
            bar.finish_and_clear();
            self.bar = None;
        }
    }

    fn phase_start(&mut self, epoch: usize, epochs: usize, phase: &'static str, images: usize) {
        self.label = format!("epoch {epoch}/{epochs} {phase:<5}");
        self.phase_images = images;
        self.phase_started = Instant::now();
        self.last_line = Instant::now();
        if self.tty {
            let bar = ProgressBar::new(images as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:25}] {pos}/{len} {per_sec} eta {eta} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(self.label.clone());
            self.bar = Some(bar);
        }
    }

    fn batch_done(&mut self, images: usize, loss: f64, acc: f64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(images as u64);
                bar.set_message(format!("loss {loss:.4} acc {acc:.4}"));
            }
            // Not a terminal: a line every 30 s at most, for long phases, with the rate since
            // the phase started.
            None if self.last_line.elapsed() > Duration::from_secs(30) => {
                let line =
                    progress_line(&self.label, images, self.phase_images, loss, acc, self.phase_started.elapsed());
                eprintln!("{line}");
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    fn phase_end(&mut self, _stats: &PhaseStats) {
        self.clear();
    }

    fn epoch_end(&mut self, r: &EpochRecord, epochs: usize, best: bool) {
        self.print(&format!(
            "epoch {}/{epochs}  train {}  val {}  lr {:.1e}{}",
            r.epoch,
            stats(&r.train),
            stats(&r.val),
            r.lr,
            if best { "  * best" } else { "" }
        ));
    }
}

/// The console of a rank other than 0 in a distributed run: silent (rank 0 reports for the
/// job; errors are printed by the binary).
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn info(&mut self, _msg: &str) {}
    fn warn(&mut self, _msg: &str) {}
}

/// The int8 model's gate figures, one line.
pub fn print_quantization(q: &infer::Quantization, passed: bool) {
    eprintln!(
        "int8 {}: validation top-1 accuracy fp32 {:.4}, int8 {:.4}, agreement {:.2}% ({} images); calibration {} on {} images",
        if passed { "gate passed" } else { "gate refused" },
        q.fp32_accuracy,
        q.int8_accuracy,
        100.0 * q.top1_agreement,
        q.validation_images,
        q.calibration,
        q.calibration_images
    );
}

/// What an export wrote and how it verified.
pub fn print_export(r: &ExportReport) {
    eprintln!(
        "exported {} ({:.1} MB, ONNX opset {}); verified with ONNX Runtime ({}) on {} {}: max |logit difference| vs libtorch {:.1e}, same top-1",
        r.path.display(),
        r.bytes as f64 / 1e6,
        crate::export::OPSET,
        r.provider,
        r.images,
        if r.real_images { "validation images" } else { "random inputs" },
        r.max_abs_diff
    );
    if let Some(q) = &r.int8 {
        print_quantization(&q.quantization, q.passed);
        let note = if q.passed { "" } else { " (kept by --force)" };
        eprintln!("exported {} ({:.1} MB){note}", q.path.display(), q.bytes as f64 / 1e6);
    }
}

/// The end of a run: its time, best epoch and output folder — the result, on stdout, for
/// scripts to read — then on stderr with the other notes: skipped files, the export, and how
/// to resume a run that stopped early.
pub fn print_summary(summary: &Summary) {
    // Earlier runs of a resumed training count (a fresh run differs only by rounding).
    let total = if summary.total_seconds > summary.process_seconds + 0.001 {
        format!(" ({} over all runs)", duration(summary.total_seconds))
    } else {
        String::new()
    };
    // The seed tutorial's line, for this process; the whole training's time when resumed.
    let secs = summary.process_seconds.round() as u64;
    println!("Training complete in {}m {}s{total}", secs / 60, secs % 60);
    if let Some(best) = summary.best {
        println!("Best val Acc: {:.4} (epoch {})", best.val_acc, best.epoch);
    }
    if !summary.skipped_files.is_empty() {
        eprintln!("{} unreadable file(s) skipped (listed in summary.json)", summary.skipped_files.len());
    }
    if let Some(report) = &summary.export {
        print_export(report);
    }
    println!("outputs in {}", summary.out.display());
    if summary.interrupted {
        eprintln!(
            "stopped early after {} epoch(s): resume with --resume {}",
            summary.epochs_completed,
            summary.out.join(LAST).display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_report_the_phase_rate() {
        // 480 of 960 images after 30 s: 16 img/s whatever the time since the previous line.
        let line = progress_line("epoch 1/2 train", 480, 960, 0.5, 0.75, Duration::from_secs(30));
        assert_eq!(line, "epoch 1/2 train 480/960 loss 0.5000 acc 0.7500 16.0 img/s eta 30s");
        let later = progress_line("epoch 1/2 train", 960, 960, 0.5, 0.75, Duration::from_secs(60));
        assert!(later.contains(" 16.0 img/s eta 0s"), "{later}");
        assert_eq!(duration(631.0), "10m 31s");
        assert_eq!(duration(3725.0), "1h 02m");
    }
}
