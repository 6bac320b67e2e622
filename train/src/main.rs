//! `train`: command-line parsing ([`cli`]) and console output ([`train::console`]) over the
//! `train` library, which does the work; here, only what runs and the exit codes.

mod cli;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command, DoctorArgs, ExportArgs, LrFindArgs, TrainArgs};
use train::config::LAST;
use train::console::{self, Console};
use train::dist::Env;
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

/// Records a stop request (Ctrl-C, or SIGTERM in a distributed run) and says what it does;
/// the third ends the process.
fn request_stop(stop: &StopFlag, announce: bool, signal: &str) {
    let (what, again) = match signal {
        "SIGTERM" => ("terminate", "SIGTERM again"),
        _ => ("interrupt", "Ctrl-C again"),
    };
    match stop.request() {
        1 if announce => eprintln!("\n{what}: finishing this epoch, then saving last.pt ({again} to stop now)"),
        2 if announce => eprintln!("\n{what}: stopping now; the files of the last finished epoch are kept"),
        1 | 2 => {}
        _ => std::process::exit(130),
    }
}

/// In a distributed run, SIGTERM asks for a stop as Ctrl-C does: torchrun forwards it to the
/// ranks when it is stopped, and Kubernetes and Slurm send it before killing. The signal is
/// blocked in every thread (call this before any other thread starts) and taken by one thread
/// that waits for it, so the request is handled as ordinary code.
fn stop_on_sigterm(stop: Arc<StopFlag>, announce: bool) {
    // SAFETY: plain libc calls on a local signal set; no other thread exists yet to race with.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        let _ = std::thread::Builder::new().name("sigterm".into()).spawn(move || loop {
            let mut signal = 0;
            // SAFETY: waits for a signal of `set`, which every thread blocks.
            if libc::sigwait(&set, &mut signal) == 0 && signal == libc::SIGTERM {
                request_stop(&stop, announce, "SIGTERM");
            }
        });
    }
}

fn main() -> ExitCode {
    tune_allocator();
    infer::guard::install_cli_panic_hook();
    let cli = Cli::parse();
    // The launcher's variables make `train` one rank of a distributed run; the subcommands
    // always run alone.
    let env = match (&cli.command, Env::from_env()) {
        (None, Ok(env)) => env,
        (None, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        (Some(_), _) => None,
    };
    // Rank 0 reports for the job; the other ranks print only their errors.
    let reports = env.as_ref().is_none_or(|e| e.rank == 0);
    let stop = Arc::new(StopFlag::default());
    if env.is_some() {
        stop_on_sigterm(Arc::clone(&stop), reports);
    }
    let handler_stop = Arc::clone(&stop);
    let _ = ctrlc::set_handler(move || request_stop(&handler_stop, reports, "SIGINT"));
    let mut console = Console::new();
    let result = match &cli.command {
        Some(Command::Export(args)) => export(args, &mut console),
        Some(Command::Doctor(args)) => Ok(doctor(args)),
        Some(Command::LrFind(args)) => lr_find(args, &mut console, &stop),
        None => run(&cli.train, env.clone(), &mut console, &stop),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            console.clear();
            if matches!(e.downcast_ref::<TrainError>(), Some(TrainError::Interrupted)) {
                if reports {
                    let last = cli.train.config().output_folder().join(LAST);
                    eprintln!("interrupted: resume with --resume {}", last.display());
                }
                return ExitCode::from(130);
            }
            // The first line of the chain: libtorch messages can carry C++ backtraces.
            let message = infer::first_line(format!("{e:#}"));
            match &env {
                // Which rank failed, unless the message says so already.
                Some(env) if !message.contains(&format!("rank {}:", env.rank)) => {
                    eprintln!("error: rank {}: {message}", env.rank)
                }
                _ => eprintln!("error: {message}"),
            }
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

fn lr_find(args: &LrFindArgs, console: &mut Console, stop: &StopFlag) -> anyhow::Result<ExitCode> {
    let config = args.train.config();
    let report = train::sweep::lr_find(&config, args.settings(), console, stop).context("lr-find failed")?;
    console.clear();
    eprintln!(
        "lr-find: {} steps ({:?}); loss against learning rate in {}",
        report.steps,
        report.ended,
        report.picture.display()
    );
    match report.flag() {
        Some(flag) => println!("suggested learning rate: {flag}"),
        None => eprintln!(
            "no suggestion: too few steps before the loss diverged (try a smaller --start-lr or more --steps)"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn run(args: &TrainArgs, env: Option<Env>, console: &mut Console, stop: &StopFlag) -> anyhow::Result<ExitCode> {
    let mut config = args.config();
    config.distributed = env.map(|env| args.dist_config(env));
    let reports = config.distributed.as_ref().is_none_or(|d| d.env.rank == 0);
    let summary =
        if reports { train::run(&config, console, stop) } else { train::run(&config, &mut console::Quiet, stop) }
            .context("training failed")?;
    if reports {
        console::print_summary(&summary);
    }
    Ok(if summary.interrupted { ExitCode::from(130) } else { ExitCode::SUCCESS })
}
