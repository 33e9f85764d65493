"""Frame-wise GDN: every form (phase-split reference, Triton kernels in interpret mode, decomposed ONNX graph,
custom op / plugin node, Triton AOT) against the oracle ``gdn_recurrent_ref``."""

import os

# Triton reads this when a kernel is decorated: set it before anything imports the kernel modules.
os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from sanawm.kernels.gdn import (  # noqa: E402
    gdn_chunk_ref,
    gdn_recurrent_ref,
    gdn_scan,
    gdn_scan_decomposed,
    select_backend,
)
from sanawm.testing import assert_close  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(
    not (HAS_TRITON and (INTERPRET or torch.cuda.is_available())),
    reason="needs triton and either CUDA or TRITON_INTERPRET=1",
)

# (B, H, T, S, D, Dv): S never a multiple of the 64-token block except where noted; T = 1..6
SHAPES = [
    (1, 1, 1, 1, 16, 16),  # one frame, one token
    (1, 2, 2, 37, 16, 24),  # Dv != D
    (2, 1, 3, 70, 32, 32),  # S = 64 + 6: two S blocks, second masked
    (1, 2, 4, 64, 16, 16),  # S exactly one block
    (1, 1, 5, 13, 32, 40),  # Dv = 40 > one 32-column scan block
    (1, 1, 6, 9, 16, 16),
]
SHAPES_D112 = [(1, 1, 2, 19, 112, 112), (1, 1, 3, 5, 112, 112)]  # model head dim, padded to 128 in-kernel
FORMS = ["main", "camera"]  # main: with denominator (qz, kz, z); camera: numerator only


def make_inputs(B, H, T, S, D, Dv, form="main", state=True, dtype=torch.float32, seed=0):
    """Well-conditioned inputs shaped like the model's: non-negative (ReLU) features, keys scaled
    ~1/sqrt(D S) (the model's kappa), so (I - K^T B K) has eigenvalues in (0, 1] and the denominator
    stays away from zero; gates as after sigmoid / exp(-softplus)."""
    g = torch.Generator().manual_seed(seed)
    ks = 2.0 / math.sqrt(D * S)
    x = {
        "q": torch.rand(B, H, T, S, D, generator=g),
        "k": torch.rand(B, H, T, S, D, generator=g) * ks,
        "v": torch.randn(B, H, T, S, Dv, generator=g),
        "beta": torch.rand(B, H, T, S, generator=g),
        "gamma": 0.8 + 0.2 * torch.rand(B, H, T, generator=g),
    }
    if form == "main":
        x["qz"] = torch.rand(B, H, T, S, D, generator=g)
        x["kz"] = torch.rand(B, H, T, S, D, generator=g) * ks
    if state:
        x["state"] = torch.randn(B, H, D, Dv, generator=g)
        if form == "main":
            x["z"] = torch.rand(B, H, D, generator=g)
    for n in ("q", "k", "v", "qz", "kz"):
        if n in x:
            x[n] = x[n].to(dtype)
    return x


def check_all(name, ref, got, rtol):
    """Compare (o, state_out, z_out) of two forms; returns the three errors."""
    errs = []
    for part, r, t in zip(("o", "state", "z"), ref, got):
        assert (r is None) == (t is None), f"{name}/{part}: one form returned None"
        if r is not None:
            assert r.dtype == t.dtype, f"{name}/{part}: dtype {t.dtype} != reference {r.dtype}"
            errs.append(assert_close(f"{name}/{part}", r, t, rtol))
    return errs


# ---------------------------------------------------------------------------------------------------------
# 1. phase-split reference == oracle
@pytest.mark.parametrize("shape", SHAPES + SHAPES_D112)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("state", [True, False])
def test_chunk_ref_matches_recurrent(shape, form, reverse, state):
    x = make_inputs(*shape, form=form, state=state)
    check_all("chunk_ref", gdn_recurrent_ref(**x, reverse=reverse), gdn_chunk_ref(**x, reverse=reverse), 1e-5)


def test_reverse_and_state_change_the_output():
    """Guards the tests above against degenerate data: the flags under test must matter."""
    x = make_inputs(1, 1, 3, 10, 16, 16)
    o_rev, s, _ = gdn_recurrent_ref(**x, reverse=True)
    o_fwd, s2, _ = gdn_recurrent_ref(**x, reverse=False)
    x0 = dict(x, state=None, z=None)
    o_nostate, s3, _ = gdn_recurrent_ref(**x0, reverse=True)
    assert (o_rev - o_fwd).abs().max() > 1e-3
    assert (o_rev - o_nostate).abs().max() > 1e-3
    assert torch.equal(s, s2) and (s - s3).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------
