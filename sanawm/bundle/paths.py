"""File hashing, file records and path safety: every path a bundle names must stay inside the bundle."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from .schema import BundleError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def file_record(root: str | os.PathLike, path: str | os.PathLike) -> dict:
    """``{"path": <relative to root>, "sha256", "size"}`` for a file inside ``root``."""
    root = Path(root).resolve()
    p = Path(path)
    p = p if p.is_absolute() else root / p
    rel = p.resolve().relative_to(root).as_posix()
    return {"path": rel, "sha256": sha256_file(p), "size": p.stat().st_size}


def safe_path(root: str | os.PathLike, rel: str, what: str = "file") -> Path:
    """Resolve ``rel`` inside ``root``; refuse absolute paths, ``..`` and symlinks that leave ``root``."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{what}: path {rel!r} is not a non-empty string")
    if "\x00" in rel or "\\" in rel:
        raise BundleError(f"{what}: path {rel!r} contains a NUL or backslash; bundle paths are POSIX relative paths")
    if rel.startswith("/") or os.path.isabs(rel) or re.match(r"^[A-Za-z]:", rel):
        raise BundleError(f"{what}: absolute path {rel!r} refused; bundle paths must be relative to the bundle folder")
    if any(part == ".." for part in rel.split("/")):
        raise BundleError(f"{what}: path {rel!r} contains '..'; bundle paths must stay inside the bundle folder")
    root_r = Path(root).resolve()
    p = (root_r / rel).resolve()
    try:
        p.relative_to(root_r)
    except ValueError:
        raise BundleError(
            f"{what}: {rel!r} resolves to {p}, outside the bundle folder {root_r} (symlink out of the bundle?); refused"
        ) from None
    return p
