"""The status page of `renderfarm serve --http`, loaded in a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ServerProcess

pytestmark = [pytest.mark.blender, pytest.mark.ray]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def dom(url: str, profile: Path) -> str:
    """The page's DOM after it loaded (scripts and images included), as Chromium sees it."""
    if CHROMIUM is None:
        message = "Chromium is not installed: apt-get install chromium (.ci/run does)"
        if os.environ.get("RENDERFARM_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=1500",
         "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_status_page_lists_jobs_workers_and_preview(farm_server: ServerProcess, make_scene,
                                                    tmp_path: Path) -> None:
    blend = make_scene(width=72, height=40, samples=4, frames=2)
    with farm_server.client() as client:
        job_id = client.submit(blend, {"frames": "1-2", "tiles": [2, 2], "name": "<b>web</b>",
                                       "output": "web_####.exr"})
        deadline = time.monotonic() + 120
        while client.status(job_id)["state"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.3)
    http = farm_server.http  # type: ignore[attr-defined]
    jobs = dom(f"{http}/", tmp_path / "profile")
    row = re.search(rf"<tr class=\"job done\" data-job=\"{job_id}\">(.*?)</tr>", jobs, re.S)
    assert row, jobs[-2000:]
    assert "&lt;b&gt;web&lt;/b&gt;" in row.group(1)  # names are escaped, never markup
    assert "8/8" in row.group(1) and "2/2" in row.group(1)  # tasks (tiles) and frames
    page = dom(f"{http}/job/{job_id}", tmp_path / "profile")
    assert re.search(r'<b id="state">done</b>', page)
    workers = re.findall(r'<tr class="worker"><td>(cpu-\d+)</td><td>(\d+)</td><td>(\d+)</td>',
                         page)
    assert workers and sum(int(tiles) for _w, _t, tiles in workers) == 8, page[-3000:]
    assert 'data-preview="72x40"' in page  # the preview image loaded, at the frame's size
    assert page.count("<li>web_000") == 2
    missing = dom(f"{http}/job/no-such-job", tmp_path / "profile")
    assert "no job 'no-such-job'" in missing


def test_status_page_serves_job_ids_only_and_bounds_its_connections(
        farm_server: ServerProcess, tmp_path: Path) -> None:
    """Paths other than the page's own (traversal, absolute paths, dot names) get 404; a
    silent connection is closed after its timeout; the page refuses a non-loopback address
    (it has no login yet)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from tests.conftest import free_port_pair

    http = farm_server.http  # type: ignore[attr-defined]
    outside = farm_server.state.parent / "preview.png"
    outside.write_bytes(b"not for the page")
    for path in ("/preview/../../../x.png", "/preview//abs/path.png", "/preview/...png",
                 "/preview/..png", "/job/../farm.db", "/api/job/..", "/job/a/b"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(http + path, timeout=5)
        assert info.value.code == 404, path
        assert b"not for the page" not in info.value.read()
    assert urllib.request.urlopen(http + "/api/jobs", timeout=5).status == 200
    # a half-sent request is dropped after the page's timeout, and the page goes on
    idle = socket.create_connection(("127.0.0.1", int(http.rsplit(":", 1)[1])), timeout=30)
    idle.sendall(b"GET / HTTP/1.1\r\n")
    started = time.monotonic()
    assert idle.recv(1024) == b"" and time.monotonic() - started < 25
    idle.close()
    assert urllib.request.urlopen(http + "/", timeout=5).status == 200
    proc = subprocess.run(
        [sys.executable, "-m", "renderfarm", "serve", "--insecure-loopback", "--bind",
         f"tcp://127.0.0.1:{free_port_pair()}", "--state", str(tmp_path / "s"), "--http",
         "0.0.0.0:8123"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "serves loopback only" in proc.stderr and "0.0.0.0:8123" in proc.stderr
