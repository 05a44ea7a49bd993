"""The status page of `renderfarm serve --http`: a Starlette app on uvicorn in the service.

Real services (``renderfarm serve`` in a child process): the session's keyed farm (its page
loaded in a real headless Chromium after a login), a keyed farm with an admin whose page
listens on every address, and one without keys."""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from renderfarm.errors import ServiceError
from tests.conftest import ServerProcess, free_port_pair, key_folder

pytestmark = [pytest.mark.blender, pytest.mark.ray]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def dom(url: str, profile: Path, click: str | None = None) -> str:
    """The page's DOM after it loaded (scripts and images included) and lived 1.5 s, as
    Chromium (driven by Playwright) sees it; with ``click``, after the user clicked that
    element and the page it led to loaded. Chromium keeps the login cookie in ``profile``
    from one call to the next."""
    if CHROMIUM is None:
        message = "Chromium is not installed: apt-get install chromium (.ci/run does)"
        if os.environ.get("RENDERFARM_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        try:
            page = context.new_page()
            page.goto(url)
            page.wait_for_load_state("load")
            if click is not None:
                with page.expect_navigation():
                    page.click(click)
                page.wait_for_load_state("load")
            page.wait_for_timeout(1500)
            return page.content()
        finally:
            context.close()


class Reply:
    """An HTTP answer (redirects are not followed)."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def call(base: str, path: str, method: str = "GET", token: str | None = None,
         cookie: str | None = None, form: dict[str, str] | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    """One request to the page at ``base`` (``http://host:port``)."""
    where = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if cookie is not None:
        sent["Cookie"] = cookie
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form)
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body, headers=sent)
        answer = conn.getresponse()
        return Reply(answer.status, {k.lower(): v for k, v in answer.getheaders()},
                     answer.read())
    finally:
        conn.close()


def page_of(server: ServerProcess, keys: str | None = "client") -> str:
    """The page's address, as the service tells its clients (``hello``), on loopback."""
    with server.client(client_key=None if keys is None else
                       str(server.keys / f"{keys}.key_secret")) as client:
        address = client.hello()["http"]
    port = urllib.parse.urlsplit(address).port
    return f"http://127.0.0.1:{port}"


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


