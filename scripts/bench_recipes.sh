#!/usr/bin/env bash
# Training recipes on the CPU: `--recipe tutorial` against `--recipe strong` (best validation
# accuracy and wall time, from the same random initial weights per seed: no pretrained weights
# can be downloaded here), then `--amp` (bfloat16 autocast) against float32 (training images/s
# and whole-process time), each against the tutorial's PyTorch loop doing the same thing with
# the venv's torch. Prints one table.
#
#   cargo build --release -p train
#   scripts/bench_recipes.sh [--epochs 5] [--size 112] [--seeds "0 1"] [--amp-size 224]
#                            [--threads N] [--bin target/release] [--data DIR]
#
# --threads sets libtorch's compute threads for `train` and torch alike (default: all CPUs);
# 1 keeps the figures steady on a machine shared with other work.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
epochs=5
size=112
amp_size=224
seeds="0 1"
threads=$(nproc)
bin="$root/target/release"
data="$root/data/hymenoptera_data"
while (($#)); do
    case "$1" in
        --epochs) epochs="$2"; shift 2 ;;
        --size) size="$2"; shift 2 ;;
        --amp-size) amp_size="$2"; shift 2 ;;
        --seeds) seeds="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        --data) data="$2"; shift 2 ;;
        *) echo "usage: $0 [--epochs N] [--size S] [--amp-size S] [--seeds \"0 1\"] [--bin DIR] [--data DIR]" >&2; exit 2 ;;
    esac
done
[[ -x "$bin/train" ]] || { echo "no $bin/train: cargo build --release -p train (or --bin DIR)" >&2; exit 1; }
[[ -d "$data/train" ]] || { echo "no data in $data: pass --data DIR" >&2; exit 1; }
py="${PYTHON:-$root/.venv/bin/python}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export ALL_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9
export THREADS="$threads"

# Random initial weights, one file per seed, made by torch (torchvision's initialisation).
for seed in $seeds; do
    "$py" - "$tmp/init$seed.pth" "$seed" <<'EOF'
import sys, torch, torchvision
torch.manual_seed(int(sys.argv[2]))
m = torchvision.models.resnet18()
m.fc = torch.nn.Linear(512, 2)
torch.save(m.state_dict(), sys.argv[1])
EOF
done

# `train` once; prints "best_acc process_seconds train_images_per_s" of its summary and metrics.
ours() {
    local out="$1"; shift
    "$bin/train" "$data" --device cpu --threads "$threads" --no-export --top-losses 0 --out "$out" "$@" >/dev/null 2>"$out.log" \
        || { cat "$out.log" >&2; exit 1; }
    "$py" - "$out" <<'EOF'
import csv, json, sys, statistics
out = sys.argv[1]
s = json.load(open(f"{out}/summary.json"))
rates = [float(r["images_per_s"]) for r in csv.DictReader(open(f"{out}/metrics.csv")) if r["phase"] == "train"]
print(f'{s["best"]["val_acc"]:.4f} {s["process_seconds"]:.1f} {statistics.median(rates):.1f} {s["best"].get("weights", "raw")}')
EOF
}

