//! A batch job: classify many paths and write a record for each, the way `infer PATH...`
//! does — with its output file replaced only when the job completes (`.partial` otherwise),
//! `--resume` of a killed job, `--shard` of a job spread over machines, `--eval` of a labelled
//! folder and `--gallery` pictures — and the exit status that sums it up.
//!
//! The binary maps its arguments onto a [`JobConfig`], runs the [`Job`] and prints the
//! [`JobSummary`]; everything in between is here, so that embedding programs and tests run the
//! same job.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use thiserror::Error;

use crate::atomic::{self, AtomicFile};
use crate::evaluation::{labelled_files, Evaluation, LabelledFolderError};
use crate::files::{Ignored, Input};
use crate::gallery;
use crate::prediction::FileResult;
use crate::records::{Format, RecordWriter, ResumeError};
use crate::shard::{ShardError, ShardSpec};
use crate::Classifier;

/// What a batch job does.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Image files and folders (searched recursively); with `eval`, one labelled folder.
    pub paths: Vec<PathBuf>,
    pub format: Format,
    /// Records go here, replaced only when the job completes; `None`: to the writer given to
    /// [`Job::run`].
    pub output: Option<PathBuf>,
    /// Continue `output` (jsonl or csv): skip the inputs it holds a record for, append the rest.
    pub resume: bool,
    /// Only this part of the sorted inputs.
    pub shard: Option<ShardSpec>,
    /// `paths` is one labelled folder (`ROOT/<class>/<images>`): count the right and wrong
    /// predictions; records go only to `output`.
    pub eval: bool,
    /// Where `eval` draws its confusion matrix (default: [`confusion_png_path`]).
    pub confusion_png: Option<PathBuf>,
    /// Draw the classified images with their classes into this PNG.
    pub gallery: Option<PathBuf>,
    /// Images in the gallery at most.
    pub gallery_size: usize,
    /// Records of successful results are not written to the writer (an output file still gets
    /// every record; errors are always written).
    pub quiet: bool,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            paths: Vec::new(),
            format: Format::Table,
            output: None,
            resume: false,
            shard: None,
            eval: false,
            confusion_png: None,
            gallery: None,
            gallery_size: gallery::Options::default().max_images,
            quiet: false,
        }
    }
}

/// Why a job could not run (or finish its reports). Its records so far are kept.
#[derive(Debug, Error)]
pub enum JobError {
    #[error("--eval takes one labelled folder")]
    EvalNeedsOneFolder,
    #[error(transparent)]
    Labelled(#[from] LabelledFolderError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Resume(#[from] ResumeError),
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot write results: {0}")]
    Results(std::io::Error),
    #[error("no images found in {}", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoImages(Vec<PathBuf>),
}

/// What a person running the job is told as it goes. Every method has a default that does
/// nothing, except [`JobObserver::write_record`], which writes.
pub trait JobObserver {
    /// A note (one line): where the results went, what was resumed, pictures saved.
    fn note(&mut self, _line: &str) {}
    /// Classification starts on this many files.
    fn started(&mut self, _files: usize) {}
    /// Files classified (or failed) so far.
    fn progress(&mut self, _files: usize) {}
    /// Writes a record to the terminal: a progress display gets out of the way here.
    fn write_record(&mut self, write: &mut dyn FnMut() -> std::io::Result<()>) -> std::io::Result<()> {
        write()
    }
    /// Classification is over.
    fn finished(&mut self) {}
}

/// Collects the notes (for tests and embedding programs that log them their own way).
impl JobObserver for Vec<String> {
    fn note(&mut self, line: &str) {
        self.push(line.to_string());
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every input has its record.
    Completed,
    /// `resume`: the output already held a record for every input.
    NothingToDo,
    /// Stopped part-way by this signal (a note says where the records are).
    Stopped { signal: i32 },
    /// Writing the results failed part-way (a note says why and where the records are).
    WriteFailed,
}

/// What a job did.
#[derive(Debug)]
pub struct JobSummary {
    pub outcome: Outcome,
    /// Records this job was to write (results and path errors), and how many it wrote.
    pub total: usize,
    pub written: usize,
    /// Records that are errors.
    pub failures: usize,
    /// Files read (classified or failed), not path errors.
    pub files: usize,
    /// `resume`: how many inputs the output held before (`None`: it was empty or new).
    pub done_before: Option<usize>,
    /// Seconds spent classifying.
    pub seconds: f64,
    /// `eval`: the counts of right and wrong predictions.
    pub evaluation: Option<Evaluation>,
    /// Files passed over in the folders for not being images.
    pub ignored: Ignored,
}

impl JobSummary {
    /// The process's exit status: 0 when every input was classified, 2 when some failed, 1
    /// when results could not be written, 128 + the signal when stopped by one.
    pub fn exit_code(&self) -> u8 {
        match self.outcome {
            Outcome::Completed if self.failures > 0 => 2,
            Outcome::Completed | Outcome::NothingToDo => 0,
            Outcome::WriteFailed => 1,
            Outcome::Stopped { signal } => 128u8.saturating_add(signal.clamp(0, 127) as u8),
        }
    }