# -- the session's farm: a real render, in Chromium -------------------------------------------
def test_status_page_lists_jobs_workers_and_preview(farm_server: ServerProcess, make_scene,
                                                    tmp_path: Path) -> None:
    """After logging in with its token (a login link), a client sees its job's row, its
    tasks per worker, its frames and its preview."""
    blend = make_scene(width=72, height=40, samples=4, frames=2)
    with farm_server.client() as client:
        token = client.web_token()
        before_counts = worker_counts(client)
        job_id = client.submit(blend, {"frames": "1-2", "tiles": [2, 2], "name": "<b>web</b>",
                                       "output": "web_####.exr"})
        deadline = time.monotonic() + 120
        while client.status(job_id)["state"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.3)
        after_counts = worker_counts(client)
        renders = [c for c in client.log(job_id) if c["kind"] == "render"]
    # the workers' counts follow the progress the user saw: 8 tiles, in as many calls
    # as rendered them (grouped tiles: fewer)
    assert after_counts[0] - before_counts[0] == 8
    assert after_counts[1] - before_counts[1] == len(renders) <= 8
    assert sorted(t for c in renders for t in (c["tiles"] or [c["tile"]])) == [0, 0, 1, 1, 2,
                                                                              2, 3, 3]
    http = farm_server.http  # type: ignore[attr-defined]
    profile = tmp_path / "profile"
    before = dom(f"{http}/job/{job_id}", profile)
    assert 'id="login"' in before and 'id="state"' not in before  # a login first, no job
    jobs = dom(f"{http}/login?next=/#token={token}", profile,  # the link fills the form,
               click="#login button")  # the user logs in
    row = re.search(rf"<tr class=\"job done\" data-job=\"{job_id}\">(.*?)</tr>", jobs, re.S)
    assert row, jobs[-2000:]
    assert "&lt;b&gt;web&lt;/b&gt;" in row.group(1)  # names are escaped, never markup
    assert "8/8" in row.group(1) and "2/2" in row.group(1)  # tasks (tiles) and frames
    page = dom(f"{http}/job/{job_id}", profile)  # the login cookie stays in the profile
    assert re.search(r'<b id="state"[^>]*>done</b>', page)
    workers = re.findall(r'<tr class="worker"><td>(cpu-\d+)</td><td>(\d+)</td><td>(\d+)</td>',
                         page)
    assert workers and sum(int(tiles) for _w, _t, tiles in workers) == 8, page[-3000:]
    assert 'data-preview="72x40"' in page  # the preview image loaded, at the frame's size
    # a done job's actions that cannot apply are disabled and say why
    for action, why in (("cancel", "the job is done: it has ended"),
                        ("pause", "the job is done: only a queued or running job pauses"),
                        ("resume", "the job is done: only a paused job resumes"),
                        ("priority", "the job is done: it has ended (requeue it first)"),
                        ("requeue-failed", "every frame is written")):
        button = re.search(rf'<button [^>]*data-action="{action}"[^>]*>', page)
        assert button and "disabled" in button.group(0), (action, page[-3000:])
        assert why in button.group(0), button.group(0)
    again = re.search(r'<button [^>]*data-action="requeue-frames"[^>]*>', page)
    assert again and "disabled" not in again.group(0) and "data-confirm" in again.group(0)
    listed = dom(f"{http}/workers", profile)
    assert "<th title=" in listed and ">calls</th>" in listed
    assert re.search(r"<td class=[\"']blenders[\"']>5\.\d+\.\d+", listed), listed[-2000:]
    report = dom(f"{http}/report/{job_id}", profile)  # the web app's look, a way back
    assert f'<a href="/job/{job_id}">' in report and 'id="nav"' in report
    assert "#222" in report and "fill: currentColor" in report
    assert page.count("<td>web_000") == 2 and page.count("class=\"thumb\"") == 2
    missing = dom(f"{http}/job/no-such-job", profile)
    assert "no job 'no-such-job'" in missing


@pytest.mark.parametrize("tiles", [(2, 2), (1, 1)], ids=["tiled", "whole"])
def test_a_finished_frames_preview_looks_like_its_8bit_file(
        farm_server: ServerProcess, make_scene, tmp_path: Path, tiles: tuple[int, int]) -> None:
    """Previews use the scene's colour management (AgX with a look, exposure and gamma):
    a finished frame's preview equals the PNG the farm wrote for it within rounding, tiled
    as whole (the scene does not dither, so rounding is all that can differ)."""
    import OpenImageIO as oiio

    blend = make_scene(width=64, height=48, samples=8, frames=1, output="PNG,8,RGBA", set=[
        "scene.render.dither_intensity=0.0", "scene.view_settings.view_transform=AgX",
        "scene.view_settings.look=AgX - Punchy", "scene.view_settings.exposure=0.7",
        "scene.view_settings.gamma=1.2"])
    with farm_server.client() as client:
        token = client.web_token()
        job_id = client.submit(blend, {"frames": "1", "tiles": list(tiles),
                                       "output": "look_####.png"})
        deadline = time.monotonic() + 120
        while client.status(job_id)["state"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.3)
        written = client.fetch(job_id, 1, tmp_path / "fetched")
    answer = call(farm_server.http, f"/preview/{job_id}.png", token=token)  # type: ignore
    assert answer.status == 200, answer.body[:200]
    (tmp_path / "preview.png").write_bytes(answer.body)
    preview = oiio.ImageBuf(str(tmp_path / "preview.png")).get_pixels(oiio.UINT8)
    image = oiio.ImageBuf(str(written))
    assert image.spec().format == oiio.UINT8
    pixels = image.get_pixels(oiio.UINT8)
    assert preview.shape[:2] == pixels.shape[:2] == (48, 64)
    difference = np.abs(preview[:, :, :3].astype(int) - pixels[:, :, :3].astype(int))
    assert difference.max() <= 1, (difference.max(), difference.mean())
    assert np.ptp(pixels[:, :, :3]) > 100  # an image, not a blank that would match anything


