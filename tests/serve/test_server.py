"""`sanawm serve` over a real loopback socket (aiohttp test server) on the tiny bundle, ONNX Runtime CPU."""

import asyncio
import io
import time

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from sanawm.runtime import PromptEmbeddings  # noqa: E402
from sanawm.runtime.live import LiveSession  # noqa: E402
from sanawm.serve.app import MANAGER, create_app  # noqa: E402
from sanawm.serve.images import encode_jpeg, scene_image  # noqa: E402
from sanawm.serve.manager import Limits  # noqa: E402
from sanawm.serve.protocol import unpack_frame  # noqa: E402

pytestmark = pytest.mark.slow  # needs the exported tiny bundle
TEST_TIMEOUT_S = 120


def run(coro_fn, runtime, tmp_path, **kw):
    """Start the app on a loopback port, run ``coro_fn(client, app)`` under a time bound."""
    token = kw.pop("token", None)

    async def main():
        app = create_app(runtime, Limits(**kw), snapshot_dir=tmp_path / "snaps", token=token)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            await asyncio.wait_for(coro_fn(client, app), TEST_TIMEOUT_S)

    asyncio.run(main())


async def recv(ws, until, timeout=30.0):
    """Messages until ``until(kind, payload)`` is true: ("json", dict) or ("frame", (header, jpeg))."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        m = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if m.type == aiohttp.WSMsgType.BINARY:
            item = ("frame", unpack_frame(m.data))
        elif m.type == aiohttp.WSMsgType.TEXT:
            item = ("json", m.json())
        else:
            item = ("closed", m.type)
        got.append(item)
        if until(*item) or item[0] == "closed":
            return got


def keepalive(ws, period=0.1):
    """Ping so a short idle timeout does not fire while the test waits on a loaded machine; cancel to go idle."""

    async def loop():
        while True:
            await asyncio.sleep(period)
            await ws.send_json({"op": "ping"})

    return asyncio.create_task(loop())


async def start(client, **msg):
    ws = await client.ws_connect("/ws")
    hello = await ws.receive_json()
    assert hello["type"] == "hello"
    await ws.send_json({"op": "start", **msg})
    await recv(ws, lambda k, p: k == "json" and p["type"] == "started")
    return ws, hello["id"]


def test_two_sessions_are_isolated(runtime, tmp_path):
    async def body(client, app):
        a, ida = await start(client, scene="checker", seed=1, fps=0)
        b, idb = await start(client, scene="road", seed=2, fps=0)
        await a.send_json({"op": "keys", "keys": "w", "seq": 1})
        await b.send_json({"op": "keys", "keys": "a", "seq": 1})
        ra = await recv(a, lambda k, p: k == "frame" and p[0]["kind"] == "gen" and p[0]["seq"] >= 1 and p[0]["chunk"] >= 2)
        rb = await recv(b, lambda k, p: k == "frame" and p[0]["kind"] == "gen" and p[0]["seq"] >= 1 and p[0]["chunk"] >= 2)
        sessions = {s["id"]: s for s in await (await client.get("/api/sessions")).json()}
        pa, pb = (np.array(sessions[i]["pose"]).reshape(4, 4) for i in (ida, idb))
        assert pa[2, 3] > 0.1 and np.allclose(pa[:3, :3], np.eye(3))  # A went forward, did not turn
        assert np.allclose(pb[:3, 3], 0) and pb[0, 2] < -0.01  # B turned left on the spot
        slots = app[MANAGER].slots
        assert {e["keys"] for e in slots[ida].live.log} <= {"", "w"} and {e["keys"] for e in slots[idb].live.log} <= {"", "a"}
        ja = [j for k, (h, j) in ra if k == "frame" and h["chunk"] == 1]
        jb = [j for k, (h, j) in rb if k == "frame" and h["chunk"] == 1]
        assert ja and jb and ja[0] != jb[0]
        await a.close()
        await b.close()

    run(body, runtime, tmp_path)


def test_bad_messages_are_refused_and_the_session_goes_on(runtime, tmp_path):
    async def body(client, app):
        ws, sid = await start(client, scene="dusk", fps=0)
        bad = ["{not json", '{"op": "fly"}', '["keys"]', '{"op": "keys", "keys": "wq"}',
               '{"op": "keys", "keys": 3}', '{"op": "keys", "keys": "w", "extra": 1}',
               '{"op": "mouse", "dx": 1e9, "dy": 0}', '{"op": "resume", "id": "../../etc/passwd"}',
               '{"op": "keys", "keys": "' + "w" * 5000 + '"}']
        codes = []
        for text in bad:
            await ws.send_str(text)
            got = await recv(ws, lambda k, p: k == "json" and p["type"] == "error")
            codes.append(got[-1][1]["code"])
        await ws.send_bytes(b"\x00\x01")
        codes.append((await recv(ws, lambda k, p: k == "json" and p["type"] == "error"))[-1][1]["code"])
        assert codes == ["bad_json", "unknown_op", "bad_message", "bad_request", "bad_field", "bad_field", "bad_field",
                         "already_started", "too_large", "binary"]
        await ws.send_json({"op": "ping", "t": 5})
        assert (await recv(ws, lambda k, p: k == "json" and p["type"] == "pong"))[-1][1] == {"type": "pong", "t": 5}
        await ws.send_json({"op": "keys", "keys": "w", "seq": 9})
        got = await recv(ws, lambda k, p: k == "frame" and p[0]["kind"] == "gen" and p[0]["seq"] == 9)
        assert got[-1][1][0]["pose"][11] > 0  # moving forward: the session survived every refusal
        # far over the limit: aiohttp closes the socket (1009), the session stays and can be attached again
        await ws.send_str('{"op": "ping", "pad": "' + "x" * 4096 * 65 + '"}')
        assert (await recv(ws, lambda k, p: False))[-1][0] == "closed"
        await asyncio.sleep(0.2)
        assert sid in app[MANAGER].slots
        again = await client.ws_connect(f"/ws?attach={sid}")
        got = await recv(again, lambda k, p: k == "json" and p["type"] == "started")
        assert got[-1][1]["attached"] is True and got[-1][1]["id"] == sid
        await again.close()

    run(body, runtime, tmp_path)


def test_sessions_over_the_limit_get_503(runtime, tmp_path):
    async def body(client, app):
        ws, _ = await start(client, fps=0)
        r = await client.get("/ws")
        assert r.status == 503 and r.headers["Retry-After"].isdigit()
        assert "session slots are busy" in (await r.json())["message"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await client.ws_connect("/ws")
        assert e.value.status == 503
        await ws.send_json({"op": "fork"})
        got = await recv(ws, lambda k, p: k == "json" and p["type"] == "error")
        assert got[-1][1]["code"] == "busy"
        await ws.close()
        await asyncio.sleep(0.1)
        assert len(app[MANAGER].slots) == 1  # a started session outlives its socket ...
        while app[MANAGER].slots:  # ... until it idles out
            await asyncio.sleep(0.1)
        ws2, _ = await start(client, fps=0)
        await ws2.close()

    run(body, runtime, tmp_path, max_sessions=1, idle_timeout_s=1.0)


def test_idle_session_is_snapshotted_freed_and_resumes_bit_identically(runtime, tmp_path):
    scene = "checker"
    received = {}

    async def body(client, app):
        ws, sid = await start(client, scene=scene, seed=7, fps=0)
        await ws.send_json({"op": "keys", "keys": "wd", "seq": 1})
        pinger = keepalive(ws)
        await recv(ws, lambda k, p: k == "frame" and p[0]["chunk"] >= 1)
        await ws.send_json({"op": "stop"})
        pinger.cancel()
        got = await recv(ws, lambda k, p: k == "json" and p["type"] == "idle", timeout=20)
        snap = got[-1][1]["snapshot"]
        assert snap and (tmp_path / "snaps" / f"{snap}.npz").is_file() and (tmp_path / "snaps" / f"{snap}.json").is_file()
        await asyncio.sleep(0.1)
        assert sid not in app[MANAGER].slots and not app[MANAGER].slots  # freed

        ws2 = await client.ws_connect("/ws")
        await ws2.receive_json()
        await ws2.send_json({"op": "resume", "id": "../../etc/passwd"})
        assert "malformed" in (await recv(ws2, lambda k, p: k == "json" and p["type"] == "error"))[-1][1]["message"]
        await ws2.send_json({"op": "resume", "id": snap, "fps": 0})
        started = (await recv(ws2, lambda k, p: k == "json" and p["type"] == "started"))[-1][1]
        done_before = started["chunks"]
        assert started["resumed"] == snap and done_before >= 2 and started["seq"] == 1
        await ws2.send_json({"op": "keys", "keys": "i", "seq": 2})
        pinger = keepalive(ws2)
        items = await recv(ws2, lambda k, p: k == "frame" and p[0]["frame"] == 144)  # the clip's last frame
        pinger.cancel()
        for k, p in items:
            if k == "frame" and p[0]["kind"] == "gen":
                received[(p[0]["chunk"], p[0]["frame"])] = p[1]
        received["log"] = list(app[MANAGER].slots[started["id"]].live.log)
        received["from"] = done_before
        await ws2.close()

    run(body, runtime, tmp_path, idle_timeout_s=1.0, max_seconds=9)  # 145 frames = 6 chunks
    log, first = received.pop("log"), received.pop("from")
    assert len(log) == 6 and {e["keys"] for e in log[first:]} <= {"di", "dw", "i", "dwi", "wd"} | {"".join(sorted("wdi"))}
    image = scene_image(scene, runtime.image_hw)
    replay = LiveSession.replay(runtime, image, PromptEmbeddings.zeros(runtime.cfg), 7, log)
    compared = 0
    for ch in replay:  # frames shown while a newer key was pending came as reprojections; every generated one must match
        for i, frame in enumerate(ch.frames):
            key = (ch.index, ch.first_frame + i)
            if ch.index >= first and key in received:
                assert received[key] == encode_jpeg(frame), f"chunk {ch.index} frame {key[1]} differs after resume"
                compared += 1
    assert compared >= 24 and (5, 144) in received  # at least a whole chunk, the last one included


def test_uploads_are_checked_and_usable(runtime, tmp_path):
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(png, format="PNG")

    async def body(client, app):
        r = await client.post("/api/upload", data=png.getvalue())
        up = await r.json()
        assert r.status == 200 and (up["height"], up["width"]) == tuple(runtime.image_hw)
        r = await client.post("/api/upload", data=b"GIF89a" + b"\0" * 100)
        assert r.status == 415 and (await r.json())["code"] == "bad_image"
        gif = io.BytesIO()
        Image.fromarray(np.zeros((200, 300, 3), np.uint8)).save(gif, format="GIF")
        r = await client.post("/api/upload", data=gif.getvalue())
        assert r.status == 415 and "GIF is not accepted" in (await r.json())["message"]
        r = await client.post("/api/upload", data=b"x" * 20000)
        assert r.status == 413
        ws, _ = await start(client, upload=up["id"], fps=0)
        got = await recv(ws, lambda k, p: k == "frame" and p[0]["kind"] == "gen" and p[0]["chunk"] == 0)
        assert got[-1][0] == "frame"
        await ws.send_json({"op": "start", "upload": "nope"})
        assert (await recv(ws, lambda k, p: k == "json" and p["type"] == "error"))[-1][1]["code"] == "already_started"
        await ws.close()

    run(body, runtime, tmp_path, max_upload_bytes=4096 * 4)


def test_bearer_token(runtime, tmp_path):
    async def body(client, app):
        assert (await client.get("/api/info")).status == 401
        assert (await client.get("/api/info", headers={"Authorization": "Bearer s3cret"})).status == 200
        assert (await client.get("/")).status == 200  # the page itself is public; it reads the token from #token=
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await client.ws_connect("/ws")
        ws = await client.ws_connect("/ws?token=s3cret")
        assert (await ws.receive_json())["type"] == "hello"
        await ws.close()

    run(body, runtime, tmp_path, token="s3cret")


def test_snapshot_fork_and_mouse_over_the_socket(runtime, tmp_path):
    async def body(client, app):
        ws, sid = await start(client, scene="road", seed=3, fps=0)
        pinger = keepalive(ws)
        await recv(ws, lambda k, p: k == "frame" and p[0]["chunk"] >= 1)
        await ws.send_json({"op": "snapshot"})
        snap = (await recv(ws, lambda k, p: k == "json" and p["type"] == "snapshot"))[-1][1]["id"]
        assert (tmp_path / "snaps" / f"{snap}.json").is_file()
        await ws.send_json({"op": "fork"})
        fid = (await recv(ws, lambda k, p: k == "json" and p["type"] == "forked"))[-1][1]["id"]
        assert fid != sid and {sid, fid} <= set(app[MANAGER].slots)
        mgr = app[MANAGER]
        forked_at = mgr.slots[fid].live.chunks_done
        assert forked_at >= 1 and mgr.slots[fid].live.log == mgr.slots[sid].live.log[:forked_at]
        fork = await client.ws_connect(f"/ws?attach={fid}")
        assert (await recv(fork, lambda k, p: k == "json" and p["type"] == "started"))[-1][1]["attached"]
        fork_pinger = keepalive(fork)
        await fork.send_json({"op": "mouse", "dx": 150, "dy": 0, "seq": 1})  # 15 degrees to the right
        got = await recv(fork, lambda k, p: k == "frame" and p[0]["gen_seq"] >= 1)
        assert any(p[0]["kind"] == "reproj" for k, p in got if k == "frame")  # answered before the chunk came
        pose_fork = np.array(mgr.slots[fid].live.pose)
        pose_orig = np.array(mgr.slots[sid].live.pose)
        assert np.degrees(np.arctan2(pose_fork[0, 2], pose_fork[2, 2])) > 10.0  # the fork turned right
        assert np.allclose(pose_orig, np.eye(4))  # the original did not move
        assert all(e["mouse"] == [0.0, 0.0] for e in mgr.slots[sid].live.log)
        for t in (pinger, fork_pinger):
            t.cancel()
        await fork.close()
        await ws.close()

    run(body, runtime, tmp_path)
