"""Acceptance checks of the stage-1 generator (SanaWMGenerator), in one place:

1. Oracle parity: diffusers' ``SanaWMTransformer3DModel`` at a small config with every parameter and buffer
   randomised (including the ones the library zero-initialises) vs our model loaded from its state dict,
   float32, relative RMS error <= 1e-5 on the velocity over several shapes (T = 1..6, non-square 3x5 latent
   frames, text padded differently per batch item).
2. The ``full`` config built on the meta device has exactly the official tensor names and shapes of
   sana-wm-reference.md section 12 (the table is written out below, not derived from our code) and ~2.66B
   parameters.
3. Streaming == whole sequence with per-frame timesteps: t = 0 cache passes over clean chunks 0..c-1, then one
   step on noisy chunk c at t, equal the chunk-causal forward over [clean 0..c-1, noisy c] with timesteps
   [0..0, t..t] under an independently written window (sink + previous chunk + itself) and the streaming
   softmax scale, for c = 0, 1, 2, 5.
4. Broken checkpoints fail with clear :class:`CheckpointError` messages: truncated safetensors, missing keys,
   wrong shapes, and a pickle that carries code (never executed).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from sanawm.config import full, tiny
from sanawm.models.generator_step import GeneratorStep, initial_state, window_inputs
from sanawm.models.loading import CheckpointError, convert_diffusers_keys, load_checkpoint, load_generator
from sanawm.models.plan import ChunkRule, chunked_plan
from sanawm.models.transformer import SanaWMGenerator
from sanawm.testing import rel_error

from gen_helpers import make_camera, make_inputs, parity_cfg, randomize_

# ---------------------------------------------------------------------------------------------------------------
# 1. diffusers oracle
# ---------------------------------------------------------------------------------------------------------------

ORACLE_RTOL = 1e-5


def _oracle_cfg():
    # head_dim 48 (not a FlashAttention size: padded camera scale != 1/sqrt(head_dim)), 3x5 latent frames
    return dataclasses.replace(parity_cfg(), latent_height=3, latent_width=5).validate()


def _diffusers_model(cfg):
    diffusers = pytest.importorskip("diffusers")
    return diffusers.SanaWMTransformer3DModel(
        in_channels=cfg.in_channels,
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_heads,
        linear_head_dim=cfg.head_dim,
        softmax_every_n=cfg.softmax_every_n,
        caption_channels=cfg.caption_channels,
        mlp_ratio=cfg.mlp_ratio,
        t_kernel_size=cfg.t_kernel_size,
        conv_kernel_size=cfg.conv_kernel_size,
        chunk_plucker_channels=cfg.plucker_channels,
        chunk_plucker_post_attn_blocks=cfg.plucker_post_attn_blocks,
    ).eval()


@pytest.fixture(scope="module")
def oracle_pair():
    cfg = _oracle_cfg()
    torch.manual_seed(0)
    ref = _diffusers_model(cfg)
    zero_init = sorted(n for n, p in ref.state_dict().items() if p.is_floating_point() and not p.any())
    randomize_(ref, seed=21)
    # every tensor is randomised: nothing left at zero (the library zero-initialises e.g. the adaLN tables,
    # the final projection and the output gates, which would hide whole paths from a comparison)
    still_zero = [n for n, p in ref.state_dict().items() if p.is_floating_point() and p.numel() and not p.all()]
    assert still_zero == [], still_zero
    assert zero_init, "expected the oracle to zero-initialise some tensors (else this check is vacuous)"
    ours = SanaWMGenerator(cfg).eval()
    missing, unexpected = ours.load_state_dict(convert_diffusers_keys(ref.state_dict()), strict=False)
    assert unexpected == [] and missing == ["y_embedder.y_embedding"], (missing, unexpected)
    return cfg, ref, ours


def _oracle_inputs(cfg, T, seed):
    B = 3
    inp = make_inputs(cfg, B=B, T=T, seed=seed)
    L = cfg.caption_length
    valid = [L, 5, 2]  # different numbers of valid text tokens per item (padding at the end)
    inp["text_mask"] = torch.stack([(torch.arange(L) < n).float() for n in valid])
    # per-item, per-frame timesteps (fractional: both sides truncate)
    g = torch.Generator().manual_seed(seed + 100)
    ts = torch.rand(B, 1, T, generator=g) * 999.0
    ts[0, :, 0] = 0.0  # a clean condition frame in item 0
    inp["timestep"] = ts
    return inp


def _run_oracle(ref, inp, monkeypatch):
    # the oracle casts softmax-SDPA inputs to bf16 (a FlashAttention speed choice, not the maths): keep fp32
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "bfloat16", lambda self, *a, **k: self)
        with torch.no_grad():
            return ref(
                inp["latents"], inp["timestep"], inp["text"], encoder_attention_mask=inp["text_mask"],
                camera_conditions=inp["camera"], chunk_plucker=inp["plucker"], return_dict=False,
            )[0]


@pytest.mark.parametrize("T", [1, 2, 3, 5, 6])
def test_oracle_parity_shapes(oracle_pair, monkeypatch, T):
    cfg, ref, ours = oracle_pair
    inp = _oracle_inputs(cfg, T, seed=30 + T)
    assert inp["latents"].shape[-2:] == (3, 5)
    want = _run_oracle(ref, inp, monkeypatch)
    with torch.no_grad():
        got = ours(**inp)
    assert got.shape == want.shape == inp["latents"].shape
    err = rel_error(want, got)
    per_item = [rel_error(want[b], got[b]) for b in range(want.shape[0])]
    print(f"oracle parity T={T} HxW=3x5 B=3: rel err {err:.2e} (per item {[f'{e:.1e}' for e in per_item]})")
    assert err <= ORACLE_RTOL and max(per_item) <= ORACLE_RTOL, (
        f"T={T}: velocity relative RMS error {err:.3e} (per item {per_item}) > {ORACLE_RTOL:.0e}; "
        f"max abs diff {(want - got).abs().max().item():.3e}"
    )


def test_oracle_padding_is_respected(oracle_pair):
    """Guard against a vacuous padding check: changing padded text tokens changes nothing, changing a valid one
    does (so the per-item masks above really reach the cross-attention)."""
    cfg, _, ours = oracle_pair
    inp = _oracle_inputs(cfg, 2, seed=9)
    pad = dict(inp, text=inp["text"].clone())
    pad["text"][1, :, 5:] += 3.0  # item 1 has 5 valid tokens
    val = dict(inp, text=inp["text"].clone())
    val["text"][1, :, 4] += 3.0
    with torch.no_grad():
        a, b, c = ours(**inp), ours(**pad), ours(**val)
    assert rel_error(a[1], b[1]) < 1e-6
    assert rel_error(a[1], c[1]) > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# 2. full config vs the official key table (sana-wm-reference.md section 12)
# ---------------------------------------------------------------------------------------------------------------

# written from the reference document, not from our modules
OFFICIAL_TOP = {
    "x_embedder.proj.weight": (2240, 128, 1, 1, 1),
    "x_embedder.proj.bias": (2240,),
    "raymap_embedder.proj.weight": (2240, 3, 1, 1, 1),
    "raymap_embedder.proj.bias": (2240,),
    "plucker_embedder.proj.weight": (2240, 48, 1, 1, 1),
    "plucker_embedder.proj.bias": (2240,),
    "t_embedder.mlp.0.weight": (2240, 256),
    "t_embedder.mlp.0.bias": (2240,),
    "t_embedder.mlp.2.weight": (2240, 2240),
    "t_embedder.mlp.2.bias": (2240,),
    "t_block.1.weight": (13440, 2240),
    "t_block.1.bias": (13440,),
    "y_embedder.y_proj.fc1.weight": (2240, 2304),
    "y_embedder.y_proj.fc1.bias": (2240,),
    "y_embedder.y_proj.fc2.weight": (2240, 2240),
    "y_embedder.y_proj.fc2.bias": (2240,),
    "y_embedder.y_embedding": (300, 2304),  # buffer (null caption)
    "attention_y_norm.weight": (2240,),
    "final_layer.linear.weight": (128, 2240),
    "final_layer.linear.bias": (128,),
    "final_layer.scale_shift_table": (2, 2240),
    # "pos_embed": (1, n, 2240) -- buffer dropped by the official loader; not part of our model
}
OFFICIAL_BLOCK = {
    "scale_shift_table": (6, 2240),
    "attn.qkv.weight": (6720, 2240),
    "attn.proj.weight": (2240, 2240),
    "attn.proj.bias": (2240,),
    "attn.q_norm.weight": (2240,),
    "attn.k_norm.weight": (2240,),
    "attn.beta_proj.weight": (20, 2240),
    "attn.beta_proj.bias": (20,),
    "attn.gate_proj.weight": (20, 2240),
    "attn.gate_proj.bias": (20,),
    "attn.A_log": (20,),
    "attn.dt_bias": (20,),
    "attn.recall_gate": (1,),  # buffer, unused
    "attn.output_gate.weight": (2240, 2240),
    "attn.output_gate.bias": (2240,),
    "attn.conv_k.weight": (2240, 1, 4),  # GDN only
    "attn.q_proj_cam.weight": (2240, 2240),
    "attn.q_proj_cam.bias": (2240,),
    "attn.k_proj_cam.weight": (2240, 2240),
    "attn.k_proj_cam.bias": (2240,),
    "attn.v_proj_cam.weight": (2240, 2240),
    "attn.v_proj_cam.bias": (2240,),
    "attn.out_proj_cam.weight": (2240, 2240),
    "attn.out_proj_cam.bias": (2240,),
    "attn.q_norm_cam.weight": (2240,),
    "attn.k_norm_cam.weight": (2240,),
    "attn.conv_k_cam.weight": (2240, 1, 4),  # GDN only
    "cross_attn.q_linear.weight": (2240, 2240),
    "cross_attn.q_linear.bias": (2240,),
    "cross_attn.kv_linear.weight": (4480, 2240),
    "cross_attn.kv_linear.bias": (4480,),
    "cross_attn.proj.weight": (2240, 2240),
    "cross_attn.proj.bias": (2240,),
    "cross_attn.q_norm.weight": (2240,),
    "cross_attn.k_norm.weight": (2240,),
    "mlp.inverted_conv.conv.weight": (13440, 2240, 1, 1),
    "mlp.inverted_conv.conv.bias": (13440,),
    "mlp.depth_conv.conv.weight": (13440, 1, 3, 3),
    "mlp.depth_conv.conv.bias": (13440,),
    "mlp.point_conv.conv.weight": (2240, 6720, 1, 1),
    "mlp.t_conv.weight": (2240, 2240, 3, 1),
    "plucker_proj.weight": (2240, 2240),
    "plucker_proj.bias": (2240,),
}
GDN_ONLY = ("attn.conv_k.weight", "attn.conv_k_cam.weight")
SOFTMAX_BLOCKS = (3, 7, 11, 15, 19)


def official_table() -> dict[str, tuple[int, ...]]:
    """Every official tensor except the dropped ``pos_embed``: 872 - 1 = 871 entries."""
    table = dict(OFFICIAL_TOP)
    for i in range(20):
        for k, shape in OFFICIAL_BLOCK.items():
            if i in SOFTMAX_BLOCKS and k in GDN_ONLY:
                continue
            table[f"blocks.{i}.{k}"] = shape
    return table


def test_official_table_counts():
    """The table above matches the document's own counts (872 tensors; 43 per GDN, 41 per softmax block)."""
    t = official_table()
    assert len(OFFICIAL_BLOCK) == 43 and len(OFFICIAL_BLOCK) - len(GDN_ONLY) == 41
    assert sum(1 for k in t if k.startswith("blocks.")) == 15 * 43 + 5 * 41 == 850
    assert len(t) + 1 == 872  # + pos_embed


