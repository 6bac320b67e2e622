//! The `infer` binary's console (not part of the library): notes on stderr, and a progress bar
//! there when it is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use infer::job::JobObserver;

/// Shows a batch job's progress.
#[derive(Default)]
pub struct Console {
    bar: Option<ProgressBar>,
}

impl JobObserver for Console {
    fn note(&mut self, line: &str) {
        eprintln!("{line}");
    }

    fn started(&mut self, files: usize) {
        if std::io::stderr().is_terminal() {
            let style = ProgressStyle::with_template("[{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> ");
            self.bar = Some(ProgressBar::new(files as u64).with_style(style));
        }
    }

    fn progress(&mut self, files: usize) {
        if let Some(b) = &self.bar {
            b.set_position(files as u64);
        }
    }

    fn write_record(&mut self, write: &mut dyn FnMut() -> std::io::Result<()>) -> std::io::Result<()> {
        match &self.bar {
            Some(b) => b.suspend(write),
            None => write(),
        }
    }

    fn finished(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
