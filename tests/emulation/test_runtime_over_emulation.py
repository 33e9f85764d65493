"""The whole runtime on the emulated device: the real Runtime, TensorRTEngine and session pools over
``sanawm.emulation`` (a counting fake of cuda-python and TensorRT whose engines run the bundle's ONNX on ONNX
Runtime). This is an emulation, not a GPU run: it proves what crosses the host boundary, what is allocated
when, and that the device-resident code computes the same clip as ONNX Runtime on the CPU."""

import json
from pathlib import Path

import numpy as np
import pytest

from sanawm.bundle import file_record, write_manifest
from sanawm.emulation import install

pytestmark = pytest.mark.slow  # one tiny bundle export (~1-3 min on 2 cores), run with and without the refiner

CHUNKS = 4


def add_emulated_plans(root: Path, emu, backend: str) -> None:
    """Emulated plans for every engine of the bundle, recorded in its manifest like real builds."""
    m = json.loads((root / "manifest.json").read_text())
    major, minor = emu.device.compute_capability
    for name, e in m["engines"].items():
        profiles = None
        named = [p for p in e.get("profiles", []) if "name" in p]
        if named:
            from sanawm.spec import TensorSpec

            ins = [TensorSpec.from_dict(t) for t in e["inputs"]]
            profiles = [{t.name: (t.concrete(p["dims"]).shape,) * 3 for t in ins if t.is_dynamic} for p in named]
        plan = root / f"{name}.{backend}.plan"
        plan.write_bytes(emu.plan(root / e["files"]["onnx"]["path"], profiles, name=name))
        rec = file_record(root, plan)
        rec["build"] = {"library": backend, "version": emu.trt.__version__,
                        "compute_capabilities": [f"sm_{major}{minor}"], "emulated": True}
        e["files"][backend] = rec
    write_manifest(root, m)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """Random tiny generator, VAE and the one refiner engine (the first test runs it with refiner=False)."""
    from sanawm.export.cli import main

    root = tmp_path_factory.mktemp("emu") / "bundle"
    assert main(["--checkpoint", "tiny", "--backend", "onnx", "--out", str(root)]) == 0
    return root


def inputs(rt):
    from sanawm.camera import CameraPath, prepare_camera
    from sanawm.runtime import PromptEmbeddings

    h, w = rt.image_hw
    img = (np.random.default_rng(0).uniform(0, 255, (h, w, 3))).astype(np.uint8)
    T = rt.cfg.first_chunk_size + (CHUNKS - 1) * rt.cfg.chunk_size
    F = 8 * (T - 1) + 1
    c2w = np.repeat(np.eye(4, dtype=np.float32)[None], F, axis=0)
    c2w[:, 2, 3] = np.linspace(0, 1, F)  # forward
    K = np.array([w, w, w / 2, h / 2], np.float32)
    cam = prepare_camera(CameraPath(c2w, K, image_hw=(h, w)), F, (rt.cfg.latent_height, rt.cfg.latent_width), (h, w))
    return img, PromptEmbeddings.zeros(rt.cfg), cam, F


def run(rt, keep_latents=False):
    img, prompt, cam, F = inputs(rt)
    s = rt.start(img, prompt, cam, seed=3, num_frames=F, keep_latents=keep_latents)
    return s


def test_device_resident_clip_equals_onnxruntime_and_moves_only_small_tensors(bundle):
    check_emulated_clip(bundle, refiner=False)


@pytest.mark.filterwarnings("ignore:the prompt embeddings have no refiner text")
def test_device_resident_clip_with_the_refiner(bundle):
    """The same four checks with the refiner engine in the loop: its sink, history ring and block latents stay
    in the device pool; per chunk only the block's noisy latents and [1]-sized call inputs cross."""
    check_emulated_clip(bundle, refiner=True)


