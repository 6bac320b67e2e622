//! `infer`: command-line parsing and output formats over the `infer` library.
//!
//! Exit status: 0 when every input was classified, 2 when some failed (the rest are still
//! classified and printed), 1 on a fatal error (model missing or unusable, no input found),
//! 130 / 143 when stopped by SIGINT / SIGTERM.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use infer::atomic::{self, AtomicFile};
use infer::evaluation::{labelled_files, Evaluation};
use infer::files::Input;
use infer::records::{Format, RecordWriter};
use infer::shard::ShardSpec;
use infer::{Classifier, ExecutionProvider, FileResult};

/// Classify images with a model.onnx exported by `train`, in batches, on CUDA or the CPU.
///
/// PATH may be image files or folders (searched recursively). Results go to stdout (or
/// --output), one per input in order; problems with single files are reported in the results
/// and the rest is classified.
#[derive(Parser, Debug)]
#[command(
    name = "infer",
    version,
    max_term_width = 100,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    cli: Cli,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// What this machine offers inference: ONNX Runtime's library and version, the NVIDIA
    /// driver and devices, the CUDA libraries and where each was found, and which execution
    /// providers work (and why not). Exit 0 when the one asked for with --ep works.
    Doctor(DoctorArgs),
    /// Serve the model over HTTP: the Open Inference Protocol (KServe v2), /v1/classify and
    /// /metrics, with concurrent requests batched together.
    #[cfg(feature = "server")]
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct DoctorArgs {
    /// The execution provider that must work: auto (either), cuda or cpu.
    #[arg(long, default_value = "auto")]
    ep: ExecutionProvider,
    /// Also load this model on each provider.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Exit 0 when every library ONNX Runtime's CUDA provider needs, except the driver's
    /// libcuda.so.1, resolves through infer's search: the check that needs no GPU.
    #[arg(long)]
    libraries: bool,
}

#[cfg(feature = "server")]
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// The exported model.
    #[arg(long, default_value = "models/model.onnx")]
    model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0: any free port (the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Images per model call at most.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// How long a request waits for others to share its batch.
    #[arg(long, default_value_t = 5)]
    max_delay_ms: u64,
    /// Requests waiting for the model at most; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Largest request body in megabytes; larger ones are answered 413.
    #[arg(long, default_value_t = 20)]
    max_body_mb: usize,
    /// The model's name in the protocol's routes (/v2/models/NAME/...) [default: the model
    /// file's name without .onnx].
    #[arg(long)]
    name: Option<String>,
    /// ONNX Runtime compute threads [default: one per core].
    #[arg(long)]
    threads: Option<usize>,
    /// Execution provider: auto, cuda, cuda:N or cpu.
    #[arg(long, default_value = "auto")]
    ep: ExecutionProvider,
    /// Log every request (by default: starts, stops and errors only).
    #[arg(long)]
    log_requests: bool,
    /// After SIGTERM/SIGINT, how long requests in flight may take before they are cut (below
    /// Kubernetes' default 30 s grace period, so that the exit is ours).
    #[arg(long, value_name = "SECONDS", default_value_t = 25)]
    drain_seconds: u64,
}

#[derive(clap::Args, Debug)]
struct Cli {
    /// Images or folders to classify.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,

    /// The exported model; class names and preprocessing come from its metadata.
    #[arg(long, default_value = "models/model.onnx")]
    model: PathBuf,

    /// Images per inference call.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,

    /// Classes listed per image (with their probabilities).
    #[arg(long, default_value_t = 1)]
    top_k: usize,

    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,

    /// Write results to FILE instead of stdout. FILE is replaced only when the run completes;
    /// a run stopped part-way leaves FILE as it was and its results so far in FILE.partial.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Continue --output FILE (jsonl or csv): skip the files it already holds a record for and
    /// append the others as they come, so a killed or pre-empted job restarts where it was.
    #[arg(long, requires = "output", conflicts_with = "eval")]
    resume: bool,

