"""Engine I/O contracts shared by the build side (export) and the run side (runtime), torch-free.

Every engine is a pure step function ``(inputs, state_in) -> (outputs, state_out)``. This module says, for a
given config, which tensors go in and out, with dtypes and shapes, and which output becomes which input on
the next call. The exporter names the ONNX graph's tensors from it and writes it into ``manifest.json``;
the runtime allocates and chains its state buffers from the manifest.

generator_step comes in two fixed-shape graphs (see ``generator_step_io``):

* ``generator_first``: chunk 0, ``first_chunk_size`` latent frames (condition frame + 3); no softmax window
  inputs (nothing is cached yet).
* ``generator_next``: every later chunk, ``chunk_size`` frames; softmax blocks read a window of at most
  ``max_window_frames`` cached latent frames, padded to that size and masked by ``window_valid``. Chunk 1
  sees the sink chunk only (4 frames + 3 padded), later chunks sink + previous chunk (7 frames).

Fixed shapes keep every engine CUDA-graph capturable and let TensorRT tune for the one shape it runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .config import GeneratorConfig


_ITEMSIZE = {"float8_e4m3fn": 1, "bfloat16": 2}


def dtype_itemsize(dtype: str) -> int:
    """Bytes per element of a manifest dtype name (numpy names plus float8_e4m3fn and bfloat16)."""
    return _ITEMSIZE[dtype] if dtype in _ITEMSIZE else np.dtype(dtype).itemsize


def resolve_dim(dim, dims: dict) -> int:
    """A concrete size from a dimension: an int, or a symbolic product such as ``"n"`` or ``"n*24"``."""
    if isinstance(dim, (int, np.integer)):
        return int(dim)
    value = 1
    for factor in str(dim).split("*"):
        factor = factor.strip()
        if factor.isdigit():
            value *= int(factor)
        elif factor in dims:
            value *= int(dims[factor])
        else:
            raise ValueError(f"dimension {dim!r} names {factor!r}, which the profile {dims} does not give")
    return value


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, float16, int64
    shape: tuple  # ints, or symbolic products ("n", "n*24") on a dynamic engine's profile axes
    doc: str = ""

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, (int, np.integer)) for d in self.shape)

    def concrete(self, dims: dict) -> "TensorSpec":
        """This tensor at one optimization profile's sizes."""
        return TensorSpec(self.name, self.dtype, tuple(resolve_dim(d, dims) for d in self.shape), self.doc)

    @property
    def nbytes(self) -> int:
        if self.is_dynamic:
            raise ValueError(f"tensor {self.name!r} has a dynamic shape {list(self.shape)}; take .concrete(profile) first")
        return int(np.prod(self.shape, dtype=np.int64)) * dtype_itemsize(self.dtype)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(name=d["name"], dtype=d["dtype"], shape=tuple(d["shape"]), doc=d.get("doc", ""))


