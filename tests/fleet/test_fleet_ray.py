"""The fleet on a local Ray cluster (CPU, loopback, one cluster for the module): 2 engine replicas, the tiny
bundle, ONNX Runtime CPU. Sessions stay on their replicas chunk after chunk, a full fleet answers 503, a
session's frames are those of a solo run of its inputs, and a killed replica's sessions continue on the
survivor from their snapshots, bit-identically."""

import asyncio
import dataclasses
import json
import os
import socket
import time

import pytest

ray = pytest.importorskip("ray")
aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("ray.serve")
from ray import serve  # noqa: E402

from sanawm.fleet.app import APP_NAME, ENGINE_NAME, FleetConfig, deploy_config  # noqa: E402
from sanawm.fleet.engine import frames_digest  # noqa: E402
from sanawm.runtime.live import LiveSession  # noqa: E402
from sanawm.runtime.prompt import PromptEmbeddings  # noqa: E402
from sanawm.serve.images import scene_image  # noqa: E402
from sanawm.serve.manager import Limits  # noqa: E402

pytestmark = pytest.mark.slow
K = 2  # sessions per replica
TEST_TIMEOUT_S = 150
ENGINE_OPTIONS = {"threads": 1}  # the replicas' ONNX Runtime settings; the solo runs use the same


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(cfg: FleetConfig) -> None:
    """Deploy as an operator would with `serve deploy` (a Serve config naming sanawm.fleet.app:app_from_args),
    so that a new replica count is a scale rather than a new version."""
    from ray.serve.schema import ServeDeploySchema

    conf = deploy_config(cfg)
    if os.environ.get("PYTHONPATH"):  # a checkout run from its folder: Serve's build task must import it too
        conf["runtime_env"] = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}}
    serve.context._get_global_client().deploy_apps(ServeDeploySchema(applications=[conf]), _blocking=True)


@pytest.fixture(scope="module")
def fleet(tiny_bundle, tmp_path_factory):
    snaps = tmp_path_factory.mktemp("fleet-snaps")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    cfg = FleetConfig(bundle=str(tiny_bundle), replicas=2, sessions_per_replica=K, snapshot_dir=str(snaps),
                      snapshot_every=2, cpus_per_replica=0, engine_options=ENGINE_OPTIONS,
                      limits=Limits(idle_timeout_s=600))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deploy(cfg)
        yield f"http://127.0.0.1:{port}", snaps, cfg
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def solo_runtime(tiny_bundle):
    from sanawm.runtime import Runtime

    return Runtime.load(tiny_bundle, "onnxruntime", **ENGINE_OPTIONS)


class Client:
    """One WebSocket session: records every message; ``chunks`` maps chunk -> (replica, digest)."""

    def __init__(self, ws, hello):
        self.ws, self.hello, self.msgs, self.chunks, self.replicas = ws, hello, [], {}, []
        self.task = asyncio.create_task(self._read())

    async def _read(self):
        async for m in self.ws:
            if m.type == aiohttp.WSMsgType.TEXT:
                msg = json.loads(m.data)
                self.msgs.append(msg)
                if msg["type"] == "chunk":
                    self.chunks[msg["chunk"]] = (msg["replica"], msg["digest"])
                    self.replicas.append(msg["replica"])

    async def wait(self, cond, timeout=60.0, poll=0.05):
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out; last messages {self.msgs[-3:]}"
            await asyncio.sleep(poll)

    def of(self, kind):
        return [m for m in self.msgs if m["type"] == kind]

    async def snapshot_log(self, snaps):
        await self.ws.send_json({"op": "snapshot"})
        await self.wait(lambda: self.of("snapshot"))
        return json.loads((snaps / (self.of("snapshot")[-1]["id"] + ".json")).read_text())["log"]

    async def close(self):
        await self.ws.close()
        self.task.cancel()


async def connect(http, url):
    ws = await http.ws_connect(url + "/ws")
    hello = await ws.receive_json()
    assert hello["type"] == "hello"
    return Client(ws, hello)


def solo_digests(runtime, scene, seed, log):
    """The same session run alone in this process from its logged inputs."""
    image = scene_image(scene, tuple(runtime.image_hw))
    return [frames_digest(c.frames) for c in LiveSession.replay(runtime, image, PromptEmbeddings.zeros(runtime.cfg), seed, log)]


