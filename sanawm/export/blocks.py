"""Single-block export helpers and FP8 graph checks (build side; tests and ``bench/export.py``).

* :class:`BlockStep` wraps ONE ``SanaWMBlock`` of the streaming step as a StepIO module: its inputs are what
  ``SanaWMGenerator.run`` hands the block (residual stream ``x``, text tokens ``y`` + ``text_bias``, timestep
  modulation ``t0``, embedded Plücker maps, the RoPE / UCPE positional tensors) plus the block's carried
  state, named as in :func:`sanawm.spec.generator_step_io` without the ``b{i}.`` prefix. This lets a single
  full-size block (GDN or softmax) be exported, quantized and built without the whole 2.6B model.
* :func:`randomize_`: seeded, non-degenerate random weights (no zero-initialised paths).
* :func:`fp8_layer_check`: compares an FP8 ONNX graph on ORT with the torch fake-quant module layer by layer
  (see its docstring for why a free-running end-to-end comparison is not a tight check for FP8).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import GeneratorConfig
from ..spec import StepIO, TensorSpec, max_window_frames
from ..models.random_init import randomize_  # noqa: F401  (part of this module's API)

_KV = ("k", "v", "cam_k", "cam_v")


# ------------------------------------------------------------------------------------------ weights
# ------------------------------------------------------------------------------------- block step
def block_step_io(cfg: GeneratorConfig, index: int, first: bool = False) -> StepIO:
    """Tensor contract of block ``index`` alone in the streaming step (``first``: chunk-0 shapes, no window)."""
    from ..models.generator_step import GeneratorStep  # noqa: F401  (same conventions as the step)

    n = cfg.first_chunk_size if first else cfg.chunk_size
    S, C, h, D = cfg.patch_tokens, cfg.hidden_size, cfg.num_heads, cfg.head_dim
    N = n * S
    f32 = "float32"
    ins = [
        TensorSpec("x", f32, (1, n, S, C), "residual stream into the block"),
        TensorSpec("y", f32, (1, cfg.caption_length, C), "embedded + normed text tokens"),
        TensorSpec("text_bias", f32, (1, 1, 1, cfg.caption_length), "additive text mask bias"),
        TensorSpec("t0", f32, (1, n, 6, C), "t_block output per frame (adaLN modulation)"),
        TensorSpec("plucker_emb", f32, (1, n, S, C), "embedded Plücker maps"),
        TensorSpec("cos", f32, (N, D // 2), "main RoPE cos"),
        TensorSpec("sin", f32, (N, D // 2), "main RoPE sin"),
        TensorSpec("cam_cos", f32, (N, D // 4), "camera RoPE cos"),
        TensorSpec("cam_sin", f32, (N, D // 4), "camera RoPE sin"),
        TensorSpec("P", f32, (1, N, 4, 4), "ray <- world"),
        TensorSpec("P_inv", f32, (1, N, 4, 4), "world <- ray"),
    ]
    outs = [TensorSpec("x.out", f32, (1, n, S, C), "residual stream after the block")]
    state_map: dict[str, str] = {}

    def state(name, shape):
        ins.append(TensorSpec(name, f32, shape))
        outs.append(TensorSpec(name + ".out", f32, shape))
        state_map[name + ".out"] = name

    Wt = max_window_frames(cfg) * S
    if cfg.is_softmax_block(index):
        if not first and Wt:
            ins.append(TensorSpec("window_valid", f32, (Wt,), "1 = cached token"))
        state("ffn_tail", (1, S, C))
        if not first and Wt:
            for nm in _KV:
                ins.append(TensorSpec(f"{nm}_win", f32, (1, h, Wt, D)))
        for nm in _KV:
            outs.append(TensorSpec(f"{nm}_chunk", f32, (1, h, N, D)))
    else:
        state("S_kv", (1, h, D, D))
        state("S_z", (1, h, D))
        state("cam_S_kv", (1, h, D, D))
        state("k_tail", (1, cfg.conv_kernel_size - 1, S, C))
        if cfg.cam_kconv_tail:
            state("cam_k_tail", (1, cfg.conv_kernel_size - 1, S, C))
        state("ffn_tail", (1, S, C))
    return StepIO(tuple(ins), tuple(outs), state_map)


def _block_policy():
    """The generator's FP8 policy rewritten relative to ``BlockStep`` (``blocks.*.X`` -> ``block.X``)."""
    from ..models.transformer import SanaWMGenerator

    pre = "blocks.*."
    inc = tuple("block." + p[len(pre):] for p in SanaWMGenerator.fp8_quantizable if p.startswith(pre))
    skip = tuple(("block." + p[len(pre):]) if p.startswith(pre) else p for p in SanaWMGenerator.fp8_skip)
    return inc, skip


