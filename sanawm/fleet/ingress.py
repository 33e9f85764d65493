"""The ingress deployment: the page, a small JSON API and one WebSocket per session, the protocol of
``sanawm serve`` (``serve.protocol``), in front of the engine deployment.

A new WebSocket reserves a place on a replica before it is accepted: when every replica is full the
upgrade is answered HTTP 503 with Retry-After. Fleet-only server messages: ``{"type": "chunk", "chunk",
"replica", "digest", "ms"}`` after every generated chunk and ``{"type": "resumed", ...}`` when a session
moved to another replica (``relay.py``); ``fork`` is refused (take a snapshot and resume it instead).
"""

# no `from __future__ import annotations`: Serve re-creates the route methods, and FastAPI must see the
# WebSocket / Request annotations as classes, not strings
import asyncio
import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve

from ..serve.app import DEFAULT_FPS, STATIC
from ..serve.images import SCENES, decode_upload, encode_jpeg, scene_image
from ..serve.manager import RETRY_AFTER_S, Limits
from ..serve.protocol import ProtocolError, error, parse_message, start_image
from ..serve.stream import send_json
from .relay import EngineRefused, Relay, need_started

api = FastAPI()


class WsOut:
    """The two sends ``serve.stream`` makes, over a Starlette WebSocket; a failed send marks it closed."""

    def __init__(self, ws: WebSocket):
        self.ws, self.closed = ws, False

    async def send_json(self, msg: dict) -> None:
        await self._send(self.ws.send_text, json.dumps(msg))

    async def send_bytes(self, data: bytes) -> None:
        await self._send(self.ws.send_bytes, data)

    async def _send(self, fn, payload) -> None:
        if self.closed:
            return
        try:
            await fn(payload)
        except Exception:  # noqa: BLE001 - the client went away
            self.closed = True


def _json_error(status: int, code: str, message: str, **headers) -> JSONResponse:
    return JSONResponse(error(code, message), status_code=status, headers=headers)


