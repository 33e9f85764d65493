"""The page in a real headless Chromium (the system package), driven over the DevTools protocol."""

import asyncio
import os
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp")
from aiohttp.test_utils import TestServer  # noqa: E402
from serve_cdp import Chromium, find_chromium  # noqa: E402

from sanawm.serve.app import MANAGER, create_app  # noqa: E402
from sanawm.serve.manager import Limits  # noqa: E402

pytestmark = pytest.mark.slow
CHROMIUM = find_chromium()
SCREENSHOT_ENV = "SANAWM_SERVE_SCREENSHOT"  # write the page's screenshot here (docs/serve.png for the README)
CANVAS_SIGNATURE = ("(() => { const c = document.getElementById('view'); const d = c.getContext('2d')"
                    ".getImageData(0, 0, c.width, c.height).data; let s = 0; for (let i = 0; i < d.length; i += 7) "
                    "s = (s * 31 + d[i]) % 1000000007; return s; })()")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (install Debian's `chromium` package; .ci/run does)")
def test_page_streams_frames_and_a_held_w_moves_forward(runtime, tmp_path):
    async def main():
        app = create_app(runtime, Limits(), snapshot_dir=tmp_path / "snaps")
        async with TestServer(app, host="127.0.0.1") as server, Chromium(CHROMIUM) as browser:
            url = f"http://127.0.0.1:{server.port}/?autostart=1"
            await browser.call("Page.navigate", url=url)
            await browser.wait_for("window.sanawmStats && window.sanawmStats.gen >= 24", timeout=60)
            assert await browser.evaluate("document.getElementById('scene').options.length") == 3
            before = await browser.evaluate(CANVAS_SIGNATURE)
            sid = await browser.evaluate("window.sanawmStats.id")
            await browser.evaluate("document.getElementById('view').focus()")
            await browser.key("keyDown", "w")
            await browser.wait_for("window.sanawmStats.latReproj.length >= 1 && window.sanawmStats.latGen.length >= 1",
                                   timeout=60)
            await asyncio.sleep(1.0)  # a little more of the held key, for the picture
            pose = np.array(next(s for s in app[MANAGER].describe() if s["id"] == sid)["pose"]).reshape(4, 4)
            shot = await browser.screenshot()
            await browser.key("keyUp", "w")
            await browser.evaluate("document.getElementById('record').click()")  # record a second of the canvas
            await asyncio.sleep(1.5)
            await browser.evaluate("document.getElementById('record').click()")
            link = await browser.wait_for("(() => { const a = document.getElementById('download'); "
                                          "return !a.hidden && a.href.startsWith('blob:') && a.download; })()", timeout=20)
            # one evaluation, so the HUD text and the samples it summarises come from the same moment
            stats, hud = await browser.evaluate("[window.sanawmStats, document.getElementById('hud').textContent]")
            after = await browser.evaluate(CANVAS_SIGNATURE)
            return before, after, pose, stats, hud, shot, link

    before, after, pose, stats, hud, shot, link = asyncio.run(asyncio.wait_for(main(), 150))
    assert link in ("sanawm.mp4", "sanawm.webm")  # MediaRecorder produced a download
    assert pose[2, 3] > 0.2 and np.allclose(pose[:3, :3], np.eye(3))  # the server-side camera went forward
    assert before != after  # and the picture changed
    assert stats["errors"] == [] and stats["reproj"] > 0 and stats["gen"] > 24
    r, g = stats["latReproj"][0], stats["latGen"][0]
    assert 0 < r < g  # the reprojected frame answers the key before the generated one
    shown = re.search(r"key→reprojected (\d+) ms", hud)  # the HUD shows the newest sample
    assert shown and any(abs(int(shown.group(1)) - v) <= 0.5 for v in stats["latReproj"]), (hud, stats["latReproj"])
    assert "frames/s" in hud and "chunk" in hud
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get(SCREENSHOT_ENV):
        Path(os.environ[SCREENSHOT_ENV]).write_bytes(shot)
