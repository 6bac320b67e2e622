#!/usr/bin/env python3
"""GPU acceptance check: `train` and `infer` on a GPU against the seed's PyTorch loop and
torchvision, in one run that prints one table. Run through scripts/gpu_check.sh, which points
the binaries at this machine's libtorch and ONNX Runtime.

  1. seconds per epoch and best validation accuracy, `train --device cuda` against the seed
     tutorial's PyTorch loop (same data, same random initial weights, same GPU), at batch 4
     fp32, batch 64 fp32 and batch 64 with mixed precision (`--amp`; `torch.autocast` +
     `GradScaler` in PyTorch); `--amp --channels-last` and `--amp --amp-dtype bfloat16` (where
     the GPU supports bfloat16) against plain `--amp`;
  2. the GPU-bound limit at batch 64: forward+backward+SGD on in-memory random images;
  3. `train`'s data loader alone (`--workers` = all cores) against what training consumed;
  4. `best.pt` evaluated by torchvision on the GPU against `train`'s reported accuracy;
  5. `model.onnx` through `infer --ep cuda` against `--ep cpu` (top-1 and probabilities), where
     this machine's ONNX Runtime has the CUDA provider, and `infer` images/s on each;
  6. data-parallel scaling, where there are 2 GPUs or more: training images/s at batch 64 per
     GPU on all of them (one rank each, launched by torchrun --no-python) against one GPU, on
     the seed's training images repeated 8 times (enough steps per epoch to measure); target
     >= 90 % efficiency. Said to be skipped with fewer GPUs.
Works on the CPU too (`--device cpu`), which is how it is tested without a GPU.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torchvision
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_train import make_initial_weights, pytorch_seed_training  # noqa: E402
from torchvision_reference import eval_transform  # noqa: E402


def train_run(binary, data, weights, epochs, batch, device, amp, out, seed, extra=()):
    """`train` with the same settings: ([(seconds, val acc, train images/s)], best val acc)."""
    cmd = [binary, data, "--weights", weights, "--epochs", str(epochs), "--batch-size", str(batch), "--out", out,
           "--device", device, "--seed", str(seed)] + (["--amp"] if amp else []) + list(extra)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    by_epoch = {}
    with open(os.path.join(out, "metrics.csv")) as f:
        for r in csv.DictReader(f):
            by_epoch.setdefault(int(r["epoch"]), {})[r["phase"]] = r
    rows = [(float(e["train"]["seconds"]) + float(e["val"]["seconds"]), float(e["val"]["acc"]),
             float(e["train"]["images_per_s"])) for _, e in sorted(by_epoch.items())]
    with open(os.path.join(out, "summary.json")) as f:
        best = json.load(f)["best"]["val_acc"]
    return rows, best


def replicated_data(src, dst, times):
    """`src` with each training image linked `times` times (the validation folder as it is)."""
    train = os.path.join(src, "train")
    for cls in sorted(os.listdir(train)):
        os.makedirs(os.path.join(dst, "train", cls))
        for name in sorted(os.listdir(os.path.join(train, cls))):
            for k in range(times):
                os.symlink(os.path.join(train, cls, name), os.path.join(dst, "train", cls, f"{k}_{name}"))
    os.symlink(os.path.join(src, "val"), os.path.join(dst, "val"))
    return dst


def scaling_run(binary, data, weights, epochs, batch, gpus, out, seed):
    """`train` at `batch` per GPU on `gpus` GPUs (1: a plain run; more: torchrun, a rank per
    GPU, the CPUs shared out as loader threads): (median training images/s over the epochs
    after the first, share of training time waiting on communication)."""
    args = [binary, data, "--weights", weights, "--epochs", str(epochs), "--batch-size", str(batch), "--out", out,
            "--device", "cuda", "--seed", str(seed), "--no-export",
            "--workers", str(max(1, (os.cpu_count() or 1) // gpus))]
    if gpus > 1:
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus),
                "--no-python"] + args
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(out, "metrics.csv")) as f:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(f) if r["phase"] == "train"]
    with open(os.path.join(out, "summary.json")) as f:
        share = json.load(f).get("distributed", {}).get("communication_share", 0.0)
    return median(rates[1:] or rates), share


def gpu_bound_limit(device, batch, amp):
    """Training images/s with the data already on the device: the ceiling for any loader."""
    cuda = device.startswith("cuda")
    steps, warm = (30, 5) if cuda else (2, 1)
    model = torchvision.models.resnet18(num_classes=2).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    scaler = torch.amp.GradScaler(enabled=amp)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    for i in range(steps + warm):
        if i == warm:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
        opt.zero_grad()
        with torch.autocast(device.split(":")[0], enabled=amp):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def torchvision_accuracy(best_pt, data, device):
    from torchvision import datasets

    val = datasets.ImageFolder(os.path.join(data, "val"), eval_transform())
    model = torchvision.models.resnet18(num_classes=len(val.classes))
    model.load_state_dict(torch.load(best_pt, map_location="cpu"))
    model = model.to(device).eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(val, batch_size=64, num_workers=4):
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    return correct / len(val)


def infer_run(binary, model, ep, images):
    out = subprocess.run([binary, "--model", model, "--ep", ep, "--format", "jsonl", "--top-k", "2", images],
                         capture_output=True, text=True)
    if out.returncode not in (0, 2):
        return None, out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
    records = {}
    for line in out.stdout.splitlines():
        r = json.loads(line)
        if "label" in r:
            records[r["path"]] = (r["class_index"], {s["class_index"]: s["probability"] for s in r["top_k"]})
    rate = next((float(w) for w, n in zip(out.stderr.split(), out.stderr.split()[1:]) if n == "images/s"), 0.0)
    return records, rate


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(HERE)
    ap.add_argument("--bin", default=os.path.join(root, "target/release"),
                    help="folder with the release train, infer and loader_throughput (its examples/ also searched)")
    ap.add_argument("--data", default=next((p for p in [os.path.join(root, "data/hymenoptera_data"),
                                                         os.path.join(root, "../shared/data/hymenoptera_data")]
                                            if os.path.isdir(p)), None), help="the seed's hymenoptera_data folder")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    dev = a.device
    loader_exe = os.path.join(a.bin, "loader_throughput")
    if not os.path.exists(loader_exe):
        loader_exe = os.path.join(a.bin, "examples", "loader_throughput")
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {name}, {a.epochs} epochs per run",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "init.pth")
        make_initial_weights(weights, None, a.seed)
        runs = {}
        # Mixed precision is a GPU feature (train refuses --amp elsewhere).
        for batch, amp in [(4, False), (64, False)] + ([(64, True)] if dev.startswith("cuda") else []):
            label = f"batch {batch} {'amp' if amp else 'fp32'}"
            print(f"{label}: PyTorch loop ...", flush=True)
            py, _ = pytorch_seed_training(a.data, weights, a.epochs, "finetune", a.seed, batch, dev, amp)
            print(f"{label}: train ...", flush=True)
            out = os.path.join(tmp, f"b{batch}{'amp' if amp else ''}")
            ours, best = train_run(os.path.join(a.bin, "train"), a.data, weights, a.epochs, batch, dev, amp, out, a.seed)
            runs[(batch, amp)] = (out, ours, best)
            py_s, rs_s = median([r[0] for r in py]), median([r[0] for r in ours])
            rows.append((f"s/epoch, {label} (PyTorch / train)", f"{py_s:.2f} / {rs_s:.2f}", f"{rs_s / py_s:.2f}",
                         "<= 0.70" if batch == 4 else ""))
            rows.append((f"best val acc, {label}", f"{max(r[1] for r in py):.4f} / {best:.4f}", "", ""))
            if batch == 64:
                limit = gpu_bound_limit(dev, 64, amp)
                consumed = median([r[2] for r in ours])
                rows.append((f"train images/s vs in-memory limit, {label}", f"{consumed:.0f} / {limit:.0f}",
                             f"{consumed / limit:.2f}", ">= 0.90"))
        if dev.startswith("cuda"):
            print("batch 64 amp channels-last: train ...", flush=True)
            out = os.path.join(tmp, "b64nhwc")
            ours, best = train_run(os.path.join(a.bin, "train"), a.data, weights, a.epochs, 64, dev, True, out, a.seed,
                                   ["--channels-last"])
            nchw_s, nhwc_s = median([r[0] for r in runs[(64, True)][1]]), median([r[0] for r in ours])
            rows.append(("s/epoch, batch 64 amp (NCHW / channels-last)", f"{nchw_s:.2f} / {nhwc_s:.2f}",
                         f"{nhwc_s / nchw_s:.2f}", ""))
        if dev.startswith("cuda") and torch.cuda.is_bf16_supported():
            print("batch 64 amp bfloat16: train ...", flush=True)
            out = os.path.join(tmp, "b64bf16")
            ours, best = train_run(os.path.join(a.bin, "train"), a.data, weights, a.epochs, 64, dev, True, out, a.seed,
                                   ["--amp-dtype", "bfloat16"])
            fp16_s = median([r[0] for r in runs[(64, True)][1]])
            bf16_s = median([r[0] for r in ours])
            rows.append(("s/epoch, batch 64 amp (float16 / bfloat16)", f"{fp16_s:.2f} / {bf16_s:.2f}",
                         f"{bf16_s / fp16_s:.2f}", ""))
            rows.append(("best val acc, batch 64 amp (float16 / bfloat16)", f"{runs[(64, True)][2]:.4f} / {best:.4f}",
                         "", ""))
        for batch in (4, 64):
            out = subprocess.run([loader_exe, os.path.join(a.data, "train"), "2",
                                  str(os.cpu_count()), str(batch)], capture_output=True, text=True, check=True)
            rate = float(out.stdout.split("images/s")[1].split()[0])
            consumed = median([r[2] for r in runs[(batch, False)][1]])
            rows.append((f"loader alone vs train consumption, batch {batch}", f"{rate:.0f} / {consumed:.0f}",
                         f"{rate / consumed:.1f}x", "> 1"))
        out64, _, best64 = runs[(64, False)]
        acc = torchvision_accuracy(os.path.join(out64, "best.pt"), a.data, dev)
        rows.append(("best.pt: torchvision acc / train's", f"{acc:.4f} / {best64:.4f}", f"{acc - best64:+.4f}", "equal"))
        model = os.path.join(out64, "model.onnx")
        val = os.path.join(a.data, "val")
        cpu, cpu_rate = infer_run(os.path.join(a.bin, "infer"), model, "cpu", val)
        gpu, gpu_rate = infer_run(os.path.join(a.bin, "infer"), model, "cuda", val)
        if gpu is None:
            rows.append(("infer --ep cuda", f"not run: {gpu_rate}", "", ""))
        else:
            same = sum(cpu[p][0] == gpu[p][0] for p in cpu)
            worst = max(abs(cpu[p][1][k] - gpu[p][1].get(k, 0.0)) for p in cpu for k in cpu[p][1])
            rows.append(("infer cuda vs cpu: top-1 agree, max |dp|", f"{same}/{len(cpu)}, {worst:.1e}", "",
                         "all, <= 1e-3"))
            rows.append(("infer images/s, cuda", f"{gpu_rate:.1f}", "", ""))
        rows.append((f"infer images/s, cpu ({os.cpu_count()} cores)", f"{cpu_rate:.1f}", "", ""))
        gpus = torch.cuda.device_count() if dev.startswith("cuda") else 0
        if gpus >= 2:
            big = replicated_data(a.data, os.path.join(tmp, "data_x8"), 8)
            print(f"batch 64 per GPU, 1 GPU then {gpus} GPUs: train ...", flush=True)
            one, _ = scaling_run(os.path.join(a.bin, "train"), big, weights, a.epochs, 64, 1, os.path.join(tmp, "g1"),
                                 a.seed)
            many, share = scaling_run(os.path.join(a.bin, "train"), big, weights, a.epochs, 64, gpus,
                                      os.path.join(tmp, f"g{gpus}"), a.seed)
            rows.append((f"train images/s, batch 64 per GPU (1 GPU / {gpus} GPUs)", f"{one:.0f} / {many:.0f}",
                         f"{many / (gpus * one):.2f} efficiency", ">= 0.90"))
            rows.append((f"{gpus} GPUs: training time waiting on communication (rank 0)", f"{100 * share:.1f} %", "", ""))
        else:
            print(f"data-parallel scaling: skipped ({gpus} GPU(s) visible; it needs 2 or more)", flush=True)
            rows.append(("data-parallel scaling, batch 64 per GPU", f"skipped: {gpus} GPU(s) visible", "",
                         ">= 0.90 with 2+ GPUs"))

    print()
    print("| check | value | ratio | target |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