class BlockStep(nn.Module):
    """One ``SanaWMBlock`` as a pure step function over :func:`block_step_io` (positional in, tuple out)."""

    fp8_quantizable, fp8_skip = _block_policy()

    def __init__(self, cfg: GeneratorConfig, index: int, first: bool = False, block: nn.Module | None = None):
        super().__init__()
        from ..models.block import SanaWMBlock
        from ..models.plan import step_plan

        self.cfg, self.index, self.first = cfg, index, first
        self.block = block if block is not None else SanaWMBlock(cfg, index)
        self.io = block_step_io(cfg, index, first)
        self.input_names = tuple(t.name for t in self.io.inputs)
        self.output_names = tuple(t.name for t in self.io.outputs)
        self.num_frames = cfg.first_chunk_size if first else cfg.chunk_size
        self.plan = step_plan(cfg, self.num_frames)
        self.has_window = (not first) and max_window_frames(cfg) > 0

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from ..models.attention import PosContext

        a = dict(zip(self.input_names, args))
        cfg = self.cfg
        pos = PosContext(a["cos"], a["sin"], a["cam_cos"], a["cam_sin"], a["P"], a["P_inv"],
                         cfg.latent_height, cfg.latent_width)
        st: dict = {"ffn_tail": a["ffn_tail"][:, None]}
        if self.block.is_softmax:
            if self.has_window:
                st["window"] = {nm: a[f"{nm}_win"] for nm in _KV}
                st["window"]["valid"] = a["window_valid"]
        else:
            for nm in ("S_kv", "S_z", "cam_S_kv", "k_tail") + (("cam_k_tail",) if cfg.cam_kconv_tail else ()):
                st[nm] = a[nm]
        x, out = self.block(a["x"], a["y"], a["text_bias"], a["t0"], a["plucker_emb"], pos, self.plan, st)
        res = []
        for name in self.output_names:
            if name == "x.out":
                res.append(x.float())
                continue
            key = name[: -len(".out")] if name.endswith(".out") else name[: -len("_chunk")]
            t = out[key]
            if key == "ffn_tail":
                t = t[:, 0]
            res.append(t.float().contiguous())
        return tuple(res)


