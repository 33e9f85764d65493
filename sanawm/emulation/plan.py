"""Plans for the emulated TensorRT: a JSON description of an ONNX graph, not a compiled engine.

``build_plan`` stands in for the TensorRT builder. It records what a real plan fixes at build time: the
graph's I/O (names, dtypes, dims; dynamic dims as -1 plus their ONNX symbolic name), the optimization
profiles, the TensorRT version and GPU compute capability it was built for, the weight bytes, and an
activation-workspace size per profile. The emulated runtime executes the ONNX file itself with ONNX Runtime.

Activation workspace estimate (what ``device_memory_size_v2`` reports): the inputs' shapes are fixed at the
profile's max, ONNX shape inference runs, and the estimate is the largest working set of one node: the bytes
of its intermediate inputs plus outputs (graph I/O and initializers excluded; values whose shape inference
cannot resolve count 0), rounded up to 256 B. A real engine needs at least that much (the node's operands
co-exist) and usually more (fusion and tactic scratch), so it is a lower bound, deterministic per graph.

Build side: needs ``onnx`` (imported here only, never by the emulated runtime).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

MAGIC = "sanawm-emulated-trt-plan/1"
WORKSPACE_ALIGN = 256

Shape = Sequence[int]
Profile = Mapping[str, tuple[Shape, Shape, Shape]]


def _dims(value_info) -> list:
    """ONNX dims: int for a fixed dim, the symbolic name (str) or None for a dynamic one."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _nbytes(value_info, itemsize: dict) -> int:
    t = value_info.type.tensor_type
    if not t.HasField("shape") or t.elem_type not in itemsize:
        return 0
    n = 1
    for d in t.shape.dim:
        if not d.HasField("dim_value"):
            return 0
        n *= d.dim_value
    return n * itemsize[t.elem_type]


def _itemsizes() -> dict:
    from onnx import TensorProto, helper

    out = {}
    for code in TensorProto.DataType.values():
        try:
            out[code] = helper.tensor_dtype_to_np_dtype(code).itemsize
        except Exception:  # noqa: BLE001 - undefined / string / sub-byte types carry no size here
            continue
    return out


