"""Seeded clip noise, drawn frame by frame so a session can stop, save and resume (numpy only).

The release draws one ``torch.randn((1, C, T, H, W))`` on a CUDA generator for the whole clip and slices it
per chunk (sana-wm-streaming.md 1.3). We keep the "one tensor for the whole clip, sliced per chunk" rule but
draw it with numpy's ``Generator(PCG64(seed))``, float32 standard normal, **frame-major**: frame f is the
f-th ``(C, H, W)`` draw. So

* the numbers are NOT bit-identical to torch's CUDA RNG for the same seed (no torch on the run side); a
  comparison with the torch reference sampler must inject the reference noise (``NoiseSource.from_array``);
* frames [0, T) do not depend on the total length T, which lets ``Session.extend_camera`` lengthen a clip
  and lets a saved session carry only the RNG position instead of the whole noise tensor.
"""

from __future__ import annotations

import json

import numpy as np


def clip_noise(seed: int, shape: tuple[int, int, int, int, int]) -> np.ndarray:
    """The whole clip's noise ``[1, C, T, H, W]`` float32, exactly as ``NoiseSource(seed, ...)`` hands it out."""
    _, C, T, H, W = shape
    return NoiseSource(seed, (C, H, W)).take(0, T)


class NoiseSource:
    """Hands out consecutive latent frames of the clip noise; ``take`` must be called in frame order."""

    def __init__(self, seed: int, frame_shape: tuple[int, int, int]):
        self.seed = int(seed)
        self.frame_shape = tuple(int(s) for s in frame_shape)  # (C, H, W)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        self._array: np.ndarray | None = None  # injected noise [1, C, T, H, W] (tests, torch parity)
        self.frames_drawn = 0

    @classmethod
    def from_array(cls, noise: np.ndarray) -> "NoiseSource":
        """Serve a given noise tensor ``[1, C, T, H, W]`` (e.g. the torch reference's ``randn``) instead."""
        noise = np.asarray(noise, dtype=np.float32)
        if noise.ndim != 5 or noise.shape[0] != 1:
            raise ValueError(f"injected noise must be [1, C, T, H, W]; got shape {noise.shape}")
        src = cls(0, (noise.shape[1], noise.shape[3], noise.shape[4]))
        src._array = noise
        return src

    def take(self, start: int, end: int) -> np.ndarray:
        """Noise of latent frames [start, end) as ``[1, C, end - start, H, W]`` float32."""
        if start != self.frames_drawn:
            raise ValueError(f"noise frames must be taken in order: asked for {start}, next is {self.frames_drawn}")
        if self._array is not None:
            if end > self._array.shape[2]:
                raise ValueError(
                    f"injected noise has {self._array.shape[2]} latent frames; frame {end - 1} was asked for. "
                    "Inject noise that covers the whole clip."
                )
            out = self._array[:, :, start:end]
        else:
            # one (C, H, W) draw per frame, in frame order (see module docstring)
            frames = [self._rng.standard_normal(self.frame_shape, dtype=np.float32) for _ in range(start, end)]
            out = np.stack(frames, axis=1)[None]  # [1, C, n, H, W]
        self.frames_drawn = end
        return np.ascontiguousarray(out, dtype=np.float32)

    # ------------------------------------------------------------------ save / resume
    def state_dict(self) -> dict:
        """JSON-able position (seed, frames drawn, PCG64 state) plus the injected array if any."""
        d = {
            "seed": self.seed,
            "frame_shape": list(self.frame_shape),
            "frames_drawn": self.frames_drawn,
            # PCG64 state holds 128-bit ints: JSON keeps Python ints exactly
            "bit_generator": json.dumps(self._rng.bit_generator.state),
        }
        arrays = {} if self._array is None else {"injected": self._array}
        return {"meta": d, "arrays": arrays}

    @classmethod
    def from_state_dict(cls, state: dict) -> "NoiseSource":
        meta, arrays = state["meta"], state.get("arrays", {})
        if "injected" in arrays:
            src = cls.from_array(arrays["injected"])
        else:
            src = cls(meta["seed"], tuple(meta["frame_shape"]))
            src._rng.bit_generator.state = json.loads(meta["bit_generator"])
        src.frames_drawn = int(meta["frames_drawn"])
        return src
