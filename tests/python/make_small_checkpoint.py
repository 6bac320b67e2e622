"""Small torch.save and safetensors files of every shape the weight reader accepts, as seeds
for the hostile-file tests (mutating a 45 MB ResNet thousands of times would be slow).

Usage: make_small_checkpoint.py OUTDIR -- writes state_zip.pt, state_legacy.pt,
state.safetensors, wrapped.pt ({"model": ..., "epoch": ...}), parameters.pt (nn.Parameter values,
which pickle through torch._utils._rebuild_parameter) and views.pt (a transposed view).
"""
import os
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
torch.manual_seed(0)
sd = {
    "conv1.weight": torch.randn(4, 3, 3, 3),
    "bn1.running_mean": torch.randn(4),
    "bn1.num_batches_tracked": torch.tensor(5),
    "fc.weight": torch.randn(2, 4).half(),
    "fc.bias": torch.zeros(2, dtype=torch.float64),
    "mask": torch.tensor([True, False, True]),
}
torch.save(sd, os.path.join(out, "state_zip.pt"))
torch.save(sd, os.path.join(out, "state_legacy.pt"), _use_new_zipfile_serialization=False)
save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out, "state.safetensors"))
torch.save({"model": sd, "epoch": 3, "best_acc": 0.5, "names": ["a", "b"]}, os.path.join(out, "wrapped.pt"))
torch.save({"w": torch.nn.Parameter(torch.randn(3, 2))}, os.path.join(out, "parameters.pt"))
base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
torch.save({"t": base.t(), "row": base[1]}, os.path.join(out, "views.pt"))
