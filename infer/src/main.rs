//! `infer`: the command line over the `infer` library — arguments, their mapping onto the
//! library's [`JobConfig`] and [`ServeConfig`], progress and summary printing, exit codes.
//!
//! Exit status: 0 when every input was classified, 2 when some failed (the rest are still
//! classified and printed), 1 on a fatal error (model missing or unusable, no input found),
//! 130 / 143 when stopped by SIGINT / SIGTERM.

mod console;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use console::Console;
use infer::job::{Job, JobConfig, Outcome};
use infer::records::Format;
#[cfg(feature = "server")]
use infer::serve::ServeConfig;
use infer::shard::ShardSpec;
use infer::{Classifier, ExecutionProvider};

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
    #[arg(long, default_value = ServeConfig::DEFAULT_HOST)]
    host: String,
    /// 0: any free port (the address is printed).
    #[arg(long, default_value_t = ServeConfig::DEFAULT_PORT)]
    port: u16,
    /// Images per model call at most.
    #[arg(long, default_value_t = ServeConfig::DEFAULT_MAX_BATCH)]
    max_batch: usize,
    /// How long a request waits for others to share its batch.
    #[arg(long, default_value_t = ServeConfig::DEFAULT_MAX_DELAY_MS)]
    max_delay_ms: u64,
    /// Requests waiting for the model at most; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = ServeConfig::DEFAULT_MAX_QUEUE)]
    max_queue: usize,
    /// Largest request body in megabytes; larger ones are answered 413.
    #[arg(long, default_value_t = ServeConfig::DEFAULT_MAX_BODY_MB)]
    max_body_mb: usize,
    /// Request body megabytes held at once at most; a request beyond is answered 503 with
    /// Retry-After before its body is read (the default fits a 2 GB container).
    #[arg(long, default_value_t = ServeConfig::DEFAULT_MAX_INFLIGHT_MB)]
    max_inflight_mb: usize,
    /// No web page at / (the page classifies dropped images through /v1/classify).
    #[arg(long)]
    no_ui: bool,
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
    #[arg(long, value_name = "SECONDS", default_value_t = ServeConfig::DEFAULT_DRAIN_SECONDS)]
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
    /// Class names for a model that names none (not made by train): one per line, in output
    /// order; their count must be the model's.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Images per inference call.
    #[arg(long, default_value_t = infer::classifier::DEFAULT_BATCH_SIZE)]
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
    #[arg(long, value_name = "N", default_value_t = JobConfig::default().gallery_size)]
    gallery_size: usize,
    /// Print only the summary line and errors (no per-image results).
    #[arg(long, short)]
    quiet: bool,
    /// Also say why CUDA was not used on a machine without an NVIDIA GPU.
    #[arg(long, short)]
    verbose: bool,
}

impl Cli {
    fn job(&self) -> JobConfig {
        JobConfig {
            paths: self.paths.clone(),
            format: self.format,
            output: self.output.clone(),
            resume: self.resume,
            shard: self.shard,
            eval: self.eval,
            confusion_png: self.confusion_png.clone(),
            gallery: self.gallery.clone(),
            gallery_size: self.gallery_size,
            quiet: self.quiet,
        }
    }

    fn classifier(&self) -> anyhow::Result<Classifier> {
        let mut builder =
            Classifier::builder(&self.model).execution_provider(self.ep).batch_size(self.batch_size).top_k(self.top_k);
        if let Some(t) = self.threads {
            builder = builder.intra_threads(t);
        }
        if let Some(file) = &self.labels {
            builder = builder.labels(infer::metadata::read_labels(file)?);
        }
        Ok(builder.build()?)
    }
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

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let stop = stop_signal();
    let classifier = cli.classifier()?;
    // Without a GPU, falling back to the CPU is expected: said only when asked.
    if let Some(note) = classifier.provider_note().filter(|_| cli.verbose || infer::cuda::gpu_installed()) {
        eprintln!("note: {note}");
    }
    let summary = Job::new(cli.job()).run(&classifier, &mut std::io::stdout(), &mut Console::default(), &stop)?;
    if summary.outcome == Outcome::Completed {
        if let Some(eval) = &summary.evaluation {
            print!("{}", eval.report());
        }
        eprintln!("{}", summary.line(&classifier, started.elapsed().as_secs_f64()));
    }
    Ok(ExitCode::from(summary.exit_code()))
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
    let result = match args.command {
        Some(Command::Doctor(d)) => doctor(&d),
        #[cfg(feature = "server")]
        Some(Command::Serve(s)) => infer::serve::serve(s.config()).map(|()| ExitCode::SUCCESS).map_err(Into::into),
        None => run(&args.cli),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {}", infer::first_line(format!("{e:#}")));
        ExitCode::FAILURE
    })
}

fn doctor(a: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = infer::doctor::report(a.model.as_deref());
    print!("{}", infer::doctor::Report::render(&report.lines));
    if !a.libraries {
        return Ok(if report.works(a.ep) { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    match &report.cuda_libraries {
        Some(Ok(())) => Ok(ExitCode::SUCCESS),
        Some(Err(e)) => anyhow::bail!("the CUDA provider's libraries do not all resolve: {e}"),
        None => anyhow::bail!("this ONNX Runtime has no CUDA provider library to check (scripts/setup.sh --gpu)"),
    }
}

#[cfg(feature = "server")]
impl ServeArgs {
    fn config(self) -> ServeConfig {
        let defaults = ServeConfig::new(&self.model);
        ServeConfig {
            name: self.name.unwrap_or(defaults.name),
            host: self.host,
            port: self.port,
            max_batch: self.max_batch,
            max_delay: std::time::Duration::from_millis(self.max_delay_ms),
            max_queue: self.max_queue,
            max_body: self.max_body_mb.saturating_mul(1 << 20),
            max_inflight: self.max_inflight_mb.saturating_mul(1 << 20),
            ui: !self.no_ui,
            threads: self.threads,
            provider: self.ep,
            log_requests: self.log_requests,
            drain: std::time::Duration::from_secs(self.drain_seconds),
            model: self.model,
        }
    }
}
