//! Distributed training end to end, on the CPU: ranks of the `train` binary launched as a
//! Slurm script or a PyTorchJob launches them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
//! MASTER_PORT set), or by torchrun, over gloo on loopback; and, where each rank's own report is
//! needed, ranks of this test binary running `train::run` (the `child` test, re-run with the
//! variables set). Every test kills what it started past a deadline, so none can hang.
//!
//! Without gloo in this build (no libgloo-dev when train was built), the tests say so and pass.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tch::{Kind, Tensor};
use test_support::{free_port, launcher_env, run_all, Running, TrainFixture, TrainedRun};
use train::config::{Observer, StopFlag, TrainConfig, WeightsSource};
use train::ddp::{BackendChoice, DistConfig};
use train::dist::{Backend, Env};
use train::report::EpochRecord;
use train::Mode;

const BIN: &str = env!("CARGO_BIN_EXE_train");
/// What any launch of ranks may take, start-up included, before it is killed.
const DEADLINE: Duration = Duration::from_secs(240);
const CHILD: &str = "DIST_TRAIN_CHILD";

fn gloo_or_skip() -> bool {
    if Backend::Gloo.is_compiled_in() {
        return true;
    }
    eprintln!("SKIPPED: train was built without the gloo backend (install libgloo-dev; scripts/setup.sh)");
    false
}

/// Three colour classes, 8 training and 3 validation images each: 24 training images (3 steps
/// of 4 on each of 2 ranks, or of 8 in one process) and 9 validation images (shards of 5 and 4).
/// The pictures are tinted noise: flat colours would leave BatchNorm dividing by almost nothing,
/// which makes training so sensitive that float rounding alone sends runs apart.
fn fixture() -> TrainFixture {
    TrainFixture::with_data(BIN, |tmp| {
        let root = tmp.join("data");
        let mut rng = test_support::Rng(11);
        for (split, n) in [("train", 8), ("val", 3)] {
            for (class, tint) in [("blue", [30u32, 50, 200]), ("green", [40, 180, 60]), ("red", [200, 40, 40])] {
                let dir = root.join(split).join(class);
                std::fs::create_dir_all(&dir).unwrap();
                for i in 0..n {
                    let img = image::RgbImage::from_fn(64, 48, |_, _| {
                        image::Rgb(tint.map(|t| (t * 6 / 10 + (rng.next_u64() % 100) as u32) as u8))
                    });
                    img.save(dir.join(format!("{i}.png"))).unwrap();
                }
            }
        }
        root
    })
}

/// One CPU thread per rank, one loader thread: two ranks share this machine's cores.
const LEAN: [&str; 4] = ["--threads", "1", "--workers", "1"];

/// Rank `rank` of `world` of the `train` binary, with the launcher's variables.
fn rank_command(f: &TrainFixture, out: &Path, rank: usize, world: usize, port: u16, extra: &[&str]) -> Command {
    let mut cmd = f.quick_on(&f.data, out, &[&LEAN[..], extra].concat());
    launcher_env(&mut cmd, rank, world, port);
    cmd
}

/// `world` ranks of the binary into `out`; asserts that each succeeded and returns their output.
fn train_ranks(f: &TrainFixture, out: &Path, world: usize, extra: &[&str]) -> Vec<String> {
    let port = free_port();
    let commands = (0..world).map(|rank| rank_command(f, out, rank, world, port, extra)).collect();
    let results = run_all(commands, DEADLINE);
    for (rank, (code, text)) in results.iter().enumerate() {
        assert_eq!(*code, Some(0), "rank {rank} failed:\n{text}");
    }
    results.into_iter().map(|(_, t)| t).collect()
}

/// A one-process run of the binary into `tmp/<out>`.
fn train_alone(f: &TrainFixture, out: &str, extra: &[&str]) -> TrainedRun {
    f.train(out, &[&LEAN[..], extra].concat())
}

/// The model of a checkpoint: parameters and BatchNorm statistics by name.
fn weights(checkpoint: &Path) -> HashMap<String, Tensor> {
    train::weights::read_state_dict(checkpoint).unwrap_or_else(|e| panic!("{}: {e}", checkpoint.display()))
}

