"""Stage-1 prompt encoding vs diffusers 0.42.1 SanaWMPipeline.encode_prompt (same tiny random Gemma-2 + tokenizer)."""

import warnings

import pytest
import torch

from sanawm.text.stage1 import DEFAULT_CHI_PROMPT, PromptTruncatedWarning, encode_stage1, tokenize_stage1

diffusers_wm = pytest.importorskip("diffusers.pipelines.sana_wm.pipeline_sana_wm")

LONG = "A very long prompt about a red fox running through snow, " * 40  # >> 298 byte tokens
PROMPTS = ["a cat on a sunny windowsill", "", "Ein Fuchs läuft über den Schnee — 雪の中の狐 🦊", LONG]


def _oracle(tok, model, prompt, negative, length):
    """Run diffusers' encode_prompt, recording the token ids the encoder was given."""
    pipe = diffusers_wm.SanaWMPipeline(tokenizer=tok, text_encoder=model, vae=None, transformer=None, scheduler=None)
    seen = []
    h = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                c, cm, n, nm = pipe.encode_prompt(
                    prompt, negative, max_sequence_length=length, chi_prompt=list(diffusers_wm.DEFAULT_CHI_PROMPT)
                )
    finally:
        h.remove()
    select = [0] + list(range(-length + 1, 0))
    return c[:, 0], cm, n[:, 0], nm, seen[0][:, select], seen[1]


def test_preamble_is_the_release_text():
    assert list(DEFAULT_CHI_PROMPT) == list(diffusers_wm.DEFAULT_CHI_PROMPT)


@pytest.mark.parametrize("prompt", PROMPTS, ids=["plain", "empty", "non_ascii", "very_long"])
def test_matches_diffusers(tiny_tok, tiny_g2, prompt):
    L = 300
    c, cm, n, nm, kept_ids, neg_ids = _oracle(tiny_tok, tiny_g2, prompt, prompt, L)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        toks = tokenize_stage1(prompt, tiny_tok, L)
        f, m = encode_stage1(prompt, tiny_tok, tiny_g2, L)
        nf, nmask = encode_stage1(prompt, tiny_tok, tiny_g2, L, negative=True)
    assert f.dtype == torch.float32 and f.shape == (1, L, 32) and m.shape == (1, L)
    assert torch.equal(toks.kept_ids, kept_ids)
    assert torch.equal(m, cm)
    assert (f - c.float()).abs().max().item() <= 1e-5
    # negative prompt: no preamble, length L, everything kept
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        neg_toks = tokenize_stage1(prompt, tiny_tok, L, negative=True)
    assert torch.equal(neg_toks.kept_ids, neg_ids)
    assert torch.equal(nmask, nm)
    assert (nf - n.float()).abs().max().item() <= 1e-5


def test_token_layout(tiny_tok):
    """Kept = <bos>, last preamble token, the prompt's bytes, then right padding."""
    L = 300
    t = tokenize_stage1("abc", tiny_tok, L)
    n_chi = len(tiny_tok.encode("\n".join(DEFAULT_CHI_PROMPT)))
    assert t.input_ids.shape == (1, n_chi + L - 2)
    ids = t.kept_ids[0].tolist()
    assert ids[0] == tiny_tok.bos_token_id
    assert ids[2:5] == tiny_tok.encode("abc", add_special_tokens=False)
    assert ids[5:] == [tiny_tok.pad_token_id] * (L - 5)
    assert t.kept_mask[0].tolist() == [1] * 5 + [0] * (L - 5)


def test_truncation_warns_with_count(tiny_tok, tiny_g2):
    L = 16
    prompt = "x" * 20  # 20 byte tokens; 14 fit after the preamble
    with pytest.warns(PromptTruncatedWarning, match=r"last 6 token\(s\)"):
        f, m = encode_stage1(prompt, tiny_tok, tiny_g2, L)
    assert m.sum().item() == L  # all kept positions are real tokens
    with pytest.warns(PromptTruncatedWarning, match=r"negative prompt 0 .* last 5 token\(s\)"):
        encode_stage1("y" * 20, tiny_tok, tiny_g2, L, negative=True)  # 1 + 20 tokens into 16
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        encode_stage1("x" * 14, tiny_tok, tiny_g2, L)  # exactly fits: no warning


def test_batch_equals_single(tiny_tok, tiny_g2):
    prompts = PROMPTS[:3]
    fb, mb = encode_stage1(prompts, tiny_tok, tiny_g2, 300)
    for i, p in enumerate(prompts):
        f, m = encode_stage1(p, tiny_tok, tiny_g2, 300)
        assert torch.equal(mb[i : i + 1], m)
        assert (fb[i : i + 1] - f).abs().max().item() <= 1e-5


def test_bad_inputs(tiny_tok, tiny_g2):
    with pytest.raises(ValueError, match="at least one"):
        encode_stage1([], tiny_tok, tiny_g2)
    with pytest.raises(TypeError, match="strings"):
        encode_stage1([None], tiny_tok, tiny_g2)
