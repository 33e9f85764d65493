"""`sanawm serve --ray` on the command line: refusals before Ray starts, and a real local fleet in a subprocess."""

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from sanawm.cli import main

SHUTDOWN_S = 240  # bound on a clean exit after Ctrl-C (the exit code is what the test checks)


def test_fleet_flags_need_ray_and_positive_counts(tmp_path, capsys):
    assert main(["serve", "--bundle", str(tmp_path), "--replicas", "2"]) == 2
    assert "--replicas is a fleet flag; add --ray" in capsys.readouterr().err
    assert main(["serve", "--bundle", str(tmp_path), "--address", "auto"]) == 2
    assert "--address is a fleet flag" in capsys.readouterr().err
    for flag in ("--replicas", "--sessions-per-replica", "--snapshot-every"):
        assert main(["serve", "--ray", "--bundle", str(tmp_path), flag, "0"]) == 2
        assert f"{flag} must be at least 1; got 0" in capsys.readouterr().err
    assert main(["serve", "--ray", "--bundle", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    if "ray" in sys.modules:  # the refusals came before Ray was started
        assert not sys.modules["ray"].is_initialized()


@pytest.mark.slow
def test_serve_ray_runs_a_local_fleet(tiny_bundle, tmp_path):
    """`sanawm serve --ray` as a user runs it: a local Ray cluster, one replica of one session, the page's API,
    a session's first chunk over the WebSocket, 503 for the next one, a clean exit on Ctrl-C."""
    aiohttp = pytest.importorskip("aiohttp")
    pytest.importorskip("ray.serve")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "sanawm.cli", "serve", "--ray", "--bundle", str(tiny_bundle),
                             "--port", str(port), "--snapshot-dir", str(tmp_path / "snaps"), "--replicas", "1",
                             "--sessions-per-replica", "1"], stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                info = json.loads(urllib.request.urlopen(base + "/api/info", timeout=5).read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1.0)
        assert info["fleet"] and info["limits"]["sessions_per_replica"] == 1 and info["image_hw"] == [128, 192]

        async def session():
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(base + "/ws")
                assert (await ws.receive_json())["type"] == "hello"
                with pytest.raises(aiohttp.WSServerHandshakeError) as full:
                    await http.ws_connect(base + "/ws")
                assert full.value.status == 503
                await ws.send_json({"op": "start", "scene": "road", "fps": 0})
                while (msg := await ws.receive(timeout=60)).type != aiohttp.WSMsgType.TEXT or json.loads(msg.data)["type"] != "chunk":
                    assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
                await ws.close()

        asyncio.run(asyncio.wait_for(session(), 120))
    finally:
        proc.send_signal(signal.SIGINT)
        try:  # Ray Serve's shutdown takes ~10 s alone, minutes on a loaded 2-core machine
            rc = proc.wait(timeout=SHUTDOWN_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = f"still running {SHUTDOWN_S} s after Ctrl-C"
        log.close()
    assert rc == 0, (tmp_path / "serve.log").read_text()[-3000:]
