#!/usr/bin/env python3
"""Benchmark: the seed's PyTorch training against `train`, same machine, data and initial weights.

Runs the tutorial's loop (torchvision ResNet-18, batch 4, 4 loader workers, SGD lr 0.001
momentum 0.9, StepLR 7/0.1, finetune) for --epochs epochs, then `train` with the same settings
from the same initial weights, and prints seconds per epoch, validation accuracy and ratios.
The two alternate for --rounds rounds and the ratio is taken round by round, so that a drift in
the machine's speed does not decide it. It also times `train`'s data loader alone against the
images/s that training consumed.

Run by hand after `scripts/setup.sh` and `cargo build --release -p train --bins --examples`:
    .venv/bin/python scripts/bench_train.py [--epochs 5] [--data data/hymenoptera_data]
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
import warnings

import torch
import torchvision
from torch import nn
from torchvision import datasets
from torchvision_reference import eval_transform, train_transform

# The seed uses 4 workers whatever the machine; PyTorch warns about that on 2 cores.
warnings.filterwarnings("ignore", message="This DataLoader will create")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_initial_weights(path, pretrained, seed):
    """ResNet-18 with a 2-class head, from ImageNet weights when given, else random."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18()
    if pretrained:
        model.load_state_dict(torch.load(pretrained, map_location="cpu"))
    model.fc = nn.Linear(model.fc.in_features, 2)
    torch.save(model.state_dict(), path)


def pytorch_seed_training(data, weights, epochs, mode, seed, batch=4, device="cpu", amp=False):
    """The tutorial's train_model, timed per epoch (on `device`; with `amp`, torch.autocast and
    a GradScaler as PyTorch's mixed-precision recipe has them)."""
    torch.manual_seed(seed)
    tfs = {"train": train_transform(), "val": eval_transform()}
    cuda = device.startswith("cuda")
    sets = {x: datasets.ImageFolder(os.path.join(data, x), tfs[x]) for x in ["train", "val"]}
    loaders = {x: torch.utils.data.DataLoader(sets[x], batch_size=batch, shuffle=True, num_workers=4, pin_memory=cuda)
               for x in sets}
    sizes = {x: len(sets[x]) for x in sets}
    model = torchvision.models.resnet18()
    model.fc = nn.Linear(512, 2)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    model = model.to(device)
    if mode == "feature-extract":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("fc.")
    criterion = nn.CrossEntropyLoss()
    params = model.fc.parameters() if mode == "feature-extract" else model.parameters()
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    scaler = torch.amp.GradScaler(enabled=amp)
    rows = []
    for epoch in range(epochs):
        start = time.perf_counter()
        acc = {}
        for phase in ["train", "val"]:
            model.train() if phase == "train" else model.eval()
            corrects = 0
            for inputs, labels in loaders[phase]:
                inputs, labels = inputs.to(device, non_blocking=cuda), labels.to(device, non_blocking=cuda)
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"), torch.autocast(device.split(":")[0], enabled=amp):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                if phase == "train":
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                corrects += torch.sum(preds == labels.data).item()
            if phase == "train":
                scheduler.step()
            acc[phase] = corrects / sizes[phase]
        seconds = time.perf_counter() - start
        rows.append((seconds, acc["val"]))
        print(f"  pytorch epoch {epoch + 1}: {seconds:.1f} s, val acc {acc['val']:.4f}", flush=True)
    return rows, sizes


def ours(data, weights, epochs, mode, out, binary, seed):
    cmd = [binary, data, "--weights", weights, "--epochs", str(epochs), "--mode", mode, "--out", out,
           "--device", "cpu", "--seed", str(seed)]
    subprocess.run(cmd, check=True)
    with open(os.path.join(out, "metrics.csv")) as f:
        records = list(csv.DictReader(f))
    by_epoch = {}
    for r in records:
        e = by_epoch.setdefault(int(r["epoch"]), {})
        e[r["phase"]] = r
    rows = []
    for e in sorted(by_epoch):
        t, v = by_epoch[e]["train"], by_epoch[e]["val"]
        rows.append((float(t["seconds"]) + float(v["seconds"]), float(v["acc"]), float(t["images_per_s"])))
        print(f"  ours    epoch {e}: {rows[-1][0]:.1f} s, val acc {rows[-1][1]:.4f}", flush=True)
    return rows


def loader_throughput(data, example):
    out = subprocess.run([example, os.path.join(data, "train"), "3"], check=True, capture_output=True, text=True)
    print(out.stdout.strip())
    for line in out.stdout.splitlines():
        if line.startswith("images/s"):
            return float(line.split()[1])
    raise SystemExit("loader example printed no images/s line")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "data/hymenoptera_data"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mode", default="finetune", choices=["finetune", "feature-extract"])
    ap.add_argument("--pretrained", help="torchvision ImageNet weights to start from (default: random init)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-dir", default=os.path.join(ROOT, "target/release"))
    args = ap.parse_args()
    binary = os.path.join(args.target_dir, "train")
    example = os.path.join(args.target_dir, "examples/loader_throughput")
    for exe in (binary, example):
        if not os.path.exists(exe):
            sys.exit(f"{exe} missing: run `cargo build --release -p train --bins --examples` first")

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; {args.epochs} epochs x {args.rounds} rounds, {args.mode}, "
          f"{'pretrained ' + args.pretrained if args.pretrained else 'random initial weights'}")

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "init.pth")
        make_initial_weights(weights, args.pretrained, args.seed)
        for r in range(args.rounds):
            print(f"round {r + 1}: PyTorch (seed tutorial loop)", flush=True)
            py, sizes = pytorch_seed_training(args.data, weights, args.epochs, args.mode, args.seed)
            print(f"round {r + 1}: train (this toolkit)", flush=True)
            rs = ours(args.data, weights, args.epochs, args.mode, os.path.join(tmp, f"out{r}"), binary, args.seed)
            rounds.append((py, rs))
        print("loader alone:")
        loader_rate = loader_throughput(args.data, example)

    print()
    print(f"images: pytorch train/val {sizes['train']}/{sizes['val']} (ImageFolder skips the .gif; train reads it)")
    ratios = []
    for i, (py, rs) in enumerate(rounds):
        py_s, rs_s = median([e[0] for e in py]), median([e[0] for e in rs])
        ratios.append(rs_s / py_s)
        print(f"round {i + 1}: seconds per epoch (median) pytorch {py_s:.1f}, ours {rs_s:.1f}, ratio {rs_s / py_s:.2f}")
    print(f"ratio ours/pytorch, median over rounds: {median(ratios):.2f}")
    py, rs = rounds[0]
    print(f"val acc after {args.epochs} epochs: pytorch {py[-1][1]:.4f}, ours {rs[-1][1]:.4f}, "
          f"difference {100 * (rs[-1][1] - py[-1][1]):+.1f} points")
    train_rate = median([e[2] for _, rs in rounds for e in rs])
    print(f"loader alone {loader_rate:.1f} img/s vs training consumption {train_rate:.1f} img/s: "
          f"{loader_rate / train_rate:.1f}x")


if __name__ == "__main__":
    main()
