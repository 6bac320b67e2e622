//! `infer`: command-line parsing and output formats over the `infer` library.
//!
//! Exit status: 0 when every input was classified, 2 when some failed (the rest are still
//! classified and printed), 1 on a fatal error (model missing or unusable, no input found).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use infer::classifier::error_reason;
use infer::evaluation::{labelled_files, Evaluation};
use infer::files::Input;
use infer::{Classifier, ExecutionProvider, FileResult};

/// Classify images with a model.onnx exported by `train`, in batches, on CUDA or the CPU.
///
/// PATH may be image files or folders (searched recursively). Results go to stdout (or
/// --output), one per input in order; problems with single files are reported in the results
/// and the rest is classified.
#[derive(Parser, Debug)]
#[command(name = "infer", version, max_term_width = 100)]
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

    /// Write results to FILE (replaced only when the run completes) instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// ONNX Runtime compute threads [default: one per core].
    #[arg(long)]
    threads: Option<usize>,

    /// Execution provider: auto (CUDA when usable, else CPU), cuda, cuda:N or cpu.
    #[arg(long, default_value = "auto")]
    ep: ExecutionProvider,

    /// PATH is a labelled folder (PATH/<class>/<images>): print accuracy, per-class precision
    /// and recall and the confusion matrix, and save the matrix as a PNG.
    #[arg(long)]
    eval: bool,

    /// Where --eval writes the confusion matrix picture [default: confusion_matrix.png beside
    /// the model].
    #[arg(long, value_name = "FILE")]
    confusion_png: Option<PathBuf>,

    /// Print only the summary line and errors (no per-image results).
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Aligned columns: label, confidence, path.
    Table,
    /// One JSON object per line.
    Jsonl,
    Csv,
}

/// Writes records in the chosen format.
struct Records {
    format: Format,
    out: Box<dyn Write>,
    label_width: usize,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl Records {
    fn header(&mut self) -> std::io::Result<()> {
        match self.format {
            Format::Csv => writeln!(self.out, "path,label,class_index,confidence,top_k,error"),
            _ => Ok(()),
        }
    }

    fn write(&mut self, r: &FileResult) -> std::io::Result<()> {
        let path = r.path.to_string_lossy();
        match (self.format, &r.result) {
            (Format::Jsonl, _) => {
                serde_json::to_writer(&mut self.out, r)?;
                writeln!(self.out)
            }
            (Format::Csv, Ok(p)) => {
                let top: Vec<String> = p.top_k.iter().map(|s| format!("{}:{:.6}", s.label, s.probability)).collect();
                writeln!(
                    self.out,
                    "{},{},{},{:.6},{},",
                    csv_field(&path),
                    csv_field(&p.label),
                    p.class_index,
                    p.confidence,
                    csv_field(&top.join(";"))
                )
            }
            (Format::Csv, Err(e)) => {
                writeln!(self.out, "{},,,,,{}", csv_field(&path), csv_field(&error_reason(&r.path, e)))
            }
            (Format::Table, Ok(p)) => {
                let w = self.label_width;
                let mut line = format!("{:<w$}  {:>6.2}%  {path}", p.label, 100.0 * p.confidence);
                if p.top_k.len() > 1 {
                    let top: Vec<String> =
                        p.top_k.iter().map(|s| format!("{} {:.2}%", s.label, 100.0 * s.probability)).collect();
                    line.push_str(&format!("  [{}]", top.join(", ")));
                }
                writeln!(self.out, "{line}")
            }
            (Format::Table, Err(e)) => {
                writeln!(
                    self.out,
                    "{:<w$}  {:>7}  {path}: {}",
                    "ERROR",
                    "",
                    error_reason(&r.path, e),
                    w = self.label_width
                )
            }
        }
    }
}

/// Where results go: stdout, or a temporary file renamed over `--output` at the end.
enum Sink {
    Stdout,
    File { tmp: tempfile::NamedTempFile, target: PathBuf },
}

impl Sink {
    fn open(output: Option<&Path>) -> anyhow::Result<(Sink, Box<dyn Write>)> {
        match output {
            None => Ok((Sink::Stdout, Box::new(std::io::BufWriter::new(std::io::stdout())))),
            Some(target) => {
                let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let tmp = tempfile::Builder::new()
                    .prefix(".infer-output.")
                    .tempfile_in(dir)
                    .with_context(|| format!("{}: cannot write in {}", target.display(), dir.display()))?;
                let file = tmp.reopen().with_context(|| format!("{}: cannot write", target.display()))?;
                Ok((Sink::File { tmp, target: target.to_path_buf() }, Box::new(std::io::BufWriter::new(file))))
            }
        }
    }

