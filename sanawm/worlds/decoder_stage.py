"""Decoder stage of ``python -m sanawm.worlds.train`` (``--dec-steps``): fine-tune the world VAE's decoder after
the generator is trained, the encoder frozen.

Why: the generated frames are bounded by the decoder, and a short extra run on the decoder alone adds ~0.4 dB
of held-out reconstruction. Freezing the encoder keeps the latent space (and its mean / std) bit-identical, so
the trained generator stays valid. Tried and dropped: also training the decoder on the generator's own samples
against the true frames raised PSNR a little more but greyed and blurred the frames (the MSE-optimal answer to
an uncertain latent is the mean colour).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .models import VAE_DIR
from .train import load_data
from .trainer import _lr, _progress, _resume, _rng, heldout_psnr, vae_windows

DEC_LR = 3e-4
DEC_LATENT_NOISE = 0.1  # in normalised-latent units (~ the VAE stage's 0.02 raw): the generator's latents are imperfect


def train_decoder(work: Path, a) -> None:
    """Fine-tune the VAE decoder on encoder latents of random windows (with latent noise), the encoder frozen."""
    from ..models.vae import load_vae

    if (work / "decoder_trained").exists() or a.dec_steps <= 0:
        return
    frames = load_data(work, a.clips)["frames"]
    vae = load_vae(work / VAE_DIR).train()
    C = vae.config["latent_channels"]
    vae.encoder.requires_grad_(False).eval()
    vae.decoder.requires_grad_(True)
    opt = torch.optim.AdamW(vae.decoder.parameters(), lr=DEC_LR, weight_decay=0.0)
    start = _resume(work / "dec_ckpt.pt", vae, opt)
    t0 = time.perf_counter()
    acc = []
    for step in range(start, a.dec_steps):
        x, noise = vae_windows(frames, _rng(a.seed, 3, step), C)
        for g in opt.param_groups:
            g["lr"] = _lr(step, a.dec_steps, DEC_LR, warmup=20)
        with torch.no_grad():
            z = vae.encoder(x, causal=True)[:, :C]
        scale = vae.latents_std.view(1, C, 1, 1, 1)  # noise in normalised-latent units, as the generator errs
        y = vae.decoder(z + DEC_LATENT_NOISE * scale * noise[:, :, : z.shape[2]], causal=True)
        loss = F.mse_loss(y, x) + 0.5 * F.l1_loss(y, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.decoder.parameters(), 1.0)
        opt.step()
        acc.append(F.mse_loss(y.detach(), x).item())
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