def test_a_long_jobs_page_lists_its_frames_a_page_at_a_time(farm_server: ServerProcess,
                                                            make_scene) -> None:
    """A job of 250 frames: its page lists 100 of them with a link to the next, and what a
    refresh reads of the database does not grow with the job. The job renders 2 frames; the
    other 248 frames' rows are written into the service's own database as its recorder
    writes them (a 250-frame render would take minutes here)."""
    import sqlite3

    from renderfarm.server.store import Store
    from renderfarm.server.web import FRAMES_PER_PAGE

    blend = make_scene(width=24, height=16, samples=1, frames=2)
    with farm_server.client() as client:
        token = client.web_token()
        job_id = client.submit(blend, {"frames": "1-2", "output": "long_####.exr"})
        deadline = time.monotonic() + 120
        while client.status(job_id)["state"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.3)
    store = Store(farm_server.state / "farm.db")
    try:
        for frame in range(3, 251):
            store.add_frame(job_id, frame, f"/nowhere/long_{frame:04d}.exr")
            store.set_hash(job_id, frame, f"{frame:064x}")
    finally:
        store.close()
    http = farm_server.http  # type: ignore[attr-defined]
    first = call(http, f"/job/{job_id}", token=token)
    assert first.status == 200
    page = first.body.decode()
    listed = [int(f) for f in re.findall(r"<tr class='frame' data-frame='(\d+)'>", page)]
    assert listed == list(range(1, FRAMES_PER_PAGE + 1))
    assert "frames 1–100 of 250: page 1 of 3" in page
    assert "href='?frames=2'>next</a>" in page and "previous" not in page
    third = call(http, f"/job/{job_id}?frames=3", token=token).body.decode()
    assert [int(f) for f in re.findall(r"<tr class='frame' data-frame='(\d+)'>", third)] \
        == list(range(201, 251))
    assert f"<code>{250:064x}"[:22] in third  # each row with its frame's hash
    assert "href='?frames=2'>previous</a>" in third and ">next<" not in third
    # what a refresh reads goes by index: the job's rows only, never every job's
    db = sqlite3.connect(farm_server.state / "farm.db")
    try:
        for sql in ("SELECT frame, path FROM frames WHERE job_id = ? ORDER BY frame "
                    "LIMIT 100 OFFSET 0",
                    "SELECT worker, COUNT(*) FROM runs WHERE job_id = ? GROUP BY worker",
                    "SELECT at FROM logs WHERE job_id = ? ORDER BY at DESC LIMIT 100"):
            plan = " ".join(str(r) for r in db.execute(f"EXPLAIN QUERY PLAN {sql}",
                                                       (job_id,)))
            assert "USING" in plan and "TEMP B-TREE" not in plan, (sql, plan)
    finally:
        db.close()


def worker_counts(client: Any) -> tuple[int, int]:
    """The farm's workers' finished tasks and calls, summed."""
    workers = client.request("workers")[0]["workers"]
    return (sum(w["tasks_done"] for w in workers), sum(w["calls"] for w in workers))


def test_status_page_serves_its_own_paths_only(farm_server: ServerProcess) -> None:
    """Paths other than the page's own (traversal, absolute paths, dot names, encoded dots)
    get 404, logged in or not, and never a file or a traceback."""
    http = farm_server.http  # type: ignore[attr-defined]
    with farm_server.client() as client:
        token = client.web_token()
    outside = farm_server.state.parent / "preview.png"
    outside.write_bytes(b"not for the page")
    for path in ("/preview/../../../x.png", "/preview//abs/path.png", "/preview/...png",
                 "/preview/..png", "/job/../farm.db", "/api/job/..", "/api/job/%2e%2e",
                 "/job/%2e%2e", "/preview/%2e%2e.png", "/job/a/b", "//etc/passwd",
                 "/job/", "/api/jobs/", "/static/x.js", "/preview/" + "a" * 300 + ".png"):
        for auth in (None, token):
            reply = call(http, path, token=auth)
            assert reply.status == 404, (path, reply.status)
            assert b"not for the page" not in reply.body and b"Traceback" not in reply.body
    assert call(http, "/api/jobs", token=token).status == 200
    assert call(http, "/api/jobs", method="DELETE", token=token).status == 405


