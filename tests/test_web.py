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
