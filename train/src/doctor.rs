//! `train doctor`: what this machine offers training — libtorch's version and location, whether
//! its CUDA half is linked, what CUDA and cuDNN it sees and the devices by name — followed by
//! `infer doctor`'s report on ONNX Runtime, which export verification and `infer` use.

use std::path::PathBuf;

use tch::Cuda;

use crate::device::{self, DeviceChoice};
use crate::error::DeviceError;

pub use infer::doctor::Lines;

/// The libtorch libraries this process has mapped, by file name.
fn mapped(name: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.ends_with(name)).map(PathBuf::from)
}

/// libtorch's version, from the `torch` package it belongs to (`torch/version.py` beside
/// `torch/lib/`), when it came from the pip wheel.
fn version(lib: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(lib.parent()?.parent()?.join("version.py")).ok()?;
    let line = text.lines().find(|l| l.starts_with("__version__"))?;
    Some(line.split(['\'', '"']).nth(1)?.to_string())
}

/// The libtorch section, and whether the device asked for is usable.
pub fn libtorch(asked: DeviceChoice) -> (Lines, Result<(), DeviceError>) {
    let mut lines = Lines::new();
    let mut push = |label: &str, text: String| lines.push((label.to_string(), text));
    push("train", env!("CARGO_PKG_VERSION").to_string());
    // Touching libtorch maps its libraries.
    let threads = tch::get_num_threads();
    match mapped("libtorch_cpu.so") {
        Some(lib) => {
            let v = version(&lib).unwrap_or_else(|| "unknown version".into());
            push("libtorch", format!("{v}, {} ({threads} CPU threads)", lib.display()));
        }
        None => push("libtorch", format!("linked statically or not found in this process ({threads} CPU threads)")),
    }
    let cuda_linked = mapped("libtorch_cuda.so");
    push(
        "libtorch_cuda",
        match &cuda_linked {
            Some(p) => format!("linked ({})", p.display()),
            None => "not linked: this build trains on the CPU only".into(),
        },
    );
    let gpus = device::visible_gpus();
    let cuda = if gpus > 0 {
        let cudnn = if Cuda::cudnn_is_available() {
            let v = tch::utils::version_cudnn();
            format!("cuDNN {}.{}.{}", v / 10000, (v / 100) % 100, v % 100)
        } else {
            "no cuDNN".into()
        };
        format!("{gpus} GPU(s) visible, {cudnn}")
    } else if cuda_linked.is_some() {
        match infer::cuda::driver() {
            Ok(_) => "libtorch sees no GPU although the driver does (CUDA version mismatch?)".into(),
            Err(e) => format!("no GPU: {e}"),
        }
    } else {
        "no GPU: CPU-only libtorch".into()
    };
    // The driver's devices are listed by the ONNX Runtime part of the report.
    push("CUDA (libtorch)", cuda);
    let works = match asked {
        DeviceChoice::Cpu | DeviceChoice::Auto => Ok(()),
        DeviceChoice::Cuda(n) if (n as usize) < gpus => Ok(()),
        DeviceChoice::Cuda(index) => Err(DeviceError::NotUsable { index, visible: gpus }),
    };
    (lines, works)
}