@dataclass(frozen=True)
class StepIO:
    """Inputs, outputs and state chaining of one engine graph."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # output name -> the input name it feeds on the next call (carried state)
    state_map: dict

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    def concrete(self, dims: dict) -> "StepIO":
        """The contract at one optimization profile (symbolic dims resolved)."""
        return StepIO(tuple(t.concrete(dims) for t in self.inputs), tuple(t.concrete(dims) for t in self.outputs),
                      dict(self.state_map))


def max_window_frames(cfg: GeneratorConfig) -> int:
    """Latent frames in the largest softmax window a chunk reads (sink chunk + previous chunks)."""
    n = cfg.num_cached_chunks
    if n < 0:
        raise ValueError("num_cached_chunks = -1 (keep every chunk) has no fixed window; use a bounded window")
    if n == 0:
        return 0
    if cfg.sink:
        return cfg.first_chunk_size + (n - 1) * cfg.chunk_size
    return max(cfg.first_chunk_size, cfg.chunk_size) + (n - 1) * cfg.chunk_size


def gdn_state_names(i: int, cfg: GeneratorConfig) -> list[str]:
    names = [f"b{i}.S_kv", f"b{i}.S_z", f"b{i}.cam_S_kv", f"b{i}.k_tail"]
    if cfg.cam_kconv_tail:
        names.append(f"b{i}.cam_k_tail")
    return names + [f"b{i}.ffn_tail"]


def generator_step_io(cfg: GeneratorConfig, first: bool, window: bool | None = None) -> StepIO:
    """Tensor contract of the streaming generator step (batch 1).

    Inputs (all float32 unless stated):
        latents      [1, C, n, H, W]   the chunk's current latents
        timestep     [1, n]            per-frame timestep on the 0..1000 scale (truncated to an integer inside)
        frame_index  [n] int64         absolute latent frame indices (RoPE positions)
        text         [1, L, Ct]        stage-1 prompt features (Gemma-2), L = caption_length
        text_mask    [1, L]            1 = token, 0 = padding
        camera       [1, n, 20]        relative c2w (16, row-major) + fx, fy, cx, cy in latent pixels
        plucker      [1, 48, n, H, W]  Plücker maps of the 8 raw frames of each latent frame
        window_valid [Wt]              (next only) 1 for real cached tokens, 0 for padding
        per GDN block i: b{i}.S_kv [1,h,D,D], b{i}.S_z [1,h,D], b{i}.cam_S_kv [1,h,D,D],
                         b{i}.k_tail [1,K-1,S,C] (raw K-projection of the last K-1 frames),
                         b{i}.cam_k_tail (only with cfg.cam_kconv_tail), b{i}.ffn_tail [1,S,C]
        per softmax block i: b{i}.ffn_tail, and (next only) b{i}.k_win, b{i}.v_win, b{i}.cam_k_win,
                         b{i}.cam_v_win [1,h,Wt,D] (post-RoPE / post-UCPE K and V of the window chunks)
    Outputs:
        velocity     [1, C, n, H, W]
        per GDN block: the same state names with ``.out`` appended (state after this chunk)
        per softmax block: b{i}.ffn_tail.out and b{i}.k_chunk, b{i}.v_chunk, b{i}.cam_k_chunk,
                         b{i}.cam_v_chunk [1,h,n*S,D] (this chunk's K/V; the runtime builds windows)

    State outputs are meaningful on the t = 0 cache pass; the four denoising passes read state only.
    """
    window = (not first) if window is None else window
    n = cfg.first_chunk_size if first else cfg.chunk_size
    C, H, W, S = cfg.in_channels, cfg.latent_height, cfg.latent_width, cfg.patch_tokens
    h, D, Cm = cfg.num_heads, cfg.head_dim, cfg.hidden_size
    f32 = "float32"
    ins = [
        TensorSpec("latents", f32, (1, C, n, H, W), "chunk latents"),
        TensorSpec("timestep", f32, (1, n), "per-frame timestep, 0..1000"),
        TensorSpec("frame_index", "int64", (n,), "absolute latent frame indices"),
        TensorSpec("text", f32, (1, cfg.caption_length, cfg.caption_channels), "prompt features"),
        TensorSpec("text_mask", f32, (1, cfg.caption_length), "1 = token, 0 = padding"),
        TensorSpec("camera", f32, (1, n, 20), "relative c2w + intrinsics (latent pixels)"),
        TensorSpec("plucker", f32, (1, cfg.plucker_channels, n, H, W), "Plücker maps"),
    ]
    Wt = max_window_frames(cfg) * S
    if window and Wt:
        ins.append(TensorSpec("window_valid", f32, (Wt,), "1 = cached token, 0 = padding"))
    outs = [TensorSpec("velocity", f32, (1, C, n, H, W), "flow velocity (eps - x0)")]
    state_map: dict[str, str] = {}

    def state(name, shape, doc):
        ins.append(TensorSpec(name, f32, shape, doc))
        outs.append(TensorSpec(name + ".out", f32, shape, doc + " (after this chunk)"))
        state_map[name + ".out"] = name

    for i in range(cfg.num_layers):
        if not cfg.is_softmax_block(i):
            state(f"b{i}.S_kv", (1, h, D, D), "GDN KV state [k, v]")
            state(f"b{i}.S_z", (1, h, D), "GDN normaliser state")
            state(f"b{i}.cam_S_kv", (1, h, D, D), "camera GDN KV state [k, v]")
            state(f"b{i}.k_tail", (1, cfg.conv_kernel_size - 1, S, Cm), "raw K projection, last frames")
            if cfg.cam_kconv_tail:
                state(f"b{i}.cam_k_tail", (1, cfg.conv_kernel_size - 1, S, Cm), "raw camera K, last frames")
            state(f"b{i}.ffn_tail", (1, S, Cm), "FFN t_conv input, last frame")
        else:
            state(f"b{i}.ffn_tail", (1, S, Cm), "FFN t_conv input, last frame")
            if window and Wt:
                for nm in ("k", "v", "cam_k", "cam_v"):
                    ins.append(TensorSpec(f"b{i}.{nm}_win", f32, (1, h, Wt, D), f"softmax window {nm}"))
            for nm in ("k", "v", "cam_k", "cam_v"):
                outs.append(TensorSpec(f"b{i}.{nm}_chunk", f32, (1, h, n * S, D), f"this chunk's {nm}"))
    return StepIO(tuple(ins), tuple(outs), state_map)


# latents.out = latents + dt * velocity per frame: the Euler step runs inside the engine, so the chunk's
# latents stay where the engine runs between the denoising passes (only dt [1, n] crosses per pass).
EULER_INPUT, EULER_OUTPUT = "dt", "latents.out"


def generator_profiles(cfg: GeneratorConfig) -> dict[str, dict[str, int]]:
    """Optimization profiles of the one generator engine: chunk 0 (condition frame + 3) and later chunks."""
    return {"first": {"n": cfg.first_chunk_size}, "next": {"n": cfg.chunk_size}}


def _symbolic(a: tuple, b: tuple, na: int, nb: int) -> tuple:
    """Dims that differ between the n = na and n = nb contracts become ``"n"`` or ``"n*k"``."""
    out = []
    for x, y in zip(a, b):
        if x == y:
            out.append(x)
        elif x % na == 0 and y % nb == 0 and x // na == y // nb:
            k = x // na
            out.append("n" if k == 1 else f"n*{k}")
        else:
            raise ValueError(f"dimension {x} (n={na}) vs {y} (n={nb}) is not proportional to the frame count")
    return tuple(out)


def generator_engine_io(cfg: GeneratorConfig, euler: bool = True, kv_dtype: str = "float32") -> StepIO:
    """Contract of the ONE generator engine (bundle schema 2): both chunk lengths on a symbolic frame axis n.

    The inputs and outputs of ``generator_step_io(cfg, first=False)`` with every frame-sized dim symbolic
    (``n`` frames, ``n*S`` tokens); chunk 0 runs the same engine at profile ``first`` with an all-zero
    ``window_valid``. With ``euler`` the engine also takes ``dt`` [1, n] (sigma_next - sigma per frame, 0 on
    the commit pass and for the condition frame) and returns ``latents.out`` = latents + dt * velocity.
    ``kv_dtype``: storage type of the softmax K/V (the ``*_win`` inputs and ``*_chunk`` outputs: the largest
    carried state); the engine computes in float32 and casts at its boundary.
    """
    prof = generator_profiles(cfg)
    nf, nn_ = prof["first"]["n"], prof["next"]["n"]
    a = generator_step_io(cfg, first=True, window=True)
    b = generator_step_io(cfg, first=False, window=True)
    if nf == nn_:
        raise ValueError("first_chunk_size == chunk_size: the frame axis cannot be told apart; not supported")

    def merge(ta, tb):
        return tuple(TensorSpec(x.name, x.dtype, _symbolic(x.shape, y.shape, nf, nn_), x.doc) for x, y in zip(ta, tb))

    ins, outs = list(merge(a.inputs, b.inputs)), list(merge(a.outputs, b.outputs))
    if kv_dtype != "float32":
        kv = lambda t: TensorSpec(t.name, kv_dtype, t.shape, t.doc) if t.name.endswith(("_win", "_chunk")) else t  # noqa: E731
        ins, outs = [kv(t) for t in ins], [kv(t) for t in outs]
    if euler:
        C, H, W = cfg.in_channels, cfg.latent_height, cfg.latent_width
        ins.append(TensorSpec(EULER_INPUT, "float32", (1, "n"), "sigma_next - sigma per frame (0: commit pass)"))
        outs.append(TensorSpec(EULER_OUTPUT, "float32", (1, C, "n", H, W), "latents + dt * velocity"))
    return StepIO(tuple(ins), tuple(outs), dict(b.state_map))