def running_engine_replicas() -> int:
    return serve.status().applications[APP_NAME].deployments[ENGINE_NAME].replica_states.get("RUNNING", 0)


def run_async(body):
    asyncio.run(asyncio.wait_for(body(), TEST_TIMEOUT_S))


def test_sticky_sessions_admission_and_isolation(fleet, solo_runtime):
    url, snaps, _ = fleet
    scenes = [("checker", 1), ("road", 2), ("checker", 3), ("road", 4)]

    async def body():
        async with aiohttp.ClientSession() as http:
            clients = [await connect(http, url) for _ in scenes]
            placed = [c.hello["replica"] for c in clients]
            assert sorted(placed.count(r) for r in set(placed)) == [K, K]  # two replicas, K sessions each

            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # every replica is full
                await http.ws_connect(url + "/ws")
            assert refused.value.status == 503 and int(refused.value.headers["Retry-After"]) > 0

            for c, (scene, seed) in zip(clients, scenes):
                await c.ws.send_json({"op": "start", "scene": scene, "seed": seed, "fps": 0})
            await clients[0].wait(lambda: len(clients[0].chunks) >= 1)
            await clients[0].ws.send_json({"op": "keys", "keys": "wd", "seq": 1})  # inputs on one session only
            for c in clients:
                await c.wait(lambda c=c: len(c.chunks) >= 4)
                await c.ws.send_json({"op": "stop"})
            for c, (scene, seed) in zip(clients, scenes):
                assert set(c.replicas) == {c.hello["replica"]}, "a chunk ran on another replica"
                log = await c.snapshot_log(snaps)
                got = [c.chunks[i][1] for i in range(len(log))]
                assert got == solo_digests(solo_runtime, scene, seed, log)
            assert any(e["keys"] == "dw" for e in (await clients[0].snapshot_log(snaps)))  # the keys were used
            for c in clients:
                await c.close()

            # the places are free again
            again = await connect(http, url)
            await again.close()

    run_async(body)


def test_killed_replica_sessions_resume_on_survivor(fleet, solo_runtime):
    url, snaps, _ = fleet

    async def body():
        async with aiohttp.ClientSession() as http:
            a, b = await connect(http, url), await connect(http, url)
            doomed, survivor = a.hello["replica"], b.hello["replica"]
            assert doomed != survivor
            await a.ws.send_json({"op": "start", "scene": "checker", "seed": 7, "fps": 0})
            await b.ws.send_json({"op": "start", "scene": "road", "seed": 8, "fps": 0})
            name = next(n["name"] for n in ray.util.list_named_actors(all_namespaces=True)
                        if n["name"].startswith("SERVE_REPLICA::") and f"#{ENGINE_NAME}#" in n["name"]
                        and n["name"].endswith("#" + doomed))
            replica = ray.get_actor(name, namespace="serve")
            # kill while chunk 3 runs: the newest snapshot is the one at chunk 2 (one every 2 chunks), so the
            # survivor restores chunk 2's state and replays chunk 2 before it generates chunk 3
            await a.wait(lambda: len(a.chunks) >= 3, timeout=60, poll=0.002)
            before = dict(a.chunks)
            ray.kill(replica, no_restart=True)
            await a.wait(lambda: a.of("resumed"), timeout=90)
            await a.wait(lambda: len(a.chunks) >= len(before) + 3)
            await a.ws.send_json({"op": "stop"})
            await b.ws.send_json({"op": "stop"})

            note = a.of("resumed")[0]
            assert note["replica"] == survivor and note["identical"]
            assert not a.of("error") and not b.of("error")
            after = [i for i, (r, _) in a.chunks.items() if r == survivor]
            assert min(after) == len(before) == 3 and set(b.replicas) == {survivor}
            # from the snapshot at chunk 2 (also when chunk 3 had finished and the snapshot at 4 was saved
            # but its reply was lost: the store keeps the two newest)
            assert (note["from_chunk"], note["replayed"]) == (2, 1), note
            # continuation from the snapshot point is bit-identical to an uninterrupted run of the same inputs
            log = await a.snapshot_log(snaps)
            assert [a.chunks[i][1] for i in range(len(log))] == solo_digests(solo_runtime, "checker", 7, log)
            for c in (a, b):
                await c.close()

    run_async(body)


