//! `doctor`: what this machine offers inference, in a few lines — ONNX Runtime's library and
//! version, the NVIDIA driver and devices, the CUDA libraries and where each was found, how
//! every library the CUDA provider needs resolves, and which execution providers can be
//! created (and why not). What a user runs first on a new GPU machine; what a bug report needs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::cuda::{self, Found};
use crate::provider::ExecutionProvider;

/// One section's lines, `(label, text)`.
pub type Lines = Vec<(String, String)>;

/// What `doctor` found.
pub struct Report {
    pub lines: Lines,
    /// Whether the CPU provider works.
    pub cpu: Result<(), String>,
    /// Whether the CUDA provider can be created on device 0.
    pub cuda: Result<(), String>,
    /// Every library the CUDA provider needs, except the driver's, resolves (`None`: this
    /// ONNX Runtime has no CUDA provider library to check).
    pub cuda_libraries: Option<Result<(), String>>,
}

impl Report {
    /// Whether what was asked for works: the CPU for `cpu`, CUDA for `cuda`, either for `auto`.
    pub fn works(&self, asked: ExecutionProvider) -> bool {
        match asked {
            ExecutionProvider::Cpu => self.cpu.is_ok(),
            ExecutionProvider::Cuda(_) => self.cuda.is_ok(),
            ExecutionProvider::Auto => self.cpu.is_ok() || self.cuda.is_ok(),
        }
    }

    /// Aligned `label  text` lines.
    pub fn render(lines: &Lines) -> String {
        let w = lines.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (label, text) in lines {
            let _ = writeln!(out, "{label:<w$}  {text}");
        }
        out
    }
}

fn push(lines: &mut Lines, label: &str, text: impl Into<String>) {
    lines.push((label.to_string(), text.into()));
}

fn verdict(r: &Result<(), String>) -> String {
    match r {
        Ok(()) => "yes".into(),
        Err(e) => format!("no: {e}"),
    }
}

/// How each `DT_NEEDED` library of the CUDA provider resolves through the search `infer`
/// performs (the preloaded NVIDIA libraries, then the system's path); the driver's
/// `libcuda.so.1` is reported, not required.
fn provider_needs(provider: &Path, lines: &mut Lines) -> Result<(), String> {
    let needed = crate::elf::needed_libraries(provider).map_err(|e| format!("{}: {e}", provider.display()))?;
    let preloaded = cuda::preload();
    let mut unresolved = Vec::new();
    for name in &needed {
        let how = if name == "libcuda.so.1" {
            "the NVIDIA driver's (not required here)".to_string()
        } else if let Some(l) = preloaded.libraries.iter().find(|l| l.name == name) {
            match &l.found {
                Found::File(p) => format!("preloaded from {}", p.display()),
                Found::System => "preloaded from the system's library path".into(),
                Found::Missing(why) => {
                    unresolved.push(name.clone());
                    format!("NOT FOUND ({why})")
                }
            }
        } else {
            // SAFETY: the system libraries named here (libc, libstdc++, ...) are already
            // loaded by this process or load without side effects.
            match unsafe { libloading::os::unix::Library::open(Some(name), libloading::os::unix::RTLD_NOW) } {
                Ok(_) => "the system's library path".into(),
                Err(e) => {
                    unresolved.push(name.clone());
                    format!("NOT FOUND ({e})")
                }
            }
        };
        push(lines, &format!("  {name}"), how);
    }
    match unresolved.len() {
        0 => Ok(()),
        _ => Err(format!("unresolved: {}", unresolved.join(", "))),
    }
}

fn runtime_lines(lines: &mut Lines) -> Result<(), String> {
    crate::runtime::environment().map_err(|e| e.to_string())?;
    let lib = crate::runtime::loaded_library().unwrap_or_default();
    let real = lib.canonicalize().unwrap_or_else(|_| lib.clone());
    let version = crate::runtime::version().unwrap_or_else(|| "unknown version".into());
    let shown =
        if real == lib { lib.display().to_string() } else { format!("{} -> {}", lib.display(), real.display()) };
    push(lines, "ONNX Runtime", format!("{version}, {shown}"));
    Ok(())
}

