"""Frame-wise Gated DeltaNet recurrence: torch reference, Triton kernels and ONNX export forms.

Public entry point for model code is :func:`gdn_scan`; it dispatches to the Triton kernels on CUDA, to the
export-friendly decomposed graph while ``torch.export`` / ``torch.onnx.export`` is tracing, and to the
torch reference elsewhere. All forms share the layouts documented in :mod:`.reference`.

Files: ``reference.py`` (oracle ``gdn_recurrent_ref`` and phase-split ``gdn_chunk_ref``),
``triton_phase_a.py`` / ``triton_scan.py`` / ``triton_output.py`` (kernels), ``triton_gdn.py`` (public
Triton fn), ``onnx_decomposed.py`` (export form a), ``custom_op.py`` (export form b: ``sanawm::gdn_scan``
and its ONNX node, a contract for a future TensorRT plugin; none exists), ``aot.py`` (Triton AOT compile to PTX).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .onnx_decomposed import gdn_scan_decomposed
from .reference import gdn_chunk_ref, gdn_recurrent_ref

BACKENDS = ("auto", "reference", "triton", "decomposed", "custom_op")
BACKEND_ENV = "SANAWM_GDN_BACKEND"  # overrides backend="auto" (e.g. "triton" with TRITON_INTERPRET=1 on CPU)


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def select_backend(q: torch.Tensor, backend: str | None = None) -> str:
    """The backend ``gdn_scan`` will use for ``q`` (resolves "auto")."""
    backend = backend or "auto"
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"gdn_scan: backend must be one of {BACKENDS}, got {backend!r} (check ${BACKEND_ENV})")
    if backend != "auto":
        return backend
    if torch.compiler.is_exporting():
        return "decomposed"
    if torch.compiler.is_compiling():
        return "reference"  # Triton launchers are not traced by dynamo here; the reference compiles
    if q.is_cuda and _triton_available():
        return "triton"
    return "reference"


def gdn_scan(q, k, v, beta, gamma, qz=None, kz=None, state=None, z=None, reverse=True, eps=1e-8, backend=None):
    """Frame-wise GDN (see :func:`gdn_recurrent_ref` for shapes). Returns ``(o, state_out, z_out)``.

    ``backend``: None/"auto" (default dispatch, overridable with ``$SANAWM_GDN_BACKEND``), "reference",
    "triton", "decomposed" (plain ONNX ops) or "custom_op" (one ``sanawm::gdn_scan`` node on export).
    """
    b = select_backend(q, backend)
    if b == "triton":
        from .triton_gdn import gdn_scan_triton

        fn = gdn_scan_triton
    elif b == "decomposed":
        fn = gdn_scan_decomposed
    elif b == "custom_op":
        from .custom_op import gdn_scan_custom_op

        fn = gdn_scan_custom_op
    else:
        fn = gdn_recurrent_ref
    return fn(q, k, v, beta, gamma, qz, kz, state, z, reverse=reverse, eps=eps)


__all__ = ["gdn_scan", "gdn_recurrent_ref", "gdn_chunk_ref", "gdn_scan_decomposed", "select_backend", "BACKENDS"]
