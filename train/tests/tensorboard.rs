//! Event files read back by TensorBoard's own reader (the `tensorboard` package in the venv).

use std::collections::BTreeMap;

use test_support::run_python;
use train::tensorboard::{EventWriter, HParam};

#[test]
fn tensorboard_reads_what_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    for step in 1..=3 {
        w.scalar("loss/train", step, 1.0 / step as f64).unwrap();
    }
    w.image("pictures/grid", 1, &image::RgbImage::from_pixel(7, 5, image::Rgb([10, 200, 30]))).unwrap();
    w.text("summary", 3, "**best** 0.9").unwrap();
    let hparams: BTreeMap<String, HParam> = [
        ("lr".to_string(), HParam::Number(0.01)),
        ("arch".to_string(), HParam::Text("resnet18".into())),
        ("amp".to_string(), HParam::Flag(true)),
    ]
    .into();
    w.hparams(&hparams, &["accuracy/val"]).unwrap();
    w.hparams_end(true).unwrap();
    w.flush().unwrap();
    // A second writer (a resumed run) continues the curve in its own file.
    let mut w2 = EventWriter::create(dir.path()).unwrap();
    w2.scalar("loss/train", 4, 0.2).unwrap();
    w2.flush().unwrap();
    assert_ne!(w.path(), w2.path());

    let out: serde_json::Value =
        serde_json::from_str(&run_python("read_tensorboard.py", &[dir.path().as_os_str()])).unwrap();
    let curve: Vec<(i64, f64)> = out["scalars"]["loss/train"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    assert_eq!(curve.len(), 4, "{out}");
    for (i, (step, v)) in curve.iter().enumerate() {
        let want = if i < 3 { 1.0 / (i + 1) as f64 } else { 0.2 };
        assert_eq!(*step, i as i64 + 1);
        assert!((v - want).abs() < 1e-6, "{curve:?}");
    }
    assert_eq!(out["images"]["pictures/grid"], serde_json::json!([[1, 7, 5]]));
    assert_eq!(out["text"]["summary"], serde_json::json!(["**best** 0.9"]));
    assert_eq!(out["hparams"]["start"], serde_json::json!({"lr": 0.01, "arch": "resnet18", "amp": true}));
    assert_eq!(out["hparams"]["metrics"], serde_json::json!(["accuracy/val"]));
    assert_eq!(out["hparams"]["status"], 1);
}

const TRAIN: &str = env!("CARGO_BIN_EXE_train");

/// The points of the scalar curve `tag`, as (step, value).
fn curve(board: &serde_json::Value, tag: &str) -> Vec<(i64, f64)> {
    board["scalars"][tag]
        .as_array()
        .unwrap_or_else(|| panic!("no scalar {tag} in {board}"))
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

/// A run of two epochs resumed for a third: TensorBoard's reader finds every row of
/// metrics.csv as a point of its curve, a training-loss curve whose points average to each
/// epoch's training loss and that continues across the resumption, the pictures, the settings
/// and the summary.
#[test]
fn a_trained_run_is_logged_for_tensorboard_and_matches_metrics_csv() {
    // 6 training images per class at batch 4: 3 batches an epoch, a point each.
    let f = test_support::TrainFixture::new(TRAIN, &["ants", "bees"], 6, 2);
    let run = f.train("out", &["--epochs", "2", "--log-every", "1", "--no-export"]);
    assert!(run.stderr.contains("tensorboard --logdir"), "{}", run.stderr);
    let resumed = f
        .command()
        .arg("--resume")
        .arg(run.out.join("last.pt"))
        .args(["--epochs", "3", "--device", "cpu", "--log-every", "1", "--no-export"])
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", test_support::stderr_of(&resumed));
    let files = std::fs::read_dir(&run.out)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("events.out.tfevents."))
        .count();
    assert_eq!(files, 2, "one event file per process");

    let board: serde_json::Value =
        serde_json::from_str(&run_python("read_tensorboard.py", &[run.out.as_os_str()])).unwrap();
    let metrics = std::fs::read_to_string(run.out.join("metrics.csv")).unwrap();
    let mut rows = 0;
    for line in metrics.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let epoch: i64 = cols[0].parse().unwrap();
        let phase = cols[1];
        for (tag, col) in [(format!("loss/{phase}"), 2), (format!("accuracy/{phase}"), 3), ("lr".to_string(), 4)] {
            let want: f64 = cols[col].parse().unwrap();
            let got = curve(&board, &tag);
            let at: Vec<f64> = got.iter().filter(|p| p.0 == epoch).map(|p| p.1).collect();
            assert_eq!(at.len(), 1, "{tag} at epoch {epoch}: {got:?}");
            // metrics.csv keeps 6 decimals, TensorBoard a float32.
            assert!((at[0] - want).abs() <= 1e-6 + 1e-6 * want.abs(), "{tag} epoch {epoch}: {} vs {want}", at[0]);
        }
        rows += 1;
    }
    assert_eq!(rows, 6, "{metrics}");
    assert_eq!(curve(&board, "loss/val").len(), 3);

    let steps = curve(&board, "loss/train_step");
    assert_eq!(steps.iter().map(|p| p.0).collect::<Vec<_>>(), (1..=9).collect::<Vec<_>>(), "{steps:?}");
    for (e, (_, loss)) in curve(&board, "loss/train").into_iter().enumerate() {
        let mean = steps[e * 3..e * 3 + 3].iter().map(|p| p.1).sum::<f64>() / 3.0;
        assert!((mean - loss).abs() < 1e-4 * loss.max(1.0), "epoch {}: batches average {mean}, epoch {loss}", e + 1);
    }

    let images = &board["images"];
    assert_eq!(images["pictures/train_batch"].as_array().unwrap().len(), 1, "{images}");
    assert_eq!(images["pictures/confusion_matrix"].as_array().unwrap().len(), 3, "{images}");
    assert!(!images["pictures/val_predictions"].as_array().unwrap().is_empty(), "{images}");
    // The data-cleaning report's picture, at the end of each process.
    let top: Vec<i64> =
        images["pictures/top_losses"].as_array().unwrap().iter().map(|p| p[0].as_i64().unwrap()).collect();
    assert_eq!(top, [2, 3], "{images}");
    let hp = &board["hparams"];
    assert_eq!(hp["start"]["batch_size"].as_f64(), Some(4.0), "{hp}");
    assert_eq!(hp["start"]["arch"], "resnet18", "{hp}");
    assert_eq!(hp["status"], 1, "{hp}");
    assert!(hp["metrics"].as_array().unwrap().iter().any(|m| m == "best/val_accuracy"), "{hp}");
    let best: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(run.out.join("summary.json")).unwrap())
            .unwrap()["best"]
            .clone();
    let best_acc = curve(&board, "best/val_accuracy");
    assert!((best_acc.last().unwrap().1 - best["val_acc"].as_f64().unwrap()).abs() < 1e-6, "{best_acc:?} {best}");
    let text = board["text"]["summary"].as_array().unwrap();
    assert_eq!(text.len(), 2, "each process ends with its summary");
    assert!(text[1].as_str().unwrap().contains("**Epochs:** 3"), "{}", text[1]);
}

#[test]
fn no_tensorboard_writes_no_event_file() {
    let f = test_support::TrainFixture::new(TRAIN, &["a", "b"], 2, 1);
    let run = f.train("out", &["--no-tensorboard", "--no-export"]);
    let names: Vec<String> =
        std::fs::read_dir(&run.out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.starts_with("events.out")), "{names:?}");
}