fn driver_lines(lines: &mut Lines) {
    match cuda::driver() {
        Ok(d) => {
            let (major, minor) = d.cuda_version;
            push(lines, "NVIDIA driver", format!("supports CUDA {major}.{minor}; {} device(s)", d.devices.len()));
            for (i, name) in d.devices.iter().enumerate() {
                push(lines, &format!("  cuda:{i}"), name.clone());
            }
        }
        Err(e) => push(lines, "NVIDIA driver", e),
    }
}

fn library_lines(lines: &mut Lines) {
    let preloaded = cuda::preload();
    push(lines, "CUDA libraries", "(preloaded for the CUDA provider, as onnxruntime.preload_dlls() does)");
    for l in &preloaded.libraries {
        let how = match &l.found {
            Found::File(p) => p.display().to_string(),
            Found::System => "the system's library path".into(),
            Found::Missing(why) if l.required => format!("NOT FOUND ({why})"),
            Found::Missing(_) => "not found (optional)".into(),
        };
        push(lines, &format!("  {}", l.name), how);
        if let (Found::File(p), true) = (&l.found, l.name.starts_with("libcudnn.so")) {
            push(lines, "  cuDNN's own parts", cudnn_parts(p));
        }
    }
}

/// cuDNN 9 loads its parts (libcudnn_ops, _cnn, ...) from its own folder when first used:
/// whether each loads (with the dependencies they need) from there.
fn cudnn_parts(cudnn: &Path) -> String {
    let Some(dir) = cudnn.parent() else { return String::new() };
    let mut parts: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    parts.retain(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libcudnn_") && n.contains(".so"))
    });
    parts.sort();
    let mut failed = Vec::new();
    for p in &parts {
        // SAFETY: cuDNN's libraries only set up their own state when loaded.
        if let Err(e) = unsafe { libloading::os::unix::Library::open(Some(p), libloading::os::unix::RTLD_LAZY) } {
            failed.push(e.to_string());
        }
    }
    match failed.first() {
        None => format!("all {} load from {}", parts.len(), dir.display()),
        Some(e) => format!("{} of {} do NOT load: {e}", failed.len(), parts.len()),
    }
}

/// Gathers the report; `model` (optional) is loaded on each provider as the real test.
pub fn report(model: Option<&Path>) -> Report {
    let mut lines = Lines::new();
    push(&mut lines, "infer", env!("CARGO_PKG_VERSION"));
    if let Err(e) = runtime_lines(&mut lines) {
        push(&mut lines, "ONNX Runtime", format!("NOT LOADED: {e}"));
        let cpu = Err(e.clone());
        return Report { lines, cpu, cuda: Err(e), cuda_libraries: None };
    }
    driver_lines(&mut lines);
    let build = cuda::build_problem();
    let provider = crate::runtime::loaded_library().and_then(|l| {
        let p = l.parent()?.join(cuda::PROVIDER_LIBRARIES[1]);
        p.exists().then_some(p)
    });
    push(&mut lines, "CUDA provider", build.clone().unwrap_or_else(|| "present".into()));
    let cuda_libraries = provider.map(|p| {
        library_lines(&mut lines);
        push(&mut lines, "CUDA provider needs", format!("(the DT_NEEDED entries of {})", p.display()));
        let r = provider_needs(&p, &mut lines);
        let summary = match &r {
            Ok(()) => "every library resolves through infer's search (libcuda.so.1 comes with the driver)".into(),
            Err(e) => e.clone(),
        };
        push(&mut lines, "  result", summary);
        r
    });
    let cpu = crate::provider::check(ExecutionProvider::Cpu, model);
    let cuda = crate::provider::check(ExecutionProvider::Cuda(0), model);
    push(&mut lines, "execution providers", if model.is_some() { "(each loading the model)" } else { "" });
    push(&mut lines, "  cpu", verdict(&cpu));
    push(&mut lines, "  cuda", verdict(&cuda));
    Report { lines, cpu, cuda, cuda_libraries }
}
