"""`sanawm serve` on the command line: refusals before any work, and a real loopback server process."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from sanawm.cli import main


def test_refuses_a_public_host_without_a_token_and_a_missing_bundle(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SANAWM_SERVE_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--bundle", str(tmp_path)]) == 2
    assert "set --token" in capsys.readouterr().err
    assert main(["serve", "--bundle", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", "--bundle", str(tmp_path), "--max-sessions", "0"]) == 2
    assert "--max-sessions must be positive" in capsys.readouterr().err


@pytest.mark.slow
def test_serves_the_page_and_api_on_loopback(tiny_bundle, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SANAWM_SERVE_TOKEN": "t0k"}
    proc = subprocess.Popen([sys.executable, "-m", "sanawm.cli", "serve", "--bundle", str(tiny_bundle), "--port", str(port),
                             "--snapshot-dir", str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                page = urllib.request.urlopen(base + "/", timeout=5).read().decode()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        assert "sanawm live" in page and "/static/app.js" in page
        assert b"new WebSocket" in urllib.request.urlopen(base + "/static/app.js", timeout=5).read()
        req = urllib.request.Request(base + "/api/info", headers={"Authorization": "Bearer t0k"})
        info = json.loads(urllib.request.urlopen(req, timeout=5).read())
        assert info["image_hw"] == [128, 192] and info["limits"]["max_sessions"] == 4
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/api/info", timeout=5)
        assert e.value.code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
