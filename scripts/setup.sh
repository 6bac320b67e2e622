#!/usr/bin/env bash
# One-time, idempotent set-up for a fresh machine:
#  - a project-local Python venv (.venv) with pinned wheels: torch (the libtorch that tch links),
#    torchvision (the reference for tests and benchmarks) and onnxruntime (the shared library
#    that `ort` loads at run time);
#  - the headers train's c10d shim is compiled with (train/build.rs): gloo's (Debian's
#    libgloo-dev) and, where the torch wheel has CUDA, the CUDA headers NCCL's needs;
#  - Debian's chromium and chromium-driver, for the test that drives infer serve's web page;
#  - data/hymenoptera_data, linked from ../shared/data when present, else downloaded and checked.
# A second run finds everything in place and returns in seconds.
#
#   scripts/setup.sh              onnxruntime-gpu where nvidia-smi lists a GPU, else onnxruntime
#   scripts/setup.sh --gpu        onnxruntime-gpu in any case (to check its libraries resolve on
#                                 a machine without a GPU: `infer doctor --ep cuda`)
#   scripts/setup.sh --infer-only only ONNX Runtime, for deployment: nothing of PyTorch, no
#                                 headers, browser or dataset; then `cargo build --release -p infer`
set -euo pipefail

gpu=auto
infer_only=no
for arg in "$@"; do
    case "$arg" in
        --gpu) gpu=yes ;;
        --infer-only) infer_only=yes ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) printf 'setup: unknown option %s (see --help)\n' "$arg" >&2; exit 1 ;;
    esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

