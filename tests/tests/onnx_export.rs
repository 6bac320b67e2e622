//! The exported model.onnx: parity with libtorch at several batch sizes, metadata read back
//! through ONNX Runtime, agreement with torchvision, the ONNX checker, and clear failures.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use infer::{Classifier, ExecutionProvider};
use tch::{Device, Tensor};
use toolkit_tests::{make_weights, max_abs_diff, model_inputs, read_f32, run_python, write_f32};
use train::arch::by_name;
use train::checkpoint::{save_best, ModelInfo};
use train::export::{export_checkpoint, ExportOptions, MAX_LOGIT_DIFF};
use train::model::ResNet;
use train::weights::read_state_dict;

fn classes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("class {i}")).collect()
}

/// A best.pt of `arch` with `n` classes, from torchvision-made weights with trained-like statistics.
fn best_pt(dir: &Path, arch: &str, n: usize) -> (std::path::PathBuf, ResNet) {
    let w =
        make_weights(dir, &format!("{arch}_init.pth"), &["--arch", arch, "--classes", &n.to_string(), "--seed", "21"]);
    let model = ResNet::new(by_name(arch).unwrap(), n as i64, Device::Cpu);
    model.load_state(&read_state_dict(&w).unwrap(), false).unwrap();
    let best = dir.join(format!("{arch}_best.pt"));
    save_best(&best, &model, &ModelInfo::new(arch, classes(n), Default::default(), 7, Some(0.875))).unwrap();
    (best, model)
}

fn tch_logits(model: &ResNet, input: &[f32]) -> Vec<f32> {
    let n = (input.len() / (3 * 224 * 224)) as i64;
    let x = Tensor::from_slice(input).view([n, 3, 224, 224]);
    Vec::<f32>::try_from(tch::no_grad(|| model.forward(&x, false)).flatten(0, -1)).unwrap()
}

fn argmax(rows: &[f32], k: usize) -> Vec<usize> {
    rows.chunks(k).map(|r| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0).collect()
}

#[test]
fn onnx_runtime_matches_libtorch_at_batch_1_3_and_32() {
    let dir = tempfile::tempdir().unwrap();
    let (best, model) = best_pt(dir.path(), "resnet18", 5);
    let onnx = dir.path().join("model.onnx");
    let report = export_checkpoint(&best, &onnx, &ExportOptions::default()).unwrap();
    assert!(!report.real_images);
    let classifier = Classifier::builder(&onnx).execution_provider(ExecutionProvider::Cpu).build().unwrap();
    let inputs = model_inputs(32);
    for batch in [1usize, 3, 32] {
        let input = &inputs[..batch * 3 * 224 * 224];
        let (ours, theirs) = (classifier.run(input).unwrap(), tch_logits(&model, input));
        let diff = max_abs_diff(&ours, &theirs);
        println!("resnet18 batch {batch}: max |logit diff| {diff:e}");
        assert!(diff <= MAX_LOGIT_DIFF, "batch {batch}: {diff}");
        assert_eq!(argmax(&ours, 5), argmax(&theirs, 5));
    }
}

#[test]
fn deeper_architectures_export_from_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = model_inputs(3);
    for arch in ["resnet34", "resnet50"] {
        let (best, model) = best_pt(dir.path(), arch, 3);
        let onnx = dir.path().join(format!("{arch}.onnx"));
        let report = export_checkpoint(&best, &onnx, &ExportOptions::default()).unwrap();
        let classifier = Classifier::builder(&onnx).execution_provider(ExecutionProvider::Cpu).build().unwrap();
        let diff = max_abs_diff(&classifier.run(&inputs).unwrap(), &tch_logits(&model, &inputs));
        println!("{arch}: max |logit diff| {diff:e} ({} bytes)", report.bytes);
        assert!(diff <= MAX_LOGIT_DIFF, "{arch}: {diff}");
        assert_eq!(classifier.metadata().arch.as_deref(), Some(arch));
    }
}