def _weight_bytes(model, itemsize: dict) -> int:
    """Bytes of every initializer and Constant-node tensor (what the engine uploads as weights)."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    total = 0
    for t in tensors:
        n = 1
        for d in t.dims:
            n *= d
        total += n * itemsize.get(t.data_type, 0)
    return total


def _workspace(model, max_shapes: Mapping[str, Shape], itemsize: dict) -> int:
    """Largest one-node working set of intermediates with the inputs fixed at ``max_shapes``."""
    import onnx
    from onnx import shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in max_shapes:
            for d, v in zip(vi.type.tensor_type.shape.dim, max_shapes[vi.name]):
                d.Clear()
                d.dim_value = int(v)
    m = shape_inference.infer_shapes(m)
    boundary = {i.name for i in m.graph.initializer} | {i.name for i in m.graph.input} | {o.name for o in m.graph.output}
    sizes = {vi.name: _nbytes(vi, itemsize) for vi in m.graph.value_info}
    peak = 0
    for node in m.graph.node:
        names = {n for n in list(node.input) + list(node.output) if n and n not in boundary}
        peak = max(peak, sum(sizes.get(n, 0) for n in names))
    return -(-peak // WORKSPACE_ALIGN) * WORKSPACE_ALIGN


def _check_profiles(inputs: dict, profiles: Sequence[Profile] | None) -> list[dict]:
    dynamic = [n for n, d in inputs.items() if any(not isinstance(x, int) for x in d)]
    if profiles is None:
        if dynamic:
            raise ValueError(f"inputs {dynamic} have dynamic dims; pass profiles=[{{name: (min, opt, max)}}, ...]")
        profiles = [{}]
    out = []
    for k, prof in enumerate(profiles):
        extra = sorted(set(prof) - set(inputs))
        if extra:
            raise ValueError(f"profile {k} names {extra}, which are not graph inputs ({sorted(inputs)})")
        p = {}
        for name, dims in inputs.items():
            if name not in prof:
                if name in dynamic:
                    raise ValueError(f"profile {k} has no (min, opt, max) for dynamic input {name!r}")
                p[name] = [list(dims)] * 3
                continue
            mn, opt, mx = (list(map(int, s)) for s in prof[name])
            ok = len(mn) == len(opt) == len(mx) == len(dims) and all(
                a <= b <= c and (not isinstance(d, int) or a == c == d) for a, b, c, d in zip(mn, opt, mx, dims))
            if not ok:
                raise ValueError(f"profile {k}: {name!r} (min {mn}, opt {opt}, max {mx}) does not fit its dims "
                                 f"{[d if isinstance(d, int) else -1 for d in dims]} (need min <= opt <= max, fixed dims equal)")
            p[name] = [mn, opt, mx]
        out.append(p)
    return out


def build_plan(onnx_path: str | Path, profiles: Sequence[Profile] | None = None, version: str = "1.7.1.116",
               compute_capability: tuple[int, int] = (12, 0), name: str | None = None) -> bytes:
    """Serialized emulated plan for ``onnx_path`` (JSON bytes; see the module docstring)."""
    import onnx

    path = Path(onnx_path).resolve()
    model = onnx.load(str(path), load_external_data=False)
    itemsize = _itemsizes()
    inits = {i.name for i in model.graph.initializer}
    io = [{"name": v.name, "mode": "INPUT", "elem": v.type.tensor_type.elem_type, "dims": _dims(v)}
          for v in model.graph.input if v.name not in inits]
    io += [{"name": v.name, "mode": "OUTPUT", "elem": v.type.tensor_type.elem_type, "dims": _dims(v)}
           for v in model.graph.output]
    inputs = {t["name"]: t["dims"] for t in io if t["mode"] == "INPUT"}
    profs = _check_profiles(inputs, profiles)
    workspace = [_workspace(model, {n: s[2] for n, s in p.items()}, itemsize) for p in profs]
    return json.dumps({
        "magic": MAGIC, "name": name or path.stem, "onnx": str(path), "version": str(version),
        "compute_capability": list(compute_capability), "io": io, "profiles": profs,
        "weight_bytes": _weight_bytes(model, itemsize), "workspace": workspace,
    }).encode()


_ONNX_ELEM = {"float32": 1, "uint8": 2, "int8": 3, "int32": 6, "int64": 7, "bool": 9, "float16": 10,
              "bfloat16": 16, "float8_e4m3fn": 17}


def spec_plan(name: str, inputs: Sequence[tuple], outputs: Sequence[tuple], profiles: Sequence[Profile] | None = None,
              weight_bytes: int = 0, workspace: Sequence[int] | int = 0, version: str = "1.7.1.116",
              compute_capability: tuple[int, int] = (12, 0)) -> bytes:
    """A plan with no ONNX graph, from ``(name, numpy dtype name, dims)`` tuples (a dim may be a symbolic
    name shared between inputs and outputs). For full-size planning on a ``backing=False`` device: it
    deserializes (uploading ``weight_bytes``), binds, and counts executes, but cannot compute outputs."""
    bad = [t for t in list(inputs) + list(outputs) if t[1] not in _ONNX_ELEM]
    if bad:
        raise ValueError(f"dtypes of {[t[0] for t in bad]} not in {sorted(_ONNX_ELEM)}")
    io = [{"name": n, "mode": mode, "elem": _ONNX_ELEM[dt], "dims": [d if isinstance(d, str) else (None if int(d) < 0 else int(d)) for d in dims]}
          for mode, ts in (("INPUT", inputs), ("OUTPUT", outputs)) for n, dt, dims in ts]
    profs = _check_profiles({t["name"]: t["dims"] for t in io if t["mode"] == "INPUT"}, profiles)
    ws = [int(workspace)] * len(profs) if isinstance(workspace, int) else [int(w) for w in workspace]
    if len(ws) != len(profs):
        raise ValueError(f"workspace has {len(ws)} sizes for {len(profs)} profiles")
    return json.dumps({
        "magic": MAGIC, "name": name, "onnx": None, "version": str(version), "compute_capability": list(compute_capability),
        "io": io, "profiles": profs, "weight_bytes": int(weight_bytes), "workspace": ws,
    }).encode()


def read_plan(data: bytes) -> dict | None:
    """The plan dict, or None for bytes that are not an emulated plan."""
    try:
        plan = json.loads(bytes(data).decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return plan if isinstance(plan, dict) and plan.get("magic") == MAGIC else None
