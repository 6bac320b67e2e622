#!/usr/bin/env bash
# The GPU acceptance check, for a GPU machine with Python, torch and torchvision but no Rust
# and no internet. Build here, carry, run there:
#
#   cargo build --release -p train -p infer --bins --examples
#   strip target/release/train target/release/infer target/release/examples/loader_throughput
#   # carry: those three files (keep target/release/ and target/release/examples/), scripts/,
#   # and the seed's data (data/hymenoptera_data or ../shared/data/hymenoptera_data)
#   scripts/gpu_check.sh [--epochs 3] [--device cuda] [--bin DIR] [--data DIR]
#
# The binaries find that machine's libtorch through LD_LIBRARY_PATH (set here from its torch
# package) and ONNX Runtime through ORT_DYLIB_PATH (its onnxruntime package, unless already
# set). Prints both doctors' reports, then one table (see scripts/gpu_check.py), with a 1-GPU vs
# all-GPUs data-parallel run where 2 or more GPUs exist (said to be skipped otherwise); at most
# 10 min.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
torch_lib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [[ -z "${ORT_DYLIB_PATH:-}" ]]; then
    ORT_DYLIB_PATH="$("$py" -c 'import glob, os, onnxruntime as o; print(sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime.so*")))[-1])')"
    export ORT_DYLIB_PATH
fi
bin="$root/target/release"
for ((i = 1; i <= $#; i++)); do
    if [[ "${!i}" == --bin ]]; then j=$((i + 1)); bin="${!j}"; fi
done
echo "== train doctor"; "$bin/train" doctor || true
echo "== infer doctor"; "$bin/infer" doctor || true
echo "== check"
exec timeout 600 "$py" "$root/scripts/gpu_check.py" "$@"
