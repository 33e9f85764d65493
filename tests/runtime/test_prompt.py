"""Runtime prompt loading: one reader (sanawm.text.store), checked against the bundle's config and encoder identity."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from sanawm.config import full, tiny
from sanawm.runtime.prompt import PromptEmbeddings, coerce_prompt, load_prompt
from sanawm.text.spec import (
    GEMMA2_2B_IT,
    TINY_STAGE1_ID,
    encode_command,
    encoder_name,
    expected_stage1_encoder,
)
from sanawm.text.store import PromptFileError, save_prompt_embeddings

CFG = tiny()
L, C = CFG.caption_length, CFG.caption_channels


def _pair(length=L, ch=C, seed=0):
    r = np.random.default_rng(seed)
    mask = np.zeros((1, length), np.float32)
    mask[0, :3] = 1
    return r.standard_normal((1, length, ch)).astype(np.float32), mask


def _file(path, length=L, ch=C, encoder=TINY_STAGE1_ID, refiner=None, negative=None):
    meta = {"prompt": "a fox", "stage1_encoder": encoder, "caption_length": length, "caption_channels": ch}
    return save_prompt_embeddings(path, stage1=_pair(length, ch), refiner=refiner, stage1_negative=negative, meta=meta)


def test_expected_encoder_from_config_and_manifest():
    assert expected_stage1_encoder(CFG) == TINY_STAGE1_ID
    assert expected_stage1_encoder(full()) == GEMMA2_2B_IT
    odd = dataclasses.replace(tiny(), caption_length=12)
    assert expected_stage1_encoder(odd) is None  # unknown config: identity not checked
    assert expected_stage1_encoder(CFG, {"text": {"stage1_encoder": "my-gemma@0123"}}) == "my-gemma@0123"
    assert expected_stage1_encoder(CFG, {"text": None}) == TINY_STAGE1_ID  # defensive: odd sections ignored
    assert expected_stage1_encoder(CFG, {"text": "junk"}) == TINY_STAGE1_ID


def test_matching_file_loads_with_refiner_and_negative(tmp_path):
    ref, neg = _pair(16, 12, seed=2), _pair(seed=1)
    p = _file(tmp_path / "p.safetensors", refiner=ref, negative=neg)
    e = load_prompt(p, CFG)
    assert isinstance(e, PromptEmbeddings)
    np.testing.assert_array_equal(e.text, _pair()[0])
    np.testing.assert_array_equal(e.text_mask, _pair()[1])
    np.testing.assert_array_equal(e.refiner_features, ref[0])
    np.testing.assert_array_equal(e.refiner_mask, ref[1])
    np.testing.assert_array_equal(e.negative_text, neg[0])
    assert e.meta["stage1_encoder"] == TINY_STAGE1_ID
    # a path through coerce (what Session.start does) takes the same checks; the refiner part is optional
    q = _file(tmp_path / "q.safetensors")
    e2 = coerce_prompt(q, CFG)
    assert e2.refiner_features is None and e2.text.shape == (1, L, C)
    # coerce keeps the refiner part of a PromptEmbeddings (the refiner stage reads refiner_features)
    assert coerce_prompt(e, CFG).refiner_features is not None


@pytest.mark.parametrize("length, ch, what", [(12, C, r"expects \(batch, 8, 32\)"), (L, 64, r"expects \(batch, 8, 32\)")])
def test_rejects_shape_mismatch(tmp_path, length, ch, what):
    p = _file(tmp_path / "p.safetensors", length, ch)
    with pytest.raises(ValueError, match=what) as ei:
        load_prompt(p, CFG)
    msg = str(ei.value)
    assert f"sanawm encode-prompt --prompt ... --tiny --out {p}" in msg, msg


def test_rejects_encoder_identity_mismatch(tmp_path):
    p = _file(tmp_path / "p.safetensors", encoder="gemma-2-2b-it@0123456789abcdef")
    with pytest.raises(PromptFileError) as ei:
        load_prompt(p, CFG)
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert f"this bundle expects {TINY_STAGE1_ID!r}" in msg and "'gemma-2-2b-it@0123456789abcdef'" in msg
    assert f"sanawm encode-prompt --prompt ... --tiny --out {p}" in msg
    # the manifest's text section names the encoder: that wins over the config default
    m = {"text": {"stage1_encoder": "gemma-2-2b-it"}, "refiner": {"block": 3}}
    assert load_prompt(p, CFG, m).text.shape == (1, L, C)
    with pytest.raises(ValueError, match="expects 'other'") as ei:
        load_prompt(p, CFG, {"text": {"stage1_encoder": "other"}})
    assert "--stage1-encoder <other folder> --caption-length 8 --out" in str(ei.value)
    # and the full config expects Gemma-2-2B-IT, with the exact command for it
    cfg = full()
    q = _file(tmp_path / "q.safetensors", cfg.caption_length, cfg.caption_channels, encoder=TINY_STAGE1_ID)
    with pytest.raises(ValueError, match="this bundle expects 'gemma-2-2b-it'") as ei:
        load_prompt(q, cfg)
    assert f"sanawm encode-prompt --prompt ... --stage1-encoder <gemma-2-2b-it folder> --out {q}" in str(ei.value)
    assert load_prompt(q, cfg, expect_encoder=None).text.shape == (1, 300, 2304)


def test_refiner_channels_from_manifest(tmp_path):
    p = _file(tmp_path / "p.safetensors", refiner=_pair(16, 12))
    with pytest.raises(ValueError, match="refiner expects 3840"):
        load_prompt(p, CFG, {"text": {"refiner_channels": 3840}})
    with pytest.raises(ValueError, match="--refiner-encoder"):
        load_prompt(_file(tmp_path / "q.safetensors"), CFG, require_refiner=True)


def test_npz_and_plain_safetensors_fallback(tmp_path):
    from safetensors.numpy import save_file

    text, mask = _pair()
    np.savez(tmp_path / "p.npz", text=text, text_mask=mask)
    e = load_prompt(tmp_path / "p.npz", CFG)
    np.testing.assert_array_equal(e.text, text)
    np.testing.assert_array_equal(e.text_mask, mask)
    np.savez(tmp_path / "nomask.npz", text=text[0])
    np.testing.assert_array_equal(load_prompt(tmp_path / "nomask.npz", CFG).text_mask, np.ones((1, L), np.float32))
    np.savez(tmp_path / "bad.npz", text=np.zeros((1, 12, C), np.float32))
    with pytest.raises(ValueError, match=r"this bundle takes \[1, 8, 32\].*sanawm encode-prompt --prompt ... --tiny"):
        load_prompt(tmp_path / "bad.npz", CFG)
    save_file({"prompt_embeds": text, "prompt_attention_mask": mask}, str(tmp_path / "plain.safetensors"))
    np.testing.assert_array_equal(load_prompt(tmp_path / "plain.safetensors", CFG).text, text)
    with pytest.raises(ValueError, match="does not exist; encode the prompt with: sanawm encode-prompt"):
        load_prompt(tmp_path / "missing.safetensors", CFG)
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04 garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_prompt(tmp_path / "junk.safetensors", CFG)


def test_encode_command_and_encoder_name(tmp_path):
    assert encode_command(CFG, {"refiner": {"block": 3}}, out="x.safetensors", prompt="a fox") == (
        "sanawm encode-prompt --prompt 'a fox' --tiny --refiner-encoder tiny --out x.safetensors")
    snap = tmp_path / "hub" / "models--google--gemma-2-2b-it" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    assert encoder_name(snap) == "gemma-2-2b-it"
    pipe = tmp_path / "SANA-WM-pipeline"
    (pipe / "text_encoder").mkdir(parents=True)
    (pipe / "text_encoder" / "config.json").write_text('{"_name_or_path": "google/gemma-2-2b-it"}')
    assert encoder_name(pipe, pipe / "text_encoder") == "gemma-2-2b-it"
    assert encoder_name(tmp_path / "hub") == "hub"


def test_import_is_torch_free():
    code = (
        "import sys\n"
        "import sanawm.runtime.prompt, sanawm.runtime, sanawm.text.spec\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'diffusers'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
