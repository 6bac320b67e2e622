#!/usr/bin/env bash
# Class imbalance on a long-tailed data set (scripts/make_longtail_digits.py: scikit-learn's
# digits, 120 training images of digit 0 down to 12 of digit 9, 30 validation images each):
# plain cross entropy against --class-weights auto and --balanced-sampler, same seed and epochs,
# from random initial weights. Prints validation accuracy (the validation set is balanced, so it
# is also the balanced accuracy) and the recall of the rarest digits.
#
#   /tmp/d/bin/python scripts/make_longtail_digits.py /tmp/digits
#   scripts/bench_longtail.sh /tmp/digits [--epochs 6] [--threads 1] [--bin target/release]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${1:?usage: $0 DATA [--epochs N] [--threads N] [--bin DIR]}"
shift
epochs=6
threads=$(nproc)
bin="$root/target/release"
while (($#)); do
    case "$1" in
        --epochs) epochs="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        *) echo "usage: $0 DATA [--epochs N] [--threads N] [--bin DIR]" >&2; exit 2 ;;
    esac
done
py="${PYTHON:-$root/.venv/bin/python}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export ALL_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9
common=("$data" --device cpu --threads "$threads" --no-pretrained --seed 0 --epochs "$epochs" --image-size 32
    --no-flip --crop-scale 0.5 1 --lr 0.01 --batch-size 16 --no-export --top-losses 0)
echo "| long-tailed digits ($epochs epochs, --image-size 32, random init, seed 0, lr 0.01, batch 16) | best val acc | recall of digits 7, 8, 9 (last epoch) | wall s |"
echo "|---|---|---|---|"
for variant in "plain" "--class-weights auto" "--balanced-sampler"; do
    extra=()
    [[ "$variant" == plain ]] || read -r -a extra <<<"$variant"
    out="$tmp/run"
    rm -rf "$out"
    "$bin/train" "${common[@]}" ${extra[@]+"${extra[@]}"} --out "$out" >/dev/null 2>"$tmp/log" || { cat "$tmp/log" >&2; exit 1; }
    "$py" - "$out" "$variant" <<'EOF'
import json, sys
s = json.load(open(f"{sys.argv[1]}/summary.json"))
recall = s.get("per_class_recall") or []
tail = ", ".join("-" if r is None else f"{r:.2f}" for r in recall[-3:])
print(f'| {sys.argv[2]} | {s["best"]["val_acc"]:.4f} | {tail} | {s["process_seconds"]:.1f} |')
EOF
done
