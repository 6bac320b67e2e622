#!/usr/bin/env bash
# Data-parallel training on the CPU: 2 ranks × 1 thread (gloo over loopback, launched with the
# variables torchrun sets) against 1 process × 2 threads, on the seed data, from the same random
# initial weights, at the same global batch (--batch in all: half of it per rank). Prints the
# training images/s of each (median over epochs), validation accuracy, and where the 2-rank
# run's training time went to communication (summary.json's "distributed": the gradient
# all-reduce time backward waited for after its last gradient, plus the small per-step
# collectives). The 2-rank run also exports model.onnx, so it is the whole job end to end.
#
#   cargo build --release -p train
#   scripts/bench_dist.sh [--epochs 2] [--batch 8] [--sync-bn] [--bin target/release] [--data DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
epochs=2
batch=8
bin="$root/target/release"
data=""
extra=()
for candidate in "$root/data/hymenoptera_data" "$root/../shared/data/hymenoptera_data"; do
    if [[ -z "$data" && -d "$candidate/train" ]]; then data="$candidate"; fi
done
while (($#)); do
    case "$1" in
        --epochs) epochs="$2"; shift 2 ;;
        --batch) batch="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        --data) data="$2"; shift 2 ;;
        --sync-bn) extra+=(--sync-bn); shift ;;
        *) echo "usage: $0 [--epochs N] [--batch GLOBAL_BATCH] [--sync-bn] [--bin DIR] [--data DIR]" >&2; exit 2 ;;
    esac
done
[[ -x "$bin/train" ]] || { echo "no $bin/train: cargo build --release -p train (or --bin DIR)" >&2; exit 1; }
[[ -n "$data" ]] || { echo "no seed data: pass --data DIR" >&2; exit 1; }
((batch % 2 == 0)) || { echo "--batch must be even (half per rank)" >&2; exit 2; }
py="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
common=("$data" --no-pretrained --device cpu --epochs "$epochs" --seed 0 ${extra[@]+"${extra[@]}"})
# Off the network: the runs start from random weights and need nothing downloaded.
export ALL_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9

echo "1 process × 2 threads, batch $batch ..."
"$bin/train" "${common[@]}" --no-export --batch-size "$batch" --threads 2 --workers 2 --out "$tmp/one" 2>"$tmp/one.log" \
    || { cat "$tmp/one.log"; exit 1; }

echo "2 ranks × 1 thread, batch $((batch / 2)) per rank ..."
port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
pids=()
for rank in 0 1; do
    RANK=$rank WORLD_SIZE=2 LOCAL_RANK=$rank MASTER_ADDR=127.0.0.1 MASTER_PORT=$port GLOO_SOCKET_IFNAME=lo \
        "$bin/train" "${common[@]}" --batch-size $((batch / 2)) --threads 1 --workers 1 --out "$tmp/two" \
        2>"$tmp/two.$rank.log" &
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
if ((failed)); then cat "$tmp/two.0.log" "$tmp/two.1.log"; exit 1; fi

"$py" - "$tmp" "$epochs" "$batch" <<'EOF'
import csv, json, os, sys

tmp, epochs, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

def run(name):
    out = os.path.join(tmp, name)
    rows = list(csv.DictReader(open(os.path.join(out, "metrics.csv"))))
    train = [float(r["images_per_s"]) for r in rows if r["phase"] == "train"]
    val = [float(r["acc"]) for r in rows if r["phase"] == "val"]
    return median(train), val[-1], json.load(open(os.path.join(out, "summary.json")))

one_ips, one_acc, _ = run("one")
two_ips, two_acc, s = run("two")
d = s["distributed"]
print()
print(f"| {epochs} epochs, global batch {batch} | training images/s (median) | val acc (last) |")
print("|---|---|---|")
print(f"| 1 process × 2 threads | {one_ips:.2f} | {one_acc:.4f} |")
print(f"| 2 ranks × 1 thread (gloo) | {two_ips:.2f} | {two_acc:.4f} |")
print(f"| ratio 2 ranks / 1 process | {two_ips / one_ips:.2f} | |")
print()
waited = d["allreduce_exposed_seconds"] + d["step_sync_seconds"] + d.get("sync_bn_seconds", 0.0)
print(f"2 ranks, rank 0: {d['train_seconds']:.1f} s training; waited on communication {waited:.2f} s = "
      f"{100 * d['communication_share']:.1f} % (gradient all-reduce after backward {d['allreduce_exposed_seconds']:.2f} s, "
      f"per-step collectives {d['step_sync_seconds']:.2f} s, sync batch norm {d.get('sync_bn_seconds', 0.0):.2f} s); "
      f"gradient all-reduce busy {d['allreduce_seconds']:.2f} s in all, overlapping {d['backward_seconds']:.2f} s of "
      f"backward")
onnx = os.path.join(tmp, "two", "model.onnx")
print(f"2 ranks: model.onnx {'written by rank 0 and verified' if os.path.exists(onnx) else 'MISSING'}"
      f" ({os.path.getsize(onnx) / 1e6:.1f} MB)" if os.path.exists(onnx) else "")
EOF
