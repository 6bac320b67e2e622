"""Writes torchvision-format ResNet weight files for the tests (no downloads needed).

Usage: make_weights.py OUT --arch resnet18 --classes N --seed S --format zip|legacy|safetensors
                       [--break missing|unexpected|shape]
"""
import argparse

import torch
import torchvision

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--arch", default="resnet18")
ap.add_argument("--classes", type=int, default=1000)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--format", default="zip", choices=["zip", "legacy", "safetensors"])
ap.add_argument("--break", dest="breakage", choices=["missing", "unexpected", "shape"])
args = ap.parse_args()

torch.manual_seed(args.seed)
model = getattr(torchvision.models, args.arch)(num_classes=args.classes)
# BatchNorm as after training: varied affine parameters, and running statistics measured on
# data (a few random batches), so that eval-mode activations keep a trained network's scale.
with torch.no_grad():
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.1, 0.1)
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3, 224, 224))
    model.eval()
sd = model.state_dict()
if args.breakage == "missing":
    del sd["layer2.0.conv1.weight"]
elif args.breakage == "unexpected":
    sd["layer5.0.conv1.weight"] = torch.zeros(3)
elif args.breakage == "shape":
    sd["layer3.1.bn2.weight"] = torch.ones(7)

if args.format == "safetensors":
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, args.out)
else:
    torch.save(sd, args.out, _use_new_zipfile_serialization=args.format == "zip")
