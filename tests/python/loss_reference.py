"""Reference values of torch.nn.CrossEntropyLoss for the Rust loss (tests/tests/recipes_parity.rs).

    loss_reference.py OUT.json

Writes float32 logits, hard labels, probability targets (a softmax and a Mixup-style blend of
two one-hot rows), scikit-learn "balanced" class weights from made-up class counts, and for every
label smoothing, with and without the weights, hard and soft: the mean loss and its gradient
with respect to the logits.
"""

import json
import sys

import torch


def main():
    torch.manual_seed(0)
    n, c = 9, 5
    logits = (torch.randn(n, c) * 3).float()
    labels = torch.randint(0, c, (n,))
    soft = torch.softmax(torch.randn(n, c), dim=1)
    lam = 0.3
    eye = torch.eye(c)
    mixed = lam * eye[labels] + (1 - lam) * eye[labels.flip(0)]
    counts = [40, 12, 7, 30, 3]
    total = sum(counts)
    weights = [total / (len(counts) * k) for k in counts]
    cases = []
    for eps in [0.0, 0.05, 0.1, 0.3, 1.0]:
        for weighted in [False, True]:
            w = torch.tensor(weights, dtype=torch.float32) if weighted else None
            loss_fn = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=eps)
            for kind, target in [("hard", labels), ("soft", soft), ("mixed", mixed)]:
                x = logits.clone().requires_grad_(True)
                loss = loss_fn(x, target)
                loss.backward()
                cases.append({
                    "eps": eps, "weighted": weighted, "kind": kind,
                    "loss": loss.item(), "grad": x.grad.flatten().tolist(),
                })
    json.dump({
        "n": n, "c": c, "logits": logits.flatten().tolist(), "labels": labels.tolist(),
        "soft": soft.flatten().tolist(), "mixed": mixed.flatten().tolist(),
        "counts": counts, "weights": weights, "cases": cases,
    }, open(sys.argv[1], "w"))


if __name__ == "__main__":
    main()
