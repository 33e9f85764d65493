"""Export spec of the VAE: encoder and the two streaming decoder engines (always FP32), feeds, manifest section."""

from __future__ import annotations

import logging

import numpy as np

from ...constants import VAE_DECODER_FIRST, VAE_DECODER_NEXT, VAE_ENCODER
from ..job import EngineJob, ExportInputError, json_config, sha256_path

log = logging.getLogger("sanawm.export")
VAE_PRECISION = "fp32"  # FP16/BF16/FP8 only once a test shows the decoder error stays small


def random_vae_config(config_name: str, latent_channels: int) -> dict:
    """Config of the seeded random VAE for ``--random``: the tiny VAE for the tiny generator (its latent
    channels set to the generator's ``in_channels``), the full LTX-2 VAE otherwise."""
    from ...models.vae import full_vae_config, tiny_vae_config

    if config_name == "tiny":
        return tiny_vae_config(latent_channels=latent_channels)
    c = full_vae_config()
    if c["latent_channels"] != latent_channels:
        raise ValueError(
            f"the full LTX-2 VAE has {c['latent_channels']} latent channels, the {config_name!r} generator takes "
            f"{latent_channels}; use a matching --config or pass --vae"
        )
    return c


def vae_section(vae, cfg, source: dict) -> dict:
    """The manifest's ``vae`` entry: config, image and latent sizes, compression, source."""
    from ...models.vae import vae_compression

    s, t = vae_compression(vae.config)
    return {
        "config": json_config(vae.config),
        "latent_channels": int(vae.config["latent_channels"]),
        "latent_hw": [cfg.latent_height, cfg.latent_width],
        "image_hw": [cfg.latent_height * s, cfg.latent_width * s],
        "spatial_compression": s,
        "temporal_compression": t,
        "precision": VAE_PRECISION,
        "source": source,
    }


def check_vae_matches(vae, cfg, where: str) -> None:
    C = int(vae.config["latent_channels"])
    if C != cfg.in_channels:
        raise ValueError(
            f"{where} has {C} latent channels, the generator config takes {cfg.in_channels}; use the VAE that "
            "belongs to this generator (LTX-2: 128 channels with --config full)"
        )


def vae_jobs(vae, cfg, names, key: dict) -> list[EngineJob]:
    """Export jobs of the VAE engines for the generator config's latent size (FP32, fixed shapes)."""
    from ...models.vae import VAEDecoderStep, VAEEncoderStep, vae_compression, vae_encoder_io
    from ..onnx import FIXED_SHAPE_NOTE, random_inputs, run_torch

    s, _ = vae_compression(vae.config)
    lhw = (cfg.latent_height, cfg.latent_width)
    H, W = lhw[0] * s, lhw[1] * s
    jobs = []
    first = VAEDecoderStep(vae, True, lhw).eval()
    rng = np.random.default_rng(5)
    first_feeds = {"latents": rng.standard_normal(first.io.inputs[0].shape).astype(np.float32)}
    for name in names:
        if name == VAE_ENCODER:
            io = vae_encoder_io(vae.config, H, W)
            img = rng.uniform(-1, 1, io.inputs[0].shape).astype(np.float32)
            jobs.append(EngineJob(name, "vae_encoder", VAEEncoderStep(vae, H, W).eval(), io, None, {"image": img},
                                  f"first frame {W}x{H} -> normalised latent; {FIXED_SHAPE_NOTE}", VAE_PRECISION, key))
        elif name == VAE_DECODER_FIRST:
            jobs.append(EngineJob(name, "vae_decoder_step", first, first.io, None, first_feeds,
                                  "chunk 0: 4 latent frames (condition + 3) -> 24 frames (condition frame dropped), "
                                  f"no cache inputs; {FIXED_SHAPE_NOTE}", VAE_PRECISION, key, VAE_DECODER_NEXT))
        else:
            nxt = VAEDecoderStep(vae, False, lhw).eval()

            def feeds(nxt=nxt) -> dict:
                """Trace and check on the caches a real chunk 0 leaves behind (not random noise); made only when
                the stage runs (a full-size first chunk costs a while on a CPU)."""
                outs = run_torch(first, first.io, first_feeds)
                f = random_inputs(nxt.io, seed=6)
                f.update({first.io.state_map[k]: v for k, v in outs.items() if k in first.io.state_map})
                return f

            jobs.append(EngineJob(name, "vae_decoder_step", nxt, nxt.io, None, feeds,
                                  "later chunks: 3 latent frames + cache.{i} -> 24 frames + cache.{i}.out; "
                                  f"{FIXED_SHAPE_NOTE}", VAE_PRECISION, key))
    return jobs


def prepare_vae(vae_path, config_name: str, seed: int, cfg, precision: str, names) -> tuple[list[EngineJob], dict]:
    """Load (``vae_path``) or build (seeded random) the VAE; its jobs and the manifest's ``vae`` section."""
    from ...models.vae import build_vae, load_vae

    if vae_path is not None:
        if not vae_path.exists():
            raise ExportInputError(f"--vae {vae_path} does not exist")
        log.info("hashing VAE %s ...", vae_path)
        vsrc = {"vae": str(vae_path), "vae_sha256": sha256_path(vae_path), "random_seed": None}
        try:
            vae = load_vae(vae_path)
            check_vae_matches(vae, cfg, f"--vae {vae_path}")
        except (OSError, ValueError) as e:
            raise ExportInputError(str(e)) from e
    else:
        vsrc = {"vae": None, "vae_sha256": None, "random_seed": seed}
        try:
            vcfg = random_vae_config(config_name, cfg.in_channels)
        except ValueError as e:
            raise ExportInputError(str(e)) from e
        vae = build_vae(vcfg, seed=seed, random_latent_stats=True)
    info = vae_section(vae, cfg, vsrc)
    if precision != VAE_PRECISION:
        log.info("VAE engines stay %s (--precision %s applies to the generator only)", VAE_PRECISION, precision)
    key = {"vae_source": vsrc, "vae_config": info["config"], "latent_hw": info["latent_hw"]}
    return vae_jobs(vae, cfg, names, key), info
