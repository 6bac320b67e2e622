//! What ONNX Runtime's CUDA provider needs before it can load: the CUDA 13 runtime, cuBLAS(Lt),
//! cuRAND, cuFFT, NVRTC and cuDNN 9 — preloaded from the NVIDIA wheels in the Python
//! environment ONNX Runtime came from (as `onnxruntime.preload_dlls()` does; the dynamic loader
//! never searches there), else from the system's library path — and an NVIDIA driver with a
//! device. Each problem is named: the missing library and where it was looked for, the
//! missing driver, a driver too old, no device.

use std::ffi::{c_char, c_int, c_uint, CStr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};

/// One library the CUDA provider needs, with the NVIDIA wheel folder that ships it.
pub struct CudaLibrary {
    pub name: &'static str,
    /// Under `site-packages/nvidia/`.
    pub package: &'static str,
    /// Whether the provider cannot work without it (NVRTC and cuFFT serve only some operators).
    pub required: bool,
}

/// In load order (cuBLAS needs cuBLASLt), as `onnxruntime.preload_dlls()` has them for CUDA 13.
pub const LIBRARIES: &[CudaLibrary] = &[
    CudaLibrary { name: "libcublasLt.so.13", package: "cu13/lib", required: true },
    CudaLibrary { name: "libcublas.so.13", package: "cu13/lib", required: true },
    CudaLibrary { name: "libnvrtc.so.13", package: "cu13/lib", required: false },
    CudaLibrary { name: "libcurand.so.10", package: "cu13/lib", required: true },
    CudaLibrary { name: "libcufft.so.12", package: "cu13/lib", required: false },
    CudaLibrary { name: "libcudart.so.13", package: "cu13/lib", required: true },
    CudaLibrary { name: "libcudnn.so.9", package: "cudnn/lib", required: true },
];

/// The CUDA major version this ONNX Runtime build needs from the driver.
pub const CUDA_MAJOR: i32 = 13;

/// Where one library was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Loaded from this file (an NVIDIA wheel, or a folder in `INFER_CUDA_LIB_DIRS`).
    File(PathBuf),
    /// Loaded by name through the system's library path.
    System,
    /// Not loadable: why.
    Missing(String),
}

#[derive(Clone, Debug)]
pub struct LibraryStatus {
    pub name: &'static str,
    pub required: bool,
    pub found: Found,
}

/// The outcome of preloading, kept for the process's life (the libraries stay loaded).
#[derive(Debug)]
pub struct Preloaded {
    pub libraries: Vec<LibraryStatus>,
    /// The folders searched before the system's library path, in order.
    pub searched: Vec<PathBuf>,
}

impl Preloaded {
    /// The required libraries that could not be loaded, with the reason, in one line.
    pub fn problem(&self) -> Option<String> {
        let missing: Vec<&LibraryStatus> =
            self.libraries.iter().filter(|l| l.required && matches!(l.found, Found::Missing(_))).collect();
        let first = missing.first()?;
        let Found::Missing(why) = &first.found else { return None };
        let others = match missing.len() {
            1 => String::new(),
            n => {
                format!(" (and {} more: {})", n - 1, missing[1..].iter().map(|l| l.name).collect::<Vec<_>>().join(", "))
            }
        };
        let searched: Vec<String> = self.searched.iter().map(|p| p.display().to_string()).collect();
        let places = if searched.is_empty() { String::new() } else { format!("{}, ", searched.join(", ")) };
        Some(format!(
            "missing library {}{others}: looked in {places}then the system's library path ({why})",
            first.name
        ))
    }
}

/// `site-packages/nvidia` folders to search: beside the onnxruntime package whose library was
/// loaded, and in the project's venv.
fn nvidia_roots(ort_library: Option<&Path>) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    // .../site-packages/onnxruntime/capi/libonnxruntime.so.1.x -> .../site-packages/nvidia
    if let Some(real) = ort_library.and_then(|p| p.canonicalize().ok()) {
        if let Some(site) = real.ancestors().nth(3) {
            roots.push(site.join("nvidia"));
        }
    }
    let venv_lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    if let Ok(entries) = std::fs::read_dir(&venv_lib) {
        let mut found: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("site-packages/nvidia")).collect();
        found.sort();
        roots.extend(found);
    }
    let mut unique: Vec<PathBuf> = Vec::new();
    for r in roots {
        let r = r.canonicalize().unwrap_or(r);
        if r.is_dir() && !unique.contains(&r) {
            unique.push(r);
        }
    }
    unique
}

