#!/usr/bin/env python3
"""Benchmark: `infer serve` against the `infer` CLI and a Python service built the usual way.

Same machine, same model.onnx, same ONNX Runtime threads. One image per request (the seed's
val images, sent as encoded files), at concurrency 1, 8 and 32:
  - `infer serve` (dynamic batching), POST /v1/classify;
  - a FastAPI + uvicorn service: PIL + torchvision's eval transform + onnxruntime, one
    request at a time through the model (the tutorial's code behind an HTTP endpoint);
and, for reference, the `infer` CLI classifying the same images from disk (batch 32) and
ONNX Runtime alone on preprocessed images (the model's compute ceiling on this machine).
Prints throughput, p50/p99 latency, each server's peak resident memory, the ratios the
serving targets are stated in, and how many answers agree with the CLI. Both models when an
int8 one exists (each served by both services), then int8 `infer serve` against fp32 Python.

Run by hand after `scripts/setup.sh` and `cargo build --release -p infer`:
    .venv/bin/python scripts/bench_serve.py [--model models/model.onnx] [--threads 2]

`bench_serve.py python-service MODEL THREADS PORT` runs the Python service alone.
"""

import argparse
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def python_service(model, threads, port):
    """The Python way: FastAPI, PIL, torchvision transforms, onnxruntime."""
    import io

    import numpy as np
    import onnxruntime as ort
    import torch
    import uvicorn
    from fastapi import FastAPI, HTTPException, Request
    from PIL import Image
    from starlette.concurrency import run_in_threadpool
    from torchvision_reference import eval_transform

    torch.set_num_threads(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    classes = json.loads(meta["classes"]) if "classes" in meta else None
    tf = eval_transform()
    app = FastAPI()

    def predict(data):
        try:
            with Image.open(io.BytesIO(data)) as img:
                x = tf(img.convert("RGB")).unsqueeze(0).numpy()
        except Exception as e:
            raise HTTPException(status_code=400, detail=str(e))
        logits = session.run(["logits"], {"input": x})[0][0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        i = int(p.argmax())
        return {"label": classes[i] if classes else str(i), "confidence": float(p[i])}

    @app.get("/health")
    def health():
        return {"ok": True}

    @app.post("/v1/classify")
    async def classify(request: Request):
        return await run_in_threadpool(predict, await request.body())

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", path)
        return c.getresponse().status
    except OSError:
        return None


def wait_ready(port, path, proc, limit=120):
    start = time.time()
    while get(port, path) != 200:
        if proc.poll() is not None or time.time() - start > limit:
            sys.exit(f"server on port {port} never became ready")
        time.sleep(0.05)


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load(port, images, concurrency, requests):
    """`requests` POSTs of one image each from `concurrency` kept-alive connections:
    (images/s, latencies in ms, answers by image index)."""
    latencies, answers, errors = [], {}, []
    counter = iter(range(requests))
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            name, data = images[i % len(images)]
            t = time.perf_counter()
            conn.request("POST", "/v1/classify", body=data, headers={"Content-Type": "application/octet-stream"})
            r = conn.getresponse()
            body = r.read()
            ms = (time.perf_counter() - t) * 1e3
            with lock:
                if r.status != 200:
                    errors.append(f"{name}: {r.status} {body[:200]!r}")
                    continue
                latencies.append(ms)
                answers[name] = json.loads(body.splitlines()[0])["label"]

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - start
    if errors:
        sys.exit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return requests / secs, latencies, answers


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def bench_model(a, model, data, paths, images):
    """Every measurement for one model; prints its table and the target ratios."""
    print(f"\n## {os.path.basename(model)}: {len(images)} images from {data}, {a.threads} threads, {a.requests} requests a level")
    # ONNX Runtime alone on preprocessed images: the ceiling any server of this model meets.
    out = subprocess.run([PY, os.path.join(ROOT, "scripts/bench_infer.py"), "compute", model, "32", str(a.threads), data],
                         capture_output=True, text=True, check=True)
    ceiling = float(re.search(r"([\d.]+) images/s", out.stdout).group(1))
    print(f"ONNX Runtime compute alone (batch 32): {ceiling:.1f} images/s")
    # The CLI on the same images from disk, repeated to the same count as one level.
    common = [a.infer, "--model", model, "--ep", "cpu", "--threads", str(a.threads)]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.requests):
            src = paths[i % len(paths)]
            os.symlink(src, os.path.join(tmp, f"{i:05d}{os.path.splitext(src)[1]}"))
        out = subprocess.run(common + ["--batch-size", "32", "--quiet", tmp], capture_output=True, text=True)
        cli_ips = float(re.search(r"([\d.]+) images/s", out.stderr).group(1))
    out = subprocess.run(common + ["--format", "jsonl", data], capture_output=True, text=True)
    records = [json.loads(line) for line in out.stdout.splitlines()]
    cli_labels = {os.path.relpath(r["path"], data): r.get("label") for r in records}
    print(f"infer CLI (batch 32): {cli_ips:.1f} images/s")

    rows, rss, agree = {}, {}, {}
    servers = {
        "infer serve": lambda port: (
            [a.infer, "serve", "--model", model, "--ep", "cpu", "--threads", str(a.threads), "--port", str(port),
             "--max-batch", "32", "--max-delay-ms", "5"],
            "/v2/health/ready",
        ),
        "Python (FastAPI)": lambda port: (
            [PY, os.path.abspath(__file__), "python-service", model, str(a.threads), str(port)],
            "/health",
        ),
    }
    for name, command in servers.items():
        port = free_port()
        cmd, ready = command(port)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, ready, proc)
            load(port, images, 4, 32)  # warm-up
            for c in (1, 8, 32):
                ips, lat, answers = load(port, images, c, a.requests)
                rows[(name, c)] = (ips, statistics.median(lat), pct(lat, 99))
                agree[name] = sum(cli_labels.get(k) == v for k, v in answers.items()), len(answers)
                r = rows[(name, c)]
                print(f"{name:17} c={c:<3} {ips:7.1f} images/s  p50 {r[1]:7.1f} ms  p99 {r[2]:7.1f} ms")
            rss[name] = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    rs, py = "infer serve", "Python (FastAPI)"
    print()
    print("| concurrency | infer serve images/s | p50 ms | p99 ms | Python images/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for c in (1, 8, 32):
        r, p = rows[(rs, c)], rows[(py, c)]
        print(f"| {c} | {r[0]:.1f} | {r[1]:.1f} | {r[2]:.1f} | {p[0]:.1f} | {p[1]:.1f} | {p[2]:.1f} |")
    print(f"| peak RSS | {rss[rs]:.0f} MB | | | {rss[py]:.0f} MB | | |")
    print(f"\nCLI (batch 32, from disk): {cli_ips:.1f} images/s; ONNX Runtime compute alone: {ceiling:.1f} images/s")
    r32, p32 = rows[(rs, 32)][0], rows[(py, 32)][0]
    checks = [
        ("c=32 throughput vs the CLI", r32 / cli_ips, ">= 0.90", r32 / cli_ips >= 0.9),
        ("c=32 throughput vs Python", r32 / p32, ">= 2", r32 >= 2 * p32),
        ("c=1 p50 latency vs Python", rows[(rs, 1)][1] / rows[(py, 1)][1], "<= 1", rows[(rs, 1)][1] <= rows[(py, 1)][1]),
        ("peak RSS vs Python", rss[rs] / rss[py], "<= 0.5", rss[rs] <= 0.5 * rss[py]),
    ]
    for what, ratio, target, ok in checks:
        print(f"{what:28} {ratio:6.2f}  (target {target}: {'met' if ok else 'NOT met'})")
    print(f"Python at c=32 reaches {p32 / ceiling:.0%} of the model's compute ceiling; 2x Python is {2 * p32 / ceiling:.0%} of it")
    for name, (same, n) in agree.items():
        print(f"{name}: {same} of {n} labels equal the CLI's")
    return rows, rss


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="model(s) to serve [default: models/model.onnx and, when "
                    "present, models/model.int8.onnx]")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--requests", type=int, default=306, help="requests per concurrency level")
    ap.add_argument("--images", default=None, help="folder of images [default: the seed's val images]")
    ap.add_argument("--infer", default=os.path.join(ROOT, "target/release/infer"))
    a = ap.parse_args()
    models = a.model or [m for m in (os.path.join(ROOT, "models/model.onnx"), os.path.join(ROOT, "models/model.int8.onnx"))
                         if os.path.exists(m)]
    data = a.images or next(
        p for p in [os.path.join(ROOT, "data/hymenoptera_data/val"), os.path.join(ROOT, "../shared/data/hymenoptera_data/val")]
        if os.path.isdir(p)
    )
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(data) for f in fs if not f.endswith(".gif"))
    images = []
    for p in paths:
        with open(p, "rb") as f:
            images.append((os.path.relpath(p, data), f.read()))
    results = {m: bench_model(a, m, data, paths, images) for m in models}
    if len(models) == 2:
        (_, (fp_rows, _)), (_, (q_rows, q_rss)) = results.items()
        py = "Python (FastAPI)"
        print(f"\ninfer serve on the int8 model vs the Python service on the fp32 model, c=32: "
              f"{q_rows[('infer serve', 32)][0] / fp_rows[(py, 32)][0]:.2f}x images/s; "
              f"c=1 p50 {q_rows[('infer serve', 1)][1] / fp_rows[(py, 1)][1]:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "python-service":
        python_service(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
