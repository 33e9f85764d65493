"""Weights that are never all in memory at once (build side): a safetensors reader that reads one tensor at a time,
modules whose parameters are placeholders, and loading / dropping the weights of one block.

* ``SafetensorsReader`` reads a tensor's bytes with ``os.pread`` at the offsets of the file header. Why not the
  safetensors memory map: every page of a mapping that was touched counts in the process's resident set until the
  file is unmapped, so reading block after block through one map grows RSS by the whole checkpoint.
* ``meta_parameters()`` builds a model with its parameters on the meta device (no memory, no init cost) and its
  buffers real (RoPE tables and the like are computed in ``__init__`` and are not in checkpoints).
* ``ghost_parameters_`` turns meta parameters into "ghosts": CPU tensors of the right shape whose storage is one
  element (stride 0). ``torch.onnx.export`` traces them like real weights (it only needs shapes), costing nothing.
* ``WeightSource`` maps a module's parameter names to checkpoint keys and loads / ghosts them in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


class StreamError(ValueError):
    """Weights that cannot be streamed as asked (unreadable file, missing key, wrong shape)."""


class SafetensorsReader:
    """One tensor at a time from a ``.safetensors`` file (header parsed once; no memory map)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > size - 8:
                    raise ValueError(f"header length {n} exceeds the file ({size} bytes)")
                header = json.loads(f.read(n))
        except (OSError, struct.error, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise StreamError(f"{self.path} is not a readable safetensors file ({e}); re-download or re-export it") from None
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.header = header

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.header[key]["shape"])

    def nbytes(self, key: str) -> int:
        a, b = self.header[key]["data_offsets"]
        return b - a

    def get(self, key: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The tensor ``key`` as ``dtype`` (a fresh tensor; nothing of the file stays mapped)."""
        try:
            h = self.header[key]
        except KeyError:
            raise StreamError(f"{self.path} has no tensor {key!r}") from None
        a, b = h["data_offsets"]
        fd = os.open(self.path, os.O_RDONLY)
        try:
            buf = bytearray(b - a)
            mv, off = memoryview(buf), 0
            while off < len(buf):  # pread may return less than asked for large reads
                k = os.preadv(fd, [mv[off:]], self.base + a + off)
                if k <= 0:
                    raise StreamError(f"{self.path} is truncated (tensor {key!r}); re-download or re-export it")
                off += k
        finally:
            os.close(fd)
        t = torch.frombuffer(buf, dtype=_ST_DTYPES[h["dtype"]]) if buf else torch.empty(0, dtype=_ST_DTYPES[h["dtype"]])
        return t.reshape(h["shape"]).to(dtype)


class PtReader:
    """An official ``.pt`` (torch zip checkpoint) with ``SafetensorsReader``'s interface. ``torch.load(weights_only=
    True, mmap=True)`` maps the file rather than reading it, so each tensor's bytes are read when it is copied out.
    Unlike the safetensors reader's private reads, the touched pages of the mapping count in RSS; they are clean page
    cache the kernel drops under memory pressure, so the export's working memory keeps its bound."""

    def __init__(self, path: str | os.PathLike):
        from ..models.loading import CheckpointError, training_tensors

        self.path = Path(path)
        try:
            self.sd = training_tensors(self.path, mmap=True)
        except CheckpointError as e:
            raise StreamError(str(e)) from None

    def keys(self) -> list[str]:
        return list(self.sd)

    def _t(self, key: str) -> torch.Tensor:
        try:
            return self.sd[key]
        except KeyError:
            raise StreamError(f"{self.path} has no tensor {key!r}") from None

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._t(key).shape)

    def nbytes(self, key: str) -> int:
        t = self._t(key)
        return t.numel() * t.element_size()

    def get(self, key: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The tensor ``key`` as ``dtype``, copied out of the mapping."""
        t = self._t(key)
        return t.to(dtype, copy=True).contiguous()


INDEX_SUFFIX = ".safetensors.index.json"  # diffusers / transformers sharded checkpoints: {"weight_map": {key: file}}


class ShardedSafetensorsReader:
    """A sharded checkpoint (``*.safetensors.index.json`` + its shards) with ``SafetensorsReader``'s interface."""

    def __init__(self, index: str | os.PathLike):
        self.path = Path(index)
        try:
            wmap = json.loads(self.path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StreamError(f"{self.path} is not a readable safetensors index ({e!r}); re-download it") from None
        shards = {f: SafetensorsReader(self.path.parent / f) for f in sorted(set(wmap.values()))}
        self.where = {k: shards[f] for k, f in wmap.items()}
        lost = [k for k, r in self.where.items() if k not in r.header]
        if lost:
            raise StreamError(f"{self.path} maps {len(lost)} tensors to shards that lack them, e.g. {lost[:3]}; "
                              "re-download the checkpoint")
        for f, r in shards.items():
            extra = set(r.keys()) - {k for k, g in wmap.items() if g == f}
            if extra:
                raise StreamError(f"{r.path} holds {len(extra)} tensors its index {self.path.name} does not map, e.g. "
                                  f"{sorted(extra)[:3]}; re-download the checkpoint")

    def keys(self) -> list[str]:
        return list(self.where)

    def _r(self, key: str) -> SafetensorsReader:
        try:
            return self.where[key]
        except KeyError:
            raise StreamError(f"{self.path} has no tensor {key!r}") from None

    def shape(self, key: str) -> tuple[int, ...]:
        return self._r(key).shape(key)

    def nbytes(self, key: str) -> int:
        return self._r(key).nbytes(key)

    def get(self, key: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._r(key).get(key, dtype)


def open_safetensors(path: str | os.PathLike, stem: str = "diffusion_pytorch_model"):
    """A reader over ``path``: a ``.safetensors`` file, a ``*.safetensors.index.json``, or a diffusers folder holding
    ``<stem>.safetensors`` or ``<stem>.safetensors.index.json`` (sharded)."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / f"{stem}.safetensors", p / f"{stem}{INDEX_SUFFIX}"):
            if cand.is_file():
                p = cand
                break
        else:
            raise StreamError(f"{path} holds neither {stem}.safetensors nor {stem}{INDEX_SUFFIX}; pass the diffusers "
                              "folder of the model (config.json + its safetensors weights)")
    return ShardedSafetensorsReader(p) if p.name.endswith(INDEX_SUFFIX) else SafetensorsReader(p)


def write_safetensors(path: str | os.PathLike, tensors: Iterable[tuple[str, tuple, torch.dtype, "callable"]]) -> int:
    """Write a safetensors file tensor by tensor: ``(key, shape, dtype, make)`` where ``make()`` returns the tensor
    when it is written (so a random 2.6B checkpoint never sits in memory). Returns the file size."""
    names = {v: k for k, v in _ST_DTYPES.items()}
    entries, off = [], 0
    for key, shape, dtype, make in tensors:
        n = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
        entries.append((key, shape, dtype, make, off, off + n))
        off += n
    header = {k: {"dtype": names[d], "shape": list(s), "data_offsets": [a, b]} for k, s, d, _, a, b in entries}
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        for key, shape, dtype, make, a, b in entries:
            t = make().to(dtype).contiguous()
            if tuple(t.shape) != tuple(shape):
                raise StreamError(f"{key}: made {tuple(t.shape)}, declared {tuple(shape)}")
            f.write(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return Path(path).stat().st_size


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 1 << 20


def release_freed_weights() -> bool:
    """Make glibc serve allocations >= 1 MiB from their own mappings, returned to the OS when freed.

    Why: by default glibc raises its mmap threshold (up to 32 MiB) after the first large free, so the weight
    tensors of the next blocks (a 2240 x 2240 FP32 matrix is 20 MiB) come from the heap, whose freed holes are
    not returned: resident memory then grows by part of every block streamed through. Returns whether it applied
    (False off glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------ ghosts
@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Inside: every parameter a module registers is moved to the meta device (its init then costs nothing);
    buffers stay real. Parameters are registered before ``reset_parameters`` runs, so that init runs on meta."""
    orig = nn.Module.register_parameter

    def register(self, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=False)
        orig(self, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = orig


def ghost(shape, dtype=torch.float32) -> torch.Tensor:
    """A zero tensor of ``shape`` over one element of storage."""
    return torch.zeros((), dtype=dtype).expand(*shape)


def ghost_parameters_(module: nn.Module) -> list[str]:
    """Turn every meta (or real) parameter into a ghost of its shape, in place; returns the parameter names."""
    for m in module.modules():
        for k, p in list(m._parameters.items()):
            if p is not None:  # a new Parameter: a meta one cannot take CPU data in place
                m._parameters[k] = nn.Parameter(ghost(p.shape, p.dtype), requires_grad=False)
    return [n for n, _ in module.named_parameters()]


class WeightSource:
    """The checkpoint tensors behind a module's parameters: parameter ``prefix + key`` <- checkpoint ``key``.

    Args:
        reader: the checkpoint (``SafetensorsReader`` or ``ShardedSafetensorsReader``).
        module: the (ghost) module whose parameters are filled.
        prefix: module path of the model the checkpoint describes inside ``module`` (e.g. ``"step.model."``).
        key_map: parameter name -> checkpoint key, for modules whose names are not the checkpoint's under one
            prefix (the refiner engine's ``core.layers.i.`` are the checkpoint's ``transformer_blocks.i.``);
            overrides ``prefix``.
        device: where ``materialize_`` puts the weights (``--calib-device``); ghosts stay on the CPU.
    """

    def __init__(self, reader, module: nn.Module, prefix: str = "", key_map: Callable[[str], str] | None = None,
                 device: str | torch.device = "cpu"):
        self.reader, self.prefix, self.key_map, self.device = reader, prefix, key_map, torch.device(device)
        self.params = dict(module.named_parameters())
        keys = set(reader.keys())
        missing = [n for n in self.params if self.key(n) not in keys]
        if missing:
            raise StreamError(f"{reader.path} lacks {len(missing)} weights of the model, e.g. "
                              f"{[self.key(n) for n in missing[:5]]}; is it the checkpoint of this config?")
        bad = [n for n, p in self.params.items() if tuple(p.shape) != reader.shape(self.key(n))]
        if bad:
            n = bad[0]
            raise StreamError(f"{reader.path}: {len(bad)} weights have other shapes than the model, e.g. {self.key(n)} "
                              f"{list(reader.shape(self.key(n)))} vs {list(self.params[n].shape)}; pick the matching --config")
        # persistent buffers (small: a null caption, unused gates) come from the checkpoint too, once, when present
        persistent = set(module.state_dict(keep_vars=True)) - set(self.params)
        with torch.no_grad():
            for n, b in module.named_buffers():
                if n in persistent and self.key(n) in keys and b.is_floating_point():
                    b.copy_(reader.get(self.key(n), b.dtype).reshape(b.shape))

    def key(self, name: str) -> str:
        if self.key_map is not None:
            return self.key_map(name)
        return name[len(self.prefix):] if name.startswith(self.prefix) else name

    def load(self, name: str) -> torch.Tensor:
        return self.reader.get(self.key(name))

    def materialize_(self, names: Iterable[str]) -> None:
        for n in names:
            w = self.load(n)
            self.params[n].data = w if self.device.type == "cpu" else w.to(self.device)

    def ghost_(self, names: Iterable[str]) -> None:
        for n in names:
            p = self.params[n]
            p.data = ghost(p.shape, p.dtype)

    def nbytes(self, names: Iterable[str]) -> int:
        return sum(self.reader.nbytes(self.key(n)) for n in names)


def repeated_units(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every child of an ``nn.ModuleList`` (the model's blocks / layers): the units weights
    are streamed by. Nested lists count once, at the outermost level."""
    out, seen = [], set()
    for name, m in module.named_modules():
        if isinstance(m, nn.ModuleList) and not any(name.startswith(s + ".") for s in seen):
            seen.add(name)
            out += [(f"{name}.{k}", c) for k, c in m.named_children()]
    return out
