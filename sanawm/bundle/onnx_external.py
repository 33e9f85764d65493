"""ONNX external-data locations read from the protobuf wire format (the run side imports neither onnx nor torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values are bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        fno, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = buf[i : i + 8], i + 8
        elif wt == 2:
            ln, i = _varint(buf, i)
            if i + ln > n:
                raise ValueError("truncated length-delimited field")
            v, i = buf[i : i + ln], i + ln
        elif wt == 5:
            v, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield fno, wt, v


# Which fields of which ONNX message hold messages that may contain a TensorProto (onnx.proto3 numbering).
_SUB = {
    "model": {7: "graph", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attr"},
    "attr": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}


def _tensor_locations(buf: bytes) -> tuple[str, str | None]:
    name, loc = "", None
    for fno, wt, v in _fields(buf):
        if fno == 8 and wt == 2:
            name = v.decode("utf-8", "replace")
        elif fno == 13 and wt == 2:
            key = val = None
            for f2, w2, v2 in _fields(v):
                if f2 == 1 and w2 == 2:
                    key = v2.decode("utf-8", "replace")
                elif f2 == 2 and w2 == 2:
                    val = v2.decode("utf-8", "replace")
            if key == "location":
                loc = val
    return name, loc


def onnx_external_locations(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(tensor name, external-data ``location``) for every externally stored tensor in an ONNX file.

    Reads the protobuf wire format directly (the run side imports neither onnx nor torch).
    """
    data = Path(path).read_bytes()
    out: list[tuple[str, str]] = []

    def walk(buf: bytes, kind: str, depth: int) -> None:
        if depth > 64:
            raise ValueError("ONNX nesting deeper than 64 levels")
        if kind == "tensor":
            name, loc = _tensor_locations(buf)
            if loc is not None:
                out.append((name, loc))
            return
        sub = _SUB[kind]
        for fno, wt, v in _fields(buf):
            if wt == 2 and fno in sub:
                walk(v, sub[fno], depth + 1)

    walk(data, "model", 0)
    return out
