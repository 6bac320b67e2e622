//! `infer doctor` and `train doctor` on this machine: they report ONNX Runtime and libtorch,
//! exit 0 for what works and 1 for what does not, with the reason; and with the
//! `onnxruntime-gpu` wheel's libraries present (`scripts/setup.sh --gpu`), every library the
//! CUDA provider needs except the driver's resolves through `infer`'s own search.

use std::process::{Command, Output};

fn infer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infer")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn gpu_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
}

#[test]
fn doctor_reports_and_exits_by_what_works() {
    let out = infer(&["doctor"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    let version = report.lines().find(|l| l.starts_with("ONNX Runtime")).expect("a runtime line");
    assert!(version.contains("1.3") && version.contains("libonnxruntime.so"), "{version}");
    assert!(report.lines().any(|l| l.trim_start().starts_with("cpu") && l.ends_with("yes")), "{report}");
    let cuda = report.lines().find(|l| l.trim_start().starts_with("cuda ")).expect("a cuda line");
    let out = infer(&["doctor", "--ep", "cuda"]);
    if cuda.ends_with("yes") {
        assert_eq!(out.status.code(), Some(0));
    } else {
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        if !gpu_present() {
            assert!(cuda.contains("no NVIDIA driver (libcuda.so.1"), "{cuda}");
        }
    }
}

/// The check that needs no GPU: it passes where the CUDA provider's library is present and
/// says there is nothing to check where it is not.
#[test]
fn the_cuda_providers_libraries_resolve_through_infers_search() {
    let out = infer(&["doctor", "--libraries"]);
    let report = text(&out);
    if report.contains("CUDA provider needs") {
        assert_eq!(out.status.code(), Some(0), "{report}");
        assert!(report.contains("every library resolves through infer's search"), "{report}");
        for lib in ["libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10", "libcudart.so.13", "libcudnn.so.9"] {
            let line = report.lines().find(|l| l.trim_start().starts_with(lib)).unwrap();
            assert!(!line.contains("NOT FOUND"), "{line}");
        }
        assert!(report.contains("cuDNN's own parts") && report.contains("load from"), "{report}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{report}");
        assert!(report.contains("built without CUDA") && report.contains("setup.sh --gpu"), "{report}");
    }
}
