"""torchvision's ResNet on given weights and inputs, for parity tests.

Usage: torchvision_forward.py WEIGHTS INPUT.f32 OUT.f32 --arch A --classes N --batch B
         [--train-steps K --labels 0,1,.. --lr LR --momentum M]
Eval mode writes the logits. With --train-steps, runs K SGD steps in train mode on the batch
and writes: the K losses, then fc.weight, conv1.weight, bn1.running_mean, layer4.1.bn2.bias.
"""
import argparse

import numpy as np
import torch
import torchvision

ap = argparse.ArgumentParser()
ap.add_argument("weights")
ap.add_argument("input")
ap.add_argument("out")
ap.add_argument("--arch", default="resnet18")
ap.add_argument("--classes", type=int, required=True)
ap.add_argument("--batch", type=int, required=True)
ap.add_argument("--train-steps", type=int, default=0)
ap.add_argument("--labels", default="")
ap.add_argument("--lr", type=float, default=0.01)
ap.add_argument("--momentum", type=float, default=0.9)
args = ap.parse_args()

torch.use_deterministic_algorithms(True)
model = getattr(torchvision.models, args.arch)(num_classes=args.classes)
# The one-line load the README documents (torch.load defaults to weights_only=True).
model.load_state_dict(torch.load(args.weights))
x = torch.from_numpy(np.fromfile(args.input, dtype="<f4").reshape(args.batch, 3, 224, 224))
out = []
if args.train_steps == 0:
    model.eval()
    with torch.no_grad():
        out.append(model(x).numpy().ravel())
else:
    model.train()
    y = torch.tensor([int(v) for v in args.labels.split(",")])
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    losses = []
    for _ in range(args.train_steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    sd = model.state_dict()
    out.append(np.array(losses, dtype="<f4"))
    for k in ["fc.weight", "conv1.weight", "bn1.running_mean", "layer4.1.bn2.bias"]:
        out.append(sd[k].numpy().ravel())
np.concatenate(out).astype("<f4").tofile(args.out)