def block_feeds(cfg: GeneratorConfig, index: int, first: bool = False, seed: int = 0, chunk: int = 2) -> dict[str, np.ndarray]:
    """Plausible numpy feeds for :class:`BlockStep`: RoPE / ray tensors computed as ``SanaWMGenerator.run``
    does (moving camera, real intrinsics), random residual stream / modulation / text, small random state,
    a window of ``chunk``'s real size (rest padding)."""
    from ..models.rope import RopeTables
    from ..models.ucpe import ray_matrices

    io = block_step_io(cfg, index, first)
    rng = np.random.default_rng(seed)
    n = cfg.first_chunk_size if first else cfg.chunk_size
    start = 0 if first else cfg.first_chunk_size + (chunk - 1) * cfg.chunk_size
    H, W = cfg.latent_height, cfg.latent_width
    with torch.no_grad():
        rope = RopeTables(cfg)
        cos, sin = rope(torch.arange(start, start + n), H, W)
        cam_cos, cam_sin = rope.cam_slice(cos, sin)
        cam = np.zeros((1, n, 20), np.float32)
        for f in range(n):
            c2w = np.eye(4, dtype=np.float32)
            ang = 0.03 * (start + f)
            c2w[:3, :3] = [[math.cos(ang), 0, math.sin(ang)], [0, 1, 0], [-math.sin(ang), 0, math.cos(ang)]]
            c2w[:3, 3] = [0.1 * (start + f), 0.0, 0.05 * (start + f)]
            cam[0, f, :16] = c2w.reshape(-1)
            cam[0, f, 16:] = [0.9 * W, 0.9 * W, (W - 1) / 2, (H - 1) / 2]
        P, P_inv = ray_matrices(torch.from_numpy(cam), H, W)
    fixed = {"cos": cos, "sin": sin, "cam_cos": cam_cos, "cam_sin": cam_sin, "P": P, "P_inv": P_inv}
    Wt = max_window_frames(cfg) * cfg.patch_tokens
    real = sum((cfg.first_chunk_size if d == 0 else cfg.chunk_size) for d in cfg.window_chunks(chunk)) * cfg.patch_tokens
    feeds = {}
    for t in io.inputs:
        nm = t.name
        if nm in fixed:
            a = fixed[nm].float().numpy().reshape(t.shape)
        elif nm == "text_bias":
            a = np.zeros(t.shape, np.float32)
            a[..., -max(1, t.shape[-1] // 4):] = -10000.0
        elif nm == "window_valid":
            a = np.zeros(t.shape, np.float32)
            a[:real] = 1.0
        elif nm == "t0":
            a = (0.1 * rng.standard_normal(t.shape)).astype(np.float32)
        elif nm in ("S_kv", "cam_S_kv", "S_z"):
            a = (0.05 * np.abs(rng.standard_normal(t.shape))).astype(np.float32)
        elif nm.endswith("_win"):
            a = rng.standard_normal(t.shape).astype(np.float32)
            a[:, :, real:] = 0.0
        else:
            a = rng.standard_normal(t.shape).astype(np.float32)
        feeds[nm] = np.ascontiguousarray(a.astype(t.dtype))
    return feeds


# ---------------------------------------------------------------------------------- FP8 checking
class AmbiguousTaps(AssertionError):
    """A quantized layer runs more than once per call, so per-layer teacher forcing is not defined."""


def fp8_layer_check(qmodule: nn.Module, io: StepIO, onnx_path: str | Path, feeds: dict[str, np.ndarray]) -> dict:
    """Check an FP8 Q/DQ graph on ORT CPU against the torch fake-quant module it was exported from.

    Why not just compare the outputs: an FP8 E4M3 step is 1/16 relative, so wherever ORT's and torch's FP32
    arithmetic upstream of a quantizer differ by one ulp near a rounding midpoint, the two pick neighbouring
    FP8 codes. Each such flip is a 3-6 % error on that element, and the next quantized layer turns the
    resulting 1e-5-level difference into more flips: over a dozen chained quantized layers the free-running
    difference grows to the FP8-vs-FP32 level, whatever the graph's correctness. So this check
    (1) exposes every activation Q input and DQ output of the graph, (2) asserts nothing itself but returns,
    per quantized layer: ``qdq_exact`` = fraction of elements where ORT's DQ output equals torch's
    ``fp8_qdq`` of ORT's own pre-quant input (graph Q/DQ semantics == torch fake quant), ``pre_rel`` = relative
    error of ORT's pre-quant input vs torch's (upstream FP32 agreement), ``flips`` = fraction of FP8 codes
    that differ between the two free runs; (3) re-runs torch with ORT's quantized activations substituted
    at every quantized layer ("teacher forced"): its outputs vs ORT's measure everything except the flips.

    Returns:
        {"free": {output: rel err}, "forced": {output: rel err}, "layers": {layer: {...}},
         "absent": [quantized layers the exporter pruned from this graph], "ort": outputs}
    """
    import onnx
    import onnxruntime as ort

    from ..testing import rel_error
    from .quantize import quantizers

    onnx_path = Path(onnx_path)
    m = onnx.load(str(onnx_path), load_external_data=False)
    taps = {}
    for nd in m.graph.node:
        if nd.op_type == "QuantizeLinear" and nd.name.endswith(".input.Q"):
            layer = nd.name[: -len(".input.Q")]
            taps.setdefault(layer, {})["pre"] = nd.input[0]
        if nd.op_type == "DequantizeLinear" and nd.name.endswith(".input.DQ"):
            layer = nd.name[: -len(".input.DQ")]
            taps.setdefault(layer, {})["dq"] = nd.output[0]
    have = {o.name for o in m.graph.output}
    for t in taps.values():
        for k in ("pre", "dq"):
            if t[k] not in have:
                m.graph.output.append(onnx.helper.make_tensor_value_info(t[k], onnx.TensorProto.FLOAT, None))
                have.add(t[k])
    dbg = onnx_path.with_name(onnx_path.stem + ".taps.onnx")
    # same folder, same external-data file (load_external_data=False keeps the relative location)
    onnx.save_model(m, str(dbg))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(dbg), sess_options=so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})))
    dbg.unlink()

    all_qs = quantizers(qmodule)
    if not set(all_qs) & set(taps):
        raise AssertionError(f"none of the {len(all_qs)} quantized layers has Q/DQ nodes in {onnx_path.name}")
    # A layer can be absent because the exporter pruned it: it feeds no output of this graph (the refiner's
    # capture graph needs only K/V, not the last layer's attention output). Those are reported, not checked.
    absent = sorted(set(all_qs) - set(taps))
    qs = {n: q for n, q in all_qs.items() if n in taps}
    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in io.inputs)

    def run(forced: bool):
        seen, hooks = {}, []
        for name, layer in qs.items():
            def pre(mod, inp, name=name):
                if name in seen:
                    raise AmbiguousTaps(f"layer {name} runs more than once per call; per-layer taps are ambiguous")
                seen[name] = inp[0].detach().clone()
                if forced:
                    return (torch.from_numpy(got[taps[name]["dq"]]).reshape(inp[0].shape).to(inp[0].dtype),) + tuple(inp[1:])
                return None
            hooks.append(layer.register_forward_pre_hook(pre))
        try:
            with torch.no_grad():
                res = qmodule(*args)
        finally:
            for hk in hooks:
                hk.remove()
        return {t.name: r.float().numpy() for t, r in zip(io.outputs, res)}, seen

    free, seen = run(False)
    forced, _ = run(True)
    layers = {}
    for name, layer in qs.items():
        pre_ort = torch.from_numpy(got[taps[name]["pre"]]).reshape(seen[name].shape)
        dq_ort = got[taps[name]["dq"]].reshape(tuple(seen[name].shape))
        with torch.no_grad():
            mine = torch.ops.sanawm.fp8_qdq(pre_ort, layer.input_scale, -1, "check").numpy()
            theirs = torch.ops.sanawm.fp8_qdq(seen[name], layer.input_scale, -1, "check").numpy()
        layers[name] = {
            "qdq_exact": float(np.mean(mine == dq_ort)),
            "pre_rel": rel_error(seen[name], pre_ort),
            "flips": float(np.mean(theirs != dq_ort)),
        }
    outs = [t.name for t in io.outputs]
    return {
        "free": {n: rel_error(free[n], got[n]) for n in outs},
        "forced": {n: rel_error(forced[n], got[n]) for n in outs},
        "layers": layers,
        "absent": absent,
        "ort": {n: got[n] for n in outs},
    }
