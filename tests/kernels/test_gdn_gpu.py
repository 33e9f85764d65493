"""The Triton GDN kernels COMPILED for a real CUDA GPU (marked `gpu`: skipped without CUDA, see
tests/conftest.py) against the torch reference on the same GPU, at the model's head dim (112, padded to 128 in
the kernel), both forms, forward and reverse, with and without state. Runs in a subprocess: the CPU tests of
tests/kernels/test_gdn.py put Triton in interpret mode for the whole pytest process."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.gpu

SCRIPT = textwrap.dedent("""
    import math
    import torch
    from sanawm.kernels.gdn import gdn_recurrent_ref
    from sanawm.kernels.gdn.triton_gdn import gdn_scan_triton
    from sanawm.testing import assert_close

    def inputs(B, H, T, S, D, Dv, form, state, seed):
        # the conventions of tests/kernels/test_gdn.py make_inputs (well conditioned, like the model's)
        g = torch.Generator().manual_seed(seed)
        ks = 2.0 / math.sqrt(D * S)
        x = {"q": torch.rand(B, H, T, S, D, generator=g), "k": torch.rand(B, H, T, S, D, generator=g) * ks,
             "v": torch.randn(B, H, T, S, Dv, generator=g), "beta": torch.rand(B, H, T, S, generator=g),
             "gamma": 0.8 + 0.2 * torch.rand(B, H, T, generator=g)}
        if form == "main":
            x["qz"] = torch.rand(B, H, T, S, D, generator=g)
            x["kz"] = torch.rand(B, H, T, S, D, generator=g) * ks
        if state:
            x["state"] = torch.randn(B, H, D, Dv, generator=g)
            if form == "main":
                x["z"] = torch.rand(B, H, D, generator=g)
        return {k: v.cuda() for k, v in x.items()}

    worst = 0.0
    for form in ("main", "camera"):
        for reverse in (False, True):
            for state in (True, False):
                x = inputs(1, 2, 3, 40, 112, 112, form, state, seed=7)
                want = gdn_recurrent_ref(**x, reverse=reverse)
                got = gdn_scan_triton(**x, reverse=reverse)
                assert got[0].is_cuda
                for part, a, b in zip(("o", "state", "z"), want, got):
                    assert (a is None) == (b is None), part
                    if a is not None:
                        worst = max(worst, assert_close(f"{form}/{reverse}/{state}/{part}", a, b, 1e-4))
    print(f"ok worst relative RMS error {worst:.2e}")
""")



@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_gdn_matches_reference_on_cuda():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]
