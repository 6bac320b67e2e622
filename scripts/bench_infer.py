#!/usr/bin/env python3
"""Benchmark: `infer` against the Python way (PIL + torchvision eval transform + onnxruntime).

Same machine, same model.onnx, same ONNX Runtime threads, in one run:
  - throughput on a folder of >= 1000 JPEGs (the seed's val images repeated) at batch 1 and 32,
    counted from the first image to the last (model loading excluded);
  - cold start: the whole process classifying one image (median of --repeats runs);
  - peak resident memory of each process (batch 32 run).

With an int8 model (`--int8`, default: `model.int8.onnx` beside `--model` when it exists, as
`train export --quantize int8` writes it), also:
  - ONNX Runtime compute alone, int8 against fp32, at batch 32 and 1 (same harness, same
    preprocessed images);
  - `infer` end to end on the int8 model against the Python pipeline on the fp32 model;
  - where `infer`'s time goes with int8: decoding, preprocessing and the model, per image.

Run by hand after `scripts/setup.sh` and `cargo build --release -p train -p infer --bins --examples`:
    .venv/bin/python scripts/bench_infer.py [--model models/model.onnx] [--threads 2]
Without --model, a ResNet-18 (2 classes, random weights) is exported for the run.

`bench_infer.py baseline MODEL BATCH THREADS PATH...` is the Python side (used by the benchmark);
`bench_infer.py compute MODEL BATCH THREADS PATH...` times ONNX Runtime alone.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def baseline(model, batch, threads, paths):
    """The Python pipeline, one process: prints images/s."""
    import numpy as np
    import onnxruntime as ort
    from PIL import Image
    from torchvision_reference import eval_transform

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    tf = eval_transform()
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs)
        else:
            files.append(p)
    start = time.perf_counter()
    done = 0
    for i in range(0, len(files), batch):
        xs = []
        for f in files[i : i + batch]:
            with Image.open(f) as img:
                xs.append(tf(img.convert("RGB")).numpy())
        logits = session.run(["logits"], {"input": np.stack(xs)})[0]
        done += int(logits.argmax(1).shape[0])
    secs = time.perf_counter() - start
    print(f"{done / secs:.2f} images/s")


def compute(model, batch, threads, paths):
    """ONNX Runtime alone on preprocessed images: prints images/s (best of 3 passes)."""
    import numpy as np
    import onnxruntime as ort
    from PIL import Image
    from torchvision_reference import eval_transform

    tf = eval_transform()
    files = sorted(os.path.join(d, f) for p in paths for d, _, fs in os.walk(p) for f in fs)[:160]
    x = np.stack([tf(Image.open(f).convert("RGB")).numpy() for f in files])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    session.run(["logits"], {"input": x[:batch]})
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            session.run(["logits"], {"input": x[i : i + batch]})
        best = min(best, time.perf_counter() - start)
    print(f"{len(x) / best:.2f} images/s")


def run(cmd):
    """Runs cmd; returns (wall seconds, peak RSS in MiB, stdout+stderr)."""
    out = tempfile.TemporaryFile()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{text}")
    return wall, usage.ru_maxrss / 1024, text


def rate(text):
    m = re.search(r"([\d.]+) images/s", text)
    if not m:
        raise SystemExit(f"no images/s in output:\n{text}")
    return float(m.group(1))


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("baseline", "compute"):
        model, batch, threads = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        return (baseline if sys.argv[1] == "baseline" else compute)(model, batch, threads, sys.argv[5:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--int8", help="int8 model [default: MODEL.int8.onnx beside --model, when present]")
    ap.add_argument("--data", default=os.path.join(ROOT, "data/hymenoptera_data/val"))
    ap.add_argument("--copies", type=int, default=7, help="times the val images are repeated (153 x 7 = 1071)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--target-dir", default=os.path.join(ROOT, "target/release"))
    args = ap.parse_args()
    infer = os.path.join(args.target_dir, "infer")
    train = os.path.join(args.target_dir, "train")
    for exe in (infer, train):
        if not os.path.exists(exe):
            sys.exit(f"{exe} missing: run `cargo build --release -p train -p infer` first")

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if not model:
            import torch
            import torchvision

            torch.manual_seed(0)
            weights = os.path.join(tmp, "init.pth")
            torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), weights)
            model = os.path.join(tmp, "model.onnx")
            subprocess.run([train, "export", "--weights", weights, "--arch", "resnet18", "--classes", "ants,bees",
                            "--out", model], check=True, capture_output=True)
        images = os.path.join(tmp, "images")
        sources = sorted(os.path.join(d, f) for d, _, fs in os.walk(args.data) for f in fs)
        for c in range(args.copies):
            dst = os.path.join(images, f"copy{c}")
            os.makedirs(dst)
            for i, src in enumerate(sources):
                shutil.copy(src, os.path.join(dst, f"{i:04d}_{os.path.basename(src)}"))
        n = len(sources) * args.copies
        one = os.path.join(images, "copy0", sorted(os.listdir(os.path.join(images, "copy0")))[0])
        t = str(args.threads)
        print(f"{n} JPEGs, model {model}, ONNX Runtime threads {t}, {os.cpu_count()} CPUs")

        ours_cmd = lambda b, paths: [infer, "--model", model, "--ep", "cpu", "--threads", t, "--batch-size", str(b), "-q", *paths]
        py_cmd = lambda b, paths: [PY, os.path.abspath(__file__), "baseline", model, str(b), t, *paths]
        # Warm the page cache and both programs' libraries.
        run(ours_cmd(32, [images]))
        run(py_cmd(32, [images]))

        rows = []
        rss = {}
        for b in (1, 32):
            ours_wall, ours_rss, ours_out = run(ours_cmd(b, [images]))
            py_wall, py_rss, py_out = run(py_cmd(b, [images]))
            rows.append((b, rate(ours_out), rate(py_out)))
            if b == 32:
                rss = {"ours": ours_rss, "python": py_rss}
        cold = {"ours": [], "python": []}
        for _ in range(args.repeats):
            cold["ours"].append(run(ours_cmd(1, [one]))[0])
            cold["python"].append(run(py_cmd(1, [one]))[0])

        int8 = args.int8 or (model[: -len(".onnx")] + ".int8.onnx" if model.endswith(".onnx") else None)
        int8_rows, stages = [], None
        if int8 and os.path.exists(int8):
            compute_cmd = lambda m, b: [PY, os.path.abspath(__file__), "compute", m, str(b), t, args.data]
            int8_cmd = lambda b: [infer, "--model", int8, "--ep", "cpu", "--threads", t, "--batch-size", str(b), "-q", images]
            run(int8_cmd(32))
            for b in (32, 1):
                ort_fp32 = rate(run(compute_cmd(model, b))[2])
                ort_int8 = rate(run(compute_cmd(int8, b))[2])
                ours_int8 = rate(run(int8_cmd(b))[2])
                py = dict((r[0], r[2]) for r in rows)[b]
                int8_rows.append((b, ort_fp32, ort_int8, ours_int8, py))
            example = os.path.join(args.target_dir, "examples/stage_times")
            if os.path.exists(example):
                files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(images, "copy0")) for f in fs)
                stages = run([example, int8, t, *files])[2].strip()

    print()
    for b, ours, py in rows:
        print(f"throughput batch {b:>2}: infer {ours:7.1f} img/s, python {py:7.1f} img/s, ratio {ours / py:.2f}x")
    co, cp = statistics.median(cold["ours"]), statistics.median(cold["python"])
    print(f"cold start (one image, whole process, median of {args.repeats}): infer {co:.2f} s, python {cp:.2f} s, ratio {co / cp:.2f}")
    print(f"peak RSS (batch 32 run): infer {rss['ours']:.0f} MiB, python {rss['python']:.0f} MiB, ratio {rss['ours'] / rss['python']:.2f}")
    for b, of, oi, ours, py in int8_rows:
        print(f"int8, batch {b:>2}: ONNX Runtime compute fp32 {of:7.1f} img/s, int8 {oi:7.1f} img/s, ratio {oi / of:.2f}x; "
              f"infer int8 end to end {ours:7.1f} img/s vs python fp32 pipeline {py:7.1f} img/s, ratio {ours / py:.2f}x")
    if stages:
        print(f"infer with int8, {stages}")


if __name__ == "__main__":
    main()