    fn commit(self) -> anyhow::Result<()> {
        if let Sink::File { tmp, target } = self {
            #[cfg(unix)]
            std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
            tmp.persist(&target).with_context(|| format!("{}: cannot write", target.display()))?;
        }
        Ok(())
    }
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

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut builder =
        Classifier::builder(&cli.model).execution_provider(cli.ep).batch_size(cli.batch_size).top_k(cli.top_k);
    if let Some(t) = cli.threads {
        builder = builder.intra_threads(t);
    }
    let classifier = builder.build()?;
    if let Some(note) = classifier.provider_note() {
        eprintln!("note: {note}");
    }
    let classes = classifier.metadata().classes.clone();

    // Inputs: plain files and folders, or a labelled folder with --eval.
    let (items, truth) = if cli.eval {
        let [root] = cli.paths.as_slice() else { bail!("--eval takes one labelled folder") };
        let l = labelled_files(root, &classes)?;
        let (files, truth): (Vec<PathBuf>, Vec<usize>) = l.files.into_iter().unzip();
        let mut items: Vec<Input> = l.errors.into_iter().map(Input::Error).collect();
        items.extend(files.into_iter().map(Input::File));
        (items, Some(truth))
    } else {
        (infer::files::collect(&cli.paths).items, None)
    };
    let files: Vec<PathBuf> =
        items.iter().filter_map(|i| if let Input::File(p) = i { Some(p.clone()) } else { None }).collect();
    // Error records are written where they stand in the input order, between the results.
    let mut pending_errors = items.into_iter().peekable();

    let (sink, out) = Sink::open(cli.output.as_deref())?;
    let label_width = classes.iter().map(|c| c.chars().count()).max().unwrap_or(5).max(5);
    let mut records = Records { format: cli.format, out, label_width };
    records.header()?;
    let mut failures = 0;
    let mut input_errors = 0;
    if files.is_empty() {
        for item in pending_errors {
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

    let n = files.len();
    let bar = progress(n);
    let mut evaluation = truth.as_ref().map(|_| Evaluation::new(classes.clone()));
    let mut index = 0;
    let mut write_error = None;
    let inference_started = Instant::now();
    let mut emit = |r: &FileResult, records: &mut Records| {
        if (!cli.quiet || r.result.is_err()) && write_error.is_none() {
            let written = match &bar {
                Some(b) => b.suspend(|| records.write(r)),
                None => records.write(r),
            };
            if let Err(e) = written {
                write_error = Some(e);
            }
        }
    };
    classifier.classify_files_with(files, |r| {
        while let Some(Input::Error(_)) = pending_errors.peek() {
            if let Some(Input::Error(e)) = pending_errors.next() {
                failures += 1;
                input_errors += 1;
                emit(&e, &mut records);
            }
        }
        pending_errors.next(); // this file
        if let (Some(eval), Some(truth), Ok(p)) = (evaluation.as_mut(), truth.as_ref(), &r.result) {
            eval.add(truth[index], p.class_index);
        }
        index += 1;
        if r.result.is_err() {
            failures += 1;
        }
        emit(&r, &mut records);
        if let Some(b) = &bar {
            b.inc(1);
        }
    });
    for item in pending_errors {
        if let Input::Error(e) = item {
            failures += 1;
            input_errors += 1;
            emit(&e, &mut records);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(e) = write_error {
        return Err(e).context("cannot write results");
    }
    records.out.flush().context("cannot write results")?;
    drop(records);
    sink.commit()?;

    let secs = inference_started.elapsed().as_secs_f64();
    if let Some(eval) = &evaluation {
        eprint!("\n{}", eval.report());
        let path = cli
            .confusion_png
            .clone()
            .unwrap_or_else(|| cli.model.parent().unwrap_or(Path::new(".")).join("confusion_matrix.png"));
        write_png(&path, &eval.png())?;
        eprintln!("confusion matrix saved to {}", path.display());
    }
    let ok = n + input_errors - failures;
    eprintln!(
        "{} images classified, {failures} failed, {:.1} images/s ({:.2} s in all), {}",
        ok,
        n as f64 / secs.max(1e-9),
        started.elapsed().as_secs_f64(),
        classifier.provider()
    );
    Ok(if failures > 0 { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

fn write_png(path: &Path, img: &image::RgbImage) -> anyhow::Result<()> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".confusion.")
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    tmp.write_all(buf.get_ref())?;
    #[cfg(unix)]
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.persist(path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("error: internal error: {}", msg.lines().next().unwrap_or(""));
    }));
    // Usage errors exit with 1 like other fatal errors: 2 means "some inputs failed".
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").lines().next().unwrap_or("unknown error"));
            ExitCode::FAILURE
        }
    }
}