/// A run's weights against a reference's, both from `init`: how far the parameters' updates
/// differ (`‖Δ − Δref‖ / ‖Δref‖`, all parameters together) and the running statistics
/// (`‖s − sref‖ / ‖sref‖`).
fn relative_errors(
    init: &HashMap<String, Tensor>,
    reference: &HashMap<String, Tensor>,
    run: &HashMap<String, Tensor>,
) -> (f64, f64) {
    let (mut update, mut moved, mut stats, mut size) = (0.0, 0.0, 0.0, 0.0);
    let sq = |t: Tensor| t.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]);
    for (name, r) in reference {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        if name.contains("running_") {
            stats += sq(&run[name] - r);
            size += sq(r.shallow_clone());
        } else {
            update += sq(&run[name] - r);
            moved += sq(r - &init[name]);
        }
    }
    ((update / moved).sqrt(), (stats / size).sqrt())
}

/// The weights a run with `--seed seed --no-pretrained` starts from (a ResNet-18 of 3 classes):
/// the trainer seeds libtorch's generator, then builds the model.
fn initial_weights(seed: i64) -> HashMap<String, Tensor> {
    tch::manual_seed(seed);
    let model = train::model::ResNet::new(train::arch::by_name("resnet18").unwrap(), 3, tch::Device::Cpu);
    model.state().into_iter().collect()
}

/// The largest difference between same-named tensors, and the name where it is.
fn max_difference(
    a: &HashMap<String, Tensor>,
    b: &HashMap<String, Tensor>,
    only: impl Fn(&str) -> bool,
) -> (f64, String) {
    assert_eq!(a.len(), b.len());
    let mut worst = (0.0, String::new());
    for (name, x) in a.iter().filter(|(n, _)| only(n)) {
        let y = &b[name];
        let d = (x.to_kind(Kind::Double) - y.to_kind(Kind::Double)).abs().max().double_value(&[]);
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    worst
}

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap()
}

fn metrics_rows(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.csv")).unwrap().lines().count() - 1
}