def test_full_config_matches_official_layout():
    with torch.device("meta"):
        model = SanaWMGenerator(full())
    assert all(p.device.type == "meta" for p in model.parameters())
    want = official_table()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"missing {missing[:10]} ({len(missing)}), extra {extra[:10]} ({len(extra)})"
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not bad, f"{len(bad)} shape mismatch(es) (ours, official): {dict(list(bad.items())[:10])}"
    # GDN vs softmax blocks
    for i in range(20):
        n = sum(1 for k in got if k.startswith(f"blocks.{i}."))
        assert n == (41 if i in SOFTMAX_BLOCKS else 43), (i, n)
        assert model.blocks[i].is_softmax == (i in SOFTMAX_BLOCKS)
    # pos_embed is not ours in any form
    assert not any("pos_embed" in k for k, _ in model.named_parameters())
    assert not any("pos_embed" in k for k, _ in model.named_buffers())

    n_table = sum(math.prod(s) for s in want.values())
    n_params = sum(p.numel() for p in model.parameters())
    buffers = {"y_embedder.y_embedding", *(f"blocks.{i}.attn.recall_gate" for i in range(20))}
    n_table_params = sum(math.prod(s) for k, s in want.items() if k not in buffers)
    print(f"full config: {n_params:,} parameters ({n_params / 1e9:.3f}B); table: {n_table_params:,} parameters, "
          f"{n_table:,} values incl. buffers")
    assert abs(n_params - n_table_params) <= 0.01 * n_table_params, (n_params, n_table_params)
    assert 2.60e9 <= n_params <= 2.72e9, f"{n_params:,} is not about 2.66B"


