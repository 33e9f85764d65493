"""onnxscript translation of ``sanawm::nvfp4_qdq`` (apart for the same reason as ``_fp8_onnxscript``: onnxscript
resolves annotations at module level, which ``from __future__ import annotations`` would turn into strings)."""

import onnxscript
from onnxscript import FLOAT

sanawm_opset = onnxscript.values.Opset("sanawm", 1)


@onnxscript.script(sanawm_opset)
def nvfp4_qdq_onnx(x: FLOAT, global_scale: FLOAT, tag: str) -> FLOAT:
    return sanawm_opset.NVFP4QDQ(x, global_scale, tag=tag)