def test_half_sent_requests_are_capped_timed_out_and_others_served(
        farm_server: ServerProcess) -> None:
    """1,000 connections that send half a request line and stop: the service's thread count
    does not grow, a valid client is served meanwhile, and every one of them is closed within
    the page's header timeout (10 s); the oldest are closed at once past 256 waiting."""
    import resource

    from renderfarm.server.web import MAX_WAITING, TIMEOUT

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:  # this test holds 1,000 sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    http = farm_server.http  # type: ignore[attr-defined]
    port = urllib.parse.urlsplit(http).port
    pid = farm_server.proc.pid  # type: ignore[union-attr]
    with farm_server.client() as client:
        token = client.web_token()
    assert call(http, "/api/jobs", token=token).status == 200  # the page's threads exist
    before = threads_of(pid)
    started = time.monotonic()
    idle = []
    for _ in range(1000):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(b"GET /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Wait: a")
        idle.append(sock)
    during = threads_of(pid)
    served = time.monotonic()
    reply = call(http, "/api/jobs", token=token)
    assert reply.status == 200 and isinstance(reply.json(), list)
    served = time.monotonic() - served
    watch = selectors.DefaultSelector()
    for sock in idle:
        watch.register(sock, selectors.EVENT_READ)
    closed: list[float] = []
    peak = during
    while len(closed) < len(idle) and time.monotonic() - started < TIMEOUT + 15:
        for key, _ in watch.select(0.5):
            try:
                data = key.fileobj.recv(4096)  # type: ignore[union-attr]
            except ConnectionError:
                data = b""
            assert data == b"", data[:200]  # closed without an answer
            watch.unregister(key.fileobj)
            closed.append(time.monotonic() - started)
        peak = max(peak, threads_of(pid))
    for sock in idle:
        sock.close()
    print(f"threads {before} before, {during} with 1000 half-sent, peak {peak}; valid client "
          f"served in {served:.3f} s; {len(closed)} closed, the first at {closed[0]:.2f} s, "
          f"the last at {closed[-1]:.2f} s")
    assert len(closed) == 1000
    assert peak <= before + 2, (before, during, peak)
    assert served < 3
    assert sum(t < TIMEOUT / 2 for t in closed) >= 1000 - MAX_WAITING - 1  # room made
    assert closed[-1] < TIMEOUT + 10
    assert call(http, "/api/jobs", token=token).status == 200


# -- a keyed farm with an admin, its page on every address ------------------------------------
@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys: the server's, clients ``client`` (the readiness probe's), alice and bob, admin
    boss."""
    return key_folder(tmp_path_factory.mktemp("web-people"), ("client", "alice", "bob"),
                      admins=("boss",))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, people: Path,
           make_scene) -> Iterator[dict[str, Any]]:
    """A keyed farm whose page listens on 0.0.0.0 (allowed with keys: it asks for a login),
    starting no job (``--max-running 0``: they stay queued), with one job of alice's and one
    of bob's."""
    server = ServerProcess(tmp_path_factory.mktemp("web-shared") / "state", people,
                           "--workers", "1", "--admins", str(people / "admins"),
                           "--max-running", "0", "--http", "0.0.0.0:0")
    server.start()
    blend = make_scene(width=16, height=16, samples=1, frames=1)
    try:
        jobs, tokens = {}, {}
        for name in ("alice", "bob", "boss"):
            with server.client(client_key=str(people / f"{name}.key_secret")) as client:
                tokens[name] = client.web_token()
                if name != "boss":
                    jobs[name] = client.submit(blend, {"frames": "1", "name": f"{name}'s",
                                                       "output": f"{name}_####.png"})
        yield {"server": server, "http": page_of(server), "jobs": jobs, "tokens": tokens}
    finally:
        server.stop()


