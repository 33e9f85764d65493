"""onnxscript translation of ``sanawm::gdn_scan`` into one node of the custom ONNX domain ``sanawm``.

Kept in its own module, imported lazily by :func:`.custom_op.onnx_translation_table`, because
(1) it needs onnxscript at import time and (2) onnxscript's converter evaluates the type annotations in
module globals, which breaks under ``from __future__ import annotations``. It must be a scripted function:
a plain-python translation looks the custom op up in the ONNX schema registry and fails ("OpSchema not
found"). ``_outputs=3`` leaks onto the node as an attribute: :func:`.custom_op.strip_internal_attributes`.
Inputs are typed FLOAT (float32): export the op with float32 tensors (the engine casts at its inputs).
"""

from onnxscript import FLOAT, script
from onnxscript.values import Opset

from .plugin_names import PLUGIN_DOMAIN

sanawm_plugins = Opset(PLUGIN_DOMAIN, 1)


@script(opset=sanawm_plugins)
def gdn_scan_onnx(
    q: FLOAT,
    k: FLOAT,
    v: FLOAT,
    beta: FLOAT,
    gamma: FLOAT,
    qz: FLOAT,
    kz: FLOAT,
    state: FLOAT,
    z: FLOAT,
    reverse: bool,
    eps: float,
    has_den: bool,
) -> tuple[FLOAT, FLOAT, FLOAT]:
    o, state_out, z_out = sanawm_plugins.gdn_scan(
        q, k, v, beta, gamma, qz, kz, state, z,
        reverse=reverse, eps=eps, has_den=has_den,
        plugin_namespace="sanawm", plugin_version="1", _outputs=3,
    )  # fmt: skip
    return o, state_out, z_out
