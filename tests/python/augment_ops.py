"""Reference outputs of torchvision's automatic-augmentation operations, for the Rust parity
test (tests/tests/augment_parity.rs).

    augment_ops.py SPEC.json OUT_DIR

SPEC lists PNG images and cases {"op": NAME, "magnitude": M}. Each case runs exactly what the
policies run: `TrivialAugmentWide()._apply_image_or_video_transform(image, op, magnitude,
interpolation=NEAREST, fill=<the policy's fill>)`, once on the PIL image (Pillow kernels) and once
on the same pixels as a uint8 CHW tensor (torchvision's tensor kernels). The pseudo-op "Hue" is
`F.adjust_hue(image, magnitude)` (ColorJitter's hue). Writes OUT_DIR/pil_<i>.bin and
OUT_DIR/tensor_<i>.bin (the HWC RGB bytes of every case, concatenated in order), and
OUT_DIR/tables.json: the policies' magnitude tables for the requested bins and image sizes, the
operation order and the signed flags.
"""

import json
import os
import sys

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.transforms.v2 import RandAugment, TrivialAugmentWide


def main():
    spec = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    ta = TrivialAugmentWide()
    for i, path in enumerate(spec["images"]):
        img = Image.open(path).convert("RGB")
        tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()
        pil_bytes, tensor_bytes = [], []
        for case in spec["cases"]:
            op, m = case["op"], float(case["magnitude"])
            if op == "Hue":
                p = F.adjust_hue(img, hue_factor=m)
                q = F.adjust_hue(tensor, hue_factor=m)
            else:
                p = ta._apply_image_or_video_transform(img, op, m, interpolation=ta.interpolation, fill=ta._fill)
                q = ta._apply_image_or_video_transform(tensor, op, m, interpolation=ta.interpolation, fill=ta._fill)
            pil_bytes.append(np.asarray(p.convert("RGB"), dtype=np.uint8).tobytes())
            tensor_bytes.append(q.permute(1, 2, 0).contiguous().numpy().astype(np.uint8).tobytes())
        with open(os.path.join(out, f"pil_{i}.bin"), "wb") as f:
            f.write(b"".join(pil_bytes))
        with open(os.path.join(out, f"tensor_{i}.bin"), "wb") as f:
            f.write(b"".join(tensor_bytes))

    tables = {}
    for name, cls in [("TrivialAugmentWide", TrivialAugmentWide), ("RandAugment", RandAugment)]:
        space = cls._AUGMENTATION_SPACE
        entry = {"ops": list(space.keys()), "signed": [bool(s) for _, s in space.values()], "tables": []}
        for bins in spec["bins"]:
            for h, w in spec["sizes"]:
                for op, (fn, _) in space.items():
                    values = fn(bins, h, w)
                    entry["tables"].append({
                        "op": op, "bins": bins, "height": h, "width": w,
                        "values": None if values is None else [float(v) for v in values.tolist()],
                    })
        tables[name] = entry
    with open(os.path.join(out, "tables.json"), "w") as f:
        json.dump(tables, f)


if __name__ == "__main__":
    main()
