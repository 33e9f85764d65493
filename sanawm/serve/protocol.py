"""The WebSocket protocol of ``sanawm serve``: control messages in (JSON), frames out (binary).

Client -> server, one JSON object per text message, ``op`` names it:

    {"op": "start", "scene": "road" | "upload": "<id>", "prompt": "text", "seed": 0, "fps": 16}
    {"op": "keys", "keys": "wd", "seq": 12}            held keys (w a s d i j k l), the full set each time;
                                                        seq increases per input, above "started"'s seq
    {"op": "mouse", "dx": 14, "dy": -3, "seq": 13}     mouse-look, pixels (MOUSE_DEG_PER_PX degrees each)
    {"op": "stop"} | {"op": "go"}                       pause / continue generating
    {"op": "snapshot"} | {"op": "fork"} | {"op": "resume", "id": "<snapshot id>", "fps": 16} | {"op": "ping"}

Server -> client: JSON text messages ``{"type": "hello" | "started" | "status" | "snapshot" | "forked" | "error"
| "idle" | "end" | "pong", ...}`` and binary frames: a 4-byte big-endian header length, the header (UTF-8 JSON:
kind "gen" | "reproj", chunk, frame, seq (newest input the picture reflects), gen_seq (newest input its
generated content reflects), pose [16] (c2w it is shown from), sent_ms, timings, render_ms, queued) and a JPEG.
"""

from __future__ import annotations

import json
import struct

SEQ_MAX = 2**53  # a JavaScript number stays exact below this
MOUSE_DEG_PER_PX = 0.1  # mouse-look sensitivity
MAX_MOUSE_PX = 2000.0  # one message's |dx|, |dy| at most
MAX_PROMPT_CHARS = 2000
MAX_FPS = 60

# op -> {field: (types, required)}
SCHEMA = {
    "start": {"scene": (str, False), "upload": (str, False), "prompt": (str, False), "seed": (int, False),
              "fps": ((int, float), False)},
    "keys": {"keys": ((str, list), True), "seq": (int, False)},
    "mouse": {"dx": ((int, float), True), "dy": ((int, float), True), "seq": (int, False)},
    "stop": {}, "go": {}, "snapshot": {}, "fork": {}, "ping": {"t": ((int, float), False)},
    "resume": {"id": (str, True), "fps": ((int, float), False)},
}


class ProtocolError(ValueError):
    """A refused message; the session goes on. ``code`` is a stable machine-readable name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def parse_message(text: str | bytes, max_bytes: int) -> dict:
    """Check one control message against ``SCHEMA``; returns it as a dict or raises ``ProtocolError``."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > max_bytes:
        raise ProtocolError("too_large", f"message of {size} bytes refused; control messages are at most {max_bytes} bytes")
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError("bad_json", f"message is not JSON ({e}); send one JSON object like {{\"op\": \"keys\", \"keys\": \"w\"}}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ProtocolError("bad_message", "message must be a JSON object with a string \"op\"")
    op = msg["op"]
    if op not in SCHEMA:
        raise ProtocolError("unknown_op", f"unknown op {op!r}; known: {', '.join(sorted(SCHEMA))}")
    fields = SCHEMA[op]
    extra = sorted(set(msg) - set(fields) - {"op"})
    if extra:
        raise ProtocolError("bad_field", f"op {op!r} takes {sorted(fields) or 'no fields'}; unexpected {extra}")
    for name, (types, required) in fields.items():
        if name not in msg:
            if required:
                raise ProtocolError("bad_field", f"op {op!r} needs field {name!r}")
            continue
        v = msg[name]
        if isinstance(v, bool) or not isinstance(v, types):  # bool is an int in Python; refuse it
            want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise ProtocolError("bad_field", f"op {op!r}: field {name!r} must be {want}; got {type(v).__name__}")
    _check_values(op, msg)
    return msg


def _check_values(op: str, msg: dict) -> None:
    if "seq" in msg and not 0 <= msg["seq"] < SEQ_MAX:
        raise ProtocolError("bad_field", f"seq must be in [0, 2^53); got {msg['seq']}")
    if op == "mouse" and not all(abs(float(msg[k])) <= MAX_MOUSE_PX for k in ("dx", "dy")):
        raise ProtocolError("bad_field", f"mouse dx, dy must be finite and at most {MAX_MOUSE_PX:g} pixels")
    if op in ("start", "resume") and not 0 <= msg.get("fps", 0) <= MAX_FPS:
        raise ProtocolError("bad_field", f"fps must be in [0, {MAX_FPS}] (0 = as fast as generated)")
    if op == "start":
        if "scene" in msg and "upload" in msg:
            raise ProtocolError("bad_field", "start takes either \"scene\" or \"upload\", not both")
        if len(msg.get("prompt", "")) > MAX_PROMPT_CHARS:
            raise ProtocolError("bad_field", f"prompt is longer than {MAX_PROMPT_CHARS} characters")
        if not 0 <= msg.get("seed", 0) < 2**63:
            raise ProtocolError("bad_field", "seed must be in [0, 2^63)")


def pack_frame(header: dict, jpeg: bytes) -> bytes:
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(h)) + h + jpeg


def unpack_frame(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack(">I", data[:4])
    return json.loads(data[4:4 + n]), data[4 + n:]


def error(code: str, message: str) -> dict:
    return {"type": "error", "code": code, "message": message}


def start_image(msg: dict, uploads: dict, hw) :
    """The first frame a ``start`` message asks for: an uploaded image by id, else a built-in scene."""
    from .images import scene_image

    if "upload" in msg:
        if msg["upload"] not in uploads:
            raise ProtocolError("unknown_upload", f"no upload {msg['upload']!r}; POST the image to /api/upload first")
        return uploads[msg["upload"]]
    return scene_image(msg.get("scene", "road"), hw)
