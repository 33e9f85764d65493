"""Export spec of the VAE: encoder and the two streaming decoder engines (always FP32), feeds, manifest section."""

from __future__ import annotations

import logging

import numpy as np

from ...constants import VAE_DECODER, VAE_ENCODER
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
    """Export jobs of the VAE engines for the generator config's latent size (FP32): the encoder (fixed shape)
    and ONE decoder engine for both chunk lengths (symbolic latent-frame axis, profiles first / next), whose
    frames leave the graph as uint8."""
    from ...models.vae import VAEEncoderStep, vae_compression, vae_encoder_io
    from ...models.vae.dynamic import VAEDecoderDynamicStep
    from ...models.vae.frames_out import Uint8Frames
    from ..dynamic import vae_decoder_feeds
    from ..onnx import FIXED_SHAPE_NOTE

    s, _ = vae_compression(vae.config)
    lhw = (cfg.latent_height, cfg.latent_width)
    H, W = lhw[0] * s, lhw[1] * s
    jobs = []
    rng = np.random.default_rng(5)
    for name in names:
        if name == VAE_ENCODER:
            io = vae_encoder_io(vae.config, H, W)
            img = rng.uniform(-1, 1, io.inputs[0].shape).astype(np.float32)
            jobs.append(EngineJob(name, "vae_encoder", VAEEncoderStep(vae, H, W).eval(), io, None, {"image": img},
                                  f"first frame {W}x{H} -> normalised latent; {FIXED_SHAPE_NOTE}", VAE_PRECISION, key))
        elif name == VAE_DECODER:
            first_n, next_n = cfg.first_chunk_size, cfg.chunk_size
            step = Uint8Frames(VAEDecoderDynamicStep(vae, lhw, first_n, next_n)).eval()
            profiles = {"first": {"n": first_n}, "next": {"n": next_n}}
            jobs.append(EngineJob(
                name, "vae_decoder_step", step, step.io, None, lambda io=step.io: vae_decoder_feeds(io, next_n, seed=6),
                f"one engine for both chunk lengths (profiles first: {first_n} latent frames, condition frame "
                f"dropped, caches not read; next: {next_n} + cache.{{i}}) -> 24 uint8 frames + cache.{{i}}.out",
                VAE_PRECISION, key, profiles=profiles, dims={"n": (next_n, first_n)},
                profile_samples=lambda prof, io=step.io: vae_decoder_feeds(io, profiles[prof]["n"], seed=11),
            ))
        else:
            raise ValueError(f"unknown VAE engine {name!r}")
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