venv="$root/.venv"
stamp="$venv/.setup-stamp"

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Installs Debian packages as root or with passwordless sudo; warns (never fails) where it
# cannot, saying what is left out ($1) and what to do.
apt_install() {
    local left_out="$1"; shift
    local sudo=()
    [[ "$(id -u)" == 0 ]] || sudo=(sudo -n)
    if ! command -v apt-get >/dev/null 2>&1; then
        log "warning: no apt-get; install $* yourself, else $left_out"
        return 0
    fi
    if [[ ${#sudo[@]} -gt 0 ]] && ! sudo -n true 2>/dev/null; then
        log "warning: not root and no passwordless sudo; run 'apt-get install $*' as root, else $left_out"
        return 0
    fi
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    if ${sudo[@]+"${sudo[@]}"} apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
        || { ${sudo[@]+"${sudo[@]}"} apt-get update -q >/dev/null 2>&1 \
             && ${sudo[@]+"${sudo[@]}"} apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1; }; then
        log "$* installed"
    else
        log "warning: apt-get install $* failed; $left_out"
    fi
}

# --- Python wheels -------------------------------------------------------------------------
ort_pkg="onnxruntime==1.31.1"
if [[ "$gpu" == yes ]] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }; then
    ort_pkg="onnxruntime-gpu==1.31.1"
fi
if [[ "$infer_only" == yes ]]; then
    # Deployment: ONNX Runtime's shared library is all `infer` loads.
    requirements=("$ort_pkg")
else
requirements=(
    "torch==2.11.0"
    "torchvision==0.26.0"
    "$ort_pkg"
    "onnx==1.19.1"
    "safetensors==0.6.2"
    # A real client of the Open Inference Protocol, for the tests of `infer serve`.
    "tritonclient[http]==2.73.0"
    # Reads the Kubernetes manifests in deploy/ for their tests.
    "PyYAML==6.0.3"
    # TensorBoard's own reader checks the event files train writes.
    "tensorboard==2.20.0"
    # The Python service that scripts/bench_serve.py compares `infer serve` with.
    "fastapi==0.121.0"
    "uvicorn==0.38.0"
)
fi
want="${requirements[*]}"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
    log "python environment up to date ($venv)"
else
    python="${PYTHON:-python3}"
    command -v "$python" >/dev/null 2>&1 || die "python3 not found; install Python 3.10+ or set PYTHON"
    "$python" - <<'PY' || die "Python 3.10 or newer is required"
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY
    if [[ ! -x "$venv/bin/python" ]]; then
        log "creating $venv"
        "$python" -m venv "$venv"
    fi
    log "installing ${requirements[*]} (first run downloads a few GB)"
    # The two onnxruntime flavours install the same module; keep only the one wanted.
    other="onnxruntime-gpu"; [[ "$ort_pkg" == onnxruntime-gpu* ]] && other="onnxruntime"
    "$venv/bin/python" -m pip uninstall -q -y "$other" >/dev/null 2>&1 || true
    "$venv/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check "${requirements[@]}" \
        || die "pip install failed (is PyPI reachable?)"
    printf '%s' "$want" >"$stamp"
fi

# Stable paths into the venv, independent of its Python version: tch builds against
# .venv/libtorch (see .cargo/config.toml) and `infer` loads .venv/onnxruntime/libonnxruntime.so.
# ONNX Runtime looks for its provider libraries (libonnxruntime_providers_*.so) beside the path
# it was loaded from, so they are linked there too.
"$venv/bin/python" - "$venv" "$infer_only" <<'PY' || die "the venv's torch or onnxruntime does not import; delete .venv and rerun"
import glob, os, sys
import onnxruntime
venv, infer_only = sys.argv[1], sys.argv[2] == "yes"
def link(target, name):
    path = os.path.join(venv, name)
    if os.path.islink(path) and os.readlink(path) == target:
        return
    tmp = path + ".tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)
if not infer_only:
    import torch
    link(os.path.dirname(torch.__file__), "libtorch")
capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so.*")))
if not libs:
    sys.exit("no libonnxruntime.so.* in " + capi)
folder = os.path.join(venv, "onnxruntime")
os.makedirs(folder, exist_ok=True)
for name in os.listdir(folder):  # links left by the other wheel
    path = os.path.join(folder, name)
    if os.path.islink(path) and not os.path.exists(path):
        os.remove(path)
link(libs[-1], os.path.join("onnxruntime", "libonnxruntime.so"))
for provider in sorted(glob.glob(os.path.join(capi, "libonnxruntime_providers_*.so"))):
    link(provider, os.path.join("onnxruntime", os.path.basename(provider)))
PY

if [[ "$infer_only" == yes ]]; then
    log "ready for infer only: cargo build --release -p infer (ONNX Runtime: $venv/onnxruntime/libonnxruntime.so)"
    exit 0
fi

# --- Headers for distributed training (train::dist) ----------------------------------------
# train/build.rs compiles train/csrc/dist.cpp against libtorch's c10d headers. The wheel ships
# those but not the headers they include: gloo's (for ProcessGroupGloo, CPU) and, for
# ProcessGroupNCCL, CUDA's crt/ and cccl's nv/ (NCCL's own and the CUDA runtime's come with the
# wheel's dependencies). A backend whose headers are missing is left out of the build, with a
# warning; nothing here is fatal.
if [[ -f /usr/include/gloo/algorithm.h || -n "${GLOO_INCLUDE_DIR:-}" ]]; then
    log "gloo headers present"
else
    apt_install "train is built without the gloo backend (or set GLOO_INCLUDE_DIR)" libgloo-dev
fi

# Only a CUDA 13.0 torch wheel gets the CUDA headers NCCL's backend needs; a CPU wheel needs none.
cuda_headers="$("$venv/bin/python" - <<'PY'
import os, torch
cuda = torch.version.cuda or ""
nvidia = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia")
if cuda and os.path.exists(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cuda.so")):
    have = all(os.path.exists(os.path.join(nvidia, "cu13", "include", h)) for h in ("crt/host_config.h", "nv/target"))
    print(cuda, "present" if have else "missing")
PY
)" || cuda_headers=""
case "$cuda_headers" in
    "") ;;  # CPU wheel: no NCCL
    *" present") log "CUDA headers for the nccl backend present" ;;
    13.0" missing")
        log "installing nvidia-cuda-crt and nvidia-cuda-cccl 13.0 (headers for the nccl backend of train::dist)"
        "$venv/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" \
            || log "warning: pip could not install the CUDA headers; train is built without the nccl backend" ;;
    *) log "warning: torch is built with CUDA ${cuda_headers% *}, for which this script has no NCCL header packages; train is built without the nccl backend" ;;
esac

# --- A real browser, for the test of infer serve's web page ---------------------------------
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    log "chromium and chromedriver present"
else
    apt_install "the web page's browser test cannot run" chromium chromium-driver
fi

# --- Dataset -------------------------------------------------------------------------------
data="$root/data/hymenoptera_data"
shared="$root/../shared/data/hymenoptera_data"
url="https://download.pytorch.org/tutorial/hymenoptera_data.zip"
# Every file of the archive is checked against this manifest (sha256 per file).
manifest="$root/data/hymenoptera_data.sha256"

if [[ -e "$data" ]]; then
    log "dataset present ($data)"
elif [[ -d "$shared" ]]; then
    ln -s "$(cd "$shared" && pwd)" "$data"
    log "dataset linked from $shared"
else
    log "downloading $url"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    if curl -fsSL --connect-timeout 15 --max-time 600 -o "$tmp/data.zip" "$url" \
        && (cd "$tmp" && python3 -m zipfile -e data.zip .) \
        && (cd "$tmp/hymenoptera_data" && sha256sum -c --quiet --strict "$manifest"); then
        mv "$tmp/hymenoptera_data" "$data"
        log "dataset ready ($data)"
    else
        log "warning: could not download or verify $url; to get the dataset, unzip it into data/ (see data/README.md)"
    fi
fi