def listed(reply: Reply) -> set[str]:
    assert reply.status == 200, (reply.status, reply.body[:300])
    return {job["job_id"] for job in reply.json()}


def test_every_page_needs_a_login(shared: dict[str, Any]) -> None:
    """No token: pages send to the login form, the API and previews answer 401; a wrong
    token is 401 with no detail; the page listens on every address only because it has a
    login."""
    http, alice_job = shared["http"], shared["jobs"]["alice"]
    for path in ("/", f"/job/{alice_job}"):
        reply = call(http, path)
        assert reply.status == 303, path
        assert reply.headers["location"] == "/login?next=" + path
    for path in ("/api/jobs", f"/api/job/{alice_job}", f"/preview/{alice_job}.png"):
        reply = call(http, path)
        assert reply.status == 401 and alice_job.encode() not in reply.body, path
        assert call(http, path, token="0" * 64).status == 401
        assert call(http, path, cookie=f"renderfarm_{http.rsplit(':', 1)[1]}=x").status == 401
    login = call(http, "/login?next=/job/" + alice_job)
    assert login.status == 200 and b"id='login'" in login.body
    wrong = call(http, "/login", "POST", form={"token": "f" * 64, "next": "/"})
    assert wrong.status == 401 and b"not valid" in wrong.body
    assert "set-cookie" not in wrong.headers
    assert alice_job.encode() not in wrong.body and b"alice" not in wrong.body
    with shared["server"].client() as client:  # it listens on every address: it has a login
        assert client.hello()["http"].startswith("http://0.0.0.0:")


def test_a_login_sees_its_own_jobs_and_an_admin_all(shared: dict[str, Any]) -> None:
    """The login form sets an HttpOnly, SameSite=Strict cookie; with it (or a Bearer token)
    a client lists only its own jobs, another client's job is 404 as in the protocol, and an
    admin sees every job."""
    http, jobs, tokens = shared["http"], shared["jobs"], shared["tokens"]
    login = call(http, "/login", "POST", form={"token": tokens["alice"],
                                               "next": f"/job/{jobs['alice']}"})
    assert login.status == 303 and login.headers["location"] == f"/job/{jobs['alice']}"
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    cookie = cookie.split(";", 1)[0]
    page = call(http, "/", cookie=cookie)
    assert page.status == 200 and jobs["alice"].encode() in page.body
    assert jobs["bob"].encode() not in page.body and b"alice" in page.body
    assert listed(call(http, "/api/jobs", cookie=cookie)) == {jobs["alice"]}
    assert listed(call(http, "/api/jobs", token=tokens["bob"])) == {jobs["bob"]}
    assert listed(call(http, "/api/jobs", token=tokens["boss"])) == set(jobs.values())
    assert call(http, f"/api/job/{jobs['alice']}", token=tokens["alice"]).json()["owner"] \
        == "alice"
    for path in (f"/job/{jobs['bob']}", f"/api/job/{jobs['bob']}", f"/preview/{jobs['bob']}.png"):
        reply = call(http, path, cookie=cookie)
        assert reply.status == 404, path
        assert b"bob's" not in reply.body
    assert b"of yours on this farm" in call(http, f"/job/{jobs['bob']}", cookie=cookie).body
    assert call(http, f"/job/{jobs['bob']}", token=tokens["boss"]).status == 200
    # a form from another site does not log anyone in
    for origin in ("http://evil.example", "null", "http://["):
        forged = call(http, "/login", "POST", form={"token": tokens["alice"], "next": "/"},
                      headers={"Origin": origin})
        assert forged.status == 403 and "set-cookie" not in forged.headers, origin
    out = call(http, "/logout", "POST", cookie=cookie)
    assert out.status == 303 and "Max-Age=0" in out.headers["set-cookie"]


