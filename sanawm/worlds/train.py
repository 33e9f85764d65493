"""Train the tiny world model on CPU: ``python -m sanawm.worlds.train --work DIR``.

The defaults are the first model's recipe from scratch (about 2 h on one CPU thread); the shipped model continues
it with ``--init`` (its training.json holds both runs). Stages, each resumable (finished
stages are skipped, running ones restart from their last checkpoint):

1. ``data``: render ``--clips`` training clips (random scenes and action paths, never a held-out seed) in parts.
2. ``vae``: train the tiny LTX-2 causal VAE on random 17-frame windows of those clips.
3. ``latents``: encode every clip, set the VAE's per-channel latent mean/std so latents are unit scale.
4. ``gen``: train the ``world`` SANA-WM generator with flow matching in the streaming regime.
5. ``decoder``: fine-tune the VAE decoder with the encoder frozen (``--dec-steps``; latents stay as trained on).
6. ``ship``: write the weights (safetensors) and ``training.json`` to ``--ship`` (the package assets).

``--init DIR`` continues training from an earlier model's weights (the shipped assets): the VAE and the generator
start from DIR's weights, with the same schedules; training.json keeps the parent recipe under ``parent``.

Deterministic for a seed: every random draw of step i comes from a generator seeded with (seed, stage, i), so
a resumed run continues exactly as an uninterrupted one. One torch thread by default. Losses go to
``DIR/loss.tsv`` (stage, step, loss, seconds).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .data import training_clip

CLIP_FRAMES = 73  # 4 + 3 + 3 latent frames: chunks 0, 1 and 2 of the streaming layout
PART = 25  # clips per data file


def _log(work: Path, stage: str, step: int, loss: float, t0: float) -> None:
    with open(work / "loss.tsv", "a") as f:
        f.write(f"{stage}\t{step}\t{loss:.6f}\t{time.perf_counter() - t0:.1f}\n")


def stage_data(work: Path, clips: int, data_seed: int) -> None:
    d = work / "data"
    d.mkdir(parents=True, exist_ok=True)
    for p in range((clips + PART - 1) // PART):
        f = d / f"part_{p:03d}.npz"
        if f.exists():
            continue
        t0 = time.perf_counter()
        cs = [training_clip(i, CLIP_FRAMES, data_seed) for i in range(p * PART, min(clips, (p + 1) * PART))]
        tmp = d / f"part_{p:03d}.tmp.npz"
        np.savez(tmp, frames=np.stack([c.frames for c in cs]), camera=np.stack([c.camera for c in cs]),
                 plucker=np.stack([c.plucker for c in cs]), seeds=np.array([c.seed for c in cs]),
                 actions=np.array([c.action for c in cs]))
        tmp.rename(f)
        print(f"data: part {p} ({len(cs)} clips) in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def load_data(work: Path, clips: int) -> dict[str, np.ndarray]:
    parts = [np.load(work / "data" / f"part_{p:03d}.npz") for p in range((clips + PART - 1) // PART)]
    return {k: np.concatenate([p[k] for p in parts])[:clips] for k in ("frames", "camera", "plucker", "seeds", "actions")}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sanawm.worlds.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="working folder (data, checkpoints, loss.tsv)")
    ap.add_argument("--stages", default="data,vae,latents,gen,decoder,ship", help="comma-separated stages to run")
    ap.add_argument("--clips", type=int, default=200, help="training clips of 73 frames")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0, help="training seed (init, batches, noise)")
    ap.add_argument("--vae-steps", type=int, default=2500)
    ap.add_argument("--gen-steps", type=int, default=3000)
    ap.add_argument("--dec-steps", type=int, default=1500, help="decoder fine-tune steps after gen (0: skip the stage)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--ship", type=Path, default=None, help="asset folder for the shipped weights")
    ap.add_argument("--init", type=Path, default=None,
                    help="warm start: begin the vae and gen stages from the weights in this asset folder (e.g. the "
                         "shipped sanawm/assets/tiny_world) instead of a random init; recorded in training.json")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - {"data", "vae", "latents", "gen", "decoder", "ship"})
    if unknown:
        raise SystemExit(f"unknown stages {unknown}; choose from data,vae,latents,gen,decoder,ship")
    if a.init is not None:
        from .models import shipped_paths

        try:
            shipped_paths(a.init)
        except ValueError:
            raise SystemExit(f"--init {a.init}: no trained world model there (need generator.safetensors and "
                             "vae/config.json); point it at an asset folder such as sanawm/assets/tiny_world") from None
    a.work.mkdir(parents=True, exist_ok=True)
    if "data" in stages:
        stage_data(a.work, a.clips, a.data_seed)
    if set(stages) - {"data"}:
        from .trainer import run_stages

        run_stages(a, stages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
