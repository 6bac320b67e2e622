//! The `infer` library as an embedding application uses it.

use test_support as common;

use common::*;
use infer::{Classifier, ExecutionProvider, InferError, ItemError};

#[test]
fn paths_folders_and_decoded_images() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let c =
        Classifier::builder(&model).execution_provider(ExecutionProvider::Cpu).batch_size(2).top_k(3).build().unwrap();
    assert_eq!(c.provider(), "CPUExecutionProvider");
    assert_eq!(c.metadata().classes, ["red", "green", "blue"]);

    let dir = tmp.path().join("d");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    colour_image(RED, 40, 30).save(dir.join("a.png")).unwrap();
    std::fs::write(dir.join("b.jpg"), b"text").unwrap();
    colour_image(BLUE, 30, 40).save(dir.join("sub/c.png")).unwrap();
    let missing = tmp.path().join("missing.png");
    let green = tmp.path().join("green.png");
    colour_image(GREEN, 20, 20).save(&green).unwrap();

    let results = c.classify_paths(&[dir.clone(), missing.clone(), green.clone()]);
    let summary: Vec<(String, Result<String, String>)> = results
        .iter()
        .map(|r| {
            let name = r.path.file_name().unwrap().to_string_lossy().into_owned();
            (name, r.result.as_ref().map(|p| p.label.clone()).map_err(|_| r.error_line().unwrap()))
        })
        .collect();
    assert_eq!(summary.len(), 5);
    assert_eq!(summary[0], ("a.png".into(), Ok("red".into())));
    assert_eq!(summary[1].0, "b.jpg");
    assert!(summary[1].1.as_ref().unwrap_err().contains("b.jpg: not an image"));
    assert_eq!(summary[2], ("c.png".into(), Ok("blue".into())));
    assert!(summary[3].1.as_ref().unwrap_err().ends_with("missing.png: no such file or folder"));
    assert_eq!(summary[4], ("green.png".into(), Ok("green".into())));
    let p = results[0].result.as_ref().unwrap();
    assert_eq!(p.top_k.len(), 3);
    assert!((p.top_k.iter().map(|s| s.probability).sum::<f32>() - 1.0).abs() < 1e-5);
    let json = serde_json::to_value(&results[0]).unwrap();
    assert_eq!(json["label"], "red");

    // Decoded images, one and several.
    assert_eq!(c.classify(&colour_image(GREEN, 50, 50)).unwrap().label, "green");
    let many = c
        .classify_images(&[colour_image(BLUE, 30, 30), image::RgbImage::new(0, 0), colour_image(RED, 30, 30)])
        .unwrap();
    assert_eq!(many[0].as_ref().unwrap().label, "blue");
    assert!(matches!(many[1], Err(ItemError::Preprocess(_))));
    assert_eq!(many[2].as_ref().unwrap().label, "red");

    // Raw outputs, and input of the wrong size.
    let input = c.preprocess(&colour_image(RED, 30, 30)).unwrap();
    assert_eq!(c.run(&input).unwrap().len(), 3);
    assert!(matches!(c.run(&input[..100]), Err(InferError::BatchShape { .. })));
}

#[test]
fn strict_cuda_is_an_error_and_auto_falls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    // This workplace's ONNX Runtime has no CUDA provider (and no GPU): strict CUDA must fail...
    if let Err(e) = Classifier::builder(&model).execution_provider(ExecutionProvider::Cuda(0)).build() {
        assert!(matches!(e, InferError::Provider { .. }), "{e}");
        // ...and auto then runs on the CPU and says why.
        let c = Classifier::builder(&model).build().unwrap();
        assert_eq!(c.provider(), "CPUExecutionProvider");
        assert!(c.provider_note().unwrap().starts_with("CUDA not used: "));
    }
}
