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
