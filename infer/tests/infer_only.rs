//! Deployment without PyTorch: `scripts/setup.sh --infer-only` installs ONNX Runtime and nothing
//! of PyTorch, `infer` depends on no libtorch crate, and the binary classifies with that
//! ONNX Runtime alone.

use std::path::Path;
use std::process::Command;

use test_support::*;

#[test]
fn infer_only_setup_gives_onnx_runtime_and_nothing_of_pytorch() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("checkout");
    std::fs::create_dir_all(repo.join("scripts")).unwrap();
    std::fs::copy(repo_root().join("scripts/setup.sh"), repo.join("scripts/setup.sh")).unwrap();
    let setup = Command::new("bash").arg(repo.join("scripts/setup.sh")).arg("--infer-only").output().unwrap();
    let log = String::from_utf8_lossy(&setup.stderr);
    assert!(setup.status.success(), "{log}");
    assert!(log.contains("ready for infer only"), "{log}");
    let venv = repo.join(".venv");
    let ort = venv.join("onnxruntime/libonnxruntime.so");
    assert!(ort.exists(), "{log}");
    assert!(!venv.join("libtorch").exists() && !repo.join("data/hymenoptera_data").exists(), "{log}");
    let torch = Command::new(venv.join("bin/python")).args(["-c", "import torch"]).output().unwrap();
    assert!(!torch.status.success(), "torch is installed in an infer-only environment");

    // The binary runs on that ONNX Runtime.
    let model = tiny_model(tmp.path(), "good");
    let img = tmp.path().join("red.png");
    colour_image(RED, 40, 30).save(&img).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_infer"))
        .env("ORT_DYLIB_PATH", &ort)
        .args(["--ep", "cpu", "--format", "jsonl", "--model"])
        .arg(&model)
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["label"], "red");
}

/// `cargo build -p infer` builds nothing of libtorch: no crate of the tch family is among its
/// dependencies, whatever its features.
#[test]
fn infer_depends_on_no_libtorch_crate() {
    let root = repo_root();
    let tree = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["tree", "--offline", "-p", "infer", "--all-features", "-e", "normal,build", "--prefix", "none"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&tree.stdout);
    assert!(tree.status.success(), "{}", String::from_utf8_lossy(&tree.stderr));
    assert!(text.lines().count() > 20, "{text}");
    for line in text.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        assert!(!["tch", "torch-sys"].contains(&name), "infer depends on {line}");
    }
    assert!(Path::new(&root).join("infer/Cargo.toml").exists());
}