# ---------------------------------------------------------------------------------------------------------------
# 3. streaming (t = 0 cache passes, then one noisy step) vs chunk-causal forward with per-frame timesteps
# ---------------------------------------------------------------------------------------------------------------

STREAM_RTOL = 1e-5
NOISY_T = 727.6  # fractional: truncated to 727 on both sides
KV = ("k", "v", "cam_k", "cam_v")


def _release_window(c: int) -> list[int]:
    """Sink chunk + previous chunk (plus the chunk itself, implicit), written out independently of the config."""
    return sorted({0, c - 1}) if c > 0 else []


@pytest.fixture(scope="module")
def stream_model():
    return randomize_(SanaWMGenerator(tiny()), seed=41).eval()


def _step(step, a):
    with torch.no_grad():
        return dict(zip(step.output_names, step(*[a[n] for n in step.input_names])))


def _stream_velocity(model, inp, c):
    """t = 0 passes over chunks 0..c-1 (committing state and K/V), then one step on chunk c; its velocity."""
    cfg = model.cfg
    steps = {True: GeneratorStep(model, True), False: GeneratorStep(model, False)}
    bounds = cfg.chunk_bounds(inp["latents"].shape[2])
    state, chunk_kv = initial_state(cfg, True), {}
    for d in range(c + 1):
        s, e = bounds[d]
        step = steps[d == 0]
        a = dict(
            state,
            latents=inp["latents"][:, :, s:e], timestep=inp["timestep"][:, s:e], frame_index=torch.arange(s, e),
            text=inp["text"], text_mask=inp["text_mask"], camera=inp["camera"][:, s:e],
            plucker=inp["plucker"][:, :, s:e],
        )
        if d:
            a.update(window_inputs(cfg, chunk_kv, d))
        outs = _step(step, a)
        if d == c:
            return outs["velocity"]
        assert torch.all(inp["timestep"][:, s:e] == 0)  # only clean chunks are committed
        state = {step.io.state_map[k]: v for k, v in outs.items() if k in step.io.state_map}
        chunk_kv[d] = [
            {nm: outs[f"b{i}.{nm}_chunk"] for nm in KV} if cfg.is_softmax_block(i) else None
            for i in range(cfg.num_layers)
        ]