def test_scale_down_drains_sessions_to_the_remaining_replica(fleet, solo_runtime):
    """It leaves one replica. Deploying the app again with one replica (same code version) stops one replica
    gracefully; its session goes on on the other replica without an error and with the same frames, and the
    WebSockets stay open. The other session does not move."""
    url, snaps, cfg = fleet

    async def body():
        deadline = time.monotonic() + 90
        while running_engine_replicas() < 2:  # the replacement of the replica killed above
            assert time.monotonic() < deadline, "the killed replica was not replaced"
            await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as http:
            a = await connect(http, url)
            while True:  # the ingress's router hears of the new replica a moment after Serve reports it running
                b = await connect(http, url)
                if b.hello["replica"] != a.hello["replica"]:
                    break
                await b.close()
                assert time.monotonic() < deadline, "the ingress never placed a session on the new replica"
                await asyncio.sleep(0.5)
            runs = {a: ("checker", 11), b: ("road", 12)}
            for c, (scene, seed) in runs.items():
                await c.ws.send_json({"op": "start", "scene": scene, "seed": seed, "fps": 0})
            for c in runs:
                await c.wait(lambda c=c: len(c.chunks) >= 2)
            await asyncio.to_thread(deploy, dataclasses.replace(cfg, replicas=1))
            deadline = time.monotonic() + 60
            while not any(c.of("resumed") for c in runs):
                assert time.monotonic() < deadline, "no session moved off the stopped replica"
                await asyncio.sleep(0.1)
            mover = next(c for c in runs if c.of("resumed"))
            stayer = b if mover is a else a
            n = len(mover.chunks)
            await mover.wait(lambda: len(mover.chunks) >= n + 2)
            for c in runs:
                await c.ws.send_json({"op": "stop"})
            note = mover.of("resumed")[0]
            # Serve takes a stopping replica out of the routers' sets before it drains, so an active session
            # usually moves first, from its periodic snapshot (a replay of < snapshot_every chunks); an idle
            # one would find the drain snapshot
            assert note["replica"] == stayer.hello["replica"] and note["identical"], note
            assert note["replayed"] < cfg.snapshot_every
            assert len(mover.of("resumed")) == 1 and not stayer.of("resumed")
            assert set(stayer.replicas) == {stayer.hello["replica"]} and mover.replicas[-1] == stayer.hello["replica"]
            for c, (scene, seed) in runs.items():
                assert not c.of("error")
                log = await c.snapshot_log(snaps)
                assert [c.chunks[i][1] for i in range(len(log))] == solo_digests(solo_runtime, scene, seed, log)
            for c in runs:
                await c.close()

    run_async(body)


def test_idle_session_is_saved_freed_and_resumed(fleet, solo_runtime):
    """After the scale-down (one replica, K places). Redeployed with a 2 s idle timeout: a session that
    gets no message is snapshotted and freed, the client gets the id, and a new connection resumes it."""
    url, snaps, cfg = fleet

    async def body():
        await asyncio.to_thread(deploy, dataclasses.replace(cfg, replicas=1, limits=Limits(idle_timeout_s=2.0)))
        async with aiohttp.ClientSession() as http:
            a = await connect(http, url)
            await a.ws.send_json({"op": "start", "scene": "dusk", "seed": 5, "fps": 0})
            await a.wait(lambda: len(a.chunks) >= 2)
            await a.ws.send_json({"op": "stop"})
            await a.wait(lambda: a.of("idle"), timeout=30)
            sid = a.of("idle")[0]["snapshot"]
            done = len(a.chunks)
            await a.wait(lambda: a.ws.closed, timeout=10)
            # its place is free again: K fresh connections fit on the one replica
            fresh = [await connect(http, url) for _ in range(K)]
            for c in fresh:
                await c.close()
            b = await connect(http, url)
            await b.ws.send_json({"op": "resume", "id": sid, "fps": 0})
            await b.wait(lambda: b.of("started") and len(b.chunks) >= 2)
            await b.ws.send_json({"op": "stop"})
            assert b.of("started")[0]["chunks"] == done and min(b.chunks) == done
            log = await b.snapshot_log(snaps)
            every = {**a.chunks, **b.chunks}
            assert [every[i][1] for i in range(len(log))] == solo_digests(solo_runtime, "dusk", 5, log)
            await b.close()

    run_async(body)