#[test]
fn metadata_round_trips_and_torchvision_agrees_and_the_checker_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (best, _) = best_pt(dir.path(), "resnet18", 4);
    let onnx = dir.path().join("model.onnx");
    let opts = ExportOptions { probabilities: true, ..Default::default() };
    export_checkpoint(&best, &onnx, &opts).unwrap();

    let classifier = Classifier::builder(&onnx).execution_provider(ExecutionProvider::Cpu).build().unwrap();
    let meta = classifier.metadata();
    assert_eq!(meta.classes, classes(4));
    assert!(!meta.classes_from_defaults);
    assert_eq!(meta.preprocess, infer::PreprocessConfig::default());
    assert_eq!(meta.arch.as_deref(), Some("resnet18"));
    assert_eq!(meta.best_val_acc, Some(0.875));
    assert_eq!(meta.epoch, Some(7));
    assert_eq!(meta.toolkit.as_deref(), Some(train::checkpoint::TOOLKIT_NAME));
    assert_eq!(meta.toolkit_version.as_deref(), Some(env!("CARGO_PKG_VERSION")));

    // torchvision's resnet18 with best.pt against ONNX Runtime on the same input.
    let input = model_inputs(2);
    let tmp_in = dir.path().join("in.f32");
    let tmp_out = dir.path().join("out.f32");
    write_f32(&tmp_in, &input);
    let args: Vec<&OsStr> = vec![
        best.as_os_str(),
        tmp_in.as_os_str(),
        tmp_out.as_os_str(),
        OsStr::new("--classes"),
        OsStr::new("4"),
        OsStr::new("--batch"),
        OsStr::new("2"),
    ];
    run_python("torchvision_forward.py", &args);
    let diff = max_abs_diff(&classifier.run(&input).unwrap(), &read_f32(&tmp_out));
    println!("torchvision vs ONNX Runtime: max |logit diff| {diff:e}");
    assert!(diff <= 1e-4, "{diff}");

    let checked = run_python("onnx_check.py", &[onnx.as_os_str()]);
    assert!(checked.contains("ir_version 8, opset [17]"), "{checked}");
}

#[test]
fn failed_exports_say_why_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    let opts = ExportOptions::default();
    let message = |w: &Path, o: &ExportOptions| export_checkpoint(w, &out, o).unwrap_err().to_string();

    let missing = message(&dir.path().join("nope.pt"), &opts);
    assert!(missing.contains("nope.pt: weights file not found"), "{missing}");

    let (best, _) = best_pt(dir.path(), "resnet18", 2);
    let bytes = std::fs::read(&best).unwrap();
    let truncated = dir.path().join("truncated.pt");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let msg = message(&truncated, &opts);
    assert!(msg.contains("truncated.pt") && !msg.contains('\n'), "{msg}");

    // Asking for another architecture than the checkpoint holds.
    let other = ExportOptions { arch: Some("resnet34".into()), ..Default::default() };
    let msg = message(&best, &other);
    assert!(msg.contains("holds a resnet18 model, not resnet34"), "{msg}");

    // A checkpoint whose record claims another architecture than its weights.
    let (_, model18) = best_pt(dir.path(), "resnet18", 2);
    let lying = dir.path().join("lying.pt");
    save_best(&lying, &model18, &ModelInfo::new("resnet34", classes(2), Default::default(), 1, None)).unwrap();
    let msg = message(&lying, &opts);
    assert!(
        msg.contains("weights do not fit resnet34") && msg.contains("missing keys: layer1.2.conv1.weight"),
        "{msg}"
    );

    // A torchvision state dict needs --arch and --classes.
    let plain = make_weights(dir.path(), "plain.pth", &["--classes", "3"]);
    let msg = message(&plain, &opts);
    assert!(msg.contains("pass --arch and --classes"), "{msg}");
    let named = ExportOptions { arch: Some("resnet18".into()), classes: Some(classes(3)), ..Default::default() };
    export_checkpoint(&plain, &out, &named).unwrap();
    assert!(out.is_file());

    // Failures leave an existing model.onnx untouched and no temporary files.
    let before = std::fs::read(&out).unwrap();
    assert!(export_checkpoint(&truncated, &out, &opts).is_err());
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let stray = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(stray, 0);
}

#[test]
fn one_classifier_serves_several_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (best, _) = best_pt(dir.path(), "resnet18", 3);
    let onnx = dir.path().join("model.onnx");
    export_checkpoint(&best, &onnx, &ExportOptions::default()).unwrap();
    let classifier =
        Arc::new(Classifier::builder(&onnx).execution_provider(ExecutionProvider::Cpu).top_k(3).build().unwrap());
    let images: Vec<image::RgbImage> = (0..4)
        .map(|i| {
            image::RgbImage::from_fn(80 + i * 10, 60, |x, y| image::Rgb([(x * 3) as u8, (y * 4 + i * 50) as u8, 90]))
        })
        .collect();
    let expected: Vec<_> = images.iter().map(|img| classifier.classify(img).unwrap()).collect();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (c, imgs) = (Arc::clone(&classifier), images.clone());
            std::thread::spawn(move || (0..3).map(|_| c.classify(&imgs[t]).unwrap()).collect::<Vec<_>>())
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        for p in h.join().unwrap() {
            assert_eq!(p.class_index, expected[t].class_index);
            assert!((p.confidence - expected[t].confidence).abs() < 1e-5);
            assert_eq!(p.top_k.len(), 3);
        }
    }
}