def check_emulated_clip(bundle, refiner: bool):
    from sanawm.runtime import Runtime

    ref_rt = Runtime.load(bundle, "onnxruntime", refiner=refiner)
    ref = [(c.latents.copy(), c.frames.copy(), c.refined.copy()) for c in run(ref_rt, keep_latents=True)]

    with install("tensorrt_rtx", total_memory=4 << 30) as emu:
        add_emulated_plans(bundle, emu, "tensorrt_rtx")
        dev = emu.device
        weights_before = dev.events["trt_weights"]
        rt = Runtime.load(bundle, "tensorrt_rtx", refiner=refiner)
        loaded = dev.events["trt_weights"] - weights_before
        assert loaded == len(rt.executors)  # one weight upload per engine, at load
        assert "generator" in rt.executors and "generator_first" not in rt.executors  # one generator weight set
        assert ("refiner" in rt.executors) == refiner and not {"refiner_step", "refiner_sink"} & set(rt.executors)
        mem = rt.generator.memory
        s = run(rt)
        per_chunk, allocs = [], []
        for c in range(CHUNKS):
            before = (dict(dev.copy_bytes), dict(mem.traffic.by_name), dev.alloc_calls)
            chunk = next(s)
            latents, frames = chunk.latents, chunk.frames  # read inside the loop (latents: one download)
            np.testing.assert_allclose(latents, ref[c][0], rtol=0, atol=1e-5)
            assert frames.dtype == np.uint8 and np.abs(frames.astype(int) - ref[c][1].astype(int)).max() <= 1
            moved = {k: v - before[1].get(k, 0) for k, v in mem.traffic.by_name.items() if v - before[1].get(k, 0)}
            per_chunk.append(moved)
            allocs.append(dev.alloc_calls - before[2])
            dev_h2d = dev.copy_bytes["h2d"] - before[0].get("h2d", 0)
            assert dev_h2d == sum(v for k, v in moved.items() if k.startswith("h2d:"))  # every crossing is counted
            if refiner:  # (a) the refined latents too (the test's own read, after the chunk's counted window)
                np.testing.assert_allclose(chunk.refined, ref[c][2], rtol=0, atol=1e-5)
                assert np.abs(chunk.refined - latents).max() > 1e-3  # the refiner really ran
        # (c) no device allocation after the first chunk
        assert allocs[1:] == [0] * (CHUNKS - 1), allocs
        # (b) per chunk: what crosses, without the uint8 frames (and the latents we chose to read), is at most
        # twice the chunk's latents + noise + camera inputs
        cfg = rt.cfg
        for c, moved in enumerate(per_chunk):
            n = cfg.first_chunk_size if c == 0 else cfg.chunk_size
            lat = 4 * cfg.in_channels * n * cfg.latent_height * cfg.latent_width
            cam = 4 * n * 20 + 4 * cfg.plucker_channels * n * cfg.latent_height * cfg.latent_width
            frames = sum(v for k, v in moved.items() if k.startswith("d2h:decoder.frames"))
            assert frames == 8 * (n - 1 if c == 0 else n) * int(np.prod(rt.image_hw)) * 3  # uint8 frames only
            read = sum(v for k, v in moved.items() if k.startswith("d2h:latents"))
            assert read == lat  # the one download we asked for
            other = sum(v for k, v in moved.items() if k[:4] in ("h2d:", "d2h:")) - frames - read
            assert other <= 2 * (lat + lat + cam), (c, other, moved)
            downloads = {k.split("#")[0] for k in moved if k.startswith("d2h:")}  # latents#0 / a latents view
            assert downloads == {"d2h:decoder.frames", "d2h:latents"}, moved
        rt.close()
        assert dev.live_bytes == 0


@pytest.mark.filterwarnings("ignore:the prompt embeddings have no refiner text")
def test_onnxruntime_binds_a_pointer_addressed_pool(bundle, monkeypatch):
    """The onnxruntime-gpu path without a GPU: ``Runtime.load`` gives the ONNX Runtime engines a pool addressed by
    integer pointers (as ``CudaMemory`` is on the CUDA execution provider), the executors bind every buffer by
    address (device "cpu" here, "cuda" there) and the clip is bit-identical to the numpy-pool clip."""
    from pointer_memory import HostPointerMemory

    from sanawm.runtime import Runtime, loading

    ref = [(c.latents.copy(), c.frames.copy(), c.refined.copy())
           for c in run(Runtime.load(bundle, "onnxruntime"), keep_latents=True)]
    monkeypatch.setattr(loading, "onnxruntime_memory", lambda executors: HostPointerMemory())
    with Runtime.load(bundle, "onnxruntime") as rt:
        mem = rt.generator.memory
        assert isinstance(mem, HostPointerMemory) and "refiner" in rt.executors
        s, allocs = run(rt, keep_latents=True), []
        for c in range(CHUNKS):
            before = mem.traffic.allocations
            chunk = next(s)
            allocs.append(mem.traffic.allocations - before)
            np.testing.assert_array_equal(chunk.latents, ref[c][0])
            np.testing.assert_array_equal(chunk.frames, ref[c][1])
            np.testing.assert_array_equal(chunk.refined, ref[c][2])
        assert allocs[1:] == [0] * (CHUNKS - 1), allocs
        assert all(isinstance(b.handle, int) for b in mem.buffers)  # nothing fell back to a numpy pool
        for name in ("generator", "vae_decoder", "refiner"):  # the chunk loop's engines: a few binding sets each
            assert 0 < rt.executors[name].binding_builds <= 8, (name, rt.executors[name].binding_builds)