# 2. Triton kernels == oracle (interpret mode on CPU)
@needs_triton
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("state", [True, False])
def test_triton_matches_reference(shape, form, reverse, state):
    from sanawm.kernels.gdn.triton_gdn import gdn_scan_triton

    x = make_inputs(*shape, form=form, state=state)
    check_all("triton", gdn_recurrent_ref(**x, reverse=reverse), gdn_scan_triton(**x, reverse=reverse), 1e-5)


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES_D112)
@pytest.mark.parametrize("form", FORMS)
def test_triton_matches_reference_d112(shape, form):
    from sanawm.kernels.gdn.triton_gdn import gdn_scan_triton

    x = make_inputs(*shape, form=form, state=True)
    check_all("triton_d112", gdn_recurrent_ref(**x), gdn_scan_triton(**x), 1e-5)


@needs_triton
@pytest.mark.parametrize("form", FORMS)
def test_triton_bf16_inputs(form):
    """bf16 q/k/v (and qz/kz) with fp32 state: output is bf16, state stays fp32, both within 1e-2 of the
    fp32 oracle run on the unrounded inputs."""
    from sanawm.kernels.gdn.triton_gdn import gdn_scan_triton

    x32 = make_inputs(1, 2, 3, 37, 32, 32, form=form)
    x16 = make_inputs(1, 2, 3, 37, 32, 32, form=form, dtype=torch.bfloat16)
    ref = gdn_recurrent_ref(**x32)
    got = gdn_scan_triton(**x16)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    for part, r, t in zip(("o", "state", "z"), ref, got):
        if r is not None:
            assert_close(f"bf16/{part}", r, t, 1e-2)


# ---------------------------------------------------------------------------------------------------------
# 3. chunked forward with state passing == one pass (reverse off: the forward state crosses calls)
CHUNK_BACKENDS = ["reference", "decomposed", pytest.param("triton", marks=needs_triton)]


@pytest.mark.parametrize("backend", CHUNK_BACKENDS)
@pytest.mark.parametrize("form", FORMS)
def test_chunked_equals_whole(backend, form):
    x = make_inputs(1, 2, 6, 21, 16, 16, form=form)
    whole = gdn_recurrent_ref(**x, reverse=False)
    state, z, outs = x["state"], x.get("z"), []
    for a, b in ((0, 2), (2, 5), (5, 6)):  # uneven chunks
        part = {n: (t[:, :, a:b] if n not in ("state", "z") else t) for n, t in x.items()}
        part["state"], part["z"] = state, z
        o, state, z = gdn_scan(**part, reverse=False, backend=backend)
        outs.append(o)
    check_all(f"chunked/{backend}", whole, (torch.cat(outs, 2), state, z), 1e-5)


# ---------------------------------------------------------------------------------------------------------
# 4. bad inputs raise ValueError naming the problem, in every form
BAD_BACKENDS = ["reference", "decomposed", "custom_op", pytest.param("triton", marks=needs_triton)]


def _bad_cases():
    x = make_inputs(1, 1, 2, 5, 16, 16)
    yield "mismatched head dims", dict(x, k=x["k"][..., :8].contiguous()), "`k` must have shape"
    yield "non-contiguous state", dict(x, state=x["state"].transpose(-1, -2)), "contiguous"
    yield "wrong-dtype state", dict(x, state=x["state"].double()), "float32"
    yield "NaN gamma", dict(x, gamma=torch.full_like(x["gamma"], float("nan"))), "NaN"
    yield "NaN beta", dict(x, beta=x["beta"].clone().index_fill_(-1, torch.tensor([1]), float("nan"))), "NaN"
    yield "qz without kz", dict(x, kz=None), "both `qz` and `kz`"


@pytest.mark.parametrize("backend", BAD_BACKENDS)
@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: c[0])
def test_bad_inputs_raise(backend, case):
    _, x, msg = case
    with pytest.raises(ValueError, match=msg):
        gdn_scan(**x, backend=backend)


@needs_triton
def test_triton_on_cpu_without_interpret_raises(monkeypatch):
    from sanawm.kernels.gdn.triton_gdn import gdn_scan_triton

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        gdn_scan_triton(**make_inputs(1, 1, 1, 3, 16, 16))


def test_dispatch(monkeypatch):
    q = torch.zeros(1, 1, 1, 1, 16)
    monkeypatch.delenv("SANAWM_GDN_BACKEND", raising=False)
    assert select_backend(q) == ("triton" if q.is_cuda else "reference")
    assert select_backend(q, "decomposed") == "decomposed"
    monkeypatch.setenv("SANAWM_GDN_BACKEND", "triton")
    assert select_backend(q) == "triton"
    assert select_backend(q, "reference") == "reference"  # an explicit argument wins over the env
    with pytest.raises(ValueError, match="backend must be one of"):
        select_backend(q, "cuda")


