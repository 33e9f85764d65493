"""Export a step module to ONNX with the names, dtypes and fixed shapes of its ``StepIO`` (build side).

Convention: ``module.forward`` takes the ``StepIO`` inputs positionally, in order, and returns a tuple in
the order of ``StepIO.outputs``. Every engine (generator_first/next, VAE, refiner) uses this one exporter.

Choices (and why):

* **opset 21** (``DEFAULT_OPSET``): ORT CPU runs FP8 E4M3 QuantizeLinear/DequantizeLinear at 19/21/23 with
  FP32/FP16 scales; TensorRT-RTX and TensorRT 10.x/11 parse it; and at opset <= 22 the exporter decomposes
  SDPA into MatMul/Softmax instead of opset-23 ``Attention``, which TensorRT-RTX 1.7 failed to build in FP32
  at head_dim 16 (deployment-notes 1.6). Opset 21 is the first with ``QuantizeLinear(output_dtype)``/blocked
  quantization, so later NVFP4/MXFP8 work needs no opset bump.
* **fixed shapes** (no ``dynamic_shapes``): the generator comes as two graphs (first/next chunk) with
  one shape each; CUDA graphs need fixed shapes and fixed addresses; TensorRT tunes tactics for one shape.
  ``FIXED_SHAPE_NOTE`` is recorded in the manifest. Exception: ``dims={"n": (min, max)}`` exports
  the string dims of a ``StepIO`` as ``torch.export.Dim``s (``sanawm.export.dynamic``: one generator / VAE
  decoder graph for both chunk lengths, built with one TensorRT profile per length, min = opt = max, so each
  profile still has one shape for tactics and CUDA graphs).
* **external data always**: weights go to ``<name>.onnx.data`` beside the graph, so > 2 GB models work
  and all sizes take the same code path. TensorRT parses from the file path so the data resolves.
* dynamo exporter (``dynamo=True``, torch >= 2.9 default); FP8 fake-quant ops come through a custom-domain
  placeholder and are lowered to native Q/DQ after export (see ``sanawm.export.quantize``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..spec import StepIO, TensorSpec

log = logging.getLogger("sanawm.export")

DEFAULT_OPSET = 21
FIXED_SHAPE_NOTE = (
    "fixed shapes: one graph per shape (first/next chunk are separate engines), so CUDA graphs can be "
    "captured over fixed ping-pong buffers and TensorRT tunes tactics for the one shape it runs"
)
_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool"}


class ExportError(RuntimeError):
    pass


@dataclass
class ExportResult:
    onnx_path: Path
    external_data: list[Path]
    opset: int
    rel_errors: dict[str, float] = field(default_factory=dict)  # per output, ORT CPU vs torch (relative RMS)
    seconds: float = 0.0

    @property
    def max_rel_error(self) -> float:
        return max(self.rel_errors.values()) if self.rel_errors else float("nan")


# ----------------------------------------------------------------------------------- sample inputs
def random_inputs(io: StepIO, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs matching ``io``: floats ~ N(0, 0.5^2), masks (names ending in ``mask``/``valid``) all
    ones with a zero tail, int64 positions ``arange``."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in io.inputs:
        if t.dtype.startswith("int"):
            out[t.name] = (np.arange(int(np.prod(t.shape))) % 1000).reshape(t.shape).astype(t.dtype)
        elif t.name.endswith(("mask", "valid")):
            a = np.ones(t.shape, dtype=t.dtype)
            a.reshape(-1)[-max(1, a.size // 4) :] = 0
            out[t.name] = a
        else:
            out[t.name] = (0.5 * rng.standard_normal(t.shape)).astype(t.dtype)
    return out


def _torch_args(io: StepIO, feeds: dict[str, np.ndarray]):
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in io.inputs)


def run_torch(module, io: StepIO, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``module`` on numpy feeds in ``io`` order; returns {output name: array}."""
    import torch

    with torch.no_grad():
        res = module(*_torch_args(io, feeds))
    if not isinstance(res, (tuple, list)):
        res = (res,)
    if len(res) != len(io.outputs):
        raise ExportError(
            f"module returned {len(res)} outputs, the StepIO names {len(io.outputs)} ({[t.name for t in io.outputs]}); "
            "forward must return a tuple in StepIO.outputs order"
        )
    return {t.name: r.detach().float().cpu().numpy().astype(t.dtype) for t, r in zip(io.outputs, res)}


