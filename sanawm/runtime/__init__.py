"""Run side (torch-free): streaming scheduler, pipeline, sessions with save/resume, video output.

Importing this package imports numpy only; backends (onnxruntime, TensorRT) load in ``Runtime.load`` and
PyAV in the video writer.
"""

from .noise import NoiseSource, clip_noise
from .pipeline import Runtime
from .prompt import PromptEmbeddings, load_prompt
from .scheduler import Conditioning, GeneratorRunner, euler_step, stream_latents
from .session import Session
from .decoder import DecoderStage
from .stages import Chunk, PassThroughRefiner, Stage
from .state import GeneratorStatePool

__all__ = [
    "Chunk",
    "Conditioning",
    "DecoderStage",
    "GeneratorRunner",
    "GeneratorStatePool",
    "NoiseSource",
    "PassThroughRefiner",
    "PromptEmbeddings",
    "Runtime",
    "Session",
    "Stage",
    "clip_noise",
    "euler_step",
    "load_prompt",
    "stream_latents",
]
