"""onnxscript translation of ``sanawm::fp8_qdq`` (kept apart: onnxscript resolves annotations at module
level, which ``from __future__ import annotations`` would turn into strings)."""

import onnxscript
from onnxscript import FLOAT

sanawm_opset = onnxscript.values.Opset("sanawm", 1)


@onnxscript.script(sanawm_opset)
def fp8_qdq_onnx(x: FLOAT, scale: FLOAT, axis: int, tag: str) -> FLOAT:
    return sanawm_opset.FP8QDQ(x, scale, axis=axis, tag=tag)
