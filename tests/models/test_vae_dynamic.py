"""The streaming VAE decoder as ONE graph for chunk 0 (4 latent frames) and later chunks (3), tiny VAE, CPU.

* torch: ``VAEDecoderDynamicStep`` equals ``VAEDecoderStep(first=True)`` at n = 4 with NaN caches (they are
  never read) and ``VAEDecoderStep(first=False)`` at n = 3, bit for bit (measured 0.0).
* ORT: the exported dynamic graph (symbolic n) vs the fixed torch steps at both lengths <= TOL (1e-4, as
  tests/models/test_vae_export.py; measured ~8e-7); ORT first + 2 next chunks through the one graph, caches
  chained by state_map, == diffusers ``vae.decode(z, causal=True)[:, :, 1:]`` (the whole-clip oracle) <= TOL.
* Weights once: initializer bytes within 5% of the decoder's parameter bytes.
* TensorRT-RTX AOT build (sm_89, CPU) with two optimization profiles (n = 3, n = 4).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sanawm.models.vae import VAEDecoderStep, build_vae, denormalize_latents, tiny_vae_config  # noqa: E402
from sanawm.models.vae.dynamic import VAEDecoderDynamicStep, vae_decoder_io_dynamic  # noqa: E402
from sanawm.testing import rel_error  # noqa: E402

TOL = 1e-4
WEIGHT_SLACK = 0.05
LHW = (2, 3)
HW = (64, 96)


@pytest.fixture(scope="module")
def vae():
    return build_vae(tiny_vae_config(), seed=0, random_latent_stats=True)


def test_contract_and_torch_equality(vae):
    io = vae_decoder_io_dynamic(vae.config, LHW)
    assert io.inputs[0].shape[2] == "n" and io.outputs[0].shape == (1, 3, 24, *HW)
    assert [t.name for t in io.inputs[1:]] == list(io.state_map.values())  # every cache, on every call
    with pytest.raises(ValueError, match="first_frames = next_frames"):
        vae_decoder_io_dynamic(vae.config, LHW, first_frames=5)
    dyn = VAEDecoderDynamicStep(vae, LHW).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n in (4, 3):
            fixed = VAEDecoderStep(vae, n == 4, LHW, n).eval()
            z = torch.randn(1, 8, n, *LHW, generator=g)
            caches = [torch.full(t.shape, float("nan")) if n == 4 else torch.randn(t.shape, generator=g)
                      for t in dyn.io.inputs[1:]]
            want = fixed(z, *([] if n == 4 else caches))
            got = dyn(z, *caches)
            assert len(got) == len(want) == len(dyn.io.outputs)
            for a, b in zip(want, got):
                assert torch.equal(a, b), n
        with pytest.raises(ValueError, match="takes 3 or 4 latent frames"):
            dyn(torch.randn(1, 8, 2, *LHW), *caches)


@pytest.fixture(scope="module")
def exported(vae, tmp_path_factory):
    from sanawm.export.dynamic import export_vae_decoder_dynamic

    return export_vae_decoder_dynamic(vae, LHW, tmp_path_factory.mktemp("vae_dyn") / "vae_decoder.onnx")


@pytest.mark.slow
def test_onnx_matches_fixed_steps_and_whole_clip_decode(vae, exported):
    from sanawm.export.onnx import run_onnx_cpu

    errs = exported.rel_errors
    print(f"\ndynamic VAE decoder ONNX vs fixed torch steps: n=4 {max(v for k, v in errs.items() if k.startswith('n=4')):.1e},"
          f" n=3 {max(v for k, v in errs.items() if k.startswith('n=3')):.1e}")
    assert {k.split("/")[0] for k in errs} == {"n=3", "n=4"} and max(errs.values()) <= TOL, errs
    io = vae_decoder_io_dynamic(vae.config, LHW)
    z_n = torch.randn(1, 8, 10, *LHW, generator=torch.Generator().manual_seed(11))
    z = denormalize_latents(z_n, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    with torch.no_grad():
        ref = vae.decode(z, causal=True).sample[:, :, 1:].numpy()  # 72 frames
    state = {t.name: np.zeros(t.shape, np.float32) for t in io.inputs[1:]}  # chunk 0: zeros, not read
    parts = []
    for s, e in [(0, 4), (4, 7), (7, 10)]:
        outs = run_onnx_cpu(exported.onnx_path, {"latents": z_n[:, :, s:e].numpy(), **state})
        parts.append(outs["frames"])
        state = {io.state_map[k]: v for k, v in outs.items() if k in io.state_map}
    got = np.concatenate(parts, axis=2)
    assert got.shape == ref.shape == (1, 3, 72, *HW)
    err = rel_error(ref, got)
    print(f"one-graph chain (4 + 3 + 3 latent frames) vs diffusers whole-clip causal decode: {err:.1e}")
    assert err <= TOL


@pytest.mark.slow
def test_weights_stored_once(vae, exported):
    import onnx
    from onnx.external_data_helper import uses_external_data

    m = onnx.load(str(exported.onnx_path), load_external_data=False)
    got = sum(int(next(kv.value for kv in t.external_data if kv.key == "length")) if uses_external_data(t)
              else (len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes) for t in m.graph.initializer)
    params = sum(p.numel() * p.element_size() for p in vae.decoder.parameters())
    print(f"\nVAE decoder initializer bytes {got} vs decoder parameter bytes {params} (ratio {got / params:.3f})")
    assert abs(got / params - 1.0) <= WEIGHT_SLACK, (got, params)


@pytest.mark.slow
def test_tensorrt_rtx_builds_two_profiles(vae, exported, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx not installed")
    from sanawm.export.build import build_engine

    io = vae_decoder_io_dynamic(vae.config, LHW)
    profiles = [{"latents": ((1, 8, n, *LHW),) * 3} for n in (3, 4)]
    r = build_engine(exported.onnx_path, tmp_path / "vae_decoder.plan", backend="tensorrt_rtx",
                     compute_capabilities=["sm_89"], profiles=profiles)
    print(f"\ntensorrt_rtx dynamic VAE decoder, 2 profiles: {r.seconds:.0f}s, plan {r.plan_path.stat().st_size / 1e6:.1f} MB")
    assert [p["latents"]["min"][2] for p in r.profiles] == [3, 4] and io.inputs[0].name == "latents"
    assert r.plan_path.stat().st_size > 10_000
