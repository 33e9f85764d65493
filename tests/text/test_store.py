"""Prompt-embedding files: round trip, mismatch rejection, torch-free import."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sanawm.text.store import PromptFileError, load_prompt_embeddings, save_prompt_embeddings

L, C = 8, 32


def _meta(**kw):
    m = {"prompt": "a fox", "stage1_encoder": "gemma-2-2b-it@0123456789abcdef", "caption_length": L, "caption_channels": C}
    m.update(kw)
    return m


def _pair(length=L, ch=C, seed=0):
    r = np.random.default_rng(seed)
    mask = np.zeros((1, length), np.int64)
    mask[0, :3] = 1
    return r.standard_normal((1, length, ch)).astype(np.float32), mask


def test_round_trip(tmp_path):
    s1, neg, ref = _pair(), _pair(seed=1), _pair(16, 12, seed=2)
    p = save_prompt_embeddings(tmp_path / "p.safetensors", stage1=s1, stage1_negative=neg, refiner=ref, meta=_meta(prompt="雪 🦊"))
    e = load_prompt_embeddings(p, L, C, expect_encoder="gemma-2-2b-it", expect_refiner_channels=12, require_refiner=True)
    np.testing.assert_array_equal(e.text, s1[0])
    np.testing.assert_array_equal(e.text_mask, s1[1].astype(np.float32))
    assert e.text_mask.dtype == np.float32 and e.text.dtype == np.float32
    np.testing.assert_array_equal(e.negative_text, neg[0])
    np.testing.assert_array_equal(e.refiner_features, ref[0])
    assert e.meta["prompt"] == "雪 🦊"
    # the full identity also matches
    load_prompt_embeddings(p, L, C, expect_encoder="gemma-2-2b-it@0123456789abcdef")
    # no refiner stored -> refiner fields are None
    p2 = save_prompt_embeddings(tmp_path / "q.safetensors", stage1=s1, meta=_meta())
    assert load_prompt_embeddings(p2, L, C).refiner_features is None


def test_rejects_mismatches(tmp_path):
    p = save_prompt_embeddings(tmp_path / "p.safetensors", stage1=_pair(), refiner=_pair(16, 12), meta=_meta())
    with pytest.raises(PromptFileError, match=r"expects \(batch, 300, 2304\).*sanawm encode-prompt"):
        load_prompt_embeddings(p, 300, 2304)
    with pytest.raises(PromptFileError, match=r"expects \(batch, 8, 64\)"):
        load_prompt_embeddings(p, L, 64)
    with pytest.raises(PromptFileError, match=r"'gemma-2-2b-it@0123456789abcdef' but this bundle expects 'other-gemma'"):
        load_prompt_embeddings(p, L, C, expect_encoder="other-gemma")
    with pytest.raises(PromptFileError, match="bundle expects 'gemma-2-2b-it@ffff"):
        load_prompt_embeddings(p, L, C, expect_encoder="gemma-2-2b-it@ffffffffffffffff")
    with pytest.raises(PromptFileError, match="refiner expects 3840"):
        load_prompt_embeddings(p, L, C, expect_refiner_channels=3840)
    q = save_prompt_embeddings(tmp_path / "q.safetensors", stage1=_pair(), meta=_meta())
    with pytest.raises(PromptFileError, match="--refiner-encoder"):
        load_prompt_embeddings(q, L, C, require_refiner=True)


def test_rejects_foreign_and_missing_files(tmp_path):
    from safetensors.numpy import save_file

    with pytest.raises(PromptFileError, match="does not exist"):
        load_prompt_embeddings(tmp_path / "nope.safetensors", L, C)
    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(PromptFileError, match="not a sanawm prompt file"):
        load_prompt_embeddings(tmp_path / "w.safetensors", L, C)
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04pickle-ish garbage")
    with pytest.raises(PromptFileError, match="not a readable safetensors"):
        load_prompt_embeddings(tmp_path / "junk.safetensors", L, C)


def test_save_validates(tmp_path):
    with pytest.raises(PromptFileError, match="missing"):
        save_prompt_embeddings(tmp_path / "a.safetensors", stage1=_pair(), meta={"caption_length": L})
    with pytest.raises(PromptFileError, match="meta says caption_length=300"):
        save_prompt_embeddings(tmp_path / "a.safetensors", stage1=_pair(), meta=_meta(caption_length=300))
    f, m = _pair()
    with pytest.raises(PromptFileError, match="mask shape"):
        save_prompt_embeddings(tmp_path / "a.safetensors", stage1=(f, m[:, :4]), meta=_meta())
    f[0, 0, 0] = np.nan
    with pytest.raises(PromptFileError, match="NaN"):
        save_prompt_embeddings(tmp_path / "a.safetensors", stage1=(f, m), meta=_meta())
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_store_and_cache_import_without_torch(tmp_path):
    code = (
        "import sys\n"
        "import sanawm.text.store, sanawm.text.cache\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'diffusers'))\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout.strip().replace("'", '"')) == []
