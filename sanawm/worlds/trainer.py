"""Torch stages of ``python -m sanawm.worlds.train``: VAE, latents, streaming flow-matching generator, ship.

Recipe choices (why it learns on one CPU thread in about an hour):
* the VAE trains on 17-frame windows (two latent frames: the causal first frame alone, then 8 frames), with a
  small latent L2 penalty and latent noise so the decoder tolerates the generator's imperfect latents;
* the generator trains one chunk at a time in the streaming regime: a clip cut after chunk k (k = 0, 1, 2),
  chunks before k clean at timestep 0 (what the cache-write pass commits at inference), chunk k noised at one
  sigma, frame 0 always the clean condition frame; the chunk-causal whole-sequence forward with
  ``ChunkRule.streaming`` computes exactly what the streaming step would;
* sigmas are drawn half from the release's 4-step schedule (1.0, 0.96, 0.889, 0.727), half uniform, so the
  points the sampler visits are trained most.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import StreamingSchedule, world
from ..camera import prepare_camera
from .data import eval_pairs, render_clip, to_video_tensor
from .paths import FRAME_HW, LATENT_HW, mirror_action, world_path
from .models import GENERATOR_FILE, TRAINING_JSON, VAE_DIR, world_vae_config
from .train import CLIP_FRAMES, _log, load_data

VAE_WINDOW = 17  # frames per VAE training window (2 latent frames)
VAE_BATCH = 4
VAE_LR = 1e-3
VAE_LATENT_L2 = 1e-3
VAE_LATENT_NOISE = 0.02
GEN_BATCH = 6
GEN_LR = 1e-3
CHUNK_P = (0.45, 0.45, 0.1)  # which chunk (0, 1, 2) a step trains: the first 3 s are chunks 0 and 1
SCHEDULE_P = 0.5  # fraction of sigmas drawn from the inference schedule
CONTEXT_NOISE = 0.1  # max std of noise on clean context chunks (robustness to generated context)
# <= 6 bytes each: the tiny encoder keeps 8 tokens (<bos> + preamble tail + prompt), see sanawm.cli.DEMO_PROMPT
PROMPTS = ("a road", "a room", "", "a hall", "a box", "a ball", "walls", "sky", "a wall", "floor")
CKPT_EVERY = 25


def _rng(seed: int, stage: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage, step])


def _lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def _save(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def _resume(path: Path, model, opt) -> int:
    """Restore model and optimizer from a stage's checkpoint; the step to continue from (0: none yet)."""
    ck = _load(path)
    if ck is None:
        return 0
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    return int(ck["step"])


def _bar(stage: str, step: int, total: int, loss: float, t0: float, start: int = 0) -> None:
    done = int(30 * step / total)
    rate = (time.perf_counter() - t0) / max(1, step - start)
    print(f"\r{stage} [{'#' * done}{'.' * (30 - done)}] {step}/{total} loss {loss:.4f} "
          f"{rate:.2f} s/step", end="", file=sys.stderr, flush=True)


def _progress(work: Path, stage: str, done: int, total: int, acc: list, t0: float, start: int, ckpt: Path, model,
              opt) -> None:
    """After step ``done`` of a stage: the progress bar every 10 steps; loss.tsv and the checkpoint every
    CKPT_EVERY steps and at the end."""
    if done % 10 == 0:
        _bar(stage, done, total, float(np.mean(acc[-10:])), t0, start)
    if done % CKPT_EVERY == 0 or done == total:
        _log(work, stage, done, float(np.mean(acc[-CKPT_EVERY:])), t0)
        _save(ckpt, {"model": model.state_dict(), "opt": opt.state_dict(), "step": done})


