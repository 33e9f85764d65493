"""sanawm: compiled deployment runtime for NVIDIA SANA-WM.

Build side (torch): ``sanawm.models``, ``sanawm.kernels``, ``sanawm.export``.
Run side (no torch): ``sanawm.runtime``, ``sanawm.engines``, ``sanawm.camera``.
Importing this package imports neither.
"""

__version__ = "0.1.0"
