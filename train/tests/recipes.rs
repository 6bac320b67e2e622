//! The training recipes end to end, on small generated images at a small `--image-size`:
//! options recorded and restored, early stops, the EMA's verdict, class imbalance, the
//! data-cleaning report, `lr-find`, the image size's deployment contract and `--amp` on the CPU.

use std::path::Path;

use serde_json::Value;
use test_support::{stderr_of as stderr, TrainFixture, TrainedRun};

const TRAIN: &str = env!("CARGO_BIN_EXE_train");

fn summary(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap()
}

/// Small inputs keep every run here to a few seconds.
const SMALL: [&str; 2] = ["--image-size", "32"];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    SMALL.iter().copied().chain(extra.iter().copied()).collect()
}

#[test]
fn options_are_recorded_and_restored_by_resume_and_top_losses_are_listed() {
    let f = TrainFixture::new(TRAIN, &["a", "b", "c"], 4, 2);
    let extra = args(&[
        "--recipe",
        "strong",
        "--auto-augment",
        "randaugment:2:5",
        "--color-jitter",
        "0.2",
        "--cutmix",
        "0",
        "--class-weights",
        "auto",
        "--balanced-sampler",
        "--layer-lr-decay",
        "0.5",
        "--patience",
        "3",
        "--time-limit",
        "30m",
        "--top-losses",
        "5",
        "--warmup-epochs",
        "0.5",
    ]);
    let first = f.train("out", &extra);
    let s1 = summary(&first.out);
    let h = &s1["hyperparameters"];
    assert_eq!(h["recipe"], "strong");
    assert_eq!(h["image_size"], 32);
    assert_eq!(h["pixel_augment"]["policy"]["policy"], "rand_augment");
    assert_eq!(h["pixel_augment"]["policy"]["magnitude"], 5);
    assert_eq!(h["pixel_augment"]["color_jitter"]["brightness"], 0.2);
    assert_eq!(h["pixel_augment"]["random_erasing"]["p"], 0.25, "from the recipe");
    assert_eq!((h["mix"]["mixup_alpha"].as_f64(), h["mix"]["cutmix_alpha"].as_f64()), (Some(0.2), Some(0.0)));
    assert_eq!(h["loss"]["label_smoothing"], 0.1);
    assert_eq!(h["loss"]["class_weights"], "auto");
    assert_eq!(h["ema"]["decay"], 0.9998);
    assert_eq!(h["schedule"]["warmup_epochs"], 0.5, "an explicit flag overrides the recipe");
    assert_eq!(h["optim"]["schedule"], "cosine");
    assert_eq!(h["finetune"]["layer_lr_decay"], 0.5);
    assert_eq!(h["sampler"]["balanced"], true);
    assert_eq!(h["stopping"]["patience"], 3);
    assert_eq!(h["stopping"]["time_limit"], "30m");
    assert_eq!(h["cleaning"]["top_k"], 5);

    // top_losses.csv: the 5 highest of the 18 images' losses, highest first, real files.
    let csv = std::fs::read_to_string(first.out.join("top_losses.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("rank,path,label,predicted,confidence,loss"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 5, "{csv}");
    let losses: Vec<f64> = rows.iter().map(|r| r[5].parse().unwrap()).collect();
    assert!(losses.windows(2).all(|w| w[0] >= w[1]) && losses.iter().all(|l| *l >= 0.0), "{losses:?}");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[0], (i + 1).to_string());
        assert!(Path::new(r[1]).is_file(), "{}", r[1]);
        assert!(["a", "b", "c"].contains(&r[2]) && ["a", "b", "c"].contains(&r[3]), "{r:?}");
        let confidence: f64 = r[4].parse().unwrap();
        assert!((0.0..=1.0).contains(&confidence));
    }
    assert!(image::open(first.out.join("top_losses.png")).unwrap().width() > 100);
    assert_eq!(s1["cleaning"]["images_ranked"], 18);
    assert!(s1["cleaning"]["most_confused"].is_array());
    assert!(first.stderr.contains("data cleaning: the 5 highest-loss of 18 images"), "{}", first.stderr);

    // The EMA is validated each epoch and the summary says which weights best.pt holds.
    assert!(first.stderr.contains("EMA weights: val loss"), "{}", first.stderr);
    assert_eq!(s1["ema_history"].as_array().unwrap().len(), 1);
    let best = &s1["best"];
    let (raw, ema) = (s1_val_acc(&first.out), s1["ema_history"][0]["val_acc"].as_f64().unwrap());
    let best_acc = best["val_acc"].as_f64().unwrap();
    // metrics.csv rounds to 6 decimals.
    match best["weights"].as_str().unwrap() {
        "ema" => assert!(ema > raw - 1e-6 && best_acc == ema, "{s1}"),
        "raw" => assert!(raw + 1e-6 >= ema && (best_acc - raw).abs() < 1e-6, "{s1}"),
        other => panic!("best weights {other}"),
    }
    // TensorBoard has the EMA's curve beside the raw one.
    let board: Value =
        serde_json::from_str(&test_support::run_python("read_tensorboard.py", &[first.out.as_os_str()])).unwrap();
    let ema_curve = &board["scalars"]["accuracy/val_ema"];
    assert_eq!(ema_curve.as_array().map(Vec::len), Some(1), "{board}");
    assert!((ema_curve[0][1].as_f64().unwrap() - ema).abs() < 1e-6, "{ema_curve} vs {ema}");

    // --resume takes every option from last.pt.
    let resumed = f
        .command()
        .arg("--resume")
        .arg(first.out.join("last.pt"))
        .args(["--epochs", "2", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(!stderr(&resumed).contains("EMA: the moving average starts"), "last.pt keeps the average");
    let s2 = summary(&first.out);
    assert_eq!(s2["epochs_completed"], 2);
    let (mut h1, mut h2) = (s1["hyperparameters"].clone(), s2["hyperparameters"].clone());
    for h in [&mut h1, &mut h2] {
        h["epochs"] = Value::Null;
        h["optim"]["epochs"] = Value::Null;
    }
    assert_eq!(h1, h2);
    assert_eq!(s2["ema_history"].as_array().unwrap().len(), 2);
}

/// The raw weights' validation accuracy of the first epoch, from metrics.csv.
fn s1_val_acc(out: &Path) -> f64 {
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let row = csv.lines().find(|l| l.starts_with("1,val,")).unwrap();
    row.split(',').nth(3).unwrap().parse().unwrap()
}

#[test]
fn patience_stops_says_why_and_exports_the_best_model() {
    let f = TrainFixture::new(TRAIN, &["a", "b"], 4, 2);
    // A rate too small to change any prediction: no epoch after the first is better.
    let run = f.train(
        "out",
        &args(&["--epochs", "5", "--lr", "1e-12", "--mode", "feature-extract", "--patience", "2", "--top-losses", "0"]),
    );
    assert!(run.stderr.contains("stopped early: no better validation accuracy for 2 epochs"), "{}", run.stderr);
    let s = summary(&run.out);
    assert_eq!(s["epochs_completed"], 3);
    assert_eq!(s["interrupted"], false);
    assert!(s["stopped_early"].as_str().unwrap().contains("no better validation accuracy"), "{s}");
    assert!(run.out.join("model.onnx").is_file(), "the best model is exported");
    assert!(!run.out.join("top_losses.csv").exists(), "--top-losses 0 writes no report");
}

#[test]
fn time_limit_stops_after_the_epoch_that_reaches_it() {
    let f = TrainFixture::new(TRAIN, &["a", "b"], 4, 2);
    let run = f.train("out", &args(&["--epochs", "4", "--time-limit", "0.1s", "--top-losses", "0"]));
    assert!(run.stderr.contains("stopped at the time limit: "), "{}", run.stderr);
    let s = summary(&run.out);
    assert_eq!(s["epochs_completed"], 1);
    assert!(s["stopped_early"].as_str().unwrap().contains("time limit"), "{s}");
    assert!(run.out.join("model.onnx").is_file());
}

#[test]
fn freeze_epochs_train_the_classifier_first() {
    let f = TrainFixture::new(TRAIN, &["a", "b"], 4, 2);
    let run = f.train(
        "out",
        &args(&["--epochs", "2", "--freeze-epochs", "1", "--one-cycle", "--optimizer", "adamw", "--top-losses", "0"]),
    );
    assert!(run.stderr.contains("epochs 1 to 1: only the classifier trains"), "{}", run.stderr);
    assert!(run.stderr.contains("epoch 2: every layer trains now"), "{}", run.stderr);
    // Too many frozen epochs is refused in one line.
    let bad = f.quick("bad", &args(&["--epochs", "2", "--freeze-epochs", "2"])).output().unwrap();
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--freeze-epochs (2) must be fewer than --epochs (2)"), "{}", stderr(&bad));
}

#[test]
fn imbalance_is_noticed_and_remedies_run() {
    let f = TrainFixture::new(TRAIN, &["common", "rare"], 13, 3);
    for i in 3..13 {
        std::fs::remove_file(f.data.join(format!("train/rare/{i}.png"))).unwrap();
    }
    let run = f.train(
        "out",
        &args(&["--class-weights", "auto", "--balanced-sampler", "--batch-size", "8", "--top-losses", "0"]),
    );
    assert!(
        run.stderr.contains("warning: imbalanced classes: 'common' has 13 training images, 'rare' only 3 (4.3x)"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("per-class recall: common "), "{}", run.stderr);
    let s = summary(&run.out);
    assert_eq!(s["per_class_recall"].as_array().unwrap().len(), 2);
    assert!(s["imbalance"].as_str().unwrap().contains("imbalanced"));
    let board: Value =
        serde_json::from_str(&test_support::run_python("read_tensorboard.py", &[run.out.as_os_str()])).unwrap();
    for (i, class) in ["common", "rare"].iter().enumerate() {
        let curve = &board["scalars"][format!("recall/{class}")];
        let want = &s["per_class_recall"][i];
        if let Some(want) = want.as_f64() {
            let last = curve.as_array().and_then(|c| c.last()).unwrap_or_else(|| panic!("no recall/{class}: {board}"));
            assert!((last[1].as_f64().unwrap() - want).abs() < 1e-6, "{curve} vs {want}");
        }
    }
    // Balanced data: no warning, no recall line.
    let even = TrainFixture::new(TRAIN, &["x", "y"], 4, 2).train("out", &args(&["--top-losses", "0"]));
    assert!(!even.stderr.contains("imbalanced") && !even.stderr.contains("per-class recall"), "{}", even.stderr);
    // A weight per class, or the run is refused.
    let bad = f.quick("bad", &args(&["--class-weights", "1,2,3"])).output().unwrap();
    assert!(stderr(&bad).contains("--class-weights has 3 weights for 2 classes"), "{}", stderr(&bad));
}

#[test]
fn lr_find_draws_the_curve_and_suggests_a_flag() {
    let f = TrainFixture::new(TRAIN, &["a", "b"], 8, 2);
    let out = f.path("sweep");
    let run = f
        .command()
        .arg("lr-find")
        .arg(&f.data)
        .arg("--out")
        .arg(&out)
        .args(["--no-pretrained", "--device", "cpu", "--steps", "30"])
        .args(SMALL)
        .output()
        .unwrap();
    let (stdout, err) = (String::from_utf8_lossy(&run.stdout).into_owned(), stderr(&run));
    assert!(run.status.success(), "{err}");
    let picture = image::open(out.join("lr_find.png")).unwrap();
    assert!(picture.width() > 200 && picture.height() > 100);
    let line = stdout.lines().find(|l| l.starts_with("suggested learning rate: --lr ")).expect(&stdout);
    let lr: f64 = line.trim_start_matches("suggested learning rate: --lr ").parse().unwrap();
    assert!(lr > 1e-7 && lr < 10.0, "{lr}");
    assert!(!out.join("best.pt").exists(), "a sweep trains nothing to keep");
}

/// `--image-size` goes into the model's preprocessing contract: `infer` resizes and crops as
/// training validated, and its logits are the tch model's at that size.
#[test]
fn image_size_is_the_exported_contract_and_infer_follows_it() {
    let (f, TrainedRun { out, .. }) = TrainedRun::new(TRAIN, &["a", "b"], &["--image-size", "48", "--top-losses", "0"]);
    let info = train::checkpoint::read_info(&out.join("best.pt")).unwrap();
    assert_eq!((info.preprocess.crop_size, info.preprocess.resize_size), (48, 55));
    let classifier = infer::Classifier::new(out.join("model.onnx")).unwrap();
    let p = &classifier.metadata().preprocess;
    assert_eq!((p.crop_size, p.resize_size), (48, 55), "round(256·48/224) = 55");

    let img = image::open(f.data.join("val/b/1.png")).unwrap().to_rgb8();
    let input = classifier.preprocess(&img).unwrap();
    assert_eq!(input.len(), 3 * 48 * 48);
    let onnx = classifier.run(&input).unwrap();
    let model = train::model::ResNet::new(train::arch::by_name("resnet18").unwrap(), 2, tch::Device::Cpu);
    model.load_state(&train::weights::read_state_dict(&out.join("best.pt")).unwrap(), false).unwrap();
    let x = tch::Tensor::from_slice(&info.preprocess.eval(&img).unwrap()).view([1, 3, 48, 48]);
    let logits = Vec::<f32>::try_from(tch::no_grad(|| model.forward(&x, false)).view([-1])).unwrap();
    let diff = onnx.iter().zip(&logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-3, "infer {onnx:?} against tch {logits:?}");
    let bad = f.quick("bad", &["--image-size", "8"]).output().unwrap();
    assert!(stderr(&bad).contains("--image-size must be between 16 and 1024, got 8"), "{}", stderr(&bad));
}

/// `--amp` on the CPU trains in bfloat16 autocast, saying so when the CPU has no native support.
#[test]
fn amp_on_the_cpu_uses_bfloat16() {
    let f = TrainFixture::new(TRAIN, &["a", "b"], 4, 2);
    let run = f.train("out", &args(&["--amp", "--top-losses", "0"]));
    let native = train::cpu_features::Bf16Support::detect().native();
    let note = "no native bfloat16";
    assert_eq!(run.stderr.contains(note), !native, "{}", run.stderr);
    assert_eq!(run.stderr.lines().filter(|l| l.contains("bfloat16")).count(), 1, "one line: {}", run.stderr);
    let s = summary(&run.out);
    assert_eq!(s["hyperparameters"]["amp_dtype"], "bfloat16");
    assert!(s["best"]["val_acc"].as_f64().is_some());
}
