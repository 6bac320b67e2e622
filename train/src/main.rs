//! `train`: command-line parsing ([`cli`]) and console output ([`train::console`]) over the
//! `train` library, which does the work; here, only what runs and the exit codes.

mod cli;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command, DoctorArgs, ExportArgs, TrainArgs};
use train::config::LAST;
use train::console::{self, Console};
use train::error::ExportError;
use train::{StopFlag, TrainError};

/// Keeps freed memory for reuse instead of returning it to the system: libtorch allocates and
/// frees every activation of every step, and glibc would otherwise map fresh, zeroed pages
/// for most of them (a million page faults per epoch on the seed's data).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    infer::guard::install_cli_panic_hook();
    let cli = Cli::parse();
    let stop = Arc::new(StopFlag::default());
    let handler_stop = Arc::clone(&stop);
    let _ = ctrlc::set_handler(move || match handler_stop.request() {
        1 => eprintln!("\ninterrupt: finishing this epoch, then saving last.pt (Ctrl-C again to stop now)"),
        2 => eprintln!("\ninterrupt: stopping now; the files of the last finished epoch are kept"),
        _ => std::process::exit(130),
    });
    let mut console = Console::new();
    let result = match &cli.command {
        Some(Command::Export(args)) => export(args, &mut console),
        Some(Command::Doctor(args)) => Ok(doctor(args)),
        None => run(&cli.train, &mut console, &stop),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            console.clear();
            if matches!(e.downcast_ref::<TrainError>(), Some(TrainError::Interrupted)) {
                let last = cli.train.config().output_folder().join(LAST);
                eprintln!("interrupted: resume with --resume {}", last.display());
                return ExitCode::from(130);
            }
            // The first line of the chain: libtorch messages can carry C++ backtraces.
            eprintln!("error: {}", infer::first_line(format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn doctor(args: &DoctorArgs) -> ExitCode {
    let (mut lines, works) = train::doctor::libtorch(args.device);
    let ort = infer::doctor::report(None);
    lines.extend(ort.lines.into_iter().filter(|(label, _)| label != "infer"));
    print!("{}", infer::doctor::Report::render(&lines));
    match works {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn export(args: &ExportArgs, console: &mut Console) -> anyhow::Result<ExitCode> {
    let result = train::export::export_from_folder(&args.request(), console);
    if let Err(ExportError::GateRefused { quantization, .. }) = &result {
        console::print_quantization(quantization, false);
    }
    console::print_export(&result.context("export failed")?);
    Ok(ExitCode::SUCCESS)
}

fn run(args: &TrainArgs, console: &mut Console, stop: &StopFlag) -> anyhow::Result<ExitCode> {
    let summary = train::run(&args.config(), console, stop).context("training failed")?;
    console::print_summary(&summary);
    Ok(if summary.interrupted { ExitCode::from(130) } else { ExitCode::SUCCESS })
}
