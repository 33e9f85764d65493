"""``Session``: one streamed generation; iterate it for ``Chunk`` objects, save and resume it anywhere.

    runtime = Runtime.load("bundle/")
    session = runtime.start(latent_or_image, prompt, (camera_conditions, plucker), seed=0)
    for chunk in session:                  # chunk.latents, chunk.frames (uint8 or None), chunk.timings
        ...
        session.save("run.npz")            # every carried state; Session.resume("run.npz", runtime) goes on

Stages run one after another per chunk (generator -> refiner -> decoder). On a GPU backend they can overlap
on separate CUDA streams (chunk c+1 denoises while chunk c refines and c-1 decodes): ``_produce`` is the
seam; a streamed driver would run each stage's ``process`` on its own stream and hand chunks on with events.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import GeneratorConfig
from ..constants import TEMPORAL_STRIDE
from .noise import NoiseSource
from .prompt import coerce_prompt
from .scheduler import Conditioning
from .stages import Chunk, timed

FORMAT = "sanawm-session"
FORMAT_VERSION = 1
HEADER_KEY = "header.json"  # the JSON header, stored as uint8 bytes inside the .npz


def _coerce_camera(camera, cfg: GeneratorConfig) -> tuple[np.ndarray, np.ndarray]:
    """(camera_conditions [T, 20], plucker [48, T, H, W]) float32 from a pair, a NamedTuple or a dict."""
    if isinstance(camera, dict):
        cond, pl = camera["camera_conditions"], camera["chunk_plucker"]
    else:
        try:
            cond, pl = camera
        except (TypeError, ValueError):
            raise ValueError(
                "camera must be (camera_conditions [T, 20], plucker [48, T, H, W]), e.g. sanawm.camera.prepare_camera(...)"
            ) from None
    cond, pl = np.asarray(cond, np.float32), np.asarray(pl, np.float32)
    H, W, P = cfg.latent_height, cfg.latent_width, cfg.plucker_channels
    if cond.ndim != 2 or cond.shape[1] != 20:
        raise ValueError(f"camera_conditions must be [T, 20]; got {cond.shape}")
    if pl.shape != (P, cond.shape[0], H, W):
        raise ValueError(
            f"plucker must be [{P}, T, {H}, {W}] with T = {cond.shape[0]} (the conditions' length); got {pl.shape}; "
            "build both with sanawm.camera.prepare_camera for this bundle's latent size"
        )
    if not (np.isfinite(cond).all() and np.isfinite(pl).all()):
        raise ValueError("camera inputs contain NaN or inf; check the trajectory")
    return np.ascontiguousarray(cond), np.ascontiguousarray(pl)


class Session:
    """A generation in progress. Create with ``Runtime.start`` or ``Session.resume``."""

    def __init__(self, runtime, cond: Conditioning, noise: NoiseSource, seed: int):
        self.runtime = runtime
        self.cfg: GeneratorConfig = runtime.cfg
        self.cond, self.noise, self.seed = cond, noise, int(seed)
        self.generator_state = runtime.generator.new_state()
        self.stages = runtime.new_stages()
        self.cfg.chunk_bounds(cond.num_latent_frames)  # validates the length now, not mid-run

    # ------------------------------------------------------------------ construction
    @classmethod
    def start(cls, runtime, first_frame_or_latent, prompt_embeddings, camera, seed: int = 0, num_frames=None, noise=None):
        """Start a generation.

        Args:
            first_frame_or_latent: RGB uint8 [H, W, 3] at the model size (needs a ``vae_encoder``) or a latent.
            prompt_embeddings: ``PromptEmbeddings``, (text, mask), a text array [1, L, Ct] or a file path. With a
                refiner in the bundle, its text comes from the same value's ``refiner.features`` /
                ``refiner.mask`` (file or dict keys, or ``refiner_features`` attributes); zeros with a warning
                when absent.
            camera: (camera_conditions [T, 20], plucker [48, T, H, W]) for at least the clip's latent frames.
            seed: clip noise seed (numpy PCG64; not bit-identical to the torch release, see runtime.noise).
            num_frames: video frames F (8 (T - 1) + 1, T = 4 + 3k); default: the camera path's length.
            noise: inject the clip noise [1, C, T, H, W] (e.g. the torch reference's) instead of drawing it.
        """
        cfg = runtime.cfg
        latent = runtime.encode_first_frame(first_frame_or_latent)
        prompt = coerce_prompt(prompt_embeddings, cfg)
        cam, pl = _coerce_camera(camera, cfg)
        T = cam.shape[0]
        if num_frames is not None:
            F = int(num_frames)
            if F < 1 or (F - 1) % TEMPORAL_STRIDE:
                raise ValueError(
                    f"num_frames = {F} is not 24k + 1 video frames (T = 4 + 3k latent frames); "
                    "snap it with sanawm.camera.snap_streaming_num_frames (e.g. 241, 961)"
                )
            T = (F - 1) // TEMPORAL_STRIDE + 1
            if T > cam.shape[0]:
                raise ValueError(
                    f"num_frames = {F} needs {T} latent frames of camera but the path has {cam.shape[0]}; "
                    "pass a longer trajectory or fewer frames"
                )
            cam, pl = cam[:T], pl[:, :T]
        cond = Conditioning(latent, prompt.text, prompt.text_mask, np.ascontiguousarray(cam), np.ascontiguousarray(pl))
        src = NoiseSource.from_array(noise) if noise is not None else NoiseSource(seed, (cfg.in_channels, cfg.latent_height, cfg.latent_width))
        s = cls(runtime, cond, src, seed)
        refiners = [st for st in s.stages if hasattr(st, "set_text")]
        if refiners:  # the refiner's own prompt (refiner.features / refiner.mask); zeros with a warning otherwise
            from .refiner_stage import refiner_text_from

            # the coerced prompt carries it when PromptEmbeddings does (refiner_features); else the raw value
            rtext = refiner_text_from(prompt) or refiner_text_from(prompt_embeddings)
            for st in refiners:
                st.set_text(rtext)
        return s

    # ------------------------------------------------------------------ progress
    @property
    def bounds(self) -> list[tuple[int, int]]:
        return self.cfg.chunk_bounds(self.cond.num_latent_frames)

    @property
    def num_chunks(self) -> int:
        return len(self.bounds)

    @property
    def next_chunk(self) -> int:
        return self.generator_state.committed

    @property
    def num_latent_frames(self) -> int:
        return self.cond.num_latent_frames

    @property
    def num_output_frames(self) -> int:
        """Video frames the clip yields (the conditioning frame is not repeated): 8 (T - 1)."""
        return TEMPORAL_STRIDE * (self.num_latent_frames - 1)

    @property
    def done(self) -> bool:
        return self.next_chunk >= self.num_chunks

    # ------------------------------------------------------------------ running
    def __iter__(self):
        return self

    def __next__(self) -> Chunk:
        if self.done:
            raise StopIteration
        return self._produce()

    def _produce(self) -> Chunk:
        """Sequential driver: generator, then every stage, for the next chunk (the CUDA-streams seam)."""
        c = self.next_chunk
        s, e = self.bounds[c]
        t0 = time.perf_counter()
        res = self.runtime.generator.run_chunk(c, s, e, self.noise.take(s, e), self.cond, self.generator_state)
        chunk = Chunk(c, s, e, buffer=res.buffer, timings={"generator": time.perf_counter() - t0})
        for stage in self.stages:
            chunk = timed(stage, chunk)
        return chunk

    def extend_camera(self, camera) -> None:
        """Append camera inputs for more latent frames (interactive use); the clip grows by whole chunks.

        Args:
            camera: (camera_conditions [k, 20], plucker [48, k, H, W]) with k a multiple of ``chunk_size``,
                poses relative to the clip's frame 0 like the original path.
        """
        cam, pl = _coerce_camera(camera, self.cfg)
        k = cam.shape[0]
        if k == 0 or k % self.cfg.chunk_size:
            raise ValueError(
                f"extend_camera got {k} latent frames; it takes a positive multiple of {self.cfg.chunk_size} "
                f"(whole chunks = {self.cfg.chunk_size * TEMPORAL_STRIDE} video frames each)"
            )
        self.cond.camera = np.concatenate([self.cond.camera, cam], axis=0)
        self.cond.plucker = np.concatenate([self.cond.plucker, pl], axis=1)

    # ------------------------------------------------------------------ save / resume
    def save(self, path) -> Path:
        """Write every carried state to one ``.npz`` (plain arrays, JSON header inside; atomic replace)."""
        arrays: dict[str, np.ndarray] = {
            "cond/condition_latent": self.cond.condition_latent,
            "cond/text": self.cond.text,
            "cond/text_mask": self.cond.text_mask,
            "cond/camera": self.cond.camera,
            "cond/plucker": self.cond.plucker,
        }
        arrays.update({f"generator/{k}": v for k, v in self.generator_state.state_dict().items()})
        noise = self.noise.state_dict()
        arrays.update({f"noise/{k}": v for k, v in noise["arrays"].items()})
        for st in self.stages:
            arrays.update({f"stage/{st.name}/{k}": v for k, v in st.state_dict().items()})
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "sanawm_version": __version__,
            "generator_config": self.cfg.to_dict(),
            "timesteps": list(self.runtime.schedule.timesteps),
            "next_chunk": self.next_chunk,
            "num_latent_frames": self.num_latent_frames,
            "seed": self.seed,
            "noise": noise["meta"],
            "stages": [st.name for st in self.stages],
            "bundle": self.runtime.source,
        }
        arrays[HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append ".npz"
            np.savez(f, **arrays)
        os.replace(tmp, path)
        return path

    @staticmethod
    def read_header(path) -> dict:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(bytes(z[HEADER_KEY]).decode())

    @classmethod
    def resume(cls, path, runtime) -> "Session":
        """Continue a saved session on ``runtime`` (same bundle config); gives the chunks an uninterrupted run would."""
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is not a saved sanawm session ({e})") from None
        with z:
            if HEADER_KEY not in z.files:
                raise ValueError(f"{path} has no {HEADER_KEY}; it is not a saved sanawm session")
            header = json.loads(bytes(z[HEADER_KEY]).decode())
            arrays = {k: z[k] for k in z.files if k != HEADER_KEY}
        if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported session format {header.get('format')} v{header.get('format_version')}")
        if header["generator_config"] != runtime.cfg.to_dict():
            raise ValueError(f"{path} was saved with a different generator config than this bundle's; resume with the same bundle")
        if [float(t) for t in header["timesteps"]] != [float(t) for t in runtime.schedule.timesteps]:
            raise ValueError(f"{path} was saved with timesteps {header['timesteps']}, the runtime uses {list(runtime.schedule.timesteps)}")
        sub = lambda pre: {k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)}  # noqa: E731
        c = sub("cond/")
        cond = Conditioning(c["condition_latent"], c["text"], c["text_mask"], c["camera"], c["plucker"])
        noise = NoiseSource.from_state_dict({"meta": header["noise"], "arrays": sub("noise/")})
        s = cls(runtime, cond, noise, header["seed"])
        s.generator_state.load_state_dict(sub("generator/"))
        names = [st.name for st in s.stages]
        if names != header["stages"]:
            raise ValueError(
                f"{path} was saved with stages {header['stages']}, this runtime has {names}; "
                "resume with the same bundle and refiner setting"
            )
        for st in s.stages:
            st.load_state_dict(sub(f"stage/{st.name}/"))
        return s
