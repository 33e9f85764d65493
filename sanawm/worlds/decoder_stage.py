"""Decoder stage of ``python -m sanawm.worlds.train`` (``--dec-steps``): fine-tune the world VAE's decoder after
the generator is trained, the encoder frozen.

Why: the generated frames' PSNR is bounded by the decoder, and the decoder was trained only on the encoder's
latents, while at inference it decodes the generator's samples, which are blurrier and colour-biased. Freezing
the encoder keeps the latent space (and its mean / std) bit-identical, so the trained generator stays valid.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import to_video_tensor
from .models import GENERATOR_FILE, VAE_DIR
from .train import load_data
from .trainer import PROMPTS, _load, _lr, _progress, _resume, _rng, heldout_psnr, text_bank, vae_windows

DEC_LR = 3e-4
DEC_LATENT_NOISE = 0.1  # in normalised-latent units (~ the VAE stage's 0.02 raw): the generator's latents are imperfect
DEC_GEN_FRAMES = 49  # the decoder stage also decodes the generator's own samples of each training clip's first 3 s


@torch.no_grad()
def generated_latents(work: Path, a, data: dict) -> np.ndarray:
    """The trained generator's samples (normalised latents, [N, C, T, h, w]) of every training clip's first
    ``DEC_GEN_FRAMES`` frames along its own path, with a training prompt: what the decoder meets at inference."""
    from safetensors.torch import save_file

    from .reference import TorchWorld

    cache = work / "gen_latents.npz"
    if cache.exists():
        return np.load(cache)["latents"]
    gen = work / GENERATOR_FILE
    save_file({k: v.contiguous() for k, v in _load(work / "gen_ckpt.pt")["model"].items()}, gen)
    tw = TorchWorld(gen, work / VAE_DIR)
    text, mask = text_bank()
    out = []
    for i in range(len(data["frames"])):
        p = i % len(PROMPTS)
        prompt = (text[p:p + 1].numpy(), mask[p:p + 1].numpy())
        camera = (data["camera"][i], data["plucker"][i])
        out.append(tw.sample(data["frames"][i, 0], prompt, camera, DEC_GEN_FRAMES, noise_seed=a.seed * 100_003 + i)[0])
        if (i + 1) % 25 == 0:
            print(f"decoder: sampled {i + 1} clips", file=sys.stderr, flush=True)
    z = torch.stack(out).numpy()
    np.savez(work / "gen_latents.tmp.npz", latents=z)
    (work / "gen_latents.tmp.npz").replace(cache)
    return z


def train_decoder(work: Path, a) -> None:
    """Fine-tune the VAE decoder with the encoder frozen: the latent space (and so the generator trained on it)
    is unchanged. Each step decodes encoder latents of random windows (reconstruction, latent noise) and one
    generator sample of a training clip against that clip's true frames, so the decoder learns to render what
    the generator actually produces (its blur and colour bias), not only the encoder's latents."""
    from ..models.vae import denormalize_latents, load_vae

    if (work / "decoder_trained").exists() or a.dec_steps <= 0:
        return
    data = load_data(work, a.clips)
    frames = data["frames"]
    gz = generated_latents(work, a, data)
    vae = load_vae(work / VAE_DIR).train()
    denorm = dict(mean=vae.latents_mean, std=vae.latents_std, scaling_factor=float(vae.config["scaling_factor"]))
    C = vae.config["latent_channels"]
    vae.encoder.requires_grad_(False).eval()
    vae.decoder.requires_grad_(True)
    opt = torch.optim.AdamW(vae.decoder.parameters(), lr=DEC_LR, weight_decay=0.0)
    start = _resume(work / "dec_ckpt.pt", vae, opt)
    t0 = time.perf_counter()
    acc = []
    for step in range(start, a.dec_steps):
        rng = _rng(a.seed, 3, step)
        x, noise = vae_windows(frames, rng, C)
        for g in opt.param_groups:
            g["lr"] = _lr(step, a.dec_steps, DEC_LR, warmup=20)
        with torch.no_grad():
            z = vae.encoder(x, causal=True)[:, :C]
        scale = vae.latents_std.view(1, C, 1, 1, 1)  # noise in normalised-latent units, as the generator errs
        y = vae.decoder(z + DEC_LATENT_NOISE * scale * noise[:, :, : z.shape[2]], causal=True)
        j = int(rng.integers(len(gz)))
        xg = torch.from_numpy(to_video_tensor(frames[j, :DEC_GEN_FRAMES]))[None]
        yg = vae.decoder(denormalize_latents(torch.from_numpy(gz[j:j + 1]), **denorm), causal=True)
        loss = F.mse_loss(y, x) + 0.5 * F.l1_loss(y, x) + F.mse_loss(yg, xg) + 0.5 * F.l1_loss(yg, xg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.decoder.parameters(), 1.0)
        opt.step()
        acc.append(F.mse_loss(yg.detach(), xg).item())  # the generated-sample error: what the stage improves
        _progress(work, "decoder", step + 1, a.dec_steps, acc, t0, start, work / "dec_ckpt.pt", vae, opt)
    print(file=sys.stderr)
    vae.eval()
    psnrs = heldout_psnr(vae)
    vae.save_pretrained(work / VAE_DIR, safe_serialization=True)
    cfg = work / VAE_DIR / "config.json"  # loaded from a path, diffusers records it: keep local paths out of the asset
    kept = {k: v for k, v in json.loads(cfg.read_text()).items() if k != "_name_or_path"}
    cfg.write_text(json.dumps(kept, indent=2) + "\n")
    ev = json.loads((work / "vae_eval.json").read_text())
    ev.update(decoder_steps=a.dec_steps, psnr_db=psnrs, mean_psnr_db=float(np.mean(psnrs)))
    (work / "vae_eval.json").write_text(json.dumps(ev, indent=1))
    print(f"decoder: VAE reconstruction on 16 held-out clips {np.mean(psnrs):.2f} dB", file=sys.stderr)
    (work / "decoder_trained").write_text("ok\n")

