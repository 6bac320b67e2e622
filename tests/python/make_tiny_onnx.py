"""Small ONNX classifiers for testing `infer` without training one.

Usage: make_tiny_onnx.py OUT [--kind good|rank3|class_mismatch|no_metadata|probabilities
                              |odd_names|int8_metadata|slow|fails_on_white|huge_batch|huge_classes|huge_initializer|dims_vs_data]

The hostile kinds declare absurd sizes: a fixed batch of a billion images, a billion classes,
an initializer of 2^40 values backed by a few bytes, an initializer whose dims disagree with
its data. None of them may make the loader allocate what they declare.

The "good" model averages 28x28 blocks of a 224x224 RGB input (an 8x8 grid per channel) and
maps the 192 values to 3 classes (red, green, blue) with weights that mostly follow each
channel's mean and partly the spatial layout, so rotations change the output.

"fails_on_white" is "good" until an input value exceeds 2.5 (a white or saturated-blue pixel
after normalisation): then its last Gather picks columns out of range and ONNX Runtime fails
the run. Zeros (a warm-up) pass, so it loads; it is for testing what a model error at run time does.
"""
import argparse
import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--kind", default="good")
args = ap.parse_args()

rng = np.random.default_rng(0)
classes = ["red", "green", "blue"]
if args.kind == "odd_names":
    classes = ['red; "rot": 1,2', "grün:vert", "blue;bleu"]
w = np.zeros((3, 192), dtype=np.float32)
for c in range(3):
    w[c, c * 64 : (c + 1) * 64] = 4.0 / 64  # channel mean, in normalised units
w += rng.normal(0, 0.05, size=w.shape).astype(np.float32)  # layout-dependent part
b = np.zeros(3, dtype=np.float32)

batch = 1_000_000_000 if args.kind == "huge_batch" else "batch"
in_shape = [batch, 3, 224, 224] if args.kind != "rank3" else [3, 224, 224]
nodes = []
if args.kind == "rank3":
    nodes.append(helper.make_node("Unsqueeze", ["input", "axes"], ["x4"]))
    src = "x4"
else:
    src = "input"
if args.kind == "slow":
    # A heavy convolution whose result is added back as zero: the same outputs as "good",
    # about a gigaflop more per image, for tests that need the model busy.
    nodes += [
        helper.make_node("Conv", [src, "heavy_w"], ["heavy"], kernel_shape=[7, 7], pads=[3, 3, 3, 3]),
        helper.make_node("ReduceMean", ["heavy"], ["heavy_mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["heavy_mean", "zero"], ["nothing"]),
        helper.make_node("Add", [src, "nothing"], ["busy"]),
    ]
    src = "busy"
nodes += [
    helper.make_node("AveragePool", [src], ["pooled"], kernel_shape=[28, 28], strides=[28, 28]),
    helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
    helper.make_node("Gemm", ["flat", "w", "b"], ["logits" if args.kind != "fails_on_white" else "raw"], transB=1),
]
if args.kind == "fails_on_white":
    nodes += [
        helper.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
        helper.make_node("Greater", ["peak", "threshold"], ["poisoned"]),
        helper.make_node("Cast", ["poisoned"], ["poisoned64"], to=TensorProto.INT64),
        helper.make_node("Mul", ["poisoned64", "ten"], ["offset"]),
        helper.make_node("Add", ["columns", "offset"], ["picked"]),
        helper.make_node("Gather", ["raw", "picked"], ["logits"], axis=1),
    ]
n_out = 1_000_000_000 if args.kind == "huge_classes" else 3
outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, n_out])]
if args.kind == "probabilities":
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 3])]
inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]


def raw_tensor(name, dims, data):
    t = TensorProto()
    t.name, t.data_type, t.raw_data = name, TensorProto.FLOAT, data
    t.dims.extend(dims)
    return t


if args.kind == "slow":
    inits.append(numpy_helper.from_array(rng.normal(0, 0.01, size=(384, 3, 7, 7)).astype(np.float32), "heavy_w"))
    inits.append(numpy_helper.from_array(np.zeros(1, dtype=np.float32), "zero"))
if args.kind == "fails_on_white":
    inits += [
        numpy_helper.from_array(np.array(2.5, dtype=np.float32), "threshold"),
        numpy_helper.from_array(np.array(10, dtype=np.int64), "ten"),
        numpy_helper.from_array(np.array([0, 1, 2], dtype=np.int64), "columns"),
    ]
if args.kind == "huge_initializer":
    inits[1] = raw_tensor("b", [1 << 40], b"\0" * 12)
if args.kind == "dims_vs_data":
    inits[0] = raw_tensor("w", [3, 200], w.tobytes())
if args.kind == "rank3":
    inits.append(numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"))
graph = helper.make_graph(
    nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)], outputs, inits
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
meta = {
    "metadata_version": "1",
    "classes": json.dumps(classes if args.kind not in ("class_mismatch", "huge_classes") else classes + ["purple"]),
    "input_size": "224",
    "resize_size": "256",
    "interpolation": "bilinear",
    "antialias": "true",
    "mean": "[0.485, 0.456, 0.406]",
    "std": "[0.229, 0.224, 0.225]",
    "toolkit": "tests",
}
if args.kind == "int8_metadata":
    meta["quantization"] = json.dumps({
        "scheme": "int8 QDQ", "calibration": "minmax", "calibration_images": 10, "validation_images": 9,
        "fp32_accuracy": 0.9, "int8_accuracy": 0.89, "top1_agreement": 0.99,
    })
if args.kind != "no_metadata":
    helper.set_model_props(model, meta)
if not args.kind.startswith(("huge", "dims")):
    onnx.checker.check_model(model)
onnx.save(model, args.out)