    /// The job's last line: counts, speed, and where it ran (`secs`: the whole process's time).
    pub fn line(&self, classifier: &Classifier, secs: f64) -> String {
        // An int8 model says so: its numbers differ slightly from the float model's.
        let int8 = match &classifier.metadata().quantization {
            Some(q) => {
                format!(", int8 model (validation accuracy {:.4} vs {:.4} in fp32)", q.int8_accuracy, q.fp32_accuracy)
            }
            None => String::new(),
        };
        let resumed = match self.done_before {
            Some(n @ 1..) => format!(" (and {n} done before)"),
            _ => String::new(),
        };
        let classified = self.total - self.failures;
        // A rate of nothing says nothing.
        let rate = match classified {
            0 => String::new(),
            _ => format!(", {:.1} images/s", self.files as f64 / self.seconds.max(1e-9)),
        };
        format!(
            "{classified} images classified{resumed}, {} failed{rate} ({secs:.2} s in all), {}{int8}",
            self.failures,
            classifier.provider()
        )
    }
}

/// Where `eval` draws the confusion matrix of `folder` by default: beside the model, as
/// `confusion_matrix_<folder name>.png`.
pub fn confusion_png_path(model: &Path, folder: &Path) -> PathBuf {
    let name = folder.file_name().map_or("eval".into(), |n| n.to_string_lossy().into_owned());
    model.parent().unwrap_or(Path::new(".")).join(format!("confusion_matrix_{name}.png"))
}

/// Where a stopped job's records go instead of `output`: `output.partial`.
pub fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

/// A batch job, ready to run.
pub struct Job {
    config: JobConfig,
}

impl Job {
    pub fn new(config: JobConfig) -> Job {
        Job { config }
    }

    pub fn config(&self) -> &JobConfig {
        &self.config
    }

