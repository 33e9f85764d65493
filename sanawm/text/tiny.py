"""Tiny random text encoders + an offline tokenizer (tests and the ``--tiny`` demo; never downloads).

The tokenizer is a byte-level BPE with no merges: every UTF-8 byte is one token, so any text (empty,
non-ASCII, emoji) tokenises without an ``<unk>``. Like Gemma's tokenizer it prepends ``<bos>`` and defaults
to left padding (the encoders override the side per call, as the reference code does).

The models are seeded, so ``tiny_gemma2()`` gives the same weights in every process.
"""

from __future__ import annotations

import torch

# Identities and hidden size (= GeneratorConfig.tiny().caption_channels) live in the torch-free sanawm.text.spec.
from .spec import TINY_HIDDEN, TINY_REFINER_ID, TINY_STAGE1_ID  # noqa: F401

_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def tiny_tokenizer(padding_side: str = "left"):
    """A ``PreTrainedTokenizerFast`` (vocab 260) built in memory: byte-level, ``<bos>`` prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side=padding_side,
    )
    return tok


def _seeded(seed: int):
    return torch.random.fork_rng(devices=[])


def tiny_gemma2(seed: int = 0, vocab_size: int | None = None, hidden_size: int = TINY_HIDDEN):
    """Random 2-layer ``Gemma2Model`` (hidden 32, float32, eval mode, eager attention)."""
    from transformers import Gemma2Config, Gemma2Model

    if vocab_size is None:
        vocab_size = len(tiny_tokenizer())
    cfg = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=4096,
        sliding_window=4096,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        attn_implementation="eager",
    )
    with _seeded(seed):
        torch.manual_seed(seed)
        model = Gemma2Model(cfg)
    return model.eval()


def tiny_gemma3(seed: int = 0, vocab_size: int | None = None, hidden_size: int = TINY_HIDDEN, num_layers: int = 2):
    """Random text-only ``Gemma3ForCausalLM`` (returns ``num_layers + 1`` hidden states)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    if vocab_size is None:
        vocab_size = len(tiny_tokenizer())
    cfg = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=4096,
        sliding_window=4096,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        attn_implementation="eager",
    )
    with _seeded(seed):
        torch.manual_seed(seed)
        model = Gemma3ForCausalLM(cfg)
    return model.eval()


def tiny_connectors(seed: int = 0, caption_channels: int = TINY_HIDDEN, num_text_layers: int = 2, registers: int = 8):
    """Random diffusers ``LTX2TextConnectors`` sized for ``tiny_gemma3`` (sequence length must divide by ``registers``)."""
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors

    heads, head_dim = 2, caption_channels // 2
    with _seeded(seed):
        torch.manual_seed(seed)
        conn = LTX2TextConnectors(
            caption_channels=caption_channels,
            text_proj_in_factor=num_text_layers + 1,
            video_connector_num_attention_heads=heads,
            video_connector_attention_head_dim=head_dim,
            video_connector_num_layers=1,
            video_connector_num_learnable_registers=registers,
            audio_connector_num_attention_heads=heads,
            audio_connector_attention_head_dim=head_dim,
            audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=registers,
            video_hidden_dim=caption_channels,
            audio_hidden_dim=caption_channels,
        )
    return conn.eval()
