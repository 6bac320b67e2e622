"""A real Open Inference Protocol client (NVIDIA's tritonclient) against `infer serve`.

Usage: v2_client.py HOST:PORT MODEL IMAGE... -- prints one JSON object:
  {"live", "ready", "metadata", "binary": {file: {"label", "probabilities"}}, "json": {...},
   "tensor": {...}, "top3": [[label, ...], ...]}
"binary" sends the image files as BYTES with the binary tensor data extension (tritonclient's
default), "json" as base64 strings in JSON, "tensor" sends the images preprocessed by
torchvision (PIL, Resize 256, CenterCrop 224, Normalize) as the FP32 `input` tensor.
"""
import base64
import json
import os
import sys

import numpy as np
import tritonclient.http as http

url, model, files = sys.argv[1], sys.argv[2], sys.argv[3:]
client = http.InferenceServerClient(url)
out = {"live": client.is_server_live(), "ready": client.is_model_ready(model), "metadata": client.get_model_metadata(model)}


def run(inputs, binary, classes=0):
    outputs = [http.InferRequestedOutput("probabilities", binary_data=binary),
               http.InferRequestedOutput("labels", binary_data=binary, class_count=classes)]
    result = client.infer(model, inputs, outputs=outputs)
    return result.as_numpy("probabilities"), result.as_numpy("labels")


def text(label):
    return label.decode() if isinstance(label, bytes) else str(label)


def record(probs, labels, names):
    return {os.path.basename(n): {"label": text(l), "probabilities": p.tolist()} for n, p, l in zip(names, probs, labels)}


for mode, binary in (("binary", True), ("json", False)):
    out[mode] = {}
    for i in range(0, len(files), 8):
        chunk = files[i : i + 8]
        raw = [open(f, "rb").read() for f in chunk]
        inp = http.InferInput("image", [len(chunk)], "BYTES")
        data = raw if binary else [base64.b64encode(r).decode() for r in raw]
        inp.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
        probs, labels = run([inp], binary)
        out[mode].update(record(probs, labels, chunk))

# Preprocessed tensors, as a client doing its own preprocessing sends them.
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from torchvision_reference import eval_transform  # noqa: E402

tf = eval_transform()
chunk = files[:8]
x = np.stack([tf(Image.open(f).convert("RGB")).numpy() for f in chunk])
inp = http.InferInput("input", list(x.shape), "FP32")
inp.set_data_from_numpy(x, binary_data=True)
probs, labels = run([inp], True)
out["tensor"] = record(probs, labels, chunk)

# Top 3 through Triton's classification parameter.
inp = http.InferInput("image", [1], "BYTES")
inp.set_data_from_numpy(np.array([open(files[0], "rb").read()], dtype=np.object_), binary_data=True)
_, labels = run([inp], True, classes=3)
out["top3"] = [[text(l) for l in row] for row in labels.reshape(1, -1)]
print(json.dumps(out))