@pytest.mark.parametrize("c", [0, 1, 2, 5])
def test_streaming_equals_per_frame_timestep_reference(stream_model, c):
    model = stream_model
    cfg = model.cfg
    T = cfg.first_chunk_size + c * cfg.chunk_size
    bounds = cfg.chunk_bounds(T)
    s, e = bounds[c]
    g = torch.Generator().manual_seed(50 + c)
    H, W = cfg.latent_height, cfg.latent_width
    timestep = torch.zeros(1, T)
    timestep[:, s:e] = NOISY_T
    inp = dict(
        latents=torch.randn(1, cfg.in_channels, T, H, W, generator=g),
        timestep=timestep,
        text=torch.randn(1, cfg.caption_length, cfg.caption_channels, generator=g),
        text_mask=(torch.arange(cfg.caption_length) < cfg.caption_length - 3).float()[None],
        camera=make_camera(1, T, H, W, seed=c),
        plucker=torch.randn(1, cfg.plucker_channels, T, H, W, generator=g),
    )
    # the whole-sequence reference: independently written window, streaming softmax scale, release camera conv
    rule = ChunkRule(window=_release_window, scale_dim=cfg.streaming_softmax_scale_dim,
                     cam_kconv_across=cfg.cam_kconv_tail)
    plan = chunked_plan(cfg, T, rule)
    assert plan.window == tuple(tuple(cfg.window_chunks(d)) for d in range(c + 1))  # config says the same
    assert plan.main_scale == plan.cam_scale == 1 / math.sqrt(128)
    with torch.no_grad():
        want = model(**inp, chunked=True, rule=rule)[:, :, s:e]
    got = _stream_velocity(model, inp, c)
    err = rel_error(want, got)
    print(f"streaming vs per-frame-timestep chunk-causal, chunk {c} (T={T}): rel err {err:.2e}")
    assert err <= STREAM_RTOL, (
        f"chunk {c}: streaming velocity differs from the whole-sequence reference by relative RMS {err:.3e} "
        f"> {STREAM_RTOL:.0e} (max abs {(want - got).abs().max().item():.3e})"
    )
    if c >= 2:
        # the comparison depends on the window: attending to every earlier chunk gives a different answer
        with torch.no_grad():
            allc = model(**inp, chunked=True, rule=dataclasses.replace(rule, window=None))[:, :, s:e]
        if c >= 3:
            assert rel_error(want, allc) > 1e-3
        # ...and on the clean-pass timesteps: committing chunk c-1 at t instead of 0 changes chunk c
        noisy_prev = dict(inp, timestep=inp["timestep"].clone())
        noisy_prev["timestep"][:, bounds[c - 1][0] : bounds[c - 1][1]] = NOISY_T
        with torch.no_grad():
            other = model(**noisy_prev, chunked=True, rule=rule)[:, :, s:e]
        assert rel_error(want, other) > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# 4. broken checkpoints
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd():
    m = randomize_(SanaWMGenerator(tiny()), seed=61)
    return {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}


