//! Nothing lost on a kill: `train` is SIGKILLed at moments spread over a run — during the
//! up-front scan, mid-epoch, while a checkpoint is being written, while the export is being
//! verified — and whatever outputs exist afterwards must be complete and loadable, and
//! `--resume` must carry on from the `last.pt` left behind.
//!
//! The data set also holds TIFFs with tiled, separate-plane layouts (which once made the
//! decoder panic during the scan) and mutated files that cannot be decoded: training reads the
//! former and skips the latter by name.

use test_support as common;

use std::path::Path;
use std::process::{Child, Stdio};

use common::{fixtures, Rng};
use std::time::{Duration, Instant};

/// Two colour classes of small PNGs, plus the fixture TIFFs of separate planes (readable) and
/// the recorded crasher files (most unreadable) among the training images.
fn data_set(root: &Path) -> (usize, usize) {
    for (c, class) in ["blue", "red"].iter().enumerate() {
        for (split, n) in [("train", 6), ("val", 3)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(56 + i * 4, 40, |x, y| {
                    let v = (x * 3 + y * 2 + i) as u8;
                    if c == 0 {
                        image::Rgb([v / 4, v / 3, 200])
                    } else {
                        image::Rgb([210, v / 3, v / 4])
                    }
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    let mut planar = 0;
    for entry in std::fs::read_dir(fixtures("images")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("tiff_tiled_planar") {
            std::fs::copy(&path, root.join("train/red").join(&name)).unwrap();
            planar += 1;
        }
    }
    let mut crashers = 0;
    for entry in std::fs::read_dir(fixtures("crashers")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "tif") {
            std::fs::copy(&path, root.join("train/blue").join(path.file_name().unwrap())).unwrap();
            crashers += 1;
        }
    }
    (planar, crashers)
}

fn start(data: &Path, out: &Path, resume: bool) -> Child {
    let mut cmd = common::train_command(env!("CARGO_BIN_EXE_train"));
    cmd.arg(data).arg("--out").arg(out).args(["--no-pretrained", "--device", "cpu", "--epochs", "2"]);
    if resume {
        cmd.arg("--resume").arg(out.join("last.pt"));
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

/// When to kill: after a delay, or as soon as a temporary file of an output appears.
#[derive(Debug, Clone, Copy)]
enum Moment {
    After(Duration),
    Writing(&'static str),
}

/// Runs until `moment`, then SIGKILLs. Returns false when the run ended first.
fn kill_at(child: &mut Child, out: &Path, moment: Moment) -> bool {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let now = match moment {
            Moment::After(d) => started.elapsed() >= d,
            Moment::Writing(name) => std::fs::read_dir(out).into_iter().flatten().flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&format!(".{name}.")) && n.ends_with(".tmp")
            }),
        };
        if now || started.elapsed() > Duration::from_secs(600) {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Every output present is complete: checkpoints load (with their record), the ONNX model
/// runs, the CSV has whole rows, the JSON parses.
fn outputs_are_whole(out: &Path) -> Vec<&'static str> {
    let mut present = Vec::new();
    let best = out.join("best.pt");
    if best.exists() {
        train::checkpoint::read_info(&best).unwrap();
        train::weights::read_state_dict(&best).unwrap();
        present.push("best.pt");
    }
    let last = out.join("last.pt");
    if last.exists() {
        train::checkpoint::load_last(&last).unwrap_or_else(|e| panic!("last.pt: {e}"));
        present.push("last.pt");
    }
    let onnx = out.join("model.onnx");
    if onnx.exists() {
        let c = infer::Classifier::builder(&onnx).execution_provider(infer::ExecutionProvider::Cpu).build().unwrap();
        assert_eq!(c.metadata().classes, ["blue", "red"]);
        present.push("model.onnx");
    }
    let metrics = out.join("metrics.csv");
    if metrics.exists() {
        let text = std::fs::read_to_string(&metrics).unwrap();
        assert!(text.starts_with("epoch,phase,"), "{text}");
        assert!(text.ends_with('\n') && text.lines().all(|l| l.split(',').count() == 7), "{text}");
        present.push("metrics.csv");
    }
    let summary = out.join("summary.json");
    if summary.exists() {
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&summary).unwrap()).unwrap();
        present.push("summary.json");
    }
    for png in ["curves.png", "train_batch.png"] {
        if out.join(png).exists() {
            image::open(out.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        }
    }
    present
}

#[test]
fn outputs_survive_sigkill_at_any_moment_and_resume_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (planar, crashers) = data_set(&data);

    // A complete run first: the planar TIFFs are read, the broken files skipped by name.
    let whole = tmp.path().join("whole");
    let t = Instant::now();
    let run = start(&data, &whole, false).wait_with_output().unwrap();
    let duration = t.elapsed();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.join("summary.json")).unwrap()).unwrap();
    let skipped: Vec<&str> =
        summary["skipped_files"].as_array().unwrap().iter().map(|s| s["path"].as_str().unwrap()).collect();
    assert_eq!(summary["train_counts"][1], 6 + planar, "{err}");
    assert!(skipped.iter().all(|p| p.contains("/train/blue/")), "{skipped:?}");
    assert!(!skipped.is_empty() && skipped.len() <= crashers);
    for s in &skipped {
        let name = Path::new(s).file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(err.lines().filter(|l| l.starts_with("warning: skipped") && l.contains(&name)).count(), 1, "{err}");
    }

    let mut rng = Rng(7);
    let mut moments = vec![
        Moment::After(Duration::from_millis(30 + rng.next_u64() % 200)), // the scan
        Moment::Writing("best.pt"),
        Moment::Writing("last.pt"),
        Moment::Writing("model.onnx"),
    ];
    // Random moments over the whole run (scan, epochs, checkpoints, export).
    for _ in 0..3 {
        moments.push(Moment::After(duration.mul_f64(0.15 + (rng.next_u64() % 800) as f64 / 1000.0)));
    }
    let mut killed_with_last = 0;
    for (i, moment) in moments.into_iter().enumerate() {
        let out = tmp.path().join(format!("run{i}"));
        let mut child = start(&data, &out, false);
        let killed = kill_at(&mut child, &out, moment);
        let present = outputs_are_whole(&out);
        println!("{moment:?}: killed {killed}, complete outputs left: {present:?}");
        if !present.contains(&"last.pt") || killed_with_last >= 2 {
            continue;
        }
        // Resume from what the kill left: the run completes and leaves no temporary files.
        killed_with_last += 1;
        let resumed = start(&data, &out, true).wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&resumed.stderr);
        assert!(resumed.status.success(), "{moment:?}: {err}");
        let present = outputs_are_whole(&out);
        for f in ["best.pt", "last.pt", "model.onnx", "metrics.csv", "summary.json"] {
            assert!(present.contains(&f), "{moment:?}: {f} missing after resume");
        }
        let leftovers: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{moment:?}: {leftovers:?}");
        let rows = std::fs::read_to_string(out.join("metrics.csv")).unwrap().lines().count();
        assert_eq!(rows, 1 + 2 * 2, "{moment:?}: two epochs of train and val rows");
    }
    assert!(killed_with_last >= 1, "no kill left a last.pt to resume from");
}