# -------------------------------------------------------------------------------------------- export
def export_onnx(
    module,
    io: StepIO,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    sample_inputs: dict[str, np.ndarray] | None = None,
    check: bool = True,
    check_inputs: Sequence[dict[str, np.ndarray]] | None = None,
    seed: int = 0,
    custom_translation_table: dict | None = None,
    dims: Mapping[str, tuple[int, int]] | None = None,
) -> ExportResult:
    """Export ``module`` to ``path`` (+ ``path.data``) with ``io``'s names and fixed shapes, then check it.

    Args:
        module: torch module, forward(*inputs in io order) -> tuple in io output order.
        io: the engine's tensor contract.
        sample_inputs: inputs used for tracing (default ``random_inputs(io, seed)``).
        check: run the ONNX on ORT CPU and compare with the torch module on ``check_inputs`` (default: the
            sample inputs); relative RMS error per output is returned (the caller asserts its tolerance).
        custom_translation_table: extra torch op -> onnxscript translations (e.g. a GDN custom op), merged
            with the FP8 placeholder translation.
        dims: bounds ``{name: (min, max)}`` of the symbolic dims of ``io`` (string entries of its shapes, e.g.
            ``"n"``); exported as ``torch.export.Dim``s (``sanawm.export.dynamic``). Inputs may only use plain
            names; outputs may use the ``"n*K"`` forms of ``sanawm.spec_dynamic``. Needs ``sample_inputs``.
    Returns:
        ExportResult with the paths and per-output relative errors.
    """
    import onnx
    import torch

    from . import nvfp4, nvfp4_onnx, quantize

    t0 = time.time()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    dynamic_shapes = None
    if dims is not None or _symbolic(io):
        from .dynamic import torch_dynamic_shapes

        if sample_inputs is None:
            raise ExportError("export_onnx with symbolic dims needs sample_inputs (one concrete call); "
                              "build them with sanawm.spec_dynamic.resolve_io")
        dynamic_shapes = torch_dynamic_shapes(module, io, dims or {})
    feeds = sample_inputs if sample_inputs is not None else random_inputs(io, seed)
    in_names = [t.name for t in io.inputs]
    out_names = [t.name for t in io.outputs]
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmp_path = Path(tmp) / "raw.onnx"
        try:
            prog = torch.onnx.export(
                module,
                _torch_args(io, feeds),
                input_names=in_names,
                output_names=out_names,
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                external_data=True,
                optimize=False,  # light_optimize below: the same clean-up without the slow pattern rewriter
                custom_translation_table={**quantize.translation_table(), **nvfp4.translation_table(), **(custom_translation_table or {})},
                verbose=False,
            )
        except Exception as e:  # noqa: BLE001 - re-raised with context
            raise ExportError(f"torch.onnx.export (dynamo, opset {opset}) failed for {type(module).__name__}: {e}") from e
        light_optimize(prog.model)
        prog.save(str(tmp_path), external_data=True)
        model = onnx.load(str(tmp_path), load_external_data=True)
    model = nvfp4_onnx.lower_nvfp4_placeholders(model)  # first: the FP8 lowering refuses unknown placeholders
    model = quantize.lower_fp8_placeholders(model)
    fp4 = nvfp4_onnx.has_fp4(model)  # ONNX Runtime has no FP4 kernels: such graphs are checked on onnx's reference
    _fix_io(model, io)
    for f in (path, path.with_name(path.name + ".data")):
        if f.exists():
            f.unlink()
    data_name = path.name + ".data"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_name,
        size_threshold=1024,
        convert_attribute=False,
    )
    onnx.checker.check_model(str(path))
    ext = [path.with_name(data_name)] if path.with_name(data_name).exists() else []
    res = ExportResult(path, ext, max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))
    if check:
        from ..testing import rel_error

        for i, inp in enumerate(check_inputs or [feeds]):
            ref = run_torch(module, io, inp)
            got = nvfp4_onnx.run_reference(path, inp) if fp4 else run_onnx_cpu(path, inp)
            for n in out_names:
                res.rel_errors[n] = max(res.rel_errors.get(n, 0.0), rel_error(ref[n], got[n]))
    res.seconds = time.time() - t0
    log.info("exported %s (opset %d) in %.1fs, max rel err %.2e", path.name, res.opset, res.seconds, res.max_rel_error)
    return res


