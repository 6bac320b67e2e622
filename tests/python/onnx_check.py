"""onnx.checker on an exported model: onnx_check.py MODEL.onnx (exit status 0 when valid)."""
import sys

import onnx

model = onnx.load(sys.argv[1])
onnx.checker.check_model(model, full_check=True)
print(f"ok: ir_version {model.ir_version}, opset {[o.version for o in model.opset_import]}")
