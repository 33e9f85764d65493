"""Triton AOT compilation of the GDN kernels to PTX for a given compute capability (no GPU needed).

A build-time tool: it proves the kernels compile for sm_90 (H100/H200) and sm_120 (RTX Blackwell) and gives
each kernel's PTX, entry symbol and shared-memory size, what a TensorRT plugin would embed. There is no TensorRT
plugin: exports use the decomposed GDN form (``onnx_decomposed.py``), which TensorRT builds with its own
kernels; the single-node ``sanawm::gdn_scan`` of ``custom_op.py`` is an ONNX contract for a future plugin.

CLI (a clean process: AOT compile does not work under TRITON_INTERPRET=1):
    python -m sanawm.kernels.gdn.aot --sm 90 --out build/ptx [--kernels scan_fwd,output_den]
"""

import argparse
import dataclasses
import os
from pathlib import Path


@dataclasses.dataclass
class AotKernel:
    """One compiled kernel: entry symbol, PTX and launch facts."""

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
    ``python -m sanawm.kernels.gdn.aot`` in a clean process instead).
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