def light_optimize(model, should_fold=None) -> None:
    """Clean up an exported ``onnx_ir`` model in place: inline, fold constants, drop dead nodes, lift constants
    to initializers, deduplicate them, eliminate common subexpressions.

    This is torch's ``optimize=True`` pipeline without onnxscript's pattern rewriter and fusions, which took
    two thirds of the export time (25 s -> 15 s for the tiny generator on 2 cores) and changed little here: the
    rewrites (cast/reshape/slice collapsing) are ones TensorRT and ONNX Runtime make themselves, and the
    graphs differ by ~2% in node count. The numerical check after export covers the result either way.
    ``should_fold(node) -> False | None`` vetoes folding a node (the streamed export keeps lazy weights unread).
    """
    import onnx_ir as ir
    from onnx_ir.passes import common as cp
    from onnxscript.optimizer import fold_constants_ir

    cp.InlinePass()(model)
    for _ in range(2):  # as optimize_ir: a second round folds what the first one exposed
        kw = {"should_fold": should_fold} if should_fold is not None else {}
        changed = fold_constants_ir(model, onnx_shape_inference=True, **kw).modified
        changed |= cp.RemoveUnusedNodesPass()(model).modified
        if not changed:
            break
    ir.passes.Sequential(
        cp.RemoveUnusedFunctionsPass(),
        cp.RemoveUnusedOpsetsPass(),
        cp.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        cp.LiftSubgraphInitializersToMainGraphPass(),
        cp.DeduplicateInitializersPass(),
        cp.CommonSubexpressionEliminationPass(),
        cp.OutputFixPass(),
        cp.NameFixPass(),
    )(model)


def _symbolic(io: StepIO) -> bool:
    return any(isinstance(d, str) for t in list(io.inputs) + list(io.outputs) for d in t.shape)


def _fix_io(model, io: StepIO) -> None:
    """Check the graph's I/O against ``io`` (names, order, dtypes, shapes) and write the contract's shapes into
    the graph: fixed dims as values, symbolic dims (strings in ``io``) as ``dim_param`` of that name."""
    import onnx
    from onnx import helper

    g = model.graph
    got_in = [i.name for i in g.input]
    want_in = [t.name for t in io.inputs]
    if got_in != want_in:
        raise ExportError(
            f"exported graph inputs {got_in} differ from the StepIO {want_in}; unused inputs are dropped by the "
            "exporter, so every StepIO input must be used by forward"
        )
    got_out = [o.name for o in g.output]
    want_out = [t.name for t in io.outputs]
    if got_out != want_out:
        raise ExportError(f"exported graph outputs {got_out} differ from the StepIO {want_out}")
    for vi, t in zip(list(g.input) + list(g.output), list(io.inputs) + list(io.outputs)):
        tt = vi.type.tensor_type
        dt = _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type))
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        if dt != t.dtype:
            raise ExportError(f"graph tensor {t.name!r} is {dt}, the StepIO says {t.dtype}; cast it in forward")
        # a fixed dim may come back symbolic (pin it); a symbolic dim must not come back fixed (the trace
        # specialised it, so the graph would refuse the other sizes)
        if len(shape) != len(t.shape) or any(
            (a != -1) if isinstance(b, str) else (a not in (-1, b)) for a, b in zip(shape, t.shape)
        ):
            raise ExportError(f"graph tensor {t.name!r} has shape {list(shape)}, the StepIO says {list(t.shape)}"
                              + ("; a symbolic dim was specialised while tracing" if _symbolic(io) else ""))
        tt.shape.CopyFrom(helper.make_tensor_type_proto(tt.elem_type, list(t.shape)).tensor_type.shape)



def run_onnx_cpu(path: str | os.PathLike, feeds: dict[str, np.ndarray], threads: int = 0) -> dict[str, np.ndarray]:
    """Run an ONNX file on the ORT CPU provider; returns {output name: array}."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    want = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in want})))


def onnx_files(path: str | os.PathLike) -> list[Path]:
    """The ONNX file and the external-data files it references."""
    import onnx

    path = Path(path)
    m = onnx.load(str(path), load_external_data=False)
    locs = set()
    for t in m.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location":
                locs.add(kv.value)
    return [path] + [path.parent / l for l in sorted(locs)]
