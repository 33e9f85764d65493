"""Streaming chunk step vs the chunk-causal whole-sequence mode, and traceability of the step.

The step run chunk by chunk (state committed from the same pass, release window rule, fixed per-frame
timesteps) must equal ``model(..., chunked=True, rule=ChunkRule.streaming(cfg))`` to 1e-4 relative on a clip of
5 chunks, long enough for the sink + previous-chunk window to slide (chunk 3 sees {0, 2}, chunk 4 sees {0, 3}).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sanawm.config import tiny
from sanawm.models.generator_step import GeneratorStep, initial_state, window_inputs
from sanawm.models.plan import ChunkRule
from sanawm.models.transformer import SanaWMGenerator
from sanawm.spec import generator_step_io
from sanawm.testing import assert_close, rel_error

from gen_helpers import make_inputs, randomize_

RTOL = 1e-4
KV = ("k", "v", "cam_k", "cam_v")


def chunk_inputs(cfg, inp, s, e):
    return {
        "latents": inp["latents"][:, :, s:e],
        "timestep": inp["timestep"].reshape(1, -1)[:, s:e],
        "frame_index": torch.arange(s, e),
        "text": inp["text"][:, 0],
        "text_mask": inp["text_mask"],
        "camera": inp["camera"][:, s:e],
        "plucker": inp["plucker"][:, :, s:e],
    }


def stream_one_pass(model, inp):
    """Run every chunk once, committing each call's state/KV (one fixed timestep per frame for the pass)."""
    cfg = model.cfg
    steps = {True: GeneratorStep(model, True), False: GeneratorStep(model, False)}
    T = inp["latents"].shape[2]
    state = initial_state(cfg, True)
    chunk_kv, vs = {}, []
    for c, (s, e) in enumerate(cfg.chunk_bounds(T)):
        step = steps[c == 0]
        a = dict(chunk_inputs(cfg, inp, s, e), **state)
        if c:
            a.update(window_inputs(cfg, chunk_kv, c))
        with torch.no_grad():
            outs = dict(zip(step.output_names, step(*[a[n] for n in step.input_names])))
        vs.append(outs["velocity"])
        state = {step.io.state_map[k]: v for k, v in outs.items() if k in step.io.state_map}
        chunk_kv[c] = [
            {nm: outs[f"b{i}.{nm}_chunk"] for nm in KV} if cfg.is_softmax_block(i) else None
            for i in range(cfg.num_layers)
        ]
    return torch.cat(vs, dim=2)


@pytest.mark.parametrize(
    "variant", ["release", pytest.param("cam_kconv_tail+scale_head_dim", marks=pytest.mark.slow)]
)
def test_streaming_matches_chunked(variant):
    cfg = tiny()
    if variant != "release":
        cfg = dataclasses.replace(cfg, cam_kconv_tail=True, streaming_softmax_scale_dim=cfg.head_dim)
    model = randomize_(SanaWMGenerator(cfg), seed=5).eval()
    T = cfg.first_chunk_size + 4 * cfg.chunk_size  # 5 chunks
    assert cfg.window_chunks(4) == [0, 3]  # the window has slid past chunk 1
    inp = make_inputs(cfg, B=1, T=T, seed=6)
    with torch.no_grad():
        want = model(**inp, chunked=True, rule=ChunkRule.streaming(cfg))
        teacher = model(**inp, chunked=True)  # all chunks, bidirectional scales: must differ
    got = stream_one_pass(model, inp)
    err = assert_close(f"streaming vs chunked ({variant})", want, got, RTOL)
    print(f"streaming vs chunked ({variant}): rel err {err:.2e}")
    assert rel_error(want, teacher) > 100 * RTOL  # the window/scale rule is actually exercised


def test_step_io_matches_spec():
    cfg = tiny()
    model = randomize_(SanaWMGenerator(cfg), seed=5).eval()
    for first in (True, False):
        step = GeneratorStep(model, first)
        io = generator_step_io(cfg, first)
        args = [torch.randn(t.shape) if t.dtype == "float32" else torch.arange(t.shape[0]) for t in io.inputs]
        with torch.no_grad():
            outs = step(*args)
        assert len(outs) == len(io.outputs)
        for o, spec in zip(outs, io.outputs):
            assert tuple(o.shape) == spec.shape and o.dtype == torch.float32, spec.name
    with pytest.raises(TypeError, match="generator_step_io"):
        GeneratorStep(model, True)(torch.zeros(1))


@pytest.mark.slow
@pytest.mark.parametrize("first", [True, False])
def test_step_exports(first):
    cfg = tiny()
    model = SanaWMGenerator(cfg).eval()
    step = GeneratorStep(model, first).eval()
    io = generator_step_io(cfg, first)
    args = tuple(
        torch.rand(t.shape) if t.dtype == "float32" else torch.arange(4, 4 + t.shape[0]) for t in io.inputs
    )
    with torch.no_grad():
        ep = torch.export.export(step, args)
        eager = step(*args)
        traced = ep.module()(*args)
    assert len(traced) == len(io.outputs)
    assert_close("exported step", eager[0], traced[0], 1e-5)
