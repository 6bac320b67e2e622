#!/usr/bin/env bash
# Issue 18's measurement: `--recipe tutorial` against `--recipe strong` and against each of
# strong's ingredients alone on top of the tutorial, N seeds each, from random initial weights
# (no pretrained weights can be downloaded here), the same epoch budget for every variant of a
# data set. Data sets: the seed's ants and bees, and real image data sets that Python packages
# ship (scripts/make_package_datasets.py): scikit-learn's digits, scikit-image's LFW faces against
# non-faces, and a long-tailed subset of the digits (imbalanced; balanced validation folder).
# On the long-tailed digits it also compares the imbalance remedies (--class-weights auto,
# --balanced-sampler, strong with --balanced-sampler) with the recall of the rarest digits.
#
# Prints two markdown tables: per variant and data set the mean ± sd over seeds of the best
# validation accuracy and its difference from the tutorial (* where a paired t-test over the
# seeds, which share initial weights and validation split, gives p < 0.05); then the
# imbalance comparison.
#
#   python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install scikit-learn scikit-image pillow
#   /tmp/bench-venv/bin/python scripts/make_package_datasets.py /tmp/bench-data
#   scripts/bench_recipes_ablation.sh /tmp/bench-data [--seeds "0 1 2"] [--threads 1]
#       [--bin target/release] [--work DIR] [--epochs "ants=3 digits=2 lfw=6 longtail=4"]
#
# Each run's result is appended to DIR/results.tsv (--work; default a temporary folder): a run
# already there is not repeated, so an interrupted benchmark carries on where it stopped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage="usage: $0 PACKAGE_DATA [--seeds \"0 1 2\"] [--threads N] [--bin DIR] [--work DIR] [--epochs \"ants=3 digits=2 lfw=6 longtail=4\"]"
pkg="${1:?$usage}"
shift
seeds="0 1 2"
threads=1
bin="$root/target/release"
work=""
declare -A epochs=([ants]=3 [digits]=2 [lfw]=6 [longtail]=4)
while (($#)); do
    case "$1" in
        --seeds) seeds="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        --work) work="$2"; shift 2 ;;
        --epochs) for kv in $2; do epochs[${kv%%=*}]="${kv#*=}"; done; shift 2 ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done
[[ -x "$bin/train" ]] || { echo "no $bin/train: cargo build --release -p train (or --bin DIR)" >&2; exit 1; }
for d in digits lfw longtail/train; do
    [[ -d "$pkg/$d" ]] || { echo "no $pkg/$d: run scripts/make_package_datasets.py $pkg first" >&2; exit 1; }
done
py="${PYTHON:-$root/.venv/bin/python}"
if [[ -z "$work" ]]; then work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT; fi
mkdir -p "$work"
results="$work/results.tsv"
touch "$results"
export ALL_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9

# Data sets: name, folder, --image-size, options of their own. Digits have a handedness (no flip);
# the small images keep at least half of the picture in a crop. Flat folders (digits, lfw) are
# split by `train` itself, stratified and seeded (--val-fraction 0.2).
datasets=(ants digits lfw longtail)
declare -A dir=([ants]="$root/data/hymenoptera_data" [digits]="$pkg/digits" [lfw]="$pkg/lfw" [longtail]="$pkg/longtail")
declare -A size=([ants]=64 [digits]=32 [lfw]=32 [longtail]=32)
declare -A own=([ants]="" [digits]="--no-flip --crop-scale 0.5 1" [lfw]="--crop-scale 0.5 1"
    [longtail]="--no-flip --crop-scale 0.5 1")
