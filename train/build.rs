//! Build script shared by the crates whose binaries link libtorch.
//!
//! - Adds an rpath to libtorch's folder, so binaries run without `LD_LIBRARY_PATH`.
//! - Keeps `libtorch_cuda.so` as a dependency where it exists: rustc links with `--as-needed`,
//!   which drops it (no symbol of ours refers to it), and the binary then never sees a GPU.
//! - For the `train` crate only: compiles `csrc/dist.cpp`, the C shim over PyTorch's c10d
//!   (TCPStore, ProcessGroupGloo / ProcessGroupNCCL, DDP's Reducer) behind `train::dist`, with
//!   each backend whose headers are found: gloo's (Debian's `libgloo-dev`, or `GLOO_INCLUDE_DIR`)
//!   and, where libtorch has CUDA, NCCL's and CUDA's from the venv's `nvidia-*` wheels. A backend
//!   left out is reported by a `cargo:warning` and, at run time, by a "not compiled in" error.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    let lib = match (std::env::var_os("LIBTORCH_LIB"), std::env::var_os("LIBTORCH")) {
        (Some(lib), _) => Some(PathBuf::from(lib).join("lib")),
        (None, Some(root)) => Some(PathBuf::from(root).join("lib")),
        // libtorch located some other way (e.g. LIBTORCH_USE_PYTORCH): the user manages paths.
        (None, None) => None,
    };
    let lib = lib.map(|lib| lib.canonicalize().unwrap_or(lib));
    if let Some(lib) = &lib {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-search=native={}", lib.display());
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
    if std::env::var("CARGO_PKG_NAME").as_deref() == Ok("train") {
        dist_shim(lib.as_deref());
    }
}

/// Compiles csrc/dist.cpp into the `train` library, with the backends whose headers exist.
fn dist_shim(lib: Option<&Path>) {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let csrc = manifest.join("csrc");
    println!("cargo:rerun-if-changed={}", csrc.join("dist.cpp").display());
    println!("cargo:rerun-if-changed={}", csrc.join("dist.h").display());
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");

    // libtorch's headers: $LIBTORCH_INCLUDE/include as tch reads it, else beside lib/.
    let torch_root = std::env::var_os("LIBTORCH_INCLUDE")
        .map(PathBuf::from)
        .or_else(|| lib.and_then(Path::parent).map(Path::to_path_buf));
    let torch_include = torch_root
        .map(|root| root.join("include"))
        .filter(|dir| dir.join("torch/csrc/distributed/c10d/ProcessGroup.hpp").exists());
    let Some(torch_include) = torch_include else {
        println!(
            "cargo:warning=train::dist: libtorch's c10d headers not found (set LIBTORCH to the \
             libtorch folder); distributed training is not available in this build"
        );
        build(&csrc, &[], &[("TRAIN_DIST_STUB", None)]);
        return;
    };
    let mut includes = vec![torch_include.clone(), torch_include.join("torch/csrc/api/include")];
    let defines: Vec<(&str, Option<&str>)> = vec![("GLOG_USE_GLOG_EXPORT", None)];

    // gloo: its headers are not in the torch wheel; ProcessGroupGloo.hpp includes them.
    let gloo = gloo_include();
    match &gloo {
        Some(dir) => {
            println!("cargo:rerun-if-changed={}", dir.join("gloo").display());
            // The compiler's own folders stay out of -I (that would reorder the system headers).
            if dir != Path::new("/usr/include") && dir != Path::new("/usr/local/include") {
                includes.push(dir.clone());
            }
        }
        None => {
            // Watch the folder it would appear in, so installing libgloo-dev rebuilds the shim.
            println!("cargo:rerun-if-changed=/usr/include");
            println!(
                "cargo:warning=train::dist: gloo headers not found (apt-get install libgloo-dev, \
                 or set GLOO_INCLUDE_DIR; scripts/setup.sh does it); building without the gloo \
                 backend: CPU data-parallel training will report it is not compiled in"
            );
        }
    }

    // NCCL: only where libtorch itself has CUDA, with NCCL's and CUDA's headers from the venv.
    let cuda_lib = lib.filter(|lib| lib.join("libtorch_cuda.so").exists());
    let nccl = cuda_lib.and_then(|lib| match nccl_includes(lib) {
        Ok(dirs) => Some(dirs),
        Err(missing) => {
            println!(
                "cargo:warning=train::dist: building without the nccl backend: {missing} not \
                 found in the venv's nvidia packages (scripts/setup.sh installs \
                 nvidia-cuda-crt and nvidia-cuda-cccl where torch has CUDA)"
            );
            None
        }
    });

    let with = |gloo: bool, nccl: Option<&Vec<PathBuf>>| {
        let mut inc = includes.clone();
        let mut def = defines.clone();
        if gloo {
            def.push(("USE_C10D_GLOO", None));
        }
        if let Some(dirs) = nccl {
            inc.extend(dirs.iter().cloned());
            def.push(("USE_C10D_NCCL", None));
            def.push(("USE_CUDA", None));
        }
        (inc, def)
    };
    // Headers that exist can still fail to compile (another gloo version, say): then the shim is
    // built with fewer backends rather than failing the build; the compiler's errors show above.
    let mut attempts: Vec<(bool, Option<&Vec<PathBuf>>)> = Vec::new();
    for attempt in [(gloo.is_some(), nccl.as_ref()), (false, nccl.as_ref()), (gloo.is_some(), None), (false, None)] {
        if !attempts.contains(&attempt) {
            attempts.push(attempt);
        }
    }
    let names = |gloo: bool, nccl: bool| match (gloo, nccl) {
        (true, true) => "gloo and nccl",
        (true, false) => "gloo",
        (false, true) => "nccl",
        (false, false) => "no backend",
    };
    for (i, &(use_gloo, use_nccl)) in attempts.iter().enumerate() {
        let (inc, def) = with(use_gloo, use_nccl);
        match try_build(&csrc, &inc, &def) {
            Ok(()) => {
                if i > 0 {
                    println!("cargo:warning=train::dist: built with {}", names(use_gloo, use_nccl.is_some()));
                }
                return;
            }
            Err(_) if i + 1 < attempts.len() => println!(
                "cargo:warning=train::dist: csrc/dist.cpp did not compile with {} (the compiler's \
                 errors are above); retrying with fewer backends",
                names(use_gloo, use_nccl.is_some())
            ),
            Err(e) => panic!("train::dist: csrc/dist.cpp does not compile against libtorch: {e}"),
        }
    }
}