    /// Classifies the inputs with `classifier`, writing each record as it comes (to the output
    /// file, or to `terminal`), until the end, a write error, or a stop request: `stop` holds
    /// the number of the signal that asked (0: none).
    pub fn run(
        &self,
        classifier: &Classifier,
        terminal: &mut dyn Write,
        obs: &mut dyn JobObserver,
        stop: &AtomicUsize,
    ) -> Result<JobSummary, JobError> {
        let cfg = &self.config;
        let classes = classifier.metadata().classes.clone();
        let Found { items, truth, ignored } = self.inputs(&classes)?;
        if ignored.total() > 0 {
            obs.note(&format!(
                "passed over {} non-image file(s) in the folders: {}",
                ignored.total(),
                ignored.describe()
            ));
        }
        let items = self.shard(items, obs)?;
        let Destination { sink, out, items, done_before } = self.open_output(items, terminal, obs)?;
        let label_width = classes.iter().map(|c| c.chars().count()).max().unwrap_or(5).max(5);
        let mut records = RecordWriter { format: cfg.format, out, label_width };
        if !matches!(sink, Sink::Append(_)) || done_before.is_none() {
            records.header().map_err(JobError::Results)?;
        }
        let mut tally = Tally {
            total: items.len(),
            evaluation: cfg.eval.then(|| Evaluation::new(classes.clone())),
            truth,
            keep_gallery: cfg.gallery.is_some(),
            ignored,
            ..Default::default()
        };
        if let (Some(n @ 1..), 0) = (done_before, tally.total) {
            obs.note(&format!(
                "nothing to do: the {n} inputs already have records in {}",
                cfg.output.as_deref().map_or("-".into(), |p| p.display().to_string())
            ));
            return Ok(tally.summary(Outcome::NothingToDo, done_before, 0.0));
        }
        if !items.iter().any(|i| matches!(i, Input::File(_))) {
            for item in items {
                if let Input::Error(e) = item {
                    records.write(&e).map_err(JobError::Results)?;
                }
            }
            records.out.flush().map_err(JobError::Results)?;
            return Err(JobError::NoImages(cfg.paths.clone()));
        }

        let started = Instant::now();
        let written = self.write_results(classifier, items, &mut tally, &mut records, obs, stop);
        let signal = stop.load(Ordering::SeqCst);
        let flushed = records.out.flush();
        drop(records);
        let seconds = started.elapsed().as_secs_f64();
        if written.is_err() || signal != 0 || tally.done < tally.total {
            let reason = match &written {
                Err(e) => format!("error: cannot write results: {e}"),
                Ok(()) if signal == SIGTERM => "terminated".to_string(),
                Ok(()) => "interrupted".to_string(),
            };
            obs.note(&format!("{reason}: {}", sink.keep_partial(tally.done, tally.total)));
            let outcome = match signal {
                0 => Outcome::WriteFailed,
                s => Outcome::Stopped { signal: s as i32 },
            };
            return Ok(tally.summary(outcome, done_before, seconds));
        }
        flushed.map_err(JobError::Results)?;
        sink.commit()?;
        self.pictures(classifier, &tally, obs)?;
        Ok(tally.summary(Outcome::Completed, done_before, seconds))
    }

    /// The inputs to classify, with each file's true class under `eval`, and the files passed
    /// over.
    fn inputs(&self, classes: &[String]) -> Result<Found, JobError> {
        if !self.config.eval {
            let inputs = crate::files::collect(&self.config.paths);
            return Ok(Found { items: inputs.items, truth: HashMap::new(), ignored: inputs.ignored });
        }
        let [root] = self.config.paths.as_slice() else { return Err(JobError::EvalNeedsOneFolder) };
        let l = labelled_files(root, classes)?;
        let mut items: Vec<Input> = l.errors.into_iter().map(Input::Error).collect();
        items.extend(l.files.iter().map(|(p, _)| Input::File(p.clone())));
        Ok(Found { items, truth: l.files.into_iter().collect(), ignored: l.ignored })
    }

    /// This machine's part of the inputs, with `shard`.
    fn shard(&self, items: Vec<Input>, obs: &mut dyn JobObserver) -> Result<Vec<Input>, JobError> {
        let Some(spec) = self.config.shard else { return Ok(items) };
        let shard = spec.resolve(|k| std::env::var(k).ok())?;
        let part = shard.select(items);
        obs.note(&format!("shard {shard}: {} inputs", part.len()));
        Ok(part)
    }