# The tutorial's PyTorch loop (batch 4, SGD 0.001/0.9, StepLR 7/0.1, RandomResizedCrop + flip,
# 4 loader workers) for 1 epoch at --amp-size, float32 or with torch.autocast("cpu", bfloat16);
# prints "val_acc train_images_per_s"; the caller times the whole process.
pytorch() {
    "$py" - "$data" "$tmp/init0.pth" "$amp_size" "$1" <<'EOF'
import os, sys, time, warnings
import torch, torchvision
from torch import nn
from torchvision import datasets
sys.path.insert(0, os.path.join(os.environ["ROOT"], "scripts"))
from torchvision_reference import eval_transform, train_transform
warnings.filterwarnings("ignore", message="This DataLoader will create")
data, weights, size, amp = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "bf16"
torch.set_num_threads(int(os.environ["THREADS"]))
torch.manual_seed(0)
tfs = {"train": train_transform(size), "val": eval_transform(size)}
sets = {x: datasets.ImageFolder(os.path.join(data, x), tfs[x]) for x in ["train", "val"]}
loaders = {x: torch.utils.data.DataLoader(sets[x], batch_size=4, shuffle=True, num_workers=4) for x in sets}
model = torchvision.models.resnet18()
model.fc = nn.Linear(512, 2)
model.load_state_dict(torch.load(weights, map_location="cpu"))
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
for phase in ["train", "val"]:
    model.train(phase == "train")
    corrects, start = 0, time.perf_counter()
    for inputs, labels in loaders[phase]:
        optimizer.zero_grad()
        with torch.set_grad_enabled(phase == "train"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            outputs = model(inputs)
            loss = criterion(outputs.float(), labels)
        if phase == "train":
            loss.backward()
            optimizer.step()
        corrects += (outputs.argmax(1) == labels).sum().item()
    if phase == "train":
        rate = len(sets[phase]) / (time.perf_counter() - start)
print(f"{corrects / len(sets['val']):.4f} {rate:.1f}")
EOF
}
export ROOT="$root"

wall() { local t0; t0=$(date +%s.%N); "$@" >"$tmp/wall.out"; echo "$(cat "$tmp/wall.out") $(echo "$(date +%s.%N) - $t0" | bc)"; }

echo "recipes: $epochs epochs at --image-size $size, seeds $seeds, $threads compute thread(s) of $(nproc) CPUs (load average $(cut -d' ' -f1 /proc/loadavg) at the start), $(basename "$data"); random initial weights (no pretrained weights reachable here)" >&2
declare -A acc secs won
for recipe in tutorial strong; do
    for seed in $seeds; do
        read -r a s _ w < <(ours "$tmp/$recipe$seed" --recipe "$recipe" --weights "$tmp/init$seed.pth" --seed "$seed" \
            --epochs "$epochs" --image-size "$size")
        acc[$recipe]+="$a "; secs[$recipe]+="$s "; won[$recipe]+="$w "
        echo "  $recipe seed $seed: best val acc $a, $s s (best.pt: $w weights)" >&2
    done
done

echo "amp: 1 epoch at --image-size $amp_size, batch 4, seed 0" >&2
read -r f32_acc f32_proc f32_rate _ f32_wall < <(wall ours "$tmp/f32" --weights "$tmp/init0.pth" --epochs 1 --image-size "$amp_size")
read -r bf_acc bf_proc bf_rate _ bf_wall < <(wall ours "$tmp/bf16" --weights "$tmp/init0.pth" --epochs 1 --image-size "$amp_size" --amp)
read -r pt_acc pt_rate pt_wall < <(wall pytorch f32)
read -r ptb_acc ptb_rate ptb_wall < <(wall pytorch bf16)
native=$(grep -qw avx512_bf16 /proc/cpuinfo && echo yes || echo no)

"$py" - "$epochs" "$size" "$amp_size" "$native" \
    "${acc[tutorial]}" "${secs[tutorial]}" "${acc[strong]}" "${secs[strong]}" "${won[strong]}" \
    "$f32_acc $f32_rate $f32_wall" "$bf_acc $bf_rate $bf_wall" "$pt_acc $pt_rate $pt_wall" "$ptb_acc $ptb_rate $ptb_wall" <<'EOF'
import statistics as st, sys
epochs, size, amp_size, native = sys.argv[1:5]
f = lambda s: [float(v) for v in s.split()]
ta, ts, sa, ss, won = f(sys.argv[5]), f(sys.argv[6]), f(sys.argv[7]), f(sys.argv[8]), sys.argv[9].split()
def spread(v):
    return f"{st.mean(v):.4f} ± {st.stdev(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"
print(f"| recipe ({epochs} epochs, --image-size {size}, random init, {len(ta)} seeds, {__import__('os').environ['THREADS']} thread(s)) | best val acc (mean ± sd) | wall s (mean) | vs tutorial |")
print("|---|---|---|---|")
print(f"| tutorial | {spread(ta)} | {st.mean(ts):.1f} | 1.00× time |")
print(f"| strong (best.pt from EMA in {won.count('ema')} of {len(won)} runs) | {spread(sa)} | {st.mean(ss):.1f} | "
      f"{st.mean(ss) / st.mean(ts):.2f}× time, {st.mean(sa) - st.mean(ta):+.4f} acc |")
rows = [("train, float32", sys.argv[10]), ("train --amp (bfloat16 autocast)", sys.argv[11]),
        ("PyTorch tutorial loop, float32", sys.argv[12]), ("PyTorch loop, CPU autocast bfloat16", sys.argv[13])]
base = float(sys.argv[12].split()[2])
print()
print(f"| 1 epoch at {amp_size}px, batch 4, {__import__('os').environ['THREADS']} thread(s) (native bf16: {native}) | val acc | train img/s | whole process s | vs PyTorch float32 |")
print("|---|---|---|---|---|")
for name, v in rows:
    a, r, w = v.split()
    print(f"| {name} | {float(a):.4f} | {float(r):.1f} | {float(w):.1f} | {float(w) / base:.2f}× |")
EOF