/// Feature extraction (BatchNorm frozen, so batch statistics do not enter): two ranks at batch
/// 4 end the epoch with the weights of one process at batch 8, to float rounding; and every
/// rank reports the validation accuracy and loss that one process computes for those weights.
#[test]
fn two_ranks_at_batch_b_train_and_validate_as_one_process_at_2b() {
    if !gloo_or_skip() {
        return;
    }
    let f = fixture();
    let common = ["--mode", "feature-extract", "--lr", "0.05", "--seed", "5", "--no-export"];
    let alone = train_alone(&f, "alone8", &[&common[..], &["--batch-size", "8"]].concat());
    let small_batches = train_alone(&f, "alone4", &[&common[..], &["--batch-size", "4"]].concat());

    // The two ranks run train::run in children of this test, each printing what it reports.
    let out = f.path("ranks");
    let port = free_port();
    let commands = (0..2)
        .map(|rank| {
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.args(["child", "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, "feature_extract")
                .env("DIST_TRAIN_DATA", &f.data)
                .env("DIST_TRAIN_OUT", &out);
            launcher_env(&mut cmd, rank, 2, port);
            cmd
        })
        .collect();
    let results = run_all(commands, DEADLINE);
    let mut reported = Vec::new();
    for (rank, (code, text)) in results.iter().enumerate() {
        assert_eq!(*code, Some(0), "rank {rank} failed:\n{text}");
        let line = text.lines().find(|l| l.starts_with(&format!("rank {rank}: epoch 1 "))).unwrap_or_else(|| {
            panic!("rank {rank} reported no epoch:\n{text}");
        });
        let fields: Vec<&str> = line.split_whitespace().collect();
        let value = |key: &str| -> f64 { fields[fields.iter().position(|f| *f == key).unwrap() + 1].parse().unwrap() };
        reported.push((value("val_acc"), value("val_loss"), value("val_images")));
    }
    assert_eq!(reported[0], reported[1], "the ranks report the same validation figures");

    let ranks = weights(&out.join("last.pt"));
    let one = weights(&alone.out.join("last.pt"));
    let (diff, name) = max_difference(&ranks, &one, |_| true);
    assert!(diff < 1e-5, "2 ranks × 4 vs 1 × 8: {name} differs by {diff}");
    // The comparison tells runs apart: batches of 4 in one process end elsewhere.
    let (apart, _) = max_difference(&weights(&small_batches.out.join("last.pt")), &one, |n| n.starts_with("fc."));
    assert!(apart > 100.0 * diff.max(1e-7), "batch 4 vs 8 in one process: only {apart} apart");

    // One process's validation of (to rounding) the same weights.
    let best = &summary(&alone.out)["best"];
    let (acc, loss, images) = reported[0];
    assert_eq!(acc, best["val_acc"].as_f64().unwrap(), "accuracy");
    assert!((loss - best["val_loss"].as_f64().unwrap()).abs() < 1e-4, "loss {loss} vs {}", best["val_loss"]);
    assert_eq!(images, 9.0, "every validation image counted once");

    // Rank 0 wrote what a single process writes, and said how the job trained.
    for file in
        ["best.pt", "last.pt", "metrics.csv", "summary.json", "curves.png", "train_batch.png", "val_predictions.png"]
    {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let s = summary(&out);
    assert_eq!(s["distributed"]["world_size"], 2);
    assert_eq!(s["distributed"]["global_batch"], 8);
    assert_eq!(s["best"]["val_acc"].as_f64().unwrap(), acc);
    assert!(summary(&alone.out).get("distributed").is_none(), "a single process's summary is as before");
}

/// Fine-tuning with --sync-bn: BatchNorm's batch statistics are the global batch's, so two ranks
/// at batch 4 train as one process at batch 8 does, parameters and running statistics; without
/// it they do not. ("As one process does" within float rounding, which fine-tuning from random
/// weights amplifies step after step: the learning rate is kept small, where one process with
/// 2 threads instead of 1 lands about 1 % away.) Then the two-rank checkpoint resumes in one
/// process.
#[test]
fn sync_bn_trains_as_one_process_and_the_checkpoint_resumes_in_one() {
    if !gloo_or_skip() {
        return;
    }
    let f = fixture();
    let common = ["--lr", "0.0002", "--seed", "7", "--no-export"];
    let init = initial_weights(7);
    let alone = train_alone(&f, "alone8", &[&common[..], &["--batch-size", "8"]].concat());
    let synced = f.path("synced");
    let texts = train_ranks(&f, &synced, 2, &[&common[..], &["--batch-size", "4", "--sync-bn"]].concat());
    assert!(texts[0].contains("synchronised BatchNorm"), "{}", texts[0]);
    assert!(texts[1].trim().is_empty(), "rank 1 prints nothing:\n{}", texts[1]);
    let plain = f.path("plain");
    train_ranks(&f, &plain, 2, &[&common[..], &["--batch-size", "4"]].concat());

    let one = weights(&alone.out.join("last.pt"));
    let (update, stats) = relative_errors(&init, &one, &weights(&synced.join("last.pt")));
    let (update_local, stats_local) = relative_errors(&init, &one, &weights(&plain.join("last.pt")));
    println!("2 × 4 vs 1 × 8: updates {update:.2e} apart, running statistics {stats:.2e}; without --sync-bn {update_local:.2e} and {stats_local:.2e}");
    assert!(update < 0.1 && stats < 5e-4, "--sync-bn: updates {update:e} apart, statistics {stats:e}");
    assert!(update_local > 0.5 && stats_local > 5e-3, "without --sync-bn: {update_local:e}, {stats_local:e}");

    let d = &summary(&synced)["distributed"];
    assert_eq!((d["sync_bn"].as_bool(), d["global_batch"].as_u64()), (Some(true), Some(8)));
    assert!(d["sync_bn_seconds"].as_f64().unwrap() > 0.0, "{d}");

    // The checkpoint holds the whole model: one process carries on from it.
    let resumed = f
        .command()
        .arg("--resume")
        .arg(synced.join("last.pt"))
        .args(["--epochs", "2", "--device", "cpu"])
        .args(LEAN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{err}");
    assert!(err.contains("had 2 process(es), this one has 1: the batch in all is 4 (was 8)"), "{err}");
    assert_eq!(metrics_rows(&synced), 4, "two epochs of train and val rows");
    let state = train::run_state::RunState::read(&synced.join("last.pt")).unwrap();
    assert_eq!((state.epochs_done, state.world_size), (2, None));
}

/// A rank killed mid-epoch: the other stops, in time, with one error line naming itself and
/// what happened; the last finished epoch's checkpoint is intact.
#[test]
fn a_killed_rank_ends_the_run_with_one_error_line_in_time() {
    if !gloo_or_skip() {
        return;
    }
    let f = fixture();
    let out = f.path("out");
    let port = free_port();
    let extra = ["--epochs", "3", "--batch-size", "2", "--dist-timeout", "20", "--no-export"];
    let mut rank0 = Running::spawn(rank_command(&f, &out, 0, 2, port, &extra));
    let rank1 = Running::spawn(rank_command(&f, &out, 1, 2, port, &extra));
    assert!(rank0.wait_for("epoch 1/3 ", DEADLINE), "no epoch ended:\n{}", rank0.text());
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: a plain kill(2) of the child this test started.
    unsafe { libc::kill(rank1.pid(), libc::SIGKILL) };
    let (code, text, took) = rank0.finish(Duration::from_secs(60));
    println!("rank 0 ended {took:?} after the kill:\n{text}");
    assert_eq!(code, Some(1), "{text}");
    assert!(took < Duration::from_secs(20 + 5), "{took:?}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(errors[0].contains("rank 0:") && errors[0].contains("another rank"), "{}", errors[0]);
    assert!(text.trim_end().ends_with(errors[0]), "the error is the last line:\n{text}");
    train::checkpoint::load_last(&out.join("last.pt")).unwrap();
    drop(rank1);
}

/// A rank that stops responding (SIGSTOP): the other times out after --dist-timeout.
#[test]
fn a_stalled_rank_makes_the_other_time_out() {
    if !gloo_or_skip() {
        return;
    }
    let f = fixture();
    let out = f.path("out");
    let port = free_port();
    let extra = ["--epochs", "3", "--batch-size", "2", "--dist-timeout", "8", "--no-export"];
    let mut rank0 = Running::spawn(rank_command(&f, &out, 0, 2, port, &extra));
    let rank1 = Running::spawn(rank_command(&f, &out, 1, 2, port, &extra));
    assert!(rank0.wait_for("epoch 1/3 ", DEADLINE), "no epoch ended:\n{}", rank0.text());
    // SAFETY: a plain kill(2) of the child this test started.
    unsafe { libc::kill(rank1.pid(), libc::SIGSTOP) };
    let (code, text, took) = rank0.finish(Duration::from_secs(60));
    println!("rank 0 ended {took:?} after the stall:\n{text}");
    assert_eq!(code, Some(1), "{text}");
    assert!(took < Duration::from_secs(8 + 10), "{took:?}");
    let error = text.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{text}"));
    assert!(error.contains("rank 0:") && error.contains("timed out"), "{error}");
    drop(rank1);
}

/// torchrun --no-python launches the ranks; SIGTERM to torchrun (forwarded to the ranks) stops
/// them all after the epoch in progress with a checkpoint; one process resumes from it.
#[test]
fn torchrun_launches_the_ranks_and_sigterm_stops_them_with_a_checkpoint() {
    if !gloo_or_skip() {
        return;
    }
    let torchrun = test_support::repo_root().join(".venv/bin/torchrun");
    if !torchrun.exists() {
        eprintln!("SKIPPED: no venv (scripts/setup.sh) for torchrun");
        return;
    }
    let f = fixture();
    let out = f.path("out");
    let mut cmd = Command::new(&torchrun);
    cmd.args(["--nnodes", "1", "--nproc-per-node", "2"])
        .arg(format!("--master-port={}", free_port()))
        .arg("--no-python")
        .arg(BIN)
        .arg(&f.data)
        .arg("--out")
        .arg(&out)
        .args(["--no-pretrained", "--device", "cpu", "--epochs", "2", "--batch-size", "2", "--no-export"])
        .args(["--workers", "1"])
        .env("GLOO_SOCKET_IFNAME", "lo")
        .env("PYTHONUNBUFFERED", "1")
        .env("ALL_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9");
    for var in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE"] {
        cmd.env_remove(var);
    }
    let mut run = Running::spawn(cmd);
    assert!(run.wait_for("\ndata: ", DEADLINE), "the ranks did not start:\n{}", run.text());
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: a plain kill(2) of the child this test started.
    unsafe { libc::kill(run.pid(), libc::SIGTERM) };
    let (_, text, _) = run.finish(DEADLINE);
    println!("{text}");
    assert!(text.contains("distributed: rank 0 of 2 (gloo)"), "{text}");
    assert!(text.contains("terminate: finishing this epoch"), "{text}");
    assert!(text.contains("stopped early after 1 epoch(s): resume with --resume"), "{text}");
    assert_eq!(metrics_rows(&out), 2, "one epoch, then the stop:\n{text}");
    let s = summary(&out);
    assert_eq!(s["interrupted"], true);
    assert_eq!(s["epochs_completed"], 1);
    let state = train::run_state::RunState::read(&out.join("last.pt")).unwrap();
    assert_eq!((state.epochs_done, state.world_size), (1, Some(2)));

    let resumed =
        f.command().arg("--resume").arg(out.join("last.pt")).args(["--device", "cpu"]).args(LEAN).output().unwrap();
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{err}");
    assert_eq!(metrics_rows(&out), 4, "{err}");
}

/// The launcher's variables are checked, and ranks that would not train alike are stopped
/// before they start.
#[test]
fn bad_launches_fail_at_once_with_one_line() {
    let f = TrainFixture::new(BIN, &["blue", "red"], 2, 1);
    let out = f.quick("out", &[]).env("RANK", "0").env_remove("WORLD_SIZE").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim(), "error: distributed environment: WORLD_SIZE=\"\": unset while RANK=0 is set");

    let mut cmd = f.quick("out", &["--dist-backend", "nccl"]);
    launcher_env(&mut cmd, 0, 1, free_port());
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.lines().last().unwrap().contains("--dist-backend nccl cannot train on the CPU"), "{err}");

    if !gloo_or_skip() {
        return;
    }
    // Different batch sizes: each rank would take another number of steps.
    let port = free_port();
    let commands = [("4", 0), ("2", 1)]
        .into_iter()
        .map(|(b, rank)| rank_command(&f, &f.path("mixed"), rank, 2, port, &["--batch-size", b]))
        .collect();
    for (rank, (code, text)) in run_all(commands, DEADLINE).into_iter().enumerate() {
        assert_eq!(code, Some(1), "rank {rank}:\n{text}");
        assert!(text.contains("the ranks do not run the same training: rank 1's settings"), "rank {rank}:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Child side: a rank running `train::run` in this test binary.

/// Prints each epoch's figures as this rank's observer hears them.
struct Report(usize);

impl Observer for Report {
    fn info(&mut self, _: &str) {}
    fn warn(&mut self, msg: &str) {
        println!("rank {}: warning: {msg}", self.0);
    }
    fn epoch_end(&mut self, r: &EpochRecord, _epochs: usize, _best: bool) {
        println!(
            "rank {}: epoch {} val_acc {:e} val_loss {:e} val_images {} train_loss {:e}",
            self.0, r.epoch, r.val.acc, r.val.loss, r.val.images, r.train.loss
        );
    }
}

/// The entry point of the ranks; a no-op in the ordinary test run.
#[test]
fn child() {
    let Ok(scenario) = std::env::var(CHILD) else { return };
    assert_eq!(scenario, "feature_extract");
    let env = Env::from_env().unwrap().expect("the launcher's variables are set");
    let rank = env.rank;
    let mut cfg = TrainConfig {
        data: Some(PathBuf::from(std::env::var_os("DIST_TRAIN_DATA").unwrap())),
        out: Some(PathBuf::from(std::env::var_os("DIST_TRAIN_OUT").unwrap())),
        weights: WeightsSource::Scratch,
        device: train::device::DeviceChoice::Cpu,
        workers: 1,
        threads: Some(1),
        export: None,
        distributed: Some(DistConfig { env, backend: BackendChoice::Gloo, timeout: Duration::from_secs(60) }),
        ..TrainConfig::default()
    };
    let h = &mut cfg.hyper;
    (h.mode, h.epochs, h.optim.epochs, h.batch_size, h.optim.lr, h.seed) = (Mode::FeatureExtract, 1, 1, 4, 0.05, 5);
    let summary = train::run(&cfg, &mut Report(rank), &StopFlag::default()).unwrap();
    let best = summary.best.unwrap();
    println!("rank {rank}: best val_acc {:e} val_loss {:e}", best.val_acc, best.val_loss);
}
