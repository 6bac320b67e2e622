//! End-to-end runs of the `train` binary on small generated datasets (and on the seed's
//! dataset when it is present): outputs, bad input, resumption and Ctrl-C.

use test_support as common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{colour_image, image_folder, seed_data, stderr_of as stderr, TrainFixture, TrainedRun, RED};

const TRAIN: &str = env!("CARGO_BIN_EXE_train");

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap()
}

fn metrics(out: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(out.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn one_epoch_writes_every_output_and_reports_bad_files() {
    let f = TrainFixture::new(TRAIN, &["cats", "dogs"], 6, 3);
    let data = &f.data;
    std::fs::write(data.join("train/cats/broken.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    std::fs::write(data.join("train/dogs/empty.png"), b"").unwrap();
    std::fs::write(data.join("train/dogs/notes.txt"), b"hello").unwrap();

    let TrainedRun { out, stdout, stderr: err } = f.train("models", &[]);
    assert!(err.contains("device: cpu"), "{err}");
    for bad in ["broken.jpg", "empty.png"] {
        let lines: Vec<&str> = err.lines().filter(|l| l.contains(bad)).collect();
        assert_eq!(lines.len(), 1, "one warning for {bad}: {err}");
        assert!(lines[0].starts_with("warning: skipped "), "{}", lines[0]);
    }
    // The result on stdout, for scripts; progress and notes on stderr.
    let result: Vec<&str> = stdout.lines().collect();
    assert_eq!(result.len(), 3, "{stdout}");
    assert!(result[0].starts_with("Training complete in ") && result[1].starts_with("Best val Acc: "), "{stdout}");
    assert_eq!(result[2], format!("outputs in {}", out.display()));
    assert!(!err.contains("Best val Acc:"), "{err}");

    assert!(err.contains("exported ") && err.contains("verified with ONNX Runtime"), "{err}");
    assert!(err.contains("validation images"), "{err}");
    for f in ["best.pt", "last.pt", "metrics.csv", "summary.json", "curves.png", "train_batch.png", "model.onnx"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let rows = metrics(&out);
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0][0].as_str(), rows[0][1].as_str()), ("1", "train"));
    assert_eq!(rows[1][1], "val");
    let s = summary(&out);
    assert_eq!(s["classes"], serde_json::json!(["cats", "dogs"]));
    assert_eq!(s["train_counts"], serde_json::json!([6, 6]));
    assert_eq!(s["skipped_files"].as_array().unwrap().len(), 2);
    assert_eq!(s["ignored_files"], 1);
    assert_eq!(s["epochs_completed"], 1);
    assert_eq!(s["best"]["epoch"], 1);
    assert_eq!(s["hyperparameters"]["optim"]["lr"], 0.001);
    assert_eq!(s["interrupted"], false);

    let grid = image::open(out.join("train_batch.png")).unwrap();
    assert!(grid.width() >= 4 * 224);
    image::open(out.join("curves.png")).unwrap();
    let info = train::checkpoint::read_info(&out.join("best.pt")).unwrap();
    assert_eq!(info.classes, ["cats", "dogs"]);
    assert_eq!(info.arch, "resnet18");

    // best.pt is a valid starting point for another run.
    let again = f.path("again");
    let mut cmd = f.command();
    cmd.arg(data)
        .arg("--out")
        .arg(&again)
        .arg("--weights")
        .arg(out.join("best.pt"))
        .args(["--epochs", "1", "--device", "cpu"]);
    let second = cmd.output().unwrap();
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(stderr(&second).contains("weights: "), "{}", stderr(&second));
}

#[test]
fn resume_continues_exactly_where_the_run_stopped() {
    let f = TrainFixture::new(TRAIN, &["a", "b"], 4, 2);
    let straight = f.train("straight", &["--epochs", "2"]).out;
    let split = f.train("split", &[]).out;
    let resumed = f
        .command()
        .arg(&f.data)
        .arg("--out")
        .arg(&split)
        .arg("--resume")
        .arg(split.join("last.pt"))
        .args(["--epochs", "2", "--device", "cpu"])
        .output()
        .unwrap();
    let err = stderr(&resumed);
    assert!(resumed.status.success(), "{err}");
    assert!(err.contains("resuming from") && err.contains("after epoch 1 of 2"), "{err}");

    let (a, b) = (metrics(&straight), metrics(&split));
    assert_eq!(a.len(), 4);
    assert_eq!(b.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        // epoch, phase, loss, acc, lr agree; timings differ.
        assert_eq!(x[..5], y[..5], "straight {x:?} vs resumed {y:?}");
    }
    assert_eq!(summary(&split)["epochs_completed"], 2);
}

#[test]
fn feature_extract_trains_only_the_classifier() {
    let (f, TrainedRun { out: first, .. }) = TrainedRun::new(TRAIN, &["a", "b"], &["--no-export"]);
    let frozen = f.path("frozen");
    let mut cmd = f.command();
    cmd.arg(&f.data).arg("--out").arg(&frozen).arg("--weights").arg(first.join("best.pt"));
    cmd.args(["--mode", "feature-extract", "--epochs", "1", "--lr", "0.05", "--device", "cpu", "--no-export"]);
    let run = cmd.output().unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let before = train::weights::read_state_dict(&first.join("best.pt")).unwrap();
    let after = train::weights::read_state_dict(&frozen.join("last.pt")).unwrap();
    assert_eq!(before.len(), after.len());
    for (name, t) in &before {
        let same = t.equal(&after[name]);
        // Backbone weights and BatchNorm statistics (eval mode) stay; the classifier learns.
        assert_eq!(same, !name.starts_with("fc."), "{name}");
    }
    assert_eq!(summary(&frozen)["hyperparameters"]["mode"], "feature-extract");
}

#[test]
fn first_ctrl_c_finishes_the_epoch_and_saves_last_pt() {
    let f = TrainFixture::new(TRAIN, &["a", "b"], 8, 2);
    let out = f.path("out");
    let mut child = f.quick("out", &["--epochs", "5"]).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let started = line.starts_with("weights:");
        seen.push(line);
        if started {
            break;
        }
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    seen.extend(lines.map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    let err = seen.join("\n");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("finishing this epoch"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let s = summary(&out);
    assert_eq!(s["interrupted"], true);
    assert_eq!(s["epochs_completed"], 1);
    assert!(out.join("last.pt").is_file());
    assert_eq!(metrics(&out).len(), 2);
}

/// Runs `train` expecting a fatal error: exit code 1 and one `error:` line, no panic.
fn fails(cmd: &mut Command, expect: &[&str]) -> String {
    let out = cmd.output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace") && !err.contains("stack"), "{err}");
    let last = err.lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("error: "), "{err}");
    for e in expect {
        assert!(last.contains(e), "expected '{e}' in: {last}");
    }
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
    last
}

#[test]
fn bad_settings_and_inputs_fail_with_one_clear_line() {
    let f = TrainFixture::new(TRAIN, &["a", "b"], 2, 1);
    let (data, out) = (&f.data, f.path("out"));
    let missing = f.path("nowhere");

    fails(&mut f.quick_on(&missing, &out, &[]), &["nowhere", "folder not found"]);

    let one_class = f.path("one");
    image_folder(&one_class, &["only"], 2, 1);
    fails(&mut f.quick_on(&one_class, &out, &[]), &["found one class folder (only)", "at least two"]);

    let empty_class = f.path("emptyclass");
    image_folder(&empty_class, &["a", "b"], 2, 1);
    for file in std::fs::read_dir(empty_class.join("train/b")).unwrap() {
        std::fs::write(file.unwrap().path(), b"garbage").unwrap();
    }
    fails(&mut f.quick_on(&empty_class, &out, &[]), &["class 'b' has no readable image"]);

    // --amp on the CPU is bfloat16 autocast (tests/recipes.rs); recipe settings are checked.
    fails(&mut f.quick("out", &["--label-smoothing", "1.5"]), &["--label-smoothing must be in [0, 1], got 1.5"]);
    fails(&mut f.quick("out", &["--warmup-epochs", "1", "--one-cycle"]), &["use one of them"]);
    let no_amp = f.quick("out", &["--amp-dtype", "bfloat16"]).output().unwrap();
    assert_eq!(no_amp.status.code(), Some(2), "{}", stderr(&no_amp));
    assert!(stderr(&no_amp).contains("--amp"), "{}", stderr(&no_amp));
    fails(&mut f.quick("out", &["--device", "cuda"]), &["CUDA requested"]);

    let junk = f.path("junk.pth");
    std::fs::write(&junk, b"junk").unwrap();
    let mut cmd = f.command();
    cmd.arg(data).arg("--out").arg(&out).arg("--weights").arg(&junk).args(["--epochs", "1"]);
    fails(&mut cmd, &["junk.pth", "not a torch.save file"]);

    // Default weights: not cached (empty TORCH_HOME) and no network.
    let torch_home = f.path("torch_home");
    let mut cmd = f.command();
    cmd.arg(data).arg("--out").arg(&out).args(["--epochs", "1"]).env("TORCH_HOME", &torch_home);
    fails(&mut cmd, &["resnet18-f37072fd.pth", "--no-pretrained", "--weights"]);

    // Resuming from a file that is not a last.pt.
    f.train("out", &[]);
    let mut cmd = f.command();
    cmd.arg(data).arg("--out").arg(&out).arg("--resume").arg(out.join("best.pt"));
    fails(&mut cmd, &["best.pt", "resume from last.pt"]);

    // `train export`: a second export of the run, with probabilities, and its failures.
    let onnx = f.path("again.onnx");
    let mut cmd = f.command();
    cmd.arg("export")
        .arg("--weights")
        .arg(out.join("best.pt"))
        .arg("--out")
        .arg(&onnx)
        .arg("--data")
        .arg(data)
        .arg("--probabilities");
    let exported = cmd.output().unwrap();
    assert!(exported.status.success(), "{}", stderr(&exported));
    assert!(stderr(&exported).contains("on 2 validation images"), "{}", stderr(&exported));
    assert!(onnx.is_file());
    let mut cmd = f.command();
    cmd.arg("export").arg("--weights").arg(f.path("missing.pt")).arg("--out").arg(&onnx);
    fails(&mut cmd, &["missing.pt: weights file not found"]);

    // Bad arguments are clap's business: usage error, exit code 2.
    let out2 = f.command().arg(data).args(["--epochs", "many"]).output().unwrap();
    assert_eq!(out2.status.code(), Some(2));
}

#[test]
fn binary_keeps_libtorch_cuda_where_libtorch_has_it() {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/libtorch/lib/libtorch_cuda.so");
    if !lib.exists() {
        eprintln!("skipped: this libtorch has no CUDA library");
        return;
    }
    let Ok(out) = Command::new("readelf").arg("-d").arg(env!("CARGO_BIN_EXE_train")).output() else {
        eprintln!("skipped: readelf not installed");
        return;
    };
    let dynamic = String::from_utf8_lossy(&out.stdout);
    // Without it, rustc's --as-needed drops the library and the binary never sees a GPU.
    assert!(dynamic.contains("[libtorch_cuda.so]"), "libtorch_cuda.so not among NEEDED:\n{dynamic}");
    assert!(dynamic.contains("RUNPATH") || dynamic.contains("RPATH"), "no rpath to libtorch:\n{dynamic}");
}

#[test]
fn one_epoch_on_the_seed_dataset() {
    let Some(data) = seed_data() else {
        eprintln!("skipped: seed dataset not found");
        return;
    };
    let f = TrainFixture::with_data(TRAIN, |_| data.clone());
    let TrainedRun { out, stderr: err, .. } = f.train("out", &[]);
    println!("{err}");
    let s = summary(&out);
    assert_eq!(s["classes"], serde_json::json!(["ants", "bees"]));
    // 245 training files, the GIF among them; 153 for validation.
    assert_eq!(s["train_counts"], serde_json::json!([124, 121]));
    assert_eq!(s["val_counts"], serde_json::json!([70, 83]));
    assert_eq!(s["skipped_files"].as_array().unwrap().len(), 0);
    assert!(out.join("best.pt").is_file());

    // Deployment reproduces validation: the exported model classifies val/ with the accuracy
    // training measured.
    let classifier = infer::Classifier::builder(out.join("model.onnx"))
        .execution_provider(infer::ExecutionProvider::Cpu)
        .build()
        .unwrap();
    assert_eq!(classifier.metadata().classes, ["ants", "bees"]);
    let labelled = infer::evaluation::labelled_files(&data.join("val"), &classifier.metadata().classes).unwrap();
    let (files, truth): (Vec<PathBuf>, Vec<usize>) = labelled.files.into_iter().unzip();
    let results = classifier.classify_files(files);
    let correct = results.iter().zip(&truth).filter(|(r, t)| r.result.as_ref().unwrap().class_index == **t).count();
    let deployed = correct as f64 / truth.len() as f64;
    let trained = s["best"]["val_acc"].as_f64().unwrap();
    assert!((deployed - trained).abs() < 1e-9, "deployed accuracy {deployed} vs validation {trained}");

    // int8 on real photographs: a valid ONNX file whose logits follow the float model's.
    let export = f
        .command()
        .args(["export", "--weights"])
        .arg(out.join("best.pt"))
        .arg("--out")
        .arg(out.join("model.onnx"))
        .arg("--data")
        .arg(&data)
        .args(["--quantize", "int8", "--calibration-images", "64", "--force"])
        .output()
        .unwrap();
    let err = stderr(&export);
    assert!(export.status.success(), "{err}");
    println!("{err}");
    let int8 = out.join("model.int8.onnx");
    println!("{}", common::run_python("onnx_check.py", &[int8.as_os_str()]));
    let q = infer::Classifier::builder(&int8).execution_provider(infer::ExecutionProvider::Cpu).build().unwrap();
    let quantization = q.metadata().quantization.clone().expect("int8 metadata");
    assert_eq!((quantization.calibration_images, quantization.validation_images), (64, 153));
    let (mut agree, mut diff, mut spread, mut n) = (0, 0.0f64, 0.0f64, 0);
    for path in truth.iter().zip(&labelled_paths(&data, &classifier)).map(|(_, p)| p) {
        let x = infer::prepare_file(path, &classifier.metadata().preprocess, Default::default()).unwrap().input;
        let (a, b) = (classifier.run(&x).unwrap(), q.run(&x).unwrap());
        let top = |v: &[f32]| if v[0] >= v[1] { 0 } else { 1 };
        agree += usize::from(top(&a) == top(&b));
        diff += a.iter().zip(&b).map(|(x, y)| f64::from((x - y).abs())).sum::<f64>();
        spread += f64::from((a[0] - a[1]).abs());
        n += 1;
    }
    let (mean_diff, mean_margin) = (diff / (2 * n) as f64, spread / n as f64);
    println!("int8 vs fp32 on {n} val images: top-1 agreement {agree}/{n}, mean |logit difference| {mean_diff:.4}, mean fp32 margin {mean_margin:.4}");
    // uint8 steps over ~20 layers add up to about 1-2 % of the logits' scale (0.021 mean
    // difference for a 1.5 logit spread on a 12-epoch model, README): allow 10 % of the mean
    // margin between the two logits, and a top-1 that follows except for near-ties.
    assert!(agree as f64 >= 0.95 * n as f64, "{agree}/{n}");
    assert!(mean_diff <= 0.1 * mean_margin + 0.01, "{mean_diff} vs margin {mean_margin}");
}

fn labelled_paths(data: &Path, c: &infer::Classifier) -> Vec<PathBuf> {
    infer::evaluation::labelled_files(&data.join("val"), &c.metadata().classes)
        .unwrap()
        .files
        .into_iter()
        .map(|f| f.0)
        .collect()
}

/// The int8 gate in both directions, on a model that tells colours apart: a sound
/// calibration passes it and writes model.int8.onnx (reported by infer); one that clips
/// every activation is refused with both accuracies and the agreement, and leaves no file.
#[test]
fn int8_gate_passes_sound_calibration_and_refuses_a_broken_one() {
    let f = TrainFixture::new(TRAIN, &["red", "green", "blue"], 8, 4);
    let out = f.train("out", &["--epochs", "2", "--lr", "0.01"]).out;
    let export = |calibration: &str| {
        f.command()
            .args(["export", "--weights"])
            .arg(out.join("best.pt"))
            .arg("--out")
            .arg(out.join("model.onnx"))
            .arg("--data")
            .arg(&f.data)
            .args(["--quantize", "int8", "--calibration", calibration])
            .output()
            .unwrap()
    };
    let int8 = out.join("model.int8.onnx");
    let broken = export("percentile:0.5");
    let err = stderr(&broken);
    assert_eq!(broken.status.code(), Some(1), "{err}");
    assert!(err.contains("int8 gate refused: validation top-1 accuracy fp32 "), "{err}");
    assert!(err.lines().last().unwrap().contains("int8 model refused"), "{err}");
    assert!(!int8.exists(), "a refused model is not written");
    assert!(out.join("model.onnx").is_file(), "the float model stays");

    let sound = export("auto");
    let err = stderr(&sound);
    assert!(sound.status.success(), "{err}");
    assert!(err.contains("int8 gate passed") && err.contains("agreement 100.00%"), "{err}");
    let c = infer::Classifier::builder(&int8).execution_provider(infer::ExecutionProvider::Cpu).build().unwrap();
    let q = c.metadata().quantization.clone().expect("the int8 model says how it was made");
    assert_eq!((q.top1_agreement, q.validation_images), (1.0, 12));
    assert!(q.scheme.contains("per-channel symmetric int8 weights"), "{q:?}");
}

/// A weights file from elsewhere that names code to run (`builtins.eval`): `train --weights`,
/// `train --resume` and `train export` each print one `error:` line naming it and exit 1.
#[test]
fn hostile_weight_files_are_refused_in_one_line() {
    use std::io::Write;
    let f = TrainFixture::new(TRAIN, &["a", "b"], 2, 1);
    let mut w = train::pickle::Writer::new();
    w.global("builtins", "eval");
    w.str("print(1)");
    w.reduce();
    let file = f.path("evil.pt");
    // With this toolkit's record, so that `--resume` and `export` get as far as the pickle.
    let info = train::checkpoint::ModelInfo::new("resnet18", vec!["a".into(), "b".into()], Default::default(), 1, None);
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&file).unwrap());
        zip.start_file("archive/data.pkl", zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(&w.finish()).unwrap();
        zip.start_file("archive/toolkit.json", zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(&serde_json::to_vec(&info).unwrap()).unwrap();
        zip.finish().unwrap();
    }
    let (data, out) = (&f.data, |n: &str| f.path(n));
    let runs = [
        f.command().arg(data).arg("--weights").arg(&file).args(["--device", "cpu", "--out"]).arg(out("o1")).output(),
        f.command().arg(data).arg("--resume").arg(&file).args(["--device", "cpu", "--out"]).arg(out("o2")).output(),
        f.command().args(["export", "--weights"]).arg(&file).arg("--out").arg(out("m.onnx")).output(),
    ];
    for run in runs {
        let run = run.unwrap();
        let err = stderr(&run);
        assert_eq!(run.status.code(), Some(1), "{err}");
        let last = err.lines().last().unwrap();
        assert!(last.starts_with("error: ") && last.contains("evil.pt") && last.contains("builtins.eval"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// `--resume` alone continues in the checkpoint's folder with the checkpoint's data, reports
/// this process's time beside the whole training's, and warns when the data changed.
#[test]
fn resume_continues_in_its_own_folder_and_says_when_the_data_changed() {
    let (f, TrainedRun { out: run, .. }) = TrainedRun::new(TRAIN, &["a", "b"], &["--no-export"]);
    let elsewhere = f.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let resumed = f
        .command()
        .current_dir(&elsewhere)
        .arg("--resume")
        .arg(run.join("last.pt"))
        .args(["--epochs", "2", "--device", "cpu", "--no-export"])
        .output()
        .unwrap();
    let err = stderr(&resumed);
    assert!(resumed.status.success(), "{err}");
    assert_eq!(metrics(&run).len(), 4, "the checkpoint's folder holds both epochs");
    assert!(!elsewhere.join("models").exists(), "nothing written into the current folder");
    // The result line, on stdout, counts the time of both runs.
    let result = String::from_utf8_lossy(&resumed.stdout);
    assert!(result.contains("Training complete in 0m ") && result.contains("over all runs"), "{result}");
    assert!(!err.contains("data has changed"), "{err}");
    let s = summary(&run);
    assert!(s["total_seconds"].as_f64().unwrap() > s["process_seconds"].as_f64().unwrap());

    // Another folder with the same class names but other files: accepted, with a warning.
    let other = f.path("other");
    image_folder(&other, &["a", "b"], 5, 2);
    let changed = f
        .command()
        .arg(&other)
        .arg("--resume")
        .arg(run.join("last.pt"))
        .args(["--epochs", "3", "--device", "cpu", "--no-export"])
        .output()
        .unwrap();
    let err = stderr(&changed);
    assert!(changed.status.success(), "{err}");
    assert!(err.contains("warning: the data has changed since the checkpoint: 12 images then, 14 now"), "{err}");
}

/// Roboflow's layout (train/ + valid/ + test/), tiny images, and the augmentation options:
/// the validation folder is named and the unused one reported, the small images warned about,
/// the settings recorded (without the optimiser's unused ones), and every picture written and
/// listed — model.onnx and val_predictions.png included.
#[test]
fn layouts_augmentation_and_pictures() {
    let f = TrainFixture::with_data(TRAIN, |tmp| {
        let data = tmp.join("digits");
        for (split, n) in [("train", 6), ("valid", 2), ("test", 2)] {
            for (c, class) in ["chiffre é 7", "кот"].iter().enumerate() {
                let dir = data.join(split).join(class);
                std::fs::create_dir_all(&dir).unwrap();
                for i in 0..n {
                    let img = image::GrayImage::from_fn(8, 8, |x, y| {
                        image::Luma([((x + y + i) * 20 % 256) as u8 ^ (c as u8 * 200)])
                    });
                    img.save(dir.join(format!("{i}.png"))).unwrap();
                }
            }
        }
        data
    });
    let data = &f.data;
    let args = ["--no-flip", "--crop-scale", "0.5", "1", "--crop-ratio", "1", "1", "--quantize", "int8", "--force"];
    let TrainedRun { out, stderr: err, .. } = f.train("out", &args);
    let valid = data.join("valid");
    assert!(err.contains(&format!("validation: {}", valid.display())), "{err}");
    assert!(err.contains(&format!("not used: {}", data.join("test").display())), "{err}");
    assert_eq!(err.matches("far smaller").count(), 1, "{err}");
    let s = summary(&out);
    assert_eq!(s["validation_folder"], serde_json::json!(valid));
    let h = &s["hyperparameters"];
    assert_eq!(h["augment"], serde_json::json!({"scale": [0.5, 1.0], "ratio": [1.0, 1.0], "flip": false}));
    assert!(h["optim"].get("betas").is_none() && h["optim"].get("eps").is_none(), "{h}");
    assert!(h["optim"].get("momentum").is_some());
    assert!(h["amp"] == false && h.get("amp_dtype").is_none(), "{h}");
    let outputs: Vec<String> =
        s["outputs"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    assert!(err.contains("int8 gate"), "the end-of-training export made the int8 model too: {err}");
    for f in ["model.onnx", "model.int8.onnx", "val_predictions.png", "train_batch.png"] {
        assert!(outputs.iter().any(|p| p.ends_with(f)), "{f} not listed: {outputs:?}");
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(image::open(out.join("val_predictions.png")).unwrap().width() > 100);
    let bad = f.quick("bad", &["--crop-scale", "0", "2"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("--crop-scale 0 2"), "{}", stderr(&bad));
}

/// `--channels-last` stores kernels and batches NHWC: the first epoch computes what the default
/// layout computes up to the order of floating-point sums (that the layouts agree op by op is
/// `model::tests::channels_last_computes_the_same`; training from random weights on eight
/// images then magnifies the rounding, as it does in PyTorch), best.pt is an ordinary
/// contiguous state dict, the export verifies itself, and the setting is recorded.
#[test]
fn channels_last_trains_like_the_default_layout() {
    let (f, TrainedRun { out: plain, .. }) = TrainedRun::new(TRAIN, &["a", "b"], &[]);
    let nhwc = f.train("nhwc", &["--channels-last"]).out;
    for (a, b) in metrics(&plain).iter().zip(&metrics(&nhwc)) {
        let (la, lb): (f64, f64) = (a[2].parse().unwrap(), b[2].parse().unwrap());
        assert_eq!(a[..2], b[..2]);
        assert!((la - lb).abs() <= 0.02 * la.abs().max(1.0), "loss {la} vs {lb} ({a:?} vs {b:?})");
    }
    assert_eq!(summary(&nhwc)["hyperparameters"]["channels_last"], true);
    let (x, y) = (
        train::weights::read_state_dict(&plain.join("best.pt")).unwrap(),
        train::weights::read_state_dict(&nhwc.join("best.pt")).unwrap(),
    );
    let w = "layer1.0.conv1.weight";
    assert_eq!(x[w].size(), y[w].size());
    assert!(y[w].is_contiguous(), "saved as an ordinary contiguous tensor");
    let diff = (&x[w] - &y[w]).abs().max().double_value(&[]);
    assert!(diff < 1e-3, "{w} differs by {diff}");
    assert!(nhwc.join("model.onnx").exists(), "the export verified itself against the tch model");
}

/// What the library says while preparing an export.
#[derive(Default)]
struct Notes(Vec<String>);

impl train::Observer for Notes {
    fn info(&mut self, msg: &str) {
        self.0.push(msg.to_string());
    }
    fn warn(&mut self, msg: &str) {
        self.0.push(format!("warning: {msg}"));
    }
}

/// `train export --quantize int8 --data ROOT` on a data set without a validation folder gates
/// the int8 model on the run's own validation images: ROOT split with the run's
/// `--val-fraction` and `--seed` (read from its last.pt, else its summary.json), not with the
/// defaults, which would put training images among them; with neither file, the defaults, and
/// a note that says so.
#[test]
fn export_gates_on_the_runs_own_validation_split() {
    let classes = ["red", "green", "blue"];
    let f = TrainFixture::with_data(TRAIN, |tmp| {
        let data = tmp.join("flat");
        common::class_folders(&data, &classes, 6);
        data
    });
    let out = f.train("out", &["--val-fraction", "0.5", "--seed", "3", "--no-export"]).out;
    assert_eq!(summary(&out)["val_counts"], serde_json::json!([3, 3, 3]));

    let export = f
        .command()
        .args(["export", "--weights"])
        .arg(out.join("best.pt"))
        .arg("--out")
        .arg(out.join("model.onnx"))
        .arg("--data")
        .arg(&f.data)
        .args(["--quantize", "int8", "--force"])
        .output()
        .unwrap();
    let err = stderr(&export);
    assert!(export.status.success(), "{err}");
    let note = format!("validation split from {}: 50% of each class, seed 3", out.join("last.pt").display());
    assert!(err.contains(&note), "{err}");
    let int8 = infer::Classifier::builder(out.join("model.int8.onnx"))
        .execution_provider(infer::ExecutionProvider::Cpu)
        .build()
        .unwrap();
    // Half of each class: 9 images (the defaults, a fifth of each class, would give 3).
    assert_eq!(int8.metadata().quantization.as_ref().unwrap().validation_images, 9);

    // The gate's images are exactly the run's validation images, whichever record gives them.
    let ok = |_: &Path| Ok(train::dataset::FileNotes::default());
    let scan = |val_fraction, seed| {
        let opts = train::dataset::ScanOptions { val_fraction, seed, val_dir: None, check: &ok };
        let ds = train::dataset::scan(&f.data, &opts).unwrap();
        ds.val.into_iter().map(|s| (s.path, s.label)).collect::<Vec<_>>()
    };
    let request = train::export::ExportRequest {
        weights: out.join("best.pt"),
        out: out.join("model.onnx"),
        data: Some(f.data.clone()),
        quantize: Some(train::QuantizeSettings::default()),
        ..Default::default()
    };
    let gate_images = |expect_note: &str| {
        let mut notes = Notes::default();
        let opts = request.options(&mut notes).unwrap();
        assert!(notes.0.iter().any(|n| n.contains(expect_note)), "{:?}", notes.0);
        opts.quantize.unwrap().validation
    };
    let run_split = scan(0.5, 3);
    assert_ne!(run_split, scan(0.5, 0), "the seed matters");
    assert_eq!(gate_images("last.pt: 50% of each class, seed 3"), run_split);
    std::fs::remove_file(out.join("last.pt")).unwrap();
    assert_eq!(gate_images("summary.json: 50% of each class, seed 3"), run_split);
    std::fs::remove_file(out.join("summary.json")).unwrap();
    assert_eq!(gate_images("20% of each class, seed 0 (the defaults: no last.pt or summary.json"), scan(0.2, 0));
}

/// A JPEG cut short is decoded as far as it goes and kept, named in a warning and in
/// summary.json; `--skip-incomplete` leaves it out like an unreadable file.
#[test]
fn incomplete_jpegs_are_kept_and_named_unless_skipped() {
    let f = TrainFixture::new(TRAIN, &["cats", "dogs"], 4, 2);
    let mut jpg = Vec::new();
    colour_image(RED, 120, 90).write_to(&mut std::io::Cursor::new(&mut jpg), image::ImageFormat::Jpeg).unwrap();
    std::fs::write(f.data.join("train/cats/cut.jpg"), &jpg[..jpg.len() * 2 / 3]).unwrap();
    std::fs::write(f.data.join("train/dogs/sketch.svg"), b"<svg/>").unwrap();

    let TrainedRun { out, stderr: err, .. } = f.train("kept", &["--no-export"]);
    let warning: Vec<&str> = err.lines().filter(|l| l.contains("end before their image data")).collect();
    assert_eq!(warning.len(), 1, "{err}");
    assert!(warning[0].starts_with("warning: 1 file(s)") && warning[0].contains("cut.jpg"), "{err}");
    let s = summary(&out);
    assert_eq!(s["train_counts"], serde_json::json!([5, 4]));
    let listed = s["incomplete_files"].as_array().unwrap();
    assert!(listed.len() == 1 && listed[0].as_str().unwrap().ends_with("cut.jpg"), "{s}");
    // What was not read is counted by kind, with names.
    assert!(err.contains("1 non-image file(s) ignored: 1 .svg (vector images are not read)"), "{err}");
    assert_eq!(s["ignored_by_extension"][".svg"]["count"], 1);
    assert!(s["ignored_by_extension"][".svg"]["examples"][0].as_str().unwrap().ends_with("sketch.svg"));

    let TrainedRun { out, stderr: err, .. } = f.train("skipped", &["--no-export", "--skip-incomplete"]);
    assert!(err.contains("skipped ") && err.contains("cut.jpg: incomplete file"), "{err}");
    let s = summary(&out);
    assert_eq!(s["train_counts"], serde_json::json!([4, 4]));
    assert_eq!(s["incomplete_files"], serde_json::json!([]));
    assert_eq!(s["hyperparameters"]["skip_incomplete"], true);
}

/// Drawings on transparent backgrounds: without `--background` they become uniformly black
/// (PIL's convert("RGB")), which the scan says, naming some; with `--background white` the
/// model's contract carries the colour and the inference library composites as training did.
#[test]
fn transparent_drawings_are_noticed_and_composited_on_request() {
    let f = TrainFixture::with_data(TRAIN, |tmp| {
        let data = tmp.join("drawings");
        for (c, class) in ["circle", "cross"].iter().enumerate() {
            let dir = data.join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..5u32 {
                let img = image::RgbaImage::from_fn(48 + i, 40, |x, y| {
                    let (dx, dy) = (x as i32 - 24, y as i32 - 20);
                    let on = if c == 0 { (dx * dx + dy * dy - 144).abs() < 40 } else { dx.abs() < 3 || dy.abs() < 3 };
                    // Black ink on black, transparent paper: what many drawing tools save.
                    image::Rgba([0, 0, 0, if on { 255 } else { 0 }])
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
        data
    });
    let TrainedRun { stderr: err, .. } = f.train("dropped", &["--no-export", "--val-fraction", "0.4"]);
    let warning: Vec<&str> = err.lines().filter(|l| l.contains("nearly one colour once their alpha")).collect();
    assert_eq!(warning.len(), 1, "{err}");
    assert!(warning[0].starts_with("warning: 10 of the 10 images with transparency"), "{}", warning[0]);
    assert!(warning[0].contains(".png") && warning[0].contains("--background white"), "{}", warning[0]);
    assert!(err.contains("10 with transparency (alpha dropped)"), "{err}");

    let TrainedRun { out, stderr: err, .. } = f.train("white", &["--background", "white", "--val-fraction", "0.4"]);
    assert!(!err.contains("nearly one colour"), "{err}");
    assert!(err.contains("10 with transparency (composited onto #ffffff)"), "{err}");
    assert_eq!(summary(&out)["hyperparameters"]["background"], "#ffffff");
    let c = infer::Classifier::builder(out.join("model.onnx"))
        .execution_provider(infer::ExecutionProvider::Cpu)
        .top_k(2)
        .build()
        .unwrap();
    assert_eq!(c.metadata().preprocess.background, Some(infer::Background::WHITE));
    let file = f.data.join("cross/0.png");
    let decoded = infer::decode::decode_file_with_status(&file, Default::default()).unwrap();
    let composited = c.classify(&decoded.clone().flatten(Some(infer::Background::WHITE))).unwrap();
    let dropped = c.classify(&decoded.flatten(None)).unwrap();
    let from_file = c.classify_files(vec![file]).pop().unwrap().result.unwrap();
    assert_eq!(from_file.top_k, composited.top_k, "the library composites as the contract says");
    assert_ne!(from_file.top_k, dropped.top_k);
}
