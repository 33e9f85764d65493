"""TensorRT plugin ``sanawm::gdn_scan`` (Quickly Deployable Plugin API) and Triton AOT compilation to PTX.

(No ``from __future__ import annotations`` here: ``tensorrt.plugin`` reads the real annotation objects.)

UNTESTED WITHOUT TENSORRT: full TensorRT cannot be installed on the development machines (see
deployment-notes.md section 0), so :func:`register_trt_plugin` is written against the documented
``tensorrt.plugin`` API (register / aot_impl, TRT >= 10.9) and only imported lazily. What *is* tested here:
the ONNX node it consumes (``custom_op.py``) and the AOT compile of the Triton kernels to PTX on a CPU
machine (:func:`aot_compile`), which needs no GPU.

Kernel plan inside the engine. ``tensorrt.plugin.aot_impl`` returns exactly one kernel per plugin launch,
but the chunkwise op is 5-8 launches (phase A x2-4, scan x1-4, output x1) with float32 workspaces. The
plugin therefore embeds the **scan** kernel, which is the only serial, non-GEMM part, as
``sanawm::gdn_state_scan`` (inputs W [B,H,T,D,D], U [B,H,T,D,N], h0 [B,H,D,N]; outputs hist, h_final),
while phase A (K^T B K, K^T B V: batched MatMuls) and phase C (q H / (qz Hz + eps)) stay as standard ONNX
ops that TensorRT fuses itself. The single-node ``sanawm::gdn_scan`` of ``custom_op.py`` is the
contract for a future C++ IPluginV3 (or a multi-kernel plugin) that runs all phases; until that exists
the decomposed export (form a) is the deployable path. This split is recorded in the report of the
kernel work; it is a decision for the lead.

CLI (what the test runs in a clean process, since AOT compile does not work under TRITON_INTERPRET=1):
    python -m sanawm.kernels.gdn.trt_plugin --sm 90 --out build/ptx [--kernels scan_fwd,output_den]
"""

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Tuple

PLUGIN_NAMESPACE = "sanawm"
SCAN_PLUGIN = "gdn_state_scan"


@dataclasses.dataclass
class AotKernel:
    """One compiled kernel: what ``aot_impl`` hands to TensorRT."""

    name: str  # entry symbol in the PTX
    ptx: str
    shared: int  # dynamic shared memory bytes the launch must request
    num_warps: int
    constexprs: dict
    signature: dict


def _variants(D: int, Dv: int, dot_precision: str = "ieee", in_dtype: str = "fp32", out_dtype: str = "fp32"):
    """Every kernel specialisation the op needs for head dims (D, Dv): name -> (kernel, signature,
    constexprs, num_warps, num_stages). Block sizes come from the same helpers as the launchers."""
    from . import triton_output as C
    from . import triton_phase_a as A
    from . import triton_scan as Bs

    p_in, p32 = f"*{in_dtype}", "*fp32"
    out = {}
    phase_a = (("phase_a_w", D, True, False), ("phase_a_u", Dv, False, False), ("phase_a_uz", 1, False, True))
    for name, N, transition, ones in phase_a:
        BS, BK, BN = A.phase_a_blocks(D, N)
        sig = {"k": p_in, "x": p_in, "beta": p_in, "gamma": p_in, "out": p32, "S": "i32", "D": "i32", "N": "i32"}
        cx = dict(TRANSITION=transition, X_IS_ONES=ones, BS=BS, BK=BK, BN=BN, DOT_PRECISION=dot_precision)
        out[name] = (A.gdn_phase_a_kernel, sig, cx, A.PHASE_A_NUM_WARPS, A.PHASE_A_NUM_STAGES)
    scans = (("scan_fwd", Dv, False), ("scan_rev", Dv, True), ("scan_z_fwd", 1, False), ("scan_z_rev", 1, True))
    for name, N, rev in scans:
        BD, BN = Bs.scan_blocks(D, N)
        sig = {"w": p32, "u": p32, "h0": p32, "hist": p32, "ht": p32, "T": "i32", "D": "i32", "N": "i32"}
        cx = dict(USE_INITIAL_STATE=True, STORE_FINAL_STATE=True, REVERSE=rev, BD=BD, BN=BN)
        cx["DOT_PRECISION"] = dot_precision
        out[name] = (Bs.gdn_scan_kernel, sig, cx, Bs.SCAN_NUM_WARPS, Bs.SCAN_NUM_STAGES)
    for name, rev in (("scan_plugin_fwd", False), ("scan_plugin_rev", True)):
        BD, BN = Bs.scan_blocks(D, Dv)
        sig = {"w": p32, "u": p32, "h0": p32, "T": "i32", "D": "i32", "N": "i32", "hist": p32, "ht": p32}
        cx = dict(REVERSE=rev, BD=BD, BN=BN, DOT_PRECISION=dot_precision)
        out[name] = (Bs.gdn_scan_plugin_kernel, sig, cx, Bs.SCAN_NUM_WARPS, Bs.SCAN_NUM_STAGES)
    for name, has_den in (("output_den", True), ("output_num", False)):
        BS, BD, BV = C.output_blocks(D, Dv)
        sig = {"q": p_in, "hm": p32, "qz": p_in, "hz": p32, "o": f"*{out_dtype}"}
        sig.update(S="i32", D="i32", Dv="i32", eps="fp32")
        cx = dict(HAS_DEN=has_den, BS=BS, BD=BD, BV=BV, DOT_PRECISION=dot_precision)
        out[name] = (C.gdn_output_kernel, sig, cx, C.OUTPUT_NUM_WARPS, C.OUTPUT_NUM_STAGES)
    for sig_cx in out.values():  # constexprs appear in the signature as "constexpr"
        sig_cx[1].update({k: "constexpr" for k in sig_cx[2]})
    return out


