"""ONNX Runtime executor: CPU everywhere, CUDA where onnxruntime-gpu is installed (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..spec import TensorSpec
from .base import Executor, ExecutorError


def import_ort():
    """The onnxruntime module, imported on demand; a missing package is named with its install command."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(
            "backend 'onnxruntime' needs the onnxruntime package: pip install 'sanawm[onnxruntime]' "
            "(or onnxruntime-gpu for CUDA)"
        ) from None
    return ort


def default_providers(device: str = "auto") -> list[str]:
    """Execution providers for ``device``: "cpu", "cuda" or "auto" (CUDA when available, else CPU)."""
    avail = import_ort().get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in avail:
            raise ExecutorError(
                f"device 'cuda' asked for but onnxruntime offers {avail}; install onnxruntime-gpu or use device='cpu'"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise ExecutorError(f"unknown device {device!r}; choose 'auto', 'cpu' or 'cuda'")
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


class OnnxRuntimeExecutor(Executor):
    """Runs an ONNX engine graph with onnxruntime.

    Args:
        onnx_path: the ONNX file (its external data must sit beside it, as in a bundle).
        providers: explicit provider list; default from ``device``.
        threads: intra-op threads (0 = onnxruntime's default).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        name: str,
        onnx_path: str | Path,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        state_map: dict | None = None,
        *,
        device: str = "auto",
        providers: list[str] | None = None,
        threads: int = 0,
    ):
        super().__init__(name, tuple(inputs), tuple(outputs), state_map)
        ort = import_ort()
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.providers = providers or default_providers(device)
        self.session = ort.InferenceSession(str(onnx_path), sess_options=so, providers=self.providers)
        got_in = {i.name for i in self.session.get_inputs()}
        got_out = {o.name for o in self.session.get_outputs()}
        want_in, want_out = {t.name for t in self.inputs}, {t.name for t in self.outputs}
        if got_in != want_in or got_out != want_out:
            raise ExecutorError(
                f"engine {name!r}: {onnx_path} has inputs {sorted(got_in)} / outputs {sorted(got_out)}, the "
                f"manifest says {sorted(want_in)} / {sorted(want_out)}; rebuild the engine"
            )
        self._out_names = [t.name for t in self.outputs]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.session.run(self._out_names, feeds)
        return dict(zip(self._out_names, res))

    def run_with_iobinding(self, feeds: dict[str, np.ndarray], device: str = "cpu") -> dict[str, np.ndarray]:
        """Same as ``run`` through ORT I/O binding (outputs allocated on ``device``, copied back to numpy)."""
        from .base import check_feeds, check_outputs

        feeds = check_feeds(self.name, self.inputs, feeds)
        io = self.session.io_binding()
        for k, v in feeds.items():
            io.bind_cpu_input(k, v)
        for k in self._out_names:
            io.bind_output(k, device)
        self.session.run_with_iobinding(io)
        return check_outputs(self.name, self.outputs, dict(zip(self._out_names, io.copy_outputs_to_cpu())))

    def close(self) -> None:
        self.session = None