/// The folders a library is looked for in, before the system's path: `INFER_CUDA_LIB_DIRS`
/// (colon-separated), then its NVIDIA wheel folder under each root.
fn folders_for(lib: &CudaLibrary, roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::env::var_os("INFER_CUDA_LIB_DIRS")
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default();
    out.extend(roots.iter().map(|r| r.join(lib.package)));
    out
}

fn open_global(path: &std::ffi::OsStr) -> Result<Library, String> {
    // SAFETY: loading NVIDIA's libraries runs their initialisers, which only set up their own
    // state; RTLD_GLOBAL lets the provider's own dlopen of the same names find them.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| e.to_string())
}

fn preload_with(ort_library: Option<&Path>) -> Preloaded {
    let roots = nvidia_roots(ort_library);
    let mut libraries = Vec::new();
    let mut searched: Vec<PathBuf> = Vec::new();
    for lib in LIBRARIES {
        let folders = folders_for(lib, &roots);
        for f in &folders {
            if !searched.contains(f) {
                searched.push(f.clone());
            }
        }
        let mut found = None;
        for file in folders.iter().map(|f| f.join(lib.name)).filter(|f| f.is_file()) {
            match open_global(file.as_os_str()) {
                Ok(handle) => {
                    std::mem::forget(handle); // loaded for the process's life
                    found = Some(Found::File(file));
                    break;
                }
                Err(e) => found = Some(Found::Missing(e)),
            }
        }
        let found = match found {
            Some(f @ Found::File(_)) => f,
            earlier => match open_global(lib.name.as_ref()) {
                Ok(handle) => {
                    std::mem::forget(handle);
                    Found::System
                }
                // A copy that exists but does not load says more than "not found".
                Err(e) => earlier.unwrap_or(Found::Missing(e)),
            },
        };
        libraries.push(LibraryStatus { name: lib.name, required: lib.required, found });
    }
    Preloaded { libraries, searched }
}

static PRELOADED: OnceLock<Preloaded> = OnceLock::new();

/// Preloads the CUDA libraries once per process (ONNX Runtime must already be loaded: its
/// location says which Python environment's NVIDIA wheels to use).
pub fn preload() -> &'static Preloaded {
    PRELOADED.get_or_init(|| preload_with(crate::runtime::loaded_library().as_deref()))
}

/// The NVIDIA driver and its devices.
#[derive(Clone, Debug)]
pub struct Driver {
    /// The newest CUDA version the driver supports, as (major, minor).
    pub cuda_version: (i32, i32),
    pub devices: Vec<String>,
}

type CuInit = unsafe extern "C" fn(c_uint) -> c_int;
type CuGetInt = unsafe extern "C" fn(*mut c_int) -> c_int;
type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;

/// Whether an NVIDIA GPU is installed (its kernel driver is loaded): a cheap look at the
/// device files that loads no library. It says whether falling back to the CPU is worth a
/// note; whether CUDA works is [`driver`]'s question.
pub fn gpu_installed() -> bool {
    Path::new("/proc/driver/nvidia/version").exists() || Path::new("/dev/nvidia0").exists()
}

/// Asks the driver (`libcuda.so.1`, through its stable C API) for its CUDA version and devices,
/// once per process: the answer cannot change while it runs, and several checks need it.
pub fn driver() -> Result<Driver, String> {
    static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();
    DRIVER.get_or_init(ask_driver).clone()
}

