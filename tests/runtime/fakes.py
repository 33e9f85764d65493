"""Numpy fake engines with the exact tensor contracts of the real ones (torch-free).

The fake generator's outputs are simple deterministic functions of its inputs, so tests can recompute
them by hand: every softmax K/V token carries its absolute latent frame index (+1, so padding's 0 is
distinguishable), and the chained state grows by the mean of the committed latents.
"""

from __future__ import annotations

import numpy as np

from sanawm.config import GeneratorConfig
from sanawm.spec import generator_step_io


def kv_value(frame: np.ndarray, block: int, nm_index: int) -> np.ndarray:
    """Value every element of token rows of latent frame ``frame`` gets in ``b{block}.{nm}_chunk``."""
    return frame + 1.0 + 1000.0 * block + 100.0 * nm_index


class FakeGenerator:
    """Fake ``generator_first`` / ``generator_next``; records every feed it receives."""

    def __init__(self, cfg: GeneratorConfig, first: bool):
        self.cfg, self.first = cfg, first
        self.io = generator_step_io(cfg, first)
        self.name = "generator_first" if first else "generator_next"
        self.inputs, self.outputs = self.io.inputs, self.io.outputs
        self.calls: list[dict] = []

    @staticmethod
    def velocity(feeds: dict) -> np.ndarray:
        """v = 0.5 x + t/1000 + camera mean + mean of chained state + sum of valid window K."""
        x = feeds["latents"]
        t = feeds["timestep"][0]  # [n]
        cam = feeds["camera"][0].mean(axis=1)  # [n]
        state = sum(float(v.mean()) for k, v in feeds.items() if k.startswith("b") and not k.endswith("_win"))
        win = 0.0
        if "window_valid" in feeds:
            valid = feeds["window_valid"]
            for k, v in feeds.items():
                if k.endswith(".k_win"):
                    win += float((v[..., 0] * valid).sum()) * 1e-6
        text = float(feeds["text"].mean() * feeds["text_mask"].mean())
        per_frame = (t / 1000.0 + cam).astype(np.float32)[None, None, :, None, None]
        return (0.5 * x + per_frame + np.float32(state + win + text) + 0.01 * feeds["plucker"].mean(axis=1, keepdims=True)).astype(
            np.float32
        )

    def run(self, feeds: dict) -> dict:
        self.calls.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        for spec in self.inputs:  # same strictness as sanawm.engines.base.check_feeds
            a = feeds[spec.name]
            assert a.dtype == np.dtype(spec.dtype) and a.shape == spec.shape, (spec.name, a.dtype, a.shape)
        assert set(feeds) == {s.name for s in self.inputs}
        out = {"velocity": self.velocity(feeds)}
        x = feeds["latents"]
        m = np.float32(x.mean())
        for o, i in self.io.state_map.items():
            out[o] = (feeds[i] + m).astype(np.float32)
        S = self.cfg.patch_tokens
        frames = np.repeat(feeds["frame_index"].astype(np.float32), S)  # token -> absolute frame [n*S]
        for i in self.cfg.softmax_blocks:
            for j, nm in enumerate(("k", "v", "cam_k", "cam_v")):
                spec = self.io.output(f"b{i}.{nm}_chunk")
                val = kv_value(frames, i, j)[None, None, :, None]
                out[spec.name] = np.broadcast_to(val, spec.shape).astype(np.float32).copy()
        return out


def fake_generators(cfg: GeneratorConfig) -> dict:
    return {"generator_first": FakeGenerator(cfg, True), "generator_next": FakeGenerator(cfg, False)}


class FakeDecoder:
    """Fake ``vae_decoder_first`` / ``vae_decoder_next``: 8 frames per latent frame (1 for frame 0 of
    chunk 0), pixel value = tanh of the latent frame mean plus a carried counter state."""

    def __init__(self, cfg: GeneratorConfig, first: bool, scale: int = 4):
        n = cfg.first_chunk_size if first else cfg.chunk_size
        from sanawm.spec import TensorSpec

        self.name = "vae_decoder_first" if first else "vae_decoder_next"
        C, H, W = cfg.in_channels, cfg.latent_height, cfg.latent_width
        F = 1 + 8 * (n - 1) if first else 8 * n
        self.inputs = (
            TensorSpec("latents", "float32", (1, C, n, H, W)),
            TensorSpec("cache0", "float32", (1, 2)),
        )
        self.outputs = (
            TensorSpec("frames", "float32", (1, 3, F, H * scale, W * scale)),
            TensorSpec("cache0.out", "float32", (1, 2)),
        )
        self.first, self.scale, self.n = first, scale, n

    def run(self, feeds: dict) -> dict:
        x = feeds["latents"][0]  # [C, n, H, W]
        reps = [1 if (self.first and f == 0) else 8 for f in range(self.n)]
        per = np.repeat(np.tanh(x.mean(axis=(0, 2, 3))), reps)  # [F]
        F = per.shape[0]
        _, _, _, H, W = self.outputs[0].shape
        frames = np.broadcast_to(per[None, None, :, None, None], (1, 3, F, H, W)).astype(np.float32)
        frames = np.clip(frames + 0.01 * feeds["cache0"][0, 0], -1, 1).astype(np.float32)
        return {"frames": frames, "cache0.out": feeds["cache0"] + 1.0}
