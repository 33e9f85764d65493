"""The refiner's FP8 calibration loop over the exported module itself: the runtime's ``RefinerStage`` driving the
``RefinerEngine`` in torch (sink pass, the denoising steps and the sigma-0 commit of every block).

Why not ``refine_stream`` (the step-module oracle, ``refiner.refiner_calibration``): its sink capture reads the
layers' weights outside their ``forward`` (``layer.self_kv``), so a block-streamed calibration, which loads a
layer's weights in a forward pre-hook, would run it on ghost weights. The engine calls every layer as a module, and
its calls are exactly the exported graph's (``tests/models/test_refiner_engine.py``: stage over engine = oracle).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ...engines.base import Executor

CALIB_SEED = 4321  # as refiner.refiner_calibration


class TorchEngineExecutor(Executor):
    """A torch ``RefinerEngine`` as the stage's ``refiner`` executor (host arrays in and out)."""

    backend = "torch"

    def __init__(self, module, layout):
        from ...spec_refiner import refiner_profiles

        io = module.io
        super().__init__("refiner", io.inputs, io.outputs, io.state_map, refiner_profiles(layout))
        self.module = module

    def _run(self, feeds, profile=None):
        import torch

        with torch.no_grad():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.inputs]
            return {t.name: y.detach().cpu().numpy() for t, y in zip(self.outputs, self.module(*args))}


def calibration_text(core, layout, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """N(0,1) prompt features [1, L, Ct] with the last quarter of the tokens masked (the random calibration set)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    L = layout.caption_length
    text = rng.standard_normal((1, L, int(core.caption_channels)), dtype=np.float32)
    mask = np.ones((1, L), np.float32)
    mask[:, -max(1, L // 4):] = 0
    return text, mask


def engine_calibration(layout, blocks: int, seed: int = CALIB_SEED,
                       texts: list[tuple[np.ndarray, np.ndarray]] | None = None) -> Callable:
    """Calibration loop ``loop(engine)``: per prompt (``texts``; None: one random prompt), one clip of ``blocks``
    blocks of N(0,1) stage-1 latents through the stage, so the history fills and, past ``kv_max_frames``, slides."""
    from ...runtime.chunk import Chunk
    from ...runtime.refiner_stage import RefinerStage

    def loop(engine) -> None:
        core = engine.core
        prompts = texts or [calibration_text(core, layout, seed)]
        sk, n = layout.sink_frames, layout.block_size
        for p, (text, mask) in enumerate(prompts):
            rng = np.random.Generator(np.random.PCG64(seed + 1 + p))
            lat = rng.standard_normal((1, int(core.in_channels), sk + n * blocks, layout.latent_height,
                                       layout.latent_width), dtype=np.float32)
            st = RefinerStage(TorchEngineExecutor(engine, layout), layout, seed=seed + 101 + p)
            st.set_text((text, mask))
            st.process(Chunk(0, 0, sk + n, lat[:, :, : sk + n]))
            for b in range(1, blocks):
                s = sk + b * n
                st.process(Chunk(b, s, s + n, lat[:, :, s: s + n]))

    return loop


RANDOM_NOTE = "N(0,1) refiner text, N(0,1) latents"


def refiner_calibration_set(prompt_files, caption_length: int, caption_channels: int):
    """(texts or None, manifest record) of the refiner's calibration prompts: the refiner features
    (``refiner.features`` / ``refiner.mask``, written by ``sanawm encode-prompt --refiner-encoder``) of every row of
    every ``--calib-prompts`` file that carries them; None (random prompts) when none does. The record has the
    generator's calibration format (``set``, ``sha256``, ``clips``, ``sources``)."""
    from ...runtime.refiner_stage import refiner_text_from
    from ..calibration_data import CalibrationSet, _expand, random_set
    from ..job import ExportInputError

    texts, names, without = [], [], []
    for p in _expand(list(prompt_files or ()), (".safetensors", ".npz")):
        got = refiner_text_from(p)
        if got is None:
            without.append(p.name)
            continue
        feats, mask = got
        if feats.shape[1:] != (caption_length, caption_channels):
            raise ExportInputError(
                f"{p}: refiner features are {list(feats.shape[1:])} per prompt, the refiner engine takes "
                f"[{caption_length}, {caption_channels}]; re-encode with `sanawm encode-prompt ... --refiner-encoder "
                f"<this refiner's folder> --refiner-max-length {caption_length}` or pass --refiner-caption-length")
        texts += [(feats[b:b + 1], mask[b:b + 1]) for b in range(feats.shape[0])]
        names.append(p.name)
    if not texts:
        rec = random_set().to_manifest()
        rec["sources"] = {"note": RANDOM_NOTE + (f"; the --calib-prompts files {without[:3]} carry no refiner text "
                                                 "(encode them with --refiner-encoder)" if without else "")}
        return None, rec
    cs = CalibrationSet("user", texts=texts, sources={"prompts": names, "latents": "N(0,1)",
                                                     **({"without_refiner_text": without} if without else {})})
    return texts, cs.to_manifest()


def use_calibration_set(a, jobs, info: dict, streamed: bool) -> None:
    """Point the refiner jobs at the export's refiner calibration set (``--calib-prompts`` refiner features, else
    random) and record it in the manifest's ``refiner`` section and the stage key (another set re-exports).
    The whole-model path keeps its ``refine_stream`` loop on random inputs; real prompts and the streamed path
    drive the engine (``engine_calibration``)."""
    from ...refiner_layout import RefinerLayout

    lay = info["layout"]
    texts, rec = refiner_calibration_set(getattr(a, "calib_prompts", None), lay["caption_length"],
                                         lay["caption_channels"])
    info["calibration"] = rec
    layout = RefinerLayout.from_manifest(info)
    for job in jobs:
        job.key = {**(job.key or {}), "refiner_calibration": rec}
        if texts is not None or streamed:
            job.calibrate = engine_calibration(layout, max(1, a.calib_chunks) + 1, texts=texts)
