"""Stage-2 refiner (LTX-2 DiT) as export-friendly step modules with explicit K/V state.

The oracle is diffusers' ``SanaWMLTX2Refiner`` (AR mode, ``block_size`` 3, ``kv_max_frames`` 11). Its
transformer keeps the attention sink and the sliding history in a Python-side ``SanaWMRefinerKVCache``; here
every carried tensor is an explicit input/output so one fixed-shape graph serves every block:

* ``RefinerSinkCapture``: raw stage-1 latent frame(s) ``[0, sink)`` at sigma 0 -> per-layer **pre-RoPE** K and
  V of the sink (plain self-attention over the sink tokens, RoPE at ``sink_pos``).
* ``RefinerStep`` (``capture=False``): one active block at one timestep. Keys = [sink K re-rotated at
  ``sink_pos`` ; padded history K (post-RoPE, masked by ``hist_valid``) ; current K], queries = active block.
  Returns the flow velocity.
* ``RefinerStep`` (``capture=True``): the clean sigma-0 forward under the same prefix; returns the history
  window shifted by one block with this block's **post-RoPE** K/V appended (``hist_*.out`` -> ``hist_*``).

The history buffer holds ``kv_max_frames - sink`` latent frames, right-aligned (oldest first, padding at the
front); shifting it left by one block and appending keeps exactly the oracle's "last N frames" trim.
Positions (block frames and the sliding sink offset ``block_start - history_frames - sink``) are int64
inputs; RoPE cos/sin are computed in the graph with the same float32 operation order as diffusers.

Layer maths reuses the diffusers block's submodules (linears, norms, FFN, tables); attention, RoPE and the
K/V plumbing are written here.

Modules by job: ``loading`` (configs, checkpoints), ``rope``, ``layer`` (one layer
and the stack), ``steps`` (the step modules and their I/O), ``stream`` (the torch AR loop, the oracle), ``engine``
(``RefinerEngine``: the ONE exported graph, sink / block profiles, ``sanawm.spec_refiner`` contract).
"""

from ...constants import STAGE_2_SIGMAS
from .layer import MASK_NEG, RefinerCore, RefinerLayer
from ...refiner_layout import RefinerLayout
from .engine import RefinerEngine
from .loading import load_refiner_transformer, make_tiny_refiner_transformer, tiny_refiner_config
from .rope import RefinerRope, apply_rope
from .steps import RefinerSinkCapture, RefinerStep, RefinerTextKV, refiner_io
from .stream import empty_history, refine_stream, sink_rope_offset

__all__ = [
    "MASK_NEG", "STAGE_2_SIGMAS", "RefinerCore", "RefinerEngine", "RefinerLayer", "RefinerLayout", "RefinerRope",
    "RefinerSinkCapture", "RefinerStep", "RefinerTextKV", "apply_rope", "empty_history",
    "load_refiner_transformer", "make_tiny_refiner_transformer", "refine_stream", "refiner_io",
    "sink_rope_offset", "tiny_refiner_config",
]