fn ask_driver() -> Result<Driver, String> {
    let lib = open_global("libcuda.so.1".as_ref())
        .map_err(|_| "no NVIDIA driver (libcuda.so.1 is not on the system's library path)".to_string())?;
    // SAFETY: these are the CUDA driver API's documented signatures, unchanged since CUDA 2.
    unsafe {
        let init: libloading::os::unix::Symbol<CuInit> = lib.get(b"cuInit\0").map_err(|e| e.to_string())?;
        let version: libloading::os::unix::Symbol<CuGetInt> =
            lib.get(b"cuDriverGetVersion\0").map_err(|e| e.to_string())?;
        let count: libloading::os::unix::Symbol<CuGetInt> =
            lib.get(b"cuDeviceGetCount\0").map_err(|e| e.to_string())?;
        let get: libloading::os::unix::Symbol<CuDeviceGet> = lib.get(b"cuDeviceGet\0").map_err(|e| e.to_string())?;
        let name: libloading::os::unix::Symbol<CuDeviceGetName> =
            lib.get(b"cuDeviceGetName\0").map_err(|e| e.to_string())?;
        let mut v = 0;
        version(&mut v);
        let cuda_version = (v / 1000, (v % 1000) / 10);
        match init(0) {
            0 => {}
            100 => return Err("the NVIDIA driver sees no CUDA device".into()),
            code => return Err(format!("the NVIDIA driver failed to start (cuInit error {code})")),
        }
        let mut n = 0;
        count(&mut n);
        let mut devices = Vec::new();
        for i in 0..n {
            let (mut dev, mut buf) = (0, [0 as c_char; 256]);
            if get(&mut dev, i) == 0 && name(buf.as_mut_ptr(), buf.len() as c_int, dev) == 0 {
                devices.push(CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned());
            }
        }
        std::mem::forget(lib);
        if devices.is_empty() {
            return Err("the NVIDIA driver sees no CUDA device".into());
        }
        if cuda_version.0 < CUDA_MAJOR {
            return Err(format!(
                "the NVIDIA driver is too old: it supports CUDA {}.{}, ONNX Runtime's CUDA provider needs {CUDA_MAJOR}",
                cuda_version.0, cuda_version.1
            ));
        }
        Ok(Driver { cuda_version, devices })
    }
}

/// The provider's own library files, which ONNX Runtime looks for beside the library it was
/// loaded from.
pub const PROVIDER_LIBRARIES: [&str; 2] = ["libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"];

/// Whether this ONNX Runtime can have a CUDA provider at all: built with it, and its provider
/// libraries beside the loaded library.
pub fn build_problem() -> Option<String> {
    use ort::ep::ExecutionProvider as _;
    let lib = crate::runtime::loaded_library()?;
    if !ort::ep::CUDA::is_available().unwrap_or(false) {
        return Some(format!(
            "this ONNX Runtime ({}) is built without CUDA; scripts/setup.sh --gpu installs onnxruntime-gpu",
            lib.display()
        ));
    }
    let dir = lib.parent().unwrap_or(Path::new("."));
    let missing = PROVIDER_LIBRARIES.iter().find(|name| !dir.join(name).exists())?;
    Some(format!("{missing} is not beside {} (scripts/setup.sh links it there)", lib.display()))
}

/// Why the CUDA provider cannot be used here, checked before asking ONNX Runtime for it (whose
/// own errors name less): no driver or device, a CPU-only ONNX Runtime or its provider files
/// missing, then the first missing CUDA library.
pub fn problem() -> Option<String> {
    if let Err(e) = driver() {
        return Some(e);
    }
    build_problem().or_else(|| preload().problem())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Libraries in a folder of `INFER_CUDA_LIB_DIRS` are loaded from there; ones that are
    /// nowhere are named with every place looked in.
    #[test]
    fn finds_named_folders_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        // Any loadable library stands in for a CUDA one: the loader only cares about the file.
        let libm = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(libm) = libm else { return };
        std::fs::copy(libm, dir.path().join("libcudart.so.13")).unwrap();
        // SAFETY: tests in this module are the only readers of this variable.
        unsafe { std::env::set_var("INFER_CUDA_LIB_DIRS", dir.path()) };
        let p = preload_with(None);
        unsafe { std::env::remove_var("INFER_CUDA_LIB_DIRS") };
        let cudart = p.libraries.iter().find(|l| l.name == "libcudart.so.13").unwrap();
        assert_eq!(cudart.found, Found::File(dir.path().join("libcudart.so.13")));
        assert_eq!(p.searched[0], dir.path());
        if let Some(problem) = p.problem() {
            assert!(problem.starts_with("missing library lib"), "{problem}");
            assert!(problem.contains(&dir.path().display().to_string()), "{problem}");
            assert!(problem.contains("the system's library path"), "{problem}");
        }
    }
}
