"""The aiohttp application of ``sanawm serve``: the page, a small JSON API, one WebSocket per session."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

from aiohttp import WSMsgType, web

from .images import SCENES, decode_upload, encode_jpeg, scene_image
from .manager import RETRY_AFTER_S, Busy, Limits, SessionManager
from .player import QueuedFrame
from .protocol import MOUSE_DEG_PER_PX, ProtocolError, error, parse_message, start_image
from .stream import send_json, send_shown, start_loops

STATIC = Path(__file__).with_name("static")
MANAGER = web.AppKey("manager", SessionManager)
OVERSIZE_FACTOR = 64  # messages up to this many times the control limit are refused politely; larger ones close
DEFAULT_FPS = 16


def _json_error(cls, code: str, message: str, **kw):
    return cls(text=json.dumps(error(code, message)), content_type="application/json", **kw)


def _auth_middleware(token: str | None):
    @web.middleware
    async def auth(request, handler):
        if token and (request.path.startswith("/api/") or request.path == "/ws"):
            given = request.headers.get("Authorization", "")
            given = given[7:] if given.startswith("Bearer ") else request.query.get("token", "")
            if not secrets.compare_digest(given.encode(), token.encode()):
                raise _json_error(web.HTTPUnauthorized, "unauthorized",
                                  "this server needs a bearer token: Authorization: Bearer <token>, or ?token= on /ws")
        return await handler(request)

    return auth


# ---------------------------------------------------------------------------------------------- HTTP
async def index(request):
    return web.FileResponse(STATIC / "index.html")


async def info(request):
    mgr = request.app[MANAGER]
    lim = mgr.limits
    return web.json_response({
        "image_hw": list(mgr.runtime.image_hw), "fps": DEFAULT_FPS, "scenes": [{"name": k, "title": v[0]} for k, v in SCENES.items()],
        "limits": {"max_sessions": lim.max_sessions, "idle_timeout_s": lim.idle_timeout_s, "max_seconds": lim.max_seconds,
                   "max_message_bytes": lim.max_message_bytes, "max_upload_bytes": lim.max_upload_bytes},
        "prompt_encoder": mgr.prompt_encoder is not None, "sessions": len(mgr.slots)})


async def scene_thumb(request):
    mgr = request.app[MANAGER]
    name = request.match_info["name"]
    if name not in SCENES:
        raise _json_error(web.HTTPNotFound, "unknown_scene", f"no scene {name!r}; built-in: {', '.join(SCENES)}")
    return web.Response(body=encode_jpeg(scene_image(name, mgr.runtime.image_hw)), content_type="image/jpeg")


async def upload(request):
    mgr = request.app[MANAGER]
    limit = mgr.limits.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _json_error(web.HTTPRequestEntityTooLarge, "too_large",
                          f"upload of {request.content_length} bytes refused; at most {limit} bytes",
                          max_size=limit, actual_size=request.content_length)
    data = bytearray()
    async for part in request.content.iter_chunked(65536):
        data += part
        if len(data) > limit:
            raise _json_error(web.HTTPRequestEntityTooLarge, "too_large", f"upload refused; at most {limit} bytes",
                              max_size=limit, actual_size=len(data))
    loop = asyncio.get_running_loop()
    try:
        image = await loop.run_in_executor(mgr.render_pool, decode_upload, bytes(data), mgr.runtime.image_hw)
    except ValueError as e:
        raise _json_error(web.HTTPUnsupportedMediaType, "bad_image", str(e)) from None
    return web.json_response({"id": mgr.add_upload(image), "height": image.shape[0], "width": image.shape[1]})


async def sessions(request):
    return web.json_response(request.app[MANAGER].describe())


# ---------------------------------------------------------------------------------------- WebSocket
async def websocket(request):
    mgr = request.app[MANAGER]
    attach = request.query.get("attach")
    if attach:
        slot = mgr.slots.get(attach)
        if slot is None:
            raise _json_error(web.HTTPNotFound, "no_session", f"no live session {attach}; resume it from a snapshot id instead")
        if slot.ws is not None:
            raise _json_error(web.HTTPConflict, "attached", f"session {attach} already has a client")
    else:
        try:
            slot = mgr.admit()
        except Busy as e:
            raise _json_error(web.HTTPServiceUnavailable, "busy", str(e), headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    ws = web.WebSocketResponse(max_msg_size=mgr.limits.max_message_bytes * OVERSIZE_FACTOR, heartbeat=30.0)
    try:
        await ws.prepare(request)
    except BaseException:
        if slot.live is None:
            await mgr.free(slot)
        raise
    slot.ws = ws
    slot.touch()
    await send_json(slot, {"type": "hello", "id": slot.id, "started": slot.live is not None,
                           "image_hw": list(mgr.runtime.image_hw)})
    if slot.live is not None:  # a fork or a detached session: pick it up where it is
        slot.running = True
        start_loops(mgr, slot)
        await send_json(slot, _started(slot, attached=True))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await handle(mgr, slot, msg.data)
            elif msg.type == WSMsgType.BINARY:
                await send_json(slot, error("binary", "binary messages are not accepted; control messages are JSON text"))
            else:
                break
    finally:
        slot.ws, slot.running = None, False
        if slot.live is None:
            await mgr.free(slot)
    return ws


def _started(slot, **extra) -> dict:
    live = slot.live
    # seq: the newest input sequence number the session has seen; a client continues above it (resume, attach)
    return {"type": "started", "id": slot.id, "fps": slot.fps, "seq": live.controls.seq, "chunks": live.chunks_done,
            "frames": live.num_frames,
            "max_frames": live.max_frames, "image_hw": list(live.image_hw), "intrinsics": live.intrinsics, **extra}


async def handle(mgr: SessionManager, slot, text) -> None:
    try:
        msg = parse_message(text, mgr.limits.max_message_bytes)
        slot.touch()
        await OPS[msg["op"]](mgr, slot, msg)
    except ProtocolError as e:
        await send_json(slot, error(e.code, str(e)))
    except Busy as e:
        await send_json(slot, error("busy", str(e)))
    except ValueError as e:  # bad values deeper down (keys, snapshot ids, images): the session goes on
        await send_json(slot, error("bad_request", str(e)))


def _need_live(slot):
    if slot.live is None:
        raise ProtocolError("not_started", "no session yet; send {\"op\": \"start\"} or {\"op\": \"resume\", \"id\": ...} first")
    return slot.live


async def op_start(mgr, slot, msg):
    if slot.live is not None:
        raise ProtocolError("already_started", "this connection already runs a session; open another to start a new one")
    image = start_image(msg, mgr.uploads, mgr.runtime.image_hw)
    text = msg.get("prompt", "")
    if text and mgr.prompt_encoder is not None and text not in mgr._prompts:
        await send_json(slot, {"type": "status", "message": "encoding the prompt (the first time takes a while)"})
    prompt = await mgr.prompt(text)
    live = await mgr.new_live(image, prompt, msg.get("seed", 0))
    slot.attach_live(live, msg.get("fps", DEFAULT_FPS))
    # the first frame is shown at once, so keys pressed before chunk 0 arrives already move the view
    slot.player.queue.append(QueuedFrame(image, live.pose, live.rig.velocity.copy(), -1, 0, -1, {}))
    slot.running = True
    start_loops(mgr, slot)
    await send_json(slot, _started(slot, prompt_encoded=bool(msg.get("prompt")) and mgr.prompt_encoder is not None))


async def op_keys(mgr, slot, msg):
    live = _need_live(slot)
    seq = msg.get("seq")
    live.set_keys(msg["keys"], seq)
    await send_shown(mgr, slot, slot.player.on_input(live.controls.keys, (0.0, 0.0), live.controls.seq))


async def op_mouse(mgr, slot, msg):
    live = _need_live(slot)
    yaw, pitch = msg["dx"] * MOUSE_DEG_PER_PX, -msg["dy"] * MOUSE_DEG_PER_PX  # mouse up looks up
    live.add_mouse(yaw, pitch, msg.get("seq"))
    await send_shown(mgr, slot, slot.player.on_input(live.controls.keys, (yaw, pitch), live.controls.seq))


async def op_stop(mgr, slot, msg):
    _need_live(slot)
    slot.running = False


async def op_go(mgr, slot, msg):
    _need_live(slot)
    slot.running = True
    slot.wake.set()


async def op_snapshot(mgr, slot, msg):
    _need_live(slot)
    await send_json(slot, {"type": "snapshot", "id": await mgr.snapshot(slot)})


async def op_fork(mgr, slot, msg):
    _need_live(slot)
    twin = await mgr.fork(slot)
    await send_json(slot, {"type": "forked", "id": twin.id})


async def op_resume(mgr, slot, msg):
    if slot.live is not None:
        raise ProtocolError("already_started", "this connection already runs a session; open another to resume")
    slot.attach_live(await mgr.restore(msg["id"]), msg.get("fps", DEFAULT_FPS))
    slot.running = True
    start_loops(mgr, slot)
    await send_json(slot, _started(slot, resumed=msg["id"]))


async def op_ping(mgr, slot, msg):
    await send_json(slot, {"type": "pong", **({"t": msg["t"]} if "t" in msg else {})})


OPS = {"start": op_start, "keys": op_keys, "mouse": op_mouse, "stop": op_stop, "go": op_go, "snapshot": op_snapshot,
       "fork": op_fork, "resume": op_resume, "ping": op_ping}


# ------------------------------------------------------------------------------------------- idle reaping
async def retire(mgr: SessionManager, slot, reason: str = "idle") -> str | None:
    """Snapshot a slot (waiting for its chunk in flight), tell its client the id, free it."""
    slot.running = False
    async with slot.lock:  # the chunk in flight finishes first
        for t in slot.tasks:
            t.cancel()
    await asyncio.gather(*slot.tasks, return_exceptions=True)
    sid = await mgr.snapshot(slot) if slot.live is not None else None
    await send_json(slot, {"type": reason, "snapshot": sid, "message":
                           f"no input for {mgr.limits.idle_timeout_s:g} s: the session was saved as {sid} and freed; "
                           "resume it with that id"})
    ws = slot.ws
    await mgr.free(slot)
    if ws is not None:
        await ws.close()
    return sid


async def _reaper(app):
    mgr = app[MANAGER]
    period = max(0.05, min(5.0, mgr.limits.idle_timeout_s / 4))

    async def loop():
        while True:
            await asyncio.sleep(period)
            for slot in mgr.idle_slots():
                await retire(mgr, slot)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    for slot in list(mgr.slots.values()):
        await mgr.free(slot)
    mgr.close()


def create_app(runtime, limits: Limits | None = None, *, snapshot_dir=None, token: str | None = None,
               prompt_encoder=None) -> web.Application:
    limits = limits or Limits()
    app = web.Application(middlewares=[_auth_middleware(token)], client_max_size=limits.max_upload_bytes + 1024)
    app[MANAGER] = SessionManager(runtime, limits, snapshot_dir, prompt_encoder)
    app.cleanup_ctx.append(_reaper)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/api/info", info)
    app.router.add_get("/api/scenes/{name}.jpg", scene_thumb)
    app.router.add_post("/api/upload", upload)
    app.router.add_get("/api/sessions", sessions)
    app.router.add_get("/ws", websocket)
    return app