declare -A classes=([ants]=2 [digits]=10 [lfw]=2 [longtail]=10)
# Variants: strong's ingredients alone on top of the tutorial, with strong's values
# (train/src/config.rs, Recipe::Strong).
variants=(tutorial strong trivialaugment erasing mix smoothing ema warmup-cosine)
declare -A vargs=([tutorial]="--recipe tutorial" [strong]="--recipe strong"
    [trivialaugment]="--auto-augment trivialaugment" [erasing]="--random-erasing 0.25"
    [mix]="--mixup 0.2 --cutmix 1" [smoothing]="--label-smoothing 0.1" [ema]="--ema 0.9998"
    [warmup-cosine]="--warmup-epochs 1 --scheduler cosine"
    [class-weights]="--class-weights auto" [balanced-sampler]="--balanced-sampler"
    [strong+balanced-sampler]="--recipe strong --balanced-sampler")
imbalance=(class-weights balanced-sampler strong+balanced-sampler)

# The same random initial weights for every variant of a seed (torchvision's initialisation,
# made by torch), per number of classes.
for n in 2 10; do
    for seed in $seeds; do
        [[ -f "$work/init${n}_$seed.pth" ]] || "$py" - "$work/init${n}_$seed.pth" "$seed" "$n" <<'EOF'
import sys, torch, torchvision
torch.manual_seed(int(sys.argv[2]))
m = torchvision.models.resnet18()
m.fc = torch.nn.Linear(512, int(sys.argv[3]))
torch.save(m.state_dict(), sys.argv[1])
EOF
    done
done

# One run; appends "dataset variant seed best_acc process_s best_weights recall,recall,..." to results.tsv.
run() {
    local ds="$1" variant="$2" seed="$3" out="$work/run"
    grep -q "^$ds	$variant	$seed	" "$results" && return 0
    rm -rf "$out"
    # shellcheck disable=SC2086
    nice -n 10 "$bin/train" "${dir[$ds]}" --device cpu --threads "$threads" --weights "$work/init${classes[$ds]}_$seed.pth" \
        --seed "$seed" --epochs "${epochs[$ds]}" --image-size "${size[$ds]}" --batch-size 16 --lr 0.01 \
        ${own[$ds]} ${vargs[$variant]} --top-losses 0 --no-export --no-tensorboard --out "$out" \
        >/dev/null 2>"$work/log" || { cat "$work/log" >&2; exit 1; }
    "$py" - "$out" "$ds" "$variant" "$seed" >>"$results" <<'EOF'
import json, sys
s = json.load(open(f"{sys.argv[1]}/summary.json"))
recall = ",".join(f"{r:.4f}" if r is not None else "nan" for r in (s.get("per_class_recall") or [])) or "-"
print("\t".join(sys.argv[2:5] + [f'{s["best"]["val_acc"]:.4f}', f'{s["process_seconds"]:.1f}',
                 s["best"].get("weights", "raw"), recall]))
EOF
    echo "  $(tail -n 1 "$results" | cut -f 1-6)" >&2
}

start=$(date +%s)
echo "ablation: seeds $seeds, $threads compute thread(s) of $(nproc) CPUs (load average $(cut -d' ' -f1 /proc/loadavg) at the start), random initial weights, batch 16, lr 0.01" >&2
for ds in "${datasets[@]}"; do
    extra=()
    [[ $ds == longtail ]] && extra=("${imbalance[@]}")
    echo "$ds: ${epochs[$ds]} epochs at --image-size ${size[$ds]} ${own[$ds]}" >&2
    for seed in $seeds; do
        for variant in "${variants[@]}" ${extra[@]+"${extra[@]}"}; do
            run "$ds" "$variant" "$seed"
        done
    done
done
echo "benchmark wall time: $(($(date +%s) - start)) s (load average $(cut -d' ' -f1 /proc/loadavg) at the end)" >&2

"$py" - "$results" "${datasets[*]}" "${variants[*]}" "${imbalance[*]}" \
    "$(for ds in "${datasets[@]}"; do echo -n "$ds=${epochs[$ds]}/${size[$ds]} "; done)" <<'EOF'
