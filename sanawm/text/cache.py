"""On-disk cache of encoded prompts (torch-free), so repeated runs skip loading and running the text encoders.

Key = sha256 over a canonical JSON of: prompt, negative prompt, stage-1 encoder identity, refiner encoder identity,
chi preamble, caption_length, refiner max length and the file format version. Entries are complete prompt files
(``sanawm.text.store`` format) named ``<key>.safetensors``; a corrupt entry is ignored and overwritten.

Encoder identity of a local folder = ``"<folder name>@<16 hex>"`` where the hex is a sha256 over the relative path,
size and mtime-independent content sample of every file: config / tokenizer files (<= 64 MiB) are hashed whole,
larger files (weights) by size + first 1 MiB (the safetensors header: names, shapes, dtypes, offsets) + last 1 MiB.
So it is cheap on a 5-25 GB encoder and changes with any re-download of a different revision, but an in-place edit
of weight bytes in the middle of a large file is NOT detected (documented limit).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from .store import FORMAT_VERSION, PromptFileError, read_meta

_WHOLE_LIMIT = 64 << 20
_SAMPLE = 1 << 20


def folder_fingerprint(folder: str | os.PathLike) -> str:
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"encoder folder {root} does not exist or is not a directory")
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel:  # .cache/, .git/ and other tool state
            continue
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with open(p, "rb") as f:
            if size <= _WHOLE_LIMIT:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            else:
                h.update(f.read(_SAMPLE))
                f.seek(size - _SAMPLE)
                h.update(f.read(_SAMPLE))
    return h.hexdigest()


def encoder_identity(folder: str | os.PathLike) -> str:
    root = Path(folder).resolve()
    return f"{root.name}@{folder_fingerprint(root)[:16]}"


def cache_key(
    prompt: str,
    *,
    negative_prompt: str | None,
    stage1_encoder: str,
    refiner_encoder: str | None,
    chi_prompt: Sequence[str] | None,
    caption_length: int,
    refiner_max_length: int | None,
) -> str:
    payload = {
        "format": FORMAT_VERSION,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "stage1_encoder": stage1_encoder,
        "refiner_encoder": refiner_encoder,
        "chi_prompt": list(chi_prompt) if chi_prompt else [],
        "caption_length": int(caption_length),
        "refiner_max_length": None if refiner_encoder is None else refiner_max_length,
    }
    blob = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


class PromptCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path_for(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be a sha256 hex digest, got {key!r}")
        return self.root / f"{key}.safetensors"

    def get(self, key: str) -> Path | None:
        p = self.path_for(key)
        if not p.is_file():
            return None
        try:
            read_meta(p)
        except PromptFileError:
            return None  # corrupt or foreign: treat as a miss, it gets overwritten
        return p

    def put(self, key: str, src: str | os.PathLike) -> Path:
        dst = self.path_for(key)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".tmp", dir=self.root)
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return dst


def encode_cached(
    cache_dir: str | os.PathLike | None, key: str, out: str | os.PathLike, encode: Callable[[Path], object]
) -> bool:
    """Write the prompt file for ``key`` to ``out``: copied from the cache on a hit, else ``encode(out)`` writes it
    and the result is cached. Returns True on a cache hit. ``cache_dir=None`` always encodes."""
    out = Path(out)
    if cache_dir is None:
        encode(out)
        return False
    cache = PromptCache(cache_dir)
    hit = cache.get(key)
    if hit is not None:
        if hit.resolve() != out.resolve():
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hit, out)
        return True
    encode(out)
    cache.put(key, out)
    return False