def test_a_removed_key_stops_its_token_at_once(shared: dict[str, Any], people: Path) -> None:
    """Tokens are derived from the keys the service allows now: bob's key out of --clients,
    his token and cookie stop working without a restart; back in, the same token works."""
    http, token = shared["http"], shared["tokens"]["bob"]
    cookie = call(http, "/login", "POST", form={"token": token, "next": "/"}
                  ).headers["set-cookie"].split(";", 1)[0]
    assert call(http, "/api/jobs", token=token).status == 200
    key = people / "clients" / "bob.key"
    kept = key.read_bytes()
    key.unlink()
    try:
        assert call(http, "/api/jobs", token=token).status == 401
        assert call(http, "/", cookie=cookie).status == 303  # back to the login form
        assert call(http, "/login", "POST", form={"token": token}).status == 401
    finally:
        key.write_bytes(kept)
    assert listed(call(http, "/api/jobs", token=token)) == {shared["jobs"]["bob"]}


def test_the_token_command_asks_the_farm_or_computes_it(shared: dict[str, Any],
                                                        people: Path) -> None:
    """``renderfarm web-token`` prints the caller's token as the farm gives it, and the
    administrator's ``web-token NAME`` computes the same one from the service's keys."""
    server = shared["server"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "renderfarm", "web-token", *args],
                              capture_output=True, text=True, timeout=60, check=False)

    asked = cli("--farm", server.address, "--server-key", str(people / "server.key"),
                "--client-key", str(people / "alice.key_secret"))
    assert asked.returncode == 0, asked.stderr
    made = cli("alice", "--server-key", str(people / "server.key_secret"), "--clients",
               str(people / "clients"))
    assert made.returncode == 0, made.stderr
    boss = cli("boss", "--server-key", str(people / "server.key_secret"), "--clients",
               str(people / "clients"), "--admins", str(people / "admins"))
    assert asked.stdout.strip() == made.stdout.strip() == shared["tokens"]["alice"]
    assert boss.stdout.strip() == shared["tokens"]["boss"]
    assert re.fullmatch(r"[0-9a-f]{64}", made.stdout.strip())
    unknown = cli("carol", "--server-key", str(people / "server.key_secret"), "--clients",
                  str(people / "clients"))
    assert unknown.returncode == 3 and "no key named 'carol'" in unknown.stderr


# -- a farm without keys ----------------------------------------------------------------------
def test_without_keys_the_page_needs_no_login_and_serves_loopback_only(
        tmp_path: Path) -> None:
    """--insecure-loopback: no login, loopback host names only (a DNS-rebinding site gets
    400), no token to give; a non-loopback --http is refused naming the option."""
    server = ServerProcess(tmp_path / "state", None, "--workers", "1", "--max-running", "0",
                           "--http", "127.0.0.1:0")
    server.start()
    try:
        http = page_of(server, keys=None)
        assert listed(call(http, "/api/jobs")) == set()
        page = call(http, "/")
        assert page.status == 200 and b"id='jobs'" in page.body and b"log out" not in page.body
        assert call(http, "/login").status == 303
        for host in ("evil.example", "127.0.0.1.evil.example", "[", ""):
            assert call(http, "/", headers={"Host": host}).status == 400, host
        assert call(http, "/", headers={"Host": f"localhost:{http.rsplit(':', 1)[1]}"}
                    ).status == 200
        with server.client() as client, pytest.raises(ServiceError, match="without keys"):
            client.web_token()
    finally:
        server.stop()
    for address in ("0.0.0.0:8123", "192.0.2.1:8123"):
        proc = subprocess.run(
            [sys.executable, "-m", "renderfarm", "serve", "--insecure-loopback", "--bind",
             f"tcp://127.0.0.1:{free_port_pair()}", "--state", str(tmp_path / "s"), "--http",
             address], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 3, proc.stderr
        assert "serves loopback only" in proc.stderr and f"--http {address}" in proc.stderr
        assert "--insecure-loopback" in proc.stderr
