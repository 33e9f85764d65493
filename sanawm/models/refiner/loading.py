"""Refiner transformer configs and loading: the tiny random-weight test model and the real checkpoint."""

from __future__ import annotations

import torch

def tiny_refiner_config(**overrides) -> dict:
    """Config kwargs of a tiny ``SanaWMLTX2RefinerTransformer3DModel`` for tests (2 layers, 2 heads x 16)."""
    cfg = dict(
        in_channels=16,
        out_channels=16,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        caption_channels=24,
        num_layers=2,
        audio_in_channels=8,
        audio_out_channels=8,
        audio_num_attention_heads=2,
        audio_attention_head_dim=8,
        audio_cross_attention_dim=16,
        rope_type="split",
        gated_attn=False,
        cross_attn_mod=False,
    )
    cfg.update(overrides)
    return cfg


def make_tiny_refiner_transformer(seed: int = 0, **overrides):
    """Random-weight tiny diffusers refiner transformer (float32, eval mode)."""
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2RefinerTransformer3DModel

    torch.manual_seed(seed)
    model = SanaWMLTX2RefinerTransformer3DModel(**tiny_refiner_config(**overrides))
    # randomise the zero-ish tables a little more so every path carries signal
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale_shift_table"):
                p.normal_(0.0, 0.2)
    return model.float().eval()


def load_refiner_transformer(path: str, dtype: torch.dtype = torch.bfloat16, subfolder: str | None = None):
    """Load ``SanaWMLTX2RefinerTransformer3DModel`` from a local diffusers folder (``config.json`` + weights).

    ``path`` is the refiner's ``transformer/`` folder, or the repo root with ``subfolder="transformer"``.
    """
    import os

    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2RefinerTransformer3DModel

    where = os.path.join(path, subfolder) if subfolder else path
    if not os.path.isfile(os.path.join(where, "config.json")):
        raise FileNotFoundError(
            f"no config.json in {where!r}: pass the refiner's diffusers 'transformer' folder "
            "(or the repo root with subfolder='transformer')"
        )
    kw = {"subfolder": subfolder} if subfolder else {}
    return SanaWMLTX2RefinerTransformer3DModel.from_pretrained(path, torch_dtype=dtype, **kw).eval()