fn gloo_include() -> Option<PathBuf> {
    let candidates = std::env::var_os("GLOO_INCLUDE_DIR")
        .map(|dir| vec![PathBuf::from(dir)])
        .unwrap_or_else(|| vec![PathBuf::from("/usr/include"), PathBuf::from("/usr/local/include")]);
    candidates
        .into_iter()
        .find(|dir| dir.join("gloo/algorithm.h").exists() && dir.join("gloo/rendezvous/store.h").exists())
}

/// The include folders of the venv's `nvidia-*` wheels (site-packages/nvidia/*/include), when
/// together they hold what ProcessGroupNCCL.hpp needs; else the first header missing.
fn nccl_includes(lib: &Path) -> Result<Vec<PathBuf>, &'static str> {
    // lib is site-packages/torch/lib; the wheels sit in site-packages/nvidia.
    let nvidia = lib.parent().and_then(Path::parent).map(|sp| sp.join("nvidia"));
    let mut dirs: Vec<PathBuf> = nvidia
        .as_deref()
        .and_then(|nvidia| std::fs::read_dir(nvidia).ok())
        .map(|entries| entries.flatten().map(|e| e.path().join("include")).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    dirs.sort();
    if let Some(nvidia) = &nvidia {
        println!("cargo:rerun-if-changed={}", nvidia.display());
    }
    // nccl.h: nvidia-nccl; cuda_runtime_api.h: nvidia-cuda-runtime; crt/host_config.h:
    // nvidia-cuda-crt; nv/target: nvidia-cuda-cccl.
    for header in ["nccl.h", "cuda_runtime_api.h", "crt/host_config.h", "nv/target"] {
        if !dirs.iter().any(|dir| dir.join(header).exists()) {
            return Err(header);
        }
    }
    Ok(dirs)
}

fn build(csrc: &Path, includes: &[PathBuf], defines: &[(&str, Option<&str>)]) {
    if let Err(e) = try_build(csrc, includes, defines) {
        panic!("train::dist: {e}");
    }
}

fn try_build(csrc: &Path, includes: &[PathBuf], defines: &[(&str, Option<&str>)]) -> Result<(), String> {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .includes(includes)
        .flag("-std=c++17")
        // The ABI tch builds its own wrapper with (the pip wheel's is the new one).
        .define(
            "_GLIBCXX_USE_CXX11_ABI",
            std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned()).as_str(),
        )
        .file(csrc.join("dist.cpp"));
    for (name, value) in defines {
        build.define(name, *value);
    }
    build.try_compile("train_dist").map_err(|e| e.to_string())
}
