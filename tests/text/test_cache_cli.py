"""Prompt cache and the encode-prompt CLI (tiny random encoders, offline)."""

import warnings

import numpy as np
import pytest
import torch

from sanawm.text import cli
from sanawm.text.cache import PromptCache, cache_key, encode_cached, encoder_identity
from sanawm.text.stage1 import DEFAULT_CHI_PROMPT, PromptTruncatedWarning, encode_stage1
from sanawm.text.store import load_prompt_embeddings

KEY_ARGS = dict(negative_prompt="", stage1_encoder="g2@1", refiner_encoder=None, chi_prompt=DEFAULT_CHI_PROMPT,
                caption_length=300, refiner_max_length=1024)


def test_cache_key_covers_every_input():
    base = cache_key("a fox", **KEY_ARGS)
    assert base == cache_key("a fox", **KEY_ARGS)
    variants = [
        cache_key("a fox ", **KEY_ARGS),
        cache_key("a fox", **{**KEY_ARGS, "negative_prompt": "blurry"}),
        cache_key("a fox", **{**KEY_ARGS, "stage1_encoder": "g2@2"}),
        cache_key("a fox", **{**KEY_ARGS, "refiner_encoder": "g3@1"}),
        cache_key("a fox", **{**KEY_ARGS, "chi_prompt": None}),
        cache_key("a fox", **{**KEY_ARGS, "caption_length": 8}),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_second_call_skips_encoder(tmp_path):
    calls = []

    def encode(out):
        calls.append(out)
        cli.main(["--tiny", "--prompt", "fox", "--out", str(out)])

    key = cache_key("fox", **KEY_ARGS)
    assert encode_cached(tmp_path / "c", key, tmp_path / "a.safetensors", encode) is False
    assert encode_cached(tmp_path / "c", key, tmp_path / "b.safetensors", encode) is True
    assert len(calls) == 1
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    # a corrupt entry is a miss, and gets replaced
    PromptCache(tmp_path / "c").path_for(key).write_bytes(b"garbage")
    assert encode_cached(tmp_path / "c", key, tmp_path / "d.safetensors", encode) is False
    assert len(calls) == 2


def test_cli_cache_hit_does_not_build_encoder(tmp_path, monkeypatch):
    import sanawm.text.tiny as tiny

    argv = ["--tiny", "--prompt", "a fox", "--out", str(tmp_path / "p.safetensors"), "--cache-dir", str(tmp_path / "c")]
    assert cli.main(argv) == 0

    def boom(*a, **k):
        raise AssertionError("encoder built on a cache hit")

    monkeypatch.setattr(tiny, "tiny_gemma2", boom)
    argv[argv.index("--out") + 1] = str(tmp_path / "q.safetensors")
    assert cli.main(argv) == 0
    with pytest.raises(AssertionError, match="cache hit"):  # a different prompt must re-encode
        cli.main(argv[:1] + ["--prompt", "a cat"] + argv[3:])


def test_cli_tiny_matches_direct_encoding(tmp_path):
    from sanawm.config import tiny as tiny_cfg
    from sanawm.text.tiny import TINY_STAGE1_ID, tiny_gemma2, tiny_tokenizer

    out = tmp_path / "p.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        cli.main(["--tiny", "--prompt", "雪", "--negative-prompt", "blur", "--refiner-encoder", "tiny", "--out", str(out)])
    cfg = tiny_cfg()
    e = load_prompt_embeddings(out, cfg.caption_length, cfg.caption_channels, expect_encoder=TINY_STAGE1_ID,
                               require_refiner=True)
    f, m = encode_stage1("雪", tiny_tokenizer(), tiny_gemma2(), cfg.caption_length)
    np.testing.assert_allclose(e.text, f.numpy(), atol=1e-6)
    np.testing.assert_array_equal(e.text_mask, m.numpy())
    nf, _ = encode_stage1("blur", tiny_tokenizer(), tiny_gemma2(), cfg.caption_length, negative=True)
    np.testing.assert_allclose(e.negative_text, nf.numpy(), atol=1e-6)
    assert e.refiner_features.shape == (1, 16, 32)
    assert e.meta["prompt"] == "雪" and e.meta["negative_prompt"] == "blur"


def test_cli_loads_local_folders(tmp_path):
    """Encoders saved with save_pretrained load offline; identity follows the folder content."""
    from sanawm.text.tiny import tiny_gemma2, tiny_tokenizer

    folder = tmp_path / "gemma-2-tiny"
    tok, model = tiny_tokenizer(), tiny_gemma2(seed=3)
    tok.save_pretrained(folder)
    model.save_pretrained(folder)
    out = tmp_path / "p.safetensors"
    cli.main(["--stage1-encoder", str(folder), "--prompt", "hi", "--caption-length", "12", "--device", "cpu", "--out", str(out)])
    e = load_prompt_embeddings(out, 12, 32, expect_encoder="gemma-2-tiny")
    assert e.meta["stage1_encoder"] == encoder_identity(folder)
    f, m = encode_stage1("hi", tok, model, 12)
    np.testing.assert_allclose(e.text, f.numpy(), atol=1e-5)
    np.testing.assert_array_equal(e.text_mask, m.numpy())

    id0 = encoder_identity(folder)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(folder)
    assert encoder_identity(folder) != id0


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit, match="exactly one"):
        cli.main(["--prompt", "x", "--out", str(tmp_path / "p.safetensors")])
    with pytest.raises(SystemExit, match="no Gemma-2 config.json"):
        cli.main(["--stage1-encoder", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "p.safetensors")])
    with pytest.raises(SystemExit, match=".safetensors"):
        cli.main(["--tiny", "--prompt", "x", "--out", str(tmp_path / "p.npz")])