import collections, math, statistics as st, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
datasets, variants, imbalance = sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
budget = dict(kv.split("=") for kv in sys.argv[5].split())
acc, secs, ema, recall = (collections.defaultdict(dict) for _ in range(4))
for ds, v, seed, a, s, w, r in rows:
    acc[ds, v][seed] = float(a)
    secs[ds, v][seed] = float(s)
    ema[ds, v][seed] = w == "ema"
    recall[ds, v][seed] = [float(x) for x in r.split(",")] if r != "-" else []
names = {"tutorial": "tutorial", "strong": "strong (all below)", "trivialaugment": "+ --auto-augment trivialaugment",
         "erasing": "+ --random-erasing 0.25", "mix": "+ --mixup 0.2 --cutmix 1", "smoothing": "+ --label-smoothing 0.1",
         "ema": "+ --ema 0.9998", "warmup-cosine": "+ --warmup-epochs 1 --scheduler cosine",
         "class-weights": "+ --class-weights auto", "balanced-sampler": "+ --balanced-sampler",
         "strong+balanced-sampler": "strong + --balanced-sampler"}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}

def sd(v):
    return st.stdev(v) if len(v) > 1 else float("nan")

def cell(ds, v):
    a = acc[ds, v]
    return f"{st.mean(a.values()):.3f} ± {sd(list(a.values())):.3f}"

def delta(ds, v):
    base = acc[ds, "tutorial"]
    d = [acc[ds, v][s] - base[s] for s in acc[ds, v] if s in base]
    m = st.mean(d)
    mark = ""
    if len(d) > 1:
        e = sd(d) / math.sqrt(len(d))
        if (e == 0 and m != 0) or (e > 0 and abs(m) / e > T975.get(len(d) - 1, 2.0)):
            mark = "*"
    return f"{m:+.3f}{mark}"

def time_ratio(ds, v):
    return st.mean(secs[ds, v].values()) / st.mean(secs[ds, "tutorial"].values())

label = {"ants": "ants/bees", "digits": "digits", "lfw": "LFW faces", "longtail": "long-tailed digits"}
nseeds = len(acc[datasets[0], "tutorial"])
head = ["variant"]
for ds in datasets:
    e, s = budget[ds].split("/")
    head += [f"{label[ds]} ({e} ep, {s}px)", "Δ"]
head.append("time × tutorial")
print(f"Best validation accuracy, mean ± sd over {nseeds} seeds (random init); Δ: mean paired difference from tutorial, * p < 0.05 (paired t-test)")
print()
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for v in variants:
    cells = [names[v]]
    for ds in datasets:
        cells += [cell(ds, v), "" if v == "tutorial" else delta(ds, v)]
    cells.append(f"{st.mean(time_ratio(ds, v) for ds in datasets):.2f}×")
    print("| " + " | ".join(cells) + " |")
won = sum(x for ds in datasets for x in ema[ds, "strong"].values())
n = sum(len(ema[ds, "strong"]) for ds in datasets)
print()
print(f"strong's best.pt came from the EMA weights in {won} of {n} runs; "
      f"tutorial wall time per run: " + ", ".join(f"{label[ds]} {st.mean(secs[ds, 'tutorial'].values()):.0f} s" for ds in datasets))

ds = "longtail"
if (ds, imbalance[0]) in acc:
    print()
    print(f"Imbalance, long-tailed digits ({budget[ds].split('/')[0]} epochs; validation balanced, so its accuracy is the balanced accuracy); "
          f"recall of the rarest digits at the last epoch, mean over seeds")
    print()
    print("| variant | best val acc | Δ | recall 7 (20 train imgs) | recall 8 (15) | recall 9 (12) |")
    print("|---|---|---|---|---|---|")
    for v in ["tutorial", *imbalance[:2], "strong", *imbalance[2:]]:
        rec = list(recall[ds, v].values())
        tail = [f"{st.mean(r[k] for r in rec):.2f}" for k in (7, 8, 9)]
        name = {"tutorial": "plain (tutorial)", "strong": "strong"}.get(v, names[v])
        print(f"| {name} | {cell(ds, v)} | {'' if v == 'tutorial' else delta(ds, v)} | " + " | ".join(tail) + " |")
EOF
