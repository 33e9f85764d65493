"""Export form (b): ``sanawm::gdn_scan`` as one opaque op, exported to one custom-domain ONNX node -- the
contract for a TensorRT plugin that does not exist yet (no exporter emits this node by default; bundles use
the decomposed form a, and a TensorRT build of a graph with this node fails for want of the plugin).

The op has a fixed arity (plugins take a fixed input list): ``state`` and ``z`` are always passed (zeros
when the caller has none) and, for the numerator-only camera form (``has_den=False``), ``qz``/``kz`` are
filled with ``q``/``k`` and ignored; ``z_out`` then equals ``z``. ONNX node (domain ``sanawm``, opset 1):

    gdn_scan(q, k, v, beta, gamma, qz, kz, state, z) -> (o, state_out, z_out)
    attributes: reverse (int 0/1), eps (float), has_den (int 0/1),
                plugin_namespace = "sanawm", plugin_version = "1"

which is what TensorRT's ONNX parser needs to find the plugin (op_type = plugin name, ``plugin_namespace``,
``plugin_version``; every other attribute is handed to the plugin).
"""

from __future__ import annotations

import torch

from .plugin_names import PLUGIN_DOMAIN, PLUGIN_NAME
from .reference import gdn_recurrent_ref


@torch.library.custom_op(f"{PLUGIN_DOMAIN}::{PLUGIN_NAME}", mutates_args=())
def gdn_scan_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    gamma: torch.Tensor,
    qz: torch.Tensor,
    kz: torch.Tensor,
    state: torch.Tensor,
    z: torch.Tensor,
    reverse: bool,
    eps: float,
    has_den: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if q.is_cuda:
        from .triton_gdn import gdn_scan_triton as fn
    else:
        fn = gdn_recurrent_ref
    if has_den:
        o, s, zo = fn(q, k, v, beta, gamma, qz, kz, state, z, reverse=reverse, eps=eps)
    else:
        o, s, _ = fn(q, k, v, beta, gamma, None, None, state, None, reverse=reverse, eps=eps)
        zo = z.clone()  # outputs of a custom op must not alias its inputs
    return o, s.contiguous(), zo.contiguous()


@gdn_scan_op.register_fake
def _(q, k, v, beta, gamma, qz, kz, state, z, reverse, eps, has_den):
    return v.new_empty(v.shape), state.new_empty(state.shape), z.new_empty(z.shape)


def gdn_scan_custom_op(q, k, v, beta, gamma, qz=None, kz=None, state=None, z=None, reverse=True, eps=1e-8):
    """Same args/returns as :func:`gdn_recurrent_ref`, routed through the ``sanawm::gdn_scan`` op."""
    from .checks import check_gdn_inputs

    check_gdn_inputs(q, k, v, beta, gamma, qz, kz, state, z, check_finite=not torch.compiler.is_exporting())
    B, H, T, S, D = q.shape
    has_den = qz is not None
    if state is None:
        state = torch.zeros(B, H, D, v.shape[-1], dtype=torch.float32, device=q.device)
    if z is None:
        z = torch.zeros(B, H, D, dtype=torch.float32, device=q.device)
    o, s, zo = gdn_scan_op(
        q, k, v, beta, gamma, qz if has_den else q, kz if has_den else k, state, z, bool(reverse), float(eps), has_den
    )
    return o, s, (zo if has_den else None)


def onnx_translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``."""
    from .onnx_custom_translation import gdn_scan_onnx  # imports onnxscript

    return {torch.ops.sanawm.gdn_scan.default: gdn_scan_onnx}


def strip_internal_attributes(model) -> int:
    """Remove onnxscript's leaked ``_outputs`` attribute from custom-domain nodes (in place on an
    ``onnx.ModelProto``); returns how many were removed. TensorRT would otherwise pass it to the plugin."""
    removed = 0
    graphs = [model.graph] + [f for f in model.functions]
    for g in graphs:
        for node in g.node:
            keep = [a for a in node.attribute if a.name != "_outputs"]
            if len(keep) != len(node.attribute):
                removed += len(node.attribute) - len(keep)
                del node.attribute[:]
                node.attribute.extend(keep)
    return removed
