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

from .config import GeneratorConfig


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, float16, int64
    shape: tuple[int, ...]
    doc: str = ""

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


def generator_step_io(cfg: GeneratorConfig, first: bool) -> StepIO:
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
    if not first and Wt:
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
            if not first and Wt:
                for nm in ("k", "v", "cam_k", "cam_v"):
                    ins.append(TensorSpec(f"b{i}.{nm}_win", f32, (1, h, Wt, D), f"softmax window {nm}"))
            for nm in ("k", "v", "cam_k", "cam_v"):
                outs.append(TensorSpec(f"b{i}.{nm}_chunk", f32, (1, h, n * S, D), f"this chunk's {nm}"))
    return StepIO(tuple(ins), tuple(outs), state_map)
