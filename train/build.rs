//! Build script shared by the crates whose binaries link libtorch.
//!
//! - Adds an rpath to libtorch's folder, so binaries run without `LD_LIBRARY_PATH`.
//! - Keeps `libtorch_cuda.so` as a dependency where it exists: rustc links with `--as-needed`,
//!   which drops it (no symbol of ours refers to it), and the binary then never sees a GPU.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    let lib = match (std::env::var_os("LIBTORCH_LIB"), std::env::var_os("LIBTORCH")) {
        (Some(lib), _) => PathBuf::from(lib).join("lib"),
        (None, Some(root)) => PathBuf::from(root).join("lib"),
        // libtorch located some other way (e.g. LIBTORCH_USE_PYTORCH): the user manages paths.
        (None, None) => return,
    };
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
