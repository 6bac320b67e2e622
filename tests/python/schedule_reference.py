"""Reference learning rates and momenta of torch.optim.lr_scheduler.OneCycleLR for the Rust
schedules (tests/tests/recipes_parity.rs).

    schedule_reference.py OUT.json

For several settings, runs SGD(momentum=0.9) with OneCycleLR for total_steps steps and records,
before each optimiser step, the group's lr and momentum (what that step uses).
"""

import json
import sys

import torch

CONFIGS = [
    dict(max_lr=0.1, total_steps=37),
    dict(max_lr=0.01, total_steps=100, pct_start=0.25, div_factor=10.0, final_div_factor=100.0, anneal_strategy="linear"),
    dict(max_lr=0.3, total_steps=50, three_phase=True),
    dict(max_lr=1e-3, total_steps=10, pct_start=0.5, base_momentum=0.8, max_momentum=0.9),
    dict(max_lr=0.05, total_steps=7, pct_start=0.01),
]


def main():
    out = []
    for cfg in CONFIGS:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=cfg["max_lr"], momentum=0.9)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, **cfg)
        lrs, moms = [], []
        for _ in range(cfg["total_steps"]):
            lrs.append(opt.param_groups[0]["lr"])
            moms.append(opt.param_groups[0]["momentum"])
            opt.step()
            sched.step()
        out.append({"config": cfg, "lr": lrs, "momentum": moms})
    json.dump(out, open(sys.argv[1], "w"))


if __name__ == "__main__":
    main()
