"""Stage-1 SANA-WM generator (torch, build side).

One job per file: ``rope`` (3-D RoPE tables), ``ucpe`` (camera ray matrices and half-head transforms),
``layers`` (norms, embedders, cross-attention, FFN, final layer), ``attention`` (GDN / softmax with camera
branch), ``block``, ``transformer`` (``SanaWMGenerator``), ``plan`` (how a call treats time), ``generator_step``
(the streaming step on explicit state), ``sampler`` (reference streaming sampler), ``loading`` (checkpoints).
"""

# Lazy exports: sibling modules (refiner, vae) import this package without pulling in the generator.
_EXPORTS = {
    "SanaWMGenerator": "transformer",
    "GeneratorStep": "generator_step",
    "initial_state": "generator_step",
    "window_inputs": "generator_step",
    "StreamingSampler": "sampler",
    "ChunkRule": "plan",
    "CheckpointError": "loading",
    "load_checkpoint": "loading",
    "load_generator": "loading",
    "read_state_dict": "loading",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