    /// Classify only part K of N (K from 0) of the sorted input list; `auto` takes K and N
    /// from a Slurm job array, `auto/N` K from a Kubernetes indexed Job of N completions.
    #[arg(long, value_name = "K/N|auto|auto/N", conflicts_with = "eval")]
    shard: Option<ShardSpec>,

    /// ONNX Runtime compute threads [default: one per core].
    #[arg(long)]
    threads: Option<usize>,

    /// Execution provider: auto (CUDA when usable, else CPU), cuda, cuda:N or cpu.
    #[arg(long, default_value = "auto")]
    ep: ExecutionProvider,

    /// PATH is a labelled folder (PATH/<class>/<images>): print accuracy, per-class precision
    /// and recall and the confusion matrix, and save the matrix as a PNG. Per-image results go
    /// only to --output, when given.
    #[arg(long)]
    eval: bool,

    /// Where --eval writes the confusion matrix picture [default:
    /// confusion_matrix_<folder>.png beside the model].
    #[arg(long, value_name = "FILE")]
    confusion_png: Option<PathBuf>,

    /// Also draw the classified images with their predicted classes into FILE.png (with
    /// --eval: right ones framed green, mistakes red and first).
    #[arg(long, value_name = "FILE")]
    gallery: Option<PathBuf>,

    /// Images in the --gallery picture at most.
    #[arg(long, value_name = "N", default_value_t = 48)]
    gallery_size: usize,

    /// Print only the summary line and errors (no per-image results).
    #[arg(long, short)]
    quiet: bool,

    /// Also say why CUDA was not used on a machine without an NVIDIA GPU.
    #[arg(long, short)]
    verbose: bool,
}

/// Where results go: stdout, or a temporary file renamed over `--output` when the run
/// completes (or to `--output`.partial when it does not).
enum Sink {
    Stdout,
    File(AtomicFile),
    /// `--resume`: records are appended to the file itself, line by line.
    Append(PathBuf),
}

impl Sink {
    fn open(output: Option<&Path>) -> anyhow::Result<(Sink, Box<dyn Write>)> {
        match output {
            None => Ok((Sink::Stdout, Box::new(std::io::BufWriter::new(std::io::stdout())))),
            Some(target) => {
                let cannot = || format!("{}: cannot write", target.display());
                let mut file = AtomicFile::create(target).with_context(cannot)?;
                let writer = file.file().try_clone().with_context(cannot)?;
                Ok((Sink::File(file), Box::new(std::io::BufWriter::new(writer))))
            }
        }
    }

    /// The run completed: the results replace `--output`.
    fn commit(self) -> anyhow::Result<()> {
        if let Sink::File(file) = self {
            let target = file.target().to_path_buf();
            file.commit().with_context(|| format!("{}: cannot write", target.display()))?;
        }
        Ok(())
    }