def aot_compile(sm: int = 90, D: int = 112, Dv: int = 112, kernels=None, dot_precision: str = "ieee") -> dict:
    """Compile the GDN Triton kernels ahead of time for ``sm`` (90 = H100, 120 = RTX Blackwell) on any
    machine, GPU or not. Returns ``{variant: AotKernel}``. D/Dv are baked in through the block sizes
    only; S, T, N stay runtime arguments.

    Raises RuntimeError when run with TRITON_INTERPRET=1 (the interpreter replaces the compiler; run
    ``python -m sanawm.kernels.gdn.trt_plugin`` in a clean process instead).
    """
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("aot_compile: unset TRITON_INTERPRET (interpret mode cannot compile kernels)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    table = _variants(D, Dv, dot_precision)
    names = list(table) if kernels is None else list(kernels)
    unknown = set(names) - set(table)
    if unknown:
        raise ValueError(f"aot_compile: unknown kernels {sorted(unknown)}; choose from {sorted(table)}")
    target = GPUTarget("cuda", int(sm), 32)
    result = {}
    for name in names:
        fn, sig, cx, num_warps, num_stages = table[name]
        src = ASTSource(fn=fn, signature=sig, constexprs=cx)
        k = triton.compile(src, target=target, options={"num_warps": num_warps, "num_stages": num_stages})
        result[name] = AotKernel(k.name, k.asm["ptx"], k.metadata.shared, num_warps, cx, sig)
    return result


def register_trt_plugin(sm: int = 90, D: int = 112, Dv: int = 112):
    """Register ``sanawm::gdn_state_scan`` with TensorRT (forward scan with initial/final state, the
    streaming path; reverse is the same kernel with REVERSE=1). Needs ``tensorrt`` >= 10.9; untested here.

    Inputs  W [B,H,T,D,D], U [B,H,T,D,Dv], h0 [B,H,D,Dv]   (all float32)
    Outputs hist [B,H,T,D,Dv] (like U), h_final [B,H,D,Dv] (like h0)
    """
    import tensorrt.plugin as trtp  # lazy: not installable on the CPU dev machines

    kern = aot_compile(sm, D, Dv, kernels=["scan_plugin_fwd"])["scan_plugin_fwd"]
    BN = kern.constexprs["BN"]  # BD (whole padded key dim) is baked into the PTX

    @trtp.register(f"{PLUGIN_NAMESPACE}::{SCAN_PLUGIN}")
    def _desc(w: trtp.TensorDesc, u: trtp.TensorDesc, h0: trtp.TensorDesc) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        return u.like(), h0.like()

    @trtp.aot_impl(f"{PLUGIN_NAMESPACE}::{SCAN_PLUGIN}")
    def _aot(w: trtp.TensorDesc, u: trtp.TensorDesc, h0: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc], tactic: int):
        # grid = (cdiv(N, BN), B*H). QDP passes (inputs, extra scalars, outputs): the plugin kernel's order
        # (w, u, h0, T, D, N, hist, ht). Triton >= 3.3 appends two scratch pointers to every kernel; this
        # kernel uses no global scratch (metadata.global_scratch_size == 0) so they are never read.
        B, H, T, Dk, N = (u.shape_expr[i] for i in range(5))
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(N, BN)
        launch.grid_y = B * H
        launch.block_x = kern.num_warps * 32
        launch.shared_mem = kern.shared
        extra = trtp.SymIntExprs(3)
        extra[0], extra[1], extra[2] = trtp.SymInt32(T), trtp.SymInt32(Dk), trtp.SymInt32(N)
        return kern.name.encode(), kern.ptx.encode(), launch, extra

    return _desc, _aot


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="AOT-compile the GDN Triton kernels to PTX (no GPU needed)")
    ap.add_argument("--sm", type=int, default=90, help="compute capability x10: 90 (H100), 120 (RTX 50xx)")
    ap.add_argument("--D", type=int, default=112)
    ap.add_argument("--Dv", type=int, default=112)
    ap.add_argument("--kernels", default="", help="comma-separated variants (default: all)")
    ap.add_argument("--out", required=True, help="folder for <variant>.sm<NN>.ptx files")
    a = ap.parse_args(argv)
    names = [n for n in a.kernels.split(",") if n] or None
    res = aot_compile(a.sm, a.D, a.Dv, kernels=names)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, k in res.items():
        (out / f"gdn_{name}.sm{a.sm}.ptx").write_text(k.ptx)
        print(f"{name}: entry {k.name}, {len(k.ptx)} chars PTX, shared {k.shared} B, {k.num_warps} warps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