def test_truncated_safetensors(tmp_path, tiny_sd):
    good = tmp_path / "good.safetensors"
    save_file(tiny_sd, str(good))
    data = good.read_bytes()
    for name, n in (("half", len(data) // 2), ("header_only", 40), ("empty", 0)):
        f = tmp_path / f"{name}.safetensors"
        f.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match=r"truncated or corrupt") as ei:
            load_generator(f, tiny())
        assert f.name in str(ei.value)
        print(f"{name}: {ei.value}")


def test_truncated_training_pt(tmp_path, tiny_sd):
    good = tmp_path / "model.pt"
    torch.save({"generator": tiny_sd}, good)
    f = tmp_path / "cut.pt"
    f.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt.*truncated or corrupt"):
        load_generator(f, tiny())


@pytest.mark.parametrize("fmt", ["official", "training"])
def test_missing_keys(tmp_path, tiny_sd, fmt):
    sd = dict(tiny_sd)
    for k in ("blocks.1.attn.qkv.weight", "final_layer.linear.bias"):
        del sd[k]
    if fmt == "official":
        f = tmp_path / "m.safetensors"
        save_file(sd, str(f))
    else:
        f = tmp_path / "m.pt"
        torch.save({"generator": sd}, f)
    with pytest.raises(CheckpointError, match=rf"2 missing key.*{fmt} checkpoint") as ei:
        load_generator(f, tiny())
    assert "blocks.1.attn.qkv.weight" in str(ei.value) and "final_layer.linear.bias" in str(ei.value)


def test_wrong_shape(tmp_path, tiny_sd):
    sd = dict(tiny_sd, **{"blocks.2.mlp.t_conv.weight": torch.zeros(64, 64, 5, 1)})
    f = tmp_path / "m.safetensors"
    save_file(sd, str(f))
    m = SanaWMGenerator(tiny())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"1 shape mismatch.*blocks\.2\.mlp\.t_conv\.weight: checkpoint "
                                              r"\(64, 64, 5, 1\) vs model \(64, 64, 3, 1\).*corrupt or from "
                                              r"another model"):
        load_checkpoint(m, f)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # nothing half-loaded


class _Payload:
    """Pickles as ``os.system(<touch marker>)``: a GLOBAL + REDUCE that would run a command when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["torch_zip", "raw_pickle_p2", "raw_pickle_p4"])
def test_pickle_with_code_is_refused(tmp_path, tiny_sd, fmt):
    marker = tmp_path / "PWNED"
    f = tmp_path / "model.pt"
    payload = {"generator": dict(tiny_sd, evil=_Payload(marker))}
    if fmt == "torch_zip":
        torch.save(payload, f)
    else:
        f.write_bytes(pickle.dumps(payload, protocol=2 if fmt.endswith("p2") else 4))
    assert b"system" in f.read_bytes()  # the code really is in the file
    with pytest.raises(CheckpointError) as ei:
        load_generator(f, tiny())
    msg = str(ei.value)
    print(msg)
    assert "contains code" in msg and "will not be loaded" in msg, msg
    assert "system" in msg, msg  # names what it would have called
    assert "weights_only set to `False`" not in msg  # never advise turning the guard off
    assert not marker.exists(), "the pickled command ran"