    /// Opens the records' destination; with `resume`, drops the inputs the output already
    /// holds.
    fn open_output<'t>(
        &self,
        mut items: Vec<Input>,
        terminal: &'t mut dyn Write,
        obs: &mut dyn JobObserver,
    ) -> Result<Destination<'t>, JobError> {
        let cfg = &self.config;
        let target = match (cfg.eval, cfg.output.as_deref()) {
            // With eval the report is the output; per-image records go only to the output file.
            (true, None) => {
                return Ok(Destination {
                    sink: Sink::Terminal,
                    out: Box::new(std::io::sink()),
                    items,
                    done_before: None,
                })
            }
            (_, Some(target)) if cfg.resume => target,
            (_, Some(target)) => {
                let cannot = |source| JobError::Write { path: target.to_path_buf(), source };
                let mut file = AtomicFile::create(target).map_err(cannot)?;
                let writer = file.file().try_clone().map_err(cannot)?;
                let out = Box::new(std::io::BufWriter::new(writer));
                return Ok(Destination { sink: Sink::File(file), out, items, done_before: None });
            }
            (_, None) => {
                let out = Box::new(std::io::BufWriter::new(terminal));
                return Ok(Destination { sink: Sink::Terminal, out, items, done_before: None });
            }
        };
        let resumed = crate::records::resume(target, cfg.format)?;
        if resumed.torn_bytes > 0 {
            obs.note(&format!(
                "{}: removed an incomplete last record ({} bytes) left by a stopped run",
                target.display(),
                resumed.torn_bytes
            ));
        }
        let before = items.len();
        items.retain(|i| !resumed.done.contains(i.path().to_string_lossy().as_ref()));
        let skipped = before - items.len();
        if skipped > 0 {
            obs.note(&format!("resuming: {skipped} of {before} inputs already have records in {}", target.display()));
        }
        // Line by line: a kill loses at most the line being written, which the next run cuts off.
        let out = Box::new(std::io::LineWriter::new(resumed.file));
        let sink = Sink::Append(target.to_path_buf());
        Ok(Destination { sink, out, items, done_before: (!resumed.empty).then_some(skipped) })
    }

    /// Classifies `items`, writing each record as it comes, until the end, a write error or a
    /// stop request.
    fn write_results(
        &self,
        classifier: &Classifier,
        items: Vec<Input>,
        tally: &mut Tally,
        records: &mut RecordWriter<Box<dyn Write + '_>>,
        obs: &mut dyn JobObserver,
        stop: &AtomicUsize,
    ) -> std::io::Result<()> {
        let cfg = &self.config;
        obs.started(items.iter().filter(|i| matches!(i, Input::File(_))).count());
        let mut outcome = Ok(());
        for r in classifier.classify_stream(items) {
            tally.add(&r);
            obs.progress(tally.files);
            // quiet quiets the terminal; a results file always gets every record.
            if !cfg.quiet || cfg.output.is_some() || r.result.is_err() {
                if let Err(e) = obs.write_record(&mut || records.write(&r)) {
                    outcome = Err(e);
                    break;
                }
            }
            if stop.load(Ordering::SeqCst) != 0 {
                break;
            }
        }
        obs.finished();
        outcome
    }

    /// The confusion matrix and the gallery, when asked for.
    fn pictures(&self, classifier: &Classifier, tally: &Tally, obs: &mut dyn JobObserver) -> Result<(), JobError> {
        let cfg = &self.config;
        if let (Some(eval), Some(folder)) = (&tally.evaluation, cfg.paths.first()) {
            let path = cfg.confusion_png.clone().unwrap_or_else(|| confusion_png_path(classifier.model_path(), folder));
            let replaced = path.exists();
            atomic::write_png(&path, &eval.png()).map_err(|source| JobError::Write { path: path.clone(), source })?;
            let verb = if replaced { "replaced" } else { "saved to" };
            obs.note(&format!("confusion matrix {verb} {}", path.display()));
        }
        if let Some(path) = &cfg.gallery {
            let opts = gallery::Options { max_images: cfg.gallery_size.max(1), ..Default::default() };
            let img = gallery::draw(&tally.gallery, &classifier.metadata().classes, &opts);
            atomic::write_png(path, &img).map_err(|source| JobError::Write { path: path.clone(), source })?;
            obs.note(&format!(
                "gallery of {} images saved to {}",
                tally.gallery.len().min(opts.max_images),
                path.display()
            ));
        }
        Ok(())
    }
}