    /// The run stopped part-way: the results so far go to `--output`.partial, leaving
    /// `--output` as it was. Returns a line saying where they are.
    fn keep_partial(self, done: usize, total: usize) -> String {
        match self {
            Sink::Stdout => format!("{done} of {total} results were written"),
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

fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    target.with_file_name(name)
}

fn progress(n: usize) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("[{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    Some(bar)
}

/// SIGINT and SIGTERM stop the run after the current result; the number is the signal's.
fn stop_signal() -> Arc<AtomicUsize> {
    let signal = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let s = Arc::clone(&signal);
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let registered =
            unsafe { signal_hook::low_level::register(sig, move || s.store(sig as usize, Ordering::SeqCst)) };
        if registered.is_err() {
            eprintln!("warning: cannot handle signal {sig}; stopping early will lose results");
        }
    }
    signal
}

/// The inputs to classify, with each file's true class under `--eval`.
fn inputs(cli: &Cli, classes: &[String]) -> anyhow::Result<(Vec<Input>, Option<VecDeque<usize>>)> {
    if !cli.eval {
        return Ok((infer::files::collect(&cli.paths).items, None));
    }
    let [root] = cli.paths.as_slice() else { bail!("--eval takes one labelled folder") };
    let l = labelled_files(root, classes)?;
    let (files, truth): (Vec<PathBuf>, VecDeque<usize>) = l.files.into_iter().unzip();
    let mut items: Vec<Input> = l.errors.into_iter().map(Input::Error).collect();
    items.extend(files.into_iter().map(Input::File));
    Ok((items, Some(truth)))
}

/// What the run has seen so far.
#[derive(Default)]
struct Tally {
    /// Records written (results and path errors), of `total`.
    done: usize,
    total: usize,
    failures: usize,
    /// Files classified or failed (not path errors).
    files: usize,
    evaluation: Option<Evaluation>,
    /// Each file's true class, in order (`--eval`).
    truth: Option<VecDeque<usize>>,
    /// Successful results for `--gallery`.
    gallery: Vec<infer::gallery::Item>,
}

impl Tally {
    /// Counts one record; `from_file` tells a file's result from a path error.
    fn add(&mut self, r: &FileResult, from_file: bool, keep_for_gallery: bool) {
        if from_file {
            self.files += 1;
            let label = self.truth.as_mut().and_then(VecDeque::pop_front);
            if let Ok(p) = &r.result {
                if let (Some(eval), Some(label)) = (self.evaluation.as_mut(), label) {
                    eval.add(label, p.class_index);
                }
                if keep_for_gallery {
                    let item = infer::gallery::Item {
                        path: r.path.clone(),
                        predicted: p.class_index,
                        confidence: p.confidence,
                        truth: label,
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
}

/// Whether this machine has an NVIDIA GPU (its kernel driver is loaded).
fn nvidia_gpu_present() -> bool {
    Path::new("/proc/driver/nvidia/version").exists() || Path::new("/dev/nvidia0").exists()
}

fn classifier(cli: &Cli) -> anyhow::Result<Classifier> {
    let mut builder =
        Classifier::builder(&cli.model).execution_provider(cli.ep).batch_size(cli.batch_size).top_k(cli.top_k);
    if let Some(t) = cli.threads {
        builder = builder.intra_threads(t);
    }
    let classifier = builder.build()?;
    // Without a GPU, falling back to the CPU is expected: said only when asked.
    if let Some(note) = classifier.provider_note().filter(|_| cli.verbose || nvidia_gpu_present()) {
        eprintln!("note: {note}");
    }
    Ok(classifier)
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let stop = stop_signal();
    let classifier = classifier(cli)?;
    let classes = classifier.metadata().classes.clone();
    let (items, truth) = inputs(cli, &classes)?;
    let items = shard_of(cli, items)?;
    let Destination { sink, out, items, skipped } = open_output(cli, items)?;
    let n_files = items.iter().filter(|i| matches!(i, Input::File(_))).count();
    let mut tally = Tally {
        total: items.len(),
        evaluation: truth.as_ref().map(|_| Evaluation::new(classes.clone())),
        truth,
        ..Default::default()
    };

    let label_width = classes.iter().map(|c| c.chars().count()).max().unwrap_or(5).max(5);
    let mut records = RecordWriter { format: cli.format, out, label_width };
    if !matches!(sink, Sink::Append(_)) || skipped.is_none() {
        records.header()?;
    }
    if let (Some(n @ 1..), 0) = (skipped, tally.total) {
        eprintln!("nothing to do: the {n} inputs already have records in {}", path_text(cli.output.as_deref()));
        return Ok(ExitCode::SUCCESS);
    }
    if n_files == 0 {
        for item in items {
            if let Input::Error(e) = item {
                records.write(&e)?;
            }
        }
        records.out.flush()?;
        bail!(
            "no images found in {}",
            cli.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }

    let inference_started = Instant::now();
    let outcome = write_results(cli, &classifier, items, &mut tally, &mut records, &stop);
    let signal = stop.load(Ordering::SeqCst);
    let flushed = records.out.flush().context("cannot write results");
    drop(records);
    if outcome.is_err() || signal != 0 || tally.done < tally.total {
        let reason = match &outcome {
            Err(e) => format!("error: {e:#}"),
            Ok(()) if signal == signal_hook::consts::SIGTERM as usize => "terminated".to_string(),
            Ok(()) => "interrupted".to_string(),
        };
        eprintln!("{reason}: {}", sink.keep_partial(tally.done, tally.total));
        return Ok(ExitCode::from(match signal {
            0 => 1,
            s => 128 + s as u8,
        }));
    }
    flushed?;
    sink.commit()?;
    let secs = inference_started.elapsed().as_secs_f64();
    report(cli, &classifier, &tally, &classes)?;
    eprintln!("{}", summary_line(&classifier, &tally, skipped, secs, started.elapsed().as_secs_f64()));
    Ok(if tally.failures > 0 { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

/// This machine's part of the inputs, with `--shard`.
fn shard_of(cli: &Cli, items: Vec<Input>) -> anyhow::Result<Vec<Input>> {
    let Some(spec) = cli.shard else { return Ok(items) };
    let shard = spec.resolve(|k| std::env::var(k).ok())?;
    let part = shard.select(items);
    eprintln!("shard {shard}: {} inputs", part.len());
    Ok(part)
}

/// The run's last line: counts, speed, and where it ran.
fn summary_line(classifier: &Classifier, tally: &Tally, skipped: Option<usize>, secs: f64, all: f64) -> String {
    // An int8 model says so: its numbers differ slightly from the float model's.
    let int8 = match &classifier.metadata().quantization {
        Some(q) => {
            format!(", int8 model (validation accuracy {:.4} vs {:.4} in fp32)", q.int8_accuracy, q.fp32_accuracy)
        }
        None => String::new(),
    };
    let resumed = match skipped {
        Some(n @ 1..) => format!(" (and {n} done before)"),
        _ => String::new(),
    };
    format!(
        "{} images classified{resumed}, {} failed, {:.1} images/s ({all:.2} s in all), {}{int8}",
        tally.total - tally.failures,
        tally.failures,
        tally.files as f64 / secs.max(1e-9),
        classifier.provider()
    )
}

fn path_text(p: Option<&Path>) -> String {
    p.map_or("-".into(), |p| p.display().to_string())
}

/// Where records go and what is left to classify.
struct Destination {
    sink: Sink,
    out: Box<dyn Write>,
    items: Vec<Input>,
    /// With `--resume`, how many inputs `--output` already held (`None`: it was empty).
    skipped: Option<usize>,
}

/// Opens the results' destination; with `--resume`, drops the inputs `--output` already holds.
fn open_output(cli: &Cli, mut items: Vec<Input>) -> anyhow::Result<Destination> {
    let target = match (cli.eval, cli.output.as_deref()) {
        // With --eval the report is the output; per-image records go only to --output.
        (true, None) => {
            return Ok(Destination { sink: Sink::Stdout, out: Box::new(std::io::sink()), items, skipped: None })
        }
        (_, Some(target)) if cli.resume => target,
        (_, output) => {
            let (sink, out) = Sink::open(output)?;
            return Ok(Destination { sink, out, items, skipped: None });
        }
    };
    let resumed = infer::records::resume(target, cli.format)?;
    if resumed.torn_bytes > 0 {
        eprintln!(
            "{}: removed an incomplete last record ({} bytes) left by a stopped run",
            target.display(),
            resumed.torn_bytes
        );
    }
    let before = items.len();
    items.retain(|i| !resumed.done.contains(i.path().to_string_lossy().as_ref()));
    let skipped = before - items.len();
    if skipped > 0 {
        eprintln!("resuming: {skipped} of {before} inputs already have records in {}", target.display());
    }
    // Line by line: a kill loses at most the line being written, which the next run cuts off.
    let out = Box::new(std::io::LineWriter::new(resumed.file));
    let sink = Sink::Append(target.to_path_buf());
    Ok(Destination { sink, out, items, skipped: (!resumed.empty).then_some(skipped) })
}

/// Classifies `items`, writing each record as it comes, until the end, a write error or a
/// stop signal (SIGINT, SIGTERM).
fn write_results(
    cli: &Cli,
    classifier: &Classifier,
    items: Vec<Input>,
    tally: &mut Tally,
    records: &mut RecordWriter<Box<dyn Write>>,
    stop: &AtomicUsize,
) -> anyhow::Result<()> {
    // Which yielded record is a file's (the others are path errors), in order.
    let mut is_file: VecDeque<bool> = items.iter().map(|i| matches!(i, Input::File(_))).collect();
    let bar = progress(is_file.iter().filter(|f| **f).count());
    let mut outcome = Ok(());
    for r in classifier.classify_stream(items) {
        tally.add(&r, is_file.pop_front().unwrap_or(true), cli.gallery.is_some());
        if let Some(b) = &bar {
            b.set_position(tally.files as u64);
        }
        // --quiet quiets the terminal; a results file always gets every record.
        if !cli.quiet || cli.output.is_some() || r.result.is_err() {
            let written = match &bar {
                Some(b) => b.suspend(|| records.write(&r)),
                None => records.write(&r),
            };
            if let Err(e) = written {
                outcome = Err(e).context("cannot write results");
                break;
            }
        }
        if stop.load(Ordering::SeqCst) != 0 {
            break;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    outcome
}

/// The evaluation report and its confusion matrix, and the gallery picture, when asked for.
fn report(cli: &Cli, classifier: &Classifier, tally: &Tally, classes: &[String]) -> anyhow::Result<()> {
    if let Some(eval) = &tally.evaluation {
        print!("{}", eval.report());
        let folder = cli.paths[0].file_name().map_or("eval".into(), |n| n.to_string_lossy().into_owned());
        let path = cli.confusion_png.clone().unwrap_or_else(|| {
            classifier.model_path().parent().unwrap_or(Path::new(".")).join(format!("confusion_matrix_{folder}.png"))
        });
        let replaced = path.exists();
        atomic::write_png(&path, &eval.png()).with_context(|| format!("{}: cannot write", path.display()))?;
        let verb = if replaced { "replaced" } else { "saved to" };
        eprintln!("confusion matrix {verb} {}", path.display());
    }
    if let Some(path) = &cli.gallery {
        let opts = infer::gallery::Options { max_images: cli.gallery_size.max(1), ..Default::default() };
        let img = infer::gallery::draw(&tally.gallery, classes, &opts);
        atomic::write_png(path, &img).with_context(|| format!("{}: cannot write", path.display()))?;
        eprintln!("gallery of {} images saved to {}", tally.gallery.len().min(opts.max_images), path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    infer::guard::install_cli_panic_hook();
    // Usage errors exit with 1 like other fatal errors: 2 means "some inputs failed".
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    match args.command {
        Some(Command::Doctor(d)) => return doctor(&d),
        #[cfg(feature = "server")]
        Some(Command::Serve(s)) => return serve(s),
        None => {}
    }
    let cli = args.cli;
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", infer::first_line(format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn doctor(a: &DoctorArgs) -> ExitCode {
    let report = infer::doctor::report(a.model.as_deref());
    print!("{}", infer::doctor::Report::render(&report.lines));
    let ok = if a.libraries {
        match &report.cuda_libraries {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                eprintln!("error: the CUDA provider's libraries do not all resolve: {e}");
                false
            }
            None => {
                eprintln!("error: this ONNX Runtime has no CUDA provider library to check (scripts/setup.sh --gpu)");
                false
            }
        }
    } else {
        report.works(a.ep)
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(feature = "server")]
fn serve(a: ServeArgs) -> ExitCode {
    let name =
        a.name.unwrap_or_else(|| a.model.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned()));
    let config = infer::serve::ServeConfig {
        model: a.model,
        host: a.host,
        port: a.port,
        max_batch: a.max_batch.max(1),
        max_delay: std::time::Duration::from_millis(a.max_delay_ms),
        max_queue: a.max_queue.max(1),
        max_body: a.max_body_mb.max(1) << 20,
        name,
        threads: a.threads,
        provider: a.ep,
        log_requests: a.log_requests,
        drain: std::time::Duration::from_secs(a.drain_seconds),
    };
    match infer::serve::serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