@serve.ingress(api)
class FleetIngress:
    def __init__(self, engine, limits: dict | None = None, token: str | None = None):
        self.engine = engine
        self.limits = Limits(**(limits or {}))
        self.token = token
        self.render_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sanawm-render")
        self.uploads: dict[str, object] = {}
        self._described: dict | None = None

    async def _describe(self) -> dict:
        if self._described is None:
            self._described = await self.engine.options(method_name="describe").remote()
        return self._described

    def _authorized(self, headers, query) -> bool:
        if not self.token:
            return True
        given = headers.get("authorization", "")
        given = given[7:] if given.startswith("Bearer ") else query.get("token", "")
        return secrets.compare_digest(given.encode(), self.token.encode())

    # ------------------------------------------------------------------------------------------ HTTP
    @api.get("/")
    async def index(self):
        return FileResponse(STATIC / "index.html")

    @api.get("/static/{name}")
    async def static(self, name: str):
        path = STATIC / name
        if "/" in name or not path.is_file():
            return _json_error(404, "not_found", f"no static file {name!r}")
        return FileResponse(path)

    @api.get("/api/info")
    async def info(self):
        d, lim = await self._describe(), self.limits
        return {"image_hw": d["image_hw"], "fps": DEFAULT_FPS, "scenes": [{"name": k, "title": v[0]} for k, v in SCENES.items()],
                "limits": {"max_sessions": None, "sessions_per_replica": d["max_sessions"],
                           "idle_timeout_s": lim.idle_timeout_s, "max_seconds": lim.max_seconds,
                           "max_message_bytes": lim.max_message_bytes, "max_upload_bytes": lim.max_upload_bytes},
                "prompt_encoder": d["prompt_encoder"], "fleet": True}

    @api.get("/api/scenes/{name}.jpg")
    async def scene_thumb(self, name: str):
        if name not in SCENES:
            return _json_error(404, "unknown_scene", f"no scene {name!r}; built-in: {', '.join(SCENES)}")
        hw = (await self._describe())["image_hw"]
        return Response(encode_jpeg(scene_image(name, tuple(hw))), media_type="image/jpeg")

    @api.post("/api/upload")
    async def upload(self, request: Request):
        if not self._authorized(request.headers, request.query_params):
            return _json_error(401, "unauthorized", "this server needs a bearer token: Authorization: Bearer <token>")
        limit = self.limits.max_upload_bytes
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > limit:
                return _json_error(413, "too_large", f"upload refused; at most {limit} bytes")
        hw = tuple((await self._describe())["image_hw"])
        try:
            image = await asyncio.get_running_loop().run_in_executor(self.render_pool, decode_upload, bytes(data), hw)
        except ValueError as e:
            return _json_error(415, "bad_image", str(e))
        uid = secrets.token_urlsafe(9)
        self.uploads[uid] = image
        while len(self.uploads) > self.limits.max_uploads:
            self.uploads.pop(next(iter(self.uploads)))
        return {"id": uid, "height": image.shape[0], "width": image.shape[1]}

    # ------------------------------------------------------------------------------------- WebSocket
    @api.websocket("/ws")
    async def websocket(self, ws: WebSocket):
        if not self._authorized(ws.headers, ws.query_params):
            await ws.send_denial_response(_json_error(401, "unauthorized", "this server needs a bearer token: "
                                                      "Authorization: Bearer <token>, or ?token= on /ws"))
            return
        relay = Relay(secrets.token_urlsafe(9), self.engine, WsOut(ws), self.render_pool)
        try:
            placed = await relay.call("reserve")
        except EngineRefused as e:
            await relay.call("close")  # the router forgets the place it picked
            await ws.send_denial_response(_json_error(503, "busy", f"every replica is full ({e}); retry in {RETRY_AFTER_S} s",
                                                      **{"Retry-After": str(RETRY_AFTER_S)}))
            return
        await ws.accept()
        hw = (await self._describe())["image_hw"]
        await send_json(relay.slot, {"type": "hello", "id": relay.sid, "started": False, "image_hw": hw,
                                     "replica": placed["replica"]})
        reaper = asyncio.create_task(self._reap_when_idle(relay))
        retired = False
        try:
            while True:
                m = await ws.receive()
                if m["type"] == "websocket.disconnect":
                    break
                if m.get("text") is not None:
                    await self.handle(relay, m["text"])
                else:
                    await send_json(relay.slot, error("binary", "binary messages are not accepted; control messages are JSON text"))
        finally:
            retired = reaper.done() and not reaper.cancelled()
            reaper.cancel()
            await relay.stop_loops()
            relay.slot.ws.closed = True
            if not retired:
                try:
                    await relay.call("close")
                except Exception:  # noqa: BLE001 - its replica is gone; the router forgets it with the replica
                    pass

    async def handle(self, relay: Relay, text: str) -> None:
        try:
            msg = parse_message(text, self.limits.max_message_bytes)
            relay.slot.touch()
            await getattr(self, "op_" + msg["op"])(relay, msg)
        except (ProtocolError, EngineRefused) as e:
            await send_json(relay.slot, error(e.code, str(e)))
        except ValueError as e:  # bad values deeper down (keys, ids): the session goes on
            await send_json(relay.slot, error("bad_request", str(e)))

    async def op_start(self, relay: Relay, msg: dict) -> None:
        if relay.started:
            raise ProtocolError("already_started", "this connection already runs a session; open another to start a new one")
        image = start_image(msg, self.uploads, tuple((await self._describe())["image_hw"]))
        started = await relay.start(image, msg.get("prompt", ""), msg.get("seed", 0), msg.get("fps", DEFAULT_FPS))
        relay.start_loops()
        await send_json(relay.slot, started)

    async def op_resume(self, relay: Relay, msg: dict) -> None:
        if relay.started:
            raise ProtocolError("already_started", "this connection already runs a session; open another to resume")
        started = await relay.resume(msg["id"], msg.get("fps", DEFAULT_FPS))
        relay.start_loops()
        await send_json(relay.slot, started)

    async def op_keys(self, relay: Relay, msg: dict) -> None:
        need_started(relay)
        relay.set_keys(msg["keys"], msg.get("seq"))
        await relay.show_input()

    async def op_mouse(self, relay: Relay, msg: dict) -> None:
        need_started(relay)
        await relay.show_input(relay.add_mouse(msg["dx"], msg["dy"], msg.get("seq")))

    async def op_stop(self, relay: Relay, msg: dict) -> None:
        need_started(relay)
        relay.slot.running = False

    async def op_go(self, relay: Relay, msg: dict) -> None:
        need_started(relay)
        relay.slot.running = True
        relay.slot.wake.set()

    async def op_snapshot(self, relay: Relay, msg: dict) -> None:
        need_started(relay)
        await send_json(relay.slot, {"type": "snapshot", "id": (await relay.call("snapshot"))["id"]})

    async def op_fork(self, relay: Relay, msg: dict) -> None:
        raise ProtocolError("unsupported", "fork is not offered by the fleet; take a snapshot and resume it on a new connection")

    async def op_ping(self, relay: Relay, msg: dict) -> None:
        await send_json(relay.slot, {"type": "pong", **({"t": msg["t"]} if "t" in msg else {})})

    async def _reap_when_idle(self, relay: Relay) -> None:
        """No client message for ``idle_timeout_s``: snapshot the session, free its place, tell the client the id."""
        idle = self.limits.idle_timeout_s
        while time.monotonic() - relay.slot.last_active <= idle:
            await asyncio.sleep(max(0.05, min(5.0, idle / 4)))
        await relay.stop_loops()
        sid = (await relay.call("retire"))["id"] if relay.started else None
        if not relay.started:
            await relay.call("close")
        await send_json(relay.slot, {"type": "idle", "snapshot": sid, "message": f"no input for {idle:g} s: the session "
                                     f"was saved as {sid} and freed; resume it with that id"})
        await relay.slot.ws.ws.close()
