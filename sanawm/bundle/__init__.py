"""Engine bundle: ``manifest.json`` + ONNX (+ external data) + TensorRT plans, read and validated (torch-free).

A bundle is the only thing that crosses from the build side to the run side. It is untrusted input: every
path it names (and every external-data ``location`` inside every ONNX file it names) must resolve inside
the bundle folder; absolute paths, ``..`` and symlinks that leave the folder are refused.

Manifest layout (``SCHEMA_VERSION`` 1)::

    {
      "schema_version": 1,
      "sanawm_version": "0.1.0",
      "source": {"checkpoint": "ckpt.safetensors" | null, "checkpoint_sha256": "..." | null, "random_seed": 0 | null},
      "export": {"config": "tiny", "precision": "fp8", ...},          # how to rebuild (CLI arguments)
      "generator_config": {...},                                       # GeneratorConfig.to_dict()
      "engines": {
        "generator_first": {
          "kind": "generator_step",
          "precision": "fp32" | "fp16" | "fp8" | "nvfp4",
          "inputs":  [{"name", "dtype", "shape", "doc"}, ...],
          "outputs": [...],
          "state_map": {"b0.S_kv.out": "b0.S_kv", ...},
          "profiles": [{"latents": {"min": [...], "opt": [...], "max": [...]}, ...}],
          "notes": "free text (e.g. why fixed shapes)",
          "files": {
            "onnx": {"path": "generator_first.onnx", "sha256": "...", "size": 123,
                     "external_data": [{"path": "generator_first.onnx.data", "sha256": "...", "size": 456}]},
            "tensorrt_rtx": {"path": "generator_first.tensorrt_rtx.plan", "sha256": "...", "size": 789,
                             "build": {"library": "tensorrt_rtx", "version": "1.7.1.116",
                                       "compute_capabilities": ["sm_89"], "gpu_name": null, ...}}
          }
        }
      }
    }

Backend ``onnxruntime`` runs the ``onnx`` file; ``tensorrt`` and ``tensorrt_rtx`` run their plan.

Modules by job: ``schema`` (constants, ``BundleError``, ``write_manifest``), ``paths`` (hashing, path safety),
``onnx_external`` (the protobuf external-data walker), ``env`` (``BackendEnv``, compute capabilities),
``manifest`` (``Bundle``, ``EngineEntry``). ``BackendEnv`` of this machine comes from
``sanawm.engines.tensorrt.detect_environment`` (the bundle never imports the engines).
"""

from .env import BackendEnv, normalize_cc
from .manifest import Bundle, EngineEntry
from .onnx_external import onnx_external_locations
from .paths import file_record, safe_path, sha256_file
from .schema import BACKENDS, MANIFEST_NAME, PLAN_BACKENDS, SCHEMA_VERSION, BundleError, write_manifest

__all__ = [
    "BACKENDS", "MANIFEST_NAME", "PLAN_BACKENDS", "SCHEMA_VERSION", "BackendEnv", "Bundle", "BundleError",
    "EngineEntry", "file_record", "normalize_cc", "onnx_external_locations", "safe_path", "sha256_file",
    "write_manifest",
]