/// SIGTERM's number, the same on every POSIX system (the library does not handle signals).
const SIGTERM: usize = 15;

/// Where records go, and what happens to them when the job ends.
enum Sink {
    /// The writer given to [`Job::run`].
    Terminal,
    /// A temporary file, renamed over the output when the job completes (or to
    /// [`partial_path`] when it does not).
    File(AtomicFile),
    /// `resume`: records are appended to the output itself, line by line.
    Append(PathBuf),
}

impl Sink {
    /// The job completed: the records replace the output.
    fn commit(self) -> Result<(), JobError> {
        if let Sink::File(file) = self {
            let path = file.target().to_path_buf();
            file.commit().map_err(|source| JobError::Write { path, source })?;
        }
        Ok(())
    }

    /// The job stopped part-way: the records so far go to the partial file, leaving the output
    /// as it was. Returns a line saying where they are.
    fn keep_partial(self, done: usize, total: usize) -> String {
        match self {
            Sink::Terminal => format!("{done} of {total} results were written"),
            Sink::Append(target) => {
                format!("{done} of {total} results were added to {}; run again to continue", target.display())
            }
            Sink::File(file) => {
                let target = file.target().to_path_buf();
                let partial = partial_path(&target);
                match file.commit_to(&partial) {
                    Ok(()) => format!(
                        "{} left as it was; the {done} of {total} results so far are in {}",
                        target.display(),
                        partial.display()
                    ),
                    Err(e) => format!("{} left as it was; results so far lost: {e}", target.display()),
                }
            }
        }
    }
}

/// What the paths hold: the inputs in order, each file's true class (`eval`), the files
/// passed over.
struct Found {
    items: Vec<Input>,
    truth: HashMap<PathBuf, usize>,
    ignored: Ignored,
}

/// Where records go and what is left to classify.
struct Destination<'t> {
    sink: Sink,
    out: Box<dyn Write + 't>,
    items: Vec<Input>,
    done_before: Option<usize>,
}

/// What the job has seen so far.
#[derive(Default)]
struct Tally {
    /// Records written (results and path errors), of `total`.
    done: usize,
    total: usize,
    failures: usize,
    /// Files classified or failed (not path errors).
    files: usize,
    evaluation: Option<Evaluation>,
    /// Each file's true class (`eval`).
    truth: HashMap<PathBuf, usize>,
    keep_gallery: bool,
    /// Successful results, for the gallery.
    gallery: Vec<gallery::Item>,
    ignored: Ignored,
}

impl Tally {
    fn add(&mut self, r: &FileResult) {
        if !r.is_path_error() {
            self.files += 1;
            let truth = self.truth.get(&r.path).copied();
            if let Ok(p) = &r.result {
                if let (Some(eval), Some(t)) = (self.evaluation.as_mut(), truth) {
                    eval.add(t, p.class_index);
                }
                if self.keep_gallery {
                    let item = gallery::Item {
                        path: r.path.clone(),
                        predicted: p.class_index,
                        confidence: p.confidence,
                        truth,
                    };
                    self.gallery.push(item);
                }
            }
        }
        if r.result.is_err() {
            self.failures += 1;
        }
        self.done += 1;
    }

    fn summary(self, outcome: Outcome, done_before: Option<usize>, seconds: f64) -> JobSummary {
        JobSummary {
            outcome,
            total: self.total,
            written: self.done,
            failures: self.failures,
            files: self.files,
            done_before,
            seconds,
            evaluation: self.evaluation,
            ignored: self.ignored,
        }
    }
}