def vae_windows(frames: np.ndarray, rng: np.random.Generator, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A VAE training batch: VAE_BATCH random VAE_WINDOW-frame windows of the clips (each mirrored with p 0.5) as
    [-1, 1] video tensors, and unit latent noise for their 3 latent frames."""
    idx = rng.choice(len(frames), VAE_BATCH, replace=False)
    s = rng.integers(0, CLIP_FRAMES - VAE_WINDOW + 1, VAE_BATCH)
    clips = [frames[i, j:j + VAE_WINDOW] for i, j in zip(idx, s)]
    clips = [c[:, :, ::-1] if rng.random() < 0.5 else c for c in clips]  # horizontal flip
    x = torch.from_numpy(np.stack([to_video_tensor(c) for c in clips]))
    return x, torch.from_numpy(rng.standard_normal((VAE_BATCH, channels, 3, 8, 12)).astype(np.float32))


# ----------------------------------------------------------------------------------------------------- VAE
def train_vae(work: Path, a) -> None:
    from ..models.vae import build_vae

    if (work / VAE_DIR / "config.json").exists() or (work / "vae_trained").exists():
        return
    frames = load_data(work, a.clips)["frames"]
    vae = build_vae(world_vae_config(), seed=a.seed).train()
    C = vae.config["latent_channels"]
    opt = torch.optim.AdamW(vae.parameters(), lr=VAE_LR, weight_decay=0.0)
    start = _resume(work / "vae_ckpt.pt", vae, opt)
    if start == 0 and a.init is not None:  # warm start (a resumed run has its own checkpoint)
        from ..models.vae import load_vae

        vae.load_state_dict(load_vae(Path(a.init) / VAE_DIR).state_dict())
    t0 = time.perf_counter()
    acc = []
    for step in range(start, a.vae_steps):
        x, noise = vae_windows(frames, _rng(a.seed, 1, step), C)
        for g in opt.param_groups:
            g["lr"] = _lr(step, a.vae_steps, VAE_LR, warmup=50)
        z = vae.encoder(x, causal=True)[:, :C]
        y = vae.decoder(z + VAE_LATENT_NOISE * noise[:, :, : z.shape[2]], causal=True)
        rec = F.mse_loss(y, x) + 0.5 * F.l1_loss(y, x)
        loss = rec + VAE_LATENT_L2 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        acc.append(F.mse_loss(y.detach(), x).item())
        _progress(work, "vae", step + 1, a.vae_steps, acc, t0, start, work / "vae_ckpt.pt", vae, opt)
    print(file=sys.stderr)
    (work / "vae_trained").write_text("ok\n")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def _to_uint8(y: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
    return np.clip((y.permute(1, 2, 3, 0).numpy() + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


@torch.no_grad()
def heldout_psnr(vae, clips: int = 16, frames: int = 25) -> list[float]:
    """Reconstruction PSNR of held-out clips (never trained on) through encoder and decoder."""
    C = vae.config["latent_channels"]
    out = []
    for seed, action in eval_pairs(clips):
        clip = render_clip(seed, action, frames)
        x = torch.from_numpy(to_video_tensor(clip.frames))[None]
        y = vae.decoder(vae.encoder(x, causal=True)[:, :C], causal=True)[0].clamp(-1, 1)
        out.append(_psnr(_to_uint8(y), clip.frames))
    return out


@torch.no_grad()
def encode_latents(work: Path, a) -> None:
    """Encode all clips, set the latent mean/std, save the VAE folder and the normalised latents; measure the
    VAE's reconstruction PSNR on held-out clips."""
    from ..models.vae import build_vae, normalize_latents

    if (work / "latents.npz").exists():
        return
    vae = build_vae(world_vae_config(), seed=a.seed)
    vae.load_state_dict(_load(work / "vae_ckpt.pt")["model"])
    vae.eval()
    C = vae.config["latent_channels"]
    d = load_data(work, a.clips)
    frames = d["frames"]
    zs = []
    for flip in (False, True):  # the mirrored clip is the mirrored scene along the mirrored path: free data
        for i in range(len(frames)):
            f = frames[i, :, :, ::-1] if flip else frames[i]
            zs.append(vae.encoder(torch.from_numpy(to_video_tensor(f))[None], causal=True)[0, :C])
        print(f"latents: encoded {len(zs)} clips", file=sys.stderr, flush=True)
    z = torch.stack(zs)  # [2N, C, T, h, w]
    cams = [prepare_camera(world_path(mirror_action(str(act)), CLIP_FRAMES), CLIP_FRAMES, latent_hw=LATENT_HW,
                           image_hw=FRAME_HW) for act in d["actions"]]
    camera = np.concatenate([d["camera"], np.stack([c.camera_conditions for c in cams])])
    plucker = np.concatenate([d["plucker"], np.stack([c.chunk_plucker for c in cams])])
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    vae.latents_mean.copy_(mean)
    vae.latents_std.copy_(std)
    zn = normalize_latents(z, mean, std, float(vae.config["scaling_factor"]))
    psnrs = heldout_psnr(vae)
    vae.save_pretrained(work / VAE_DIR, safe_serialization=True)
    (work / "vae_eval.json").write_text(json.dumps({"heldout_clips": 16, "frames": 25, "psnr_db": psnrs,
                                                    "mean_psnr_db": float(np.mean(psnrs))}, indent=1))
    print(f"latents: VAE reconstruction on 16 held-out clips {np.mean(psnrs):.2f} dB", file=sys.stderr)
    np.savez(work / "latents.npz", latents=zn.numpy(), camera=camera, plucker=plucker)


# ----------------------------------------------------------------------------------------------- generator
def text_bank() -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny-encoder features of ``PROMPTS`` (what the demo's prompt path feeds): (P, L, 32), (P, L)."""
    from ..text.stage1 import encode_stage1
    from ..text.tiny import tiny_gemma2, tiny_tokenizer

    cfg = world()
    feats, mask = encode_stage1(list(PROMPTS), tiny_tokenizer(), tiny_gemma2(), caption_length=cfg.caption_length)
    return feats.float(), mask.float()


def gen_batch(data: dict, text: tuple, rng: np.random.Generator, batch: int):
    """One streaming-regime training batch: (inputs dict for SanaWMGenerator.forward, target, loss mask)."""
    cfg = world()
    bounds = cfg.chunk_bounds(cfg.first_chunk_size + 2 * cfg.chunk_size)
    k = int(rng.choice(3, p=CHUNK_P))
    s, e = bounds[k]
    idx = rng.choice(len(data["latents"]), batch, replace=False)
    x0 = torch.from_numpy(data["latents"][idx, :, :e])
    eps = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
    sched = np.array(StreamingSchedule().sigmas[:-1])
    sig = np.where(rng.random(batch) < SCHEDULE_P, rng.choice(sched, batch), rng.uniform(0.02, 1.0, batch))
    sig_t = torch.from_numpy(sig.astype(np.float32)).view(batch, 1, 1, 1, 1)
    x = x0.clone()
    x[:, :, s:e] = (1 - sig_t) * x0[:, :, s:e] + sig_t * eps[:, :, s:e]
    if s > 0:  # generated context is never exactly the data: a little noise, still at timestep 0
        amp = torch.from_numpy((rng.random(batch) * CONTEXT_NOISE).astype(np.float32)).view(batch, 1, 1, 1, 1)
        ctx = torch.from_numpy(rng.standard_normal((batch, x0.shape[1], s - 1) + x0.shape[3:]).astype(np.float32))
        x[:, :, 1:s] = x0[:, :, 1:s] + amp * ctx
    x[:, :, 0] = x0[:, :, 0]  # the condition frame is always clean
    t = torch.zeros(batch, e)
    t[:, s:e] = torch.from_numpy(sig.astype(np.float32) * 1000.0)[:, None]
    t[:, 0] = 0.0
    mask = torch.zeros(e, dtype=torch.bool)
    mask[max(s, 1):e] = True
    p = rng.integers(0, len(text[0]), batch)
    inputs = dict(latents=x, timestep=t, text=text[0][p], text_mask=text[1][p],
                  camera=torch.from_numpy(data["camera"][idx, :e]), plucker=torch.from_numpy(data["plucker"][idx][:, :, :e]))
    return inputs, eps - x0, mask


def gen_loss(model, inputs: dict, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    from ..models.plan import ChunkRule

    v = model(**inputs, chunked=True, rule=ChunkRule.streaming(model.cfg))
    return F.mse_loss(v[:, :, mask], target[:, :, mask])


def train_gen(work: Path, a) -> None:
    from ..models.transformer import SanaWMGenerator

    if (work / "gen_trained").exists():
        return
    data = dict(np.load(work / "latents.npz"))
    text = text_bank()
    torch.manual_seed(a.seed)
    model = SanaWMGenerator(world()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=GEN_LR, weight_decay=0.01)
    start = _resume(work / "gen_ckpt.pt", model, opt)
    if start == 0 and a.init is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(Path(a.init) / GENERATOR_FILE))
    t0 = time.perf_counter()
    acc = []
    for step in range(start, a.gen_steps):
        inputs, target, mask = gen_batch(data, text, _rng(a.seed, 2, step), GEN_BATCH)
        for g in opt.param_groups:
            g["lr"] = _lr(step, a.gen_steps, GEN_LR, warmup=50)
        loss = gen_loss(model, inputs, target, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        acc.append(loss.item())
        _progress(work, "gen", step + 1, a.gen_steps, acc, t0, start, work / "gen_ckpt.pt", model, opt)
    print(file=sys.stderr)
    (work / "gen_trained").write_text("ok\n")


# ---------------------------------------------------------------------------------------------------- ship
def ship(work: Path, a) -> None:
    """Generator safetensors (official key layout), the VAE diffusers folder and training.json."""
    from safetensors.torch import save_file

    out = Path(a.ship)
    out.mkdir(parents=True, exist_ok=True)
    sd = _load(work / "gen_ckpt.pt")["model"]
    save_file({k: v.contiguous() for k, v in sd.items()}, out / GENERATOR_FILE)
    if (out / VAE_DIR).exists():
        shutil.rmtree(out / VAE_DIR)
    shutil.copytree(work / VAE_DIR, out / VAE_DIR)
    losses = [ln.split("\t") for ln in (work / "loss.tsv").read_text().splitlines()]
    parent = None
    if a.init is not None:  # read before training.json is rewritten below (--init and --ship may coincide)
        pj = Path(a.init) / TRAINING_JSON
        parent = {k: v for k, v in json.loads(pj.read_text()).items() if k != "loss_curve"} if pj.is_file() else {}
    info = {
        "command": "python -m sanawm.worlds.train " + " ".join(sys.argv[1:]),
        "generator_config": "world", "generator_config_dict": world().to_dict(), "vae_config": world_vae_config(),
        "seed": a.seed, "data_seed": a.data_seed, "clips": a.clips, "clip_frames": CLIP_FRAMES,
        "vae_steps": a.vae_steps, "gen_steps": a.gen_steps, "dec_steps": a.dec_steps,
        "vae_batch": VAE_BATCH, "gen_batch": GEN_BATCH,
        "vae_window": VAE_WINDOW, "prompts": list(PROMPTS), "chunk_p": list(CHUNK_P),
        "training_scene_seeds": "drawn from [0, 1000000) by (data_seed, clip index); see sanawm.worlds.data",
        "heldout_scene_seeds": [1_000_000, 1_000_512],
        "vae_heldout": json.loads((work / "vae_eval.json").read_text()),
        "loss_curve": [{"stage": s, "step": int(n), "loss": float(v), "seconds": float(t)} for s, n, v, t in losses],
        "torch": torch.__version__, "threads": a.threads,
        "init": None if parent is None else "warm start from the parent model's weights (see parent)",
        "parent": parent,
    }
    (out / TRAINING_JSON).write_text(json.dumps(info, indent=1) + "\n")
    print(f"ship: weights and {TRAINING_JSON} in {out}", file=sys.stderr)


def run_stages(a, stages: list[str]) -> None:
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    if "vae" in stages:
        train_vae(work, a)
    if "latents" in stages:
        encode_latents(work, a)
    if "gen" in stages:
        train_gen(work, a)
    if "decoder" in stages:
        from .decoder_stage import train_decoder

        train_decoder(work, a)
    if "ship" in stages:
        if a.ship is None:
            raise SystemExit("the ship stage needs --ship DIR (e.g. sanawm/assets/tiny_world)")
        ship(work, a)