# ---------------------------------------------------------------------------------------------------------
# 5. export form (a): decomposed graph, eager and through ONNX Runtime
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reverse", [True, False])
def test_decomposed_matches_reference(form, reverse):
    x = make_inputs(1, 2, 4, 23, 16, 24, form=form)
    check_all("decomposed", gdn_recurrent_ref(**x, reverse=reverse), gdn_scan_decomposed(**x, reverse=reverse), 1e-5)


SEEN_BACKENDS = []  # module level: the exporter may trace a copy of the module, so attributes are lost


class _Wrap(torch.nn.Module):
    """Exports gdn_scan with the default dispatch; records which backend tracing selected."""

    def __init__(self, form, backend=None):
        super().__init__()
        self.form, self.backend = form, backend

    def forward(self, q, k, v, beta, gamma, state, qz=None, kz=None, z=None):
        SEEN_BACKENDS.append(select_backend(q, self.backend))
        return tuple(t for t in gdn_scan(q, k, v, beta, gamma, qz, kz, state, z, backend=self.backend) if t is not None)


def _export(form, x, backend=None, **kw):
    names = ["q", "k", "v", "beta", "gamma", "state"] + (["qz", "kz", "z"] if form == "main" else [])
    args = tuple(x[n] for n in names)
    m = _Wrap(form, backend).eval()
    prog = torch.onnx.export(m, args, dynamo=True, verbose=False, input_names=names, **kw)
    return m, prog.model_proto, names, args


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_decomposed_onnx_runs_on_ort(form):
    ort = pytest.importorskip("onnxruntime")
    x = make_inputs(1, 2, 4, 23, 16, 16, form=form)
    SEEN_BACKENDS.clear()
    _, model, names, args = _export(form, x)
    assert SEEN_BACKENDS and set(SEEN_BACKENDS) == {"decomposed"}, f"export dispatched to {SEEN_BACKENDS}"
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Loop", "Scan", "ScatterND", "ScatterElements"}, f"non-plain ops in graph: {ops}"
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
    ref = [t for t in gdn_recurrent_ref(**x) if t is not None]
    assert len(got) == len(ref)
    for part, r, t in zip(("o", "state", "z"), ref, got):
        assert_close(f"onnx_decomposed/{form}/{part}", r, torch.from_numpy(t), 1e-5)


# ---------------------------------------------------------------------------------------------------------
# 6. export form (b): sanawm::gdn_scan custom op -> one plugin node
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("state", [True, False])
def test_custom_op_eager_matches_reference(form, state):
    x = make_inputs(1, 2, 3, 11, 16, 16, form=form, state=state)
    check_all("custom_op", gdn_recurrent_ref(**x), gdn_scan(**x, backend="custom_op"), 1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_custom_op_exports_plugin_node(form):
    pytest.importorskip("onnxscript")
    from onnx import helper

    from sanawm.kernels.gdn.custom_op import onnx_translation_table, strip_internal_attributes

    x = make_inputs(1, 2, 3, 11, 16, 16, form=form)
    _, model, _, _ = _export(form, x, backend="custom_op", custom_translation_table=onnx_translation_table(),
                             optimize=False)  # fmt: skip
    nodes = [n for n in model.graph.node if n.domain == "sanawm"]
    assert len(nodes) == 1 and nodes[0].op_type == "gdn_scan", [(n.domain, n.op_type) for n in model.graph.node]
    assert ("sanawm", 1) in {(o.domain, o.version) for o in model.opset_import}
    assert strip_internal_attributes(model) == 1  # the leaked `_outputs`
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs == {
        "reverse": 1,
        "eps": pytest.approx(1e-8),
        "has_den": int(form == "main"),
        "plugin_namespace": b"sanawm",
        "plugin_version": b"1",
    }, attrs
    assert len(nodes[0].input) == 9 and len(nodes[0].output) == 3


# ---------------------------------------------------------------------------------------------------------
# 7. Triton AOT compile to PTX on a CPU machine (sm_90 and sm_120; what a future TensorRT plugin would embed)
def _triton_nvidia_backend() -> bool:
    try:
        from triton.backends import backends

        return "nvidia" in backends
    except Exception:
        return False


@pytest.mark.slow
@pytest.mark.skipif(
    not (HAS_TRITON and _triton_nvidia_backend()), reason="triton's nvidia compiler backend is unavailable"
)
@pytest.mark.parametrize("sm", [90, 120])
def test_aot_compile_ptx(tmp_path, sm):
    # AOT compile cannot run in an interpret-mode process: run it in a clean subprocess (as a user would)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "sanawm.kernels.gdn.aot", "--sm", str(sm), "--kernels", "scan_fwd"]
    cmd += ["--out", str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ptx = (tmp_path / f"gdn_scan_fwd.sm{sm}.ptx").read_text()
    assert f".target sm_{sm}" in ptx and ".entry gdn_scan_kernel" in ptx
    assert "shared" in r.stdout  # the report line gives the shared-memory size the plugin must request
