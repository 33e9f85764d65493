"""Refiner text path vs diffusers 0.42.1 SanaWMLTX2Refiner._encode_prompt / _pack_text_embeds (tiny random models)."""

import types
import warnings

import pytest
import torch

from sanawm.text.refiner_text import encode_refiner, pack_text_embeds
from sanawm.text.stage1 import PromptTruncatedWarning

refiner_mod = pytest.importorskip("diffusers.pipelines.sana_wm.refiner")

T = 16  # tiny max length (divisible by the connectors' 8 registers)


@pytest.fixture(scope="module")
def models():
    from sanawm.text.tiny import tiny_connectors, tiny_gemma3, tiny_tokenizer

    return tiny_tokenizer(), tiny_gemma3(), tiny_connectors()


@pytest.mark.parametrize("side", ["left", "right"])
def test_pack_matches_diffusers(side):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 10, 6, 4, generator=g) * 3 + 1
    lengths = torch.tensor([10, 4, 1])
    pos = torch.arange(10)[None]
    mask = (pos >= 10 - lengths[:, None]) if side == "left" else (pos < lengths[:, None])
    # garbage in the pad positions must not leak into the statistics
    h = torch.where(mask[:, :, None, None], h, torch.full_like(h, 1e4))
    ref = refiner_mod._pack_text_embeds(h, lengths, device="cpu", padding_side=side)
    got = pack_text_embeds(h, mask.long(), padding_side=side)
    assert got.shape == (3, 10, 24)
    assert (got - ref).abs().max().item() <= 1e-5
    assert torch.all(got[~mask] == 0)


@pytest.mark.parametrize("prompt", ["  a fox in the snow ", "", "雪の中の狐 🦊", "long " * 10])
def test_encode_matches_diffusers(models, prompt):
    tok, enc, conn = models
    fake = types.SimpleNamespace(tokenizer=tok, text_encoder=enc, connectors=conn, text_max_sequence_length=T)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, ref_mask = refiner_mod.SanaWMLTX2Refiner._encode_prompt(
            fake, prompt, device=torch.device("cpu"), dtype=torch.float32
        )
        got, mask = encode_refiner(prompt, tok, enc, conn, max_length=T)
    assert got.shape == (1, T, 32) and got.dtype == torch.float32
    assert torch.equal(mask, ref_mask.long())
    assert (got - ref).abs().max().item() <= 1e-5


def test_truncation_warns(models):
    tok, enc, conn = models
    with pytest.warns(PromptTruncatedWarning, match=r"last 4 token\(s\)"):
        encode_refiner("y" * 19, tok, enc, conn, max_length=T)  # <bos> + 19 bytes into 16
