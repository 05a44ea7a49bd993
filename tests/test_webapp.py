"""The web app that acts and the HTTP control API (issue 14 items 1-2), on a real keyed
``renderfarm serve --http``: Chromium (driven by Playwright, the system's browser) logs in,
pauses, resumes, re-prioritises, cancels and requeues a job and an admin takes a worker out,
each action checked on the farm; the API answers every protocol operation with the same
checks, described by its OpenAPI document; events stream live."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from renderfarm.server import protocol
from tests.conftest import ServerProcess, free_port_pair, key_folder
from tests.test_service import wait_state

pytestmark = [pytest.mark.blender, pytest.mark.ray]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("webapp")
    keys = key_folder(folder / "keys", ("client", "alice", "bob"), admins=("boss",))
    port = free_port_pair()
    server = ServerProcess(folder / "state", keys, "--workers", "2", "--admins",
                           str(keys / "admins"), "--http", f"127.0.0.1:{port}").start()
    tokens = {}
    for name in ("alice", "bob", "boss"):
        with server.client(client_key=str(keys / f"{name}.key_secret")) as client:
            tokens[name] = client.web_token()
    yield {"server": server, "keys": keys, "base": f"http://127.0.0.1:{port}",
           "tokens": tokens}
    server.stop()


def client_of(farm: dict[str, Any], name: str) -> Any:
    return farm["server"].client(client_key=str(farm["keys"] / f"{name}.key_secret"))


def api(farm: dict[str, Any], op: str, fields: dict[str, Any] | None = None,
        token: str | None = None, headers: dict[str, str] | None = None,
        method: str = "POST", body: bytes | None = None,
        path: str | None = None) -> tuple[int, dict[str, str], bytes]:
    where = urllib.parse.urlsplit(farm["base"])
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if body is None and fields is not None:
        body = json.dumps(fields).encode()
        sent["Content-Type"] = "application/json"
    try:
        conn.request(method, path or f"/api/v1/{op}", body=body, headers=sent)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def test_the_api_is_the_protocol_over_http(farm: dict[str, Any], make_scene,
                                           tmp_path: Path) -> None:
    tokens = farm["tokens"]
    status, _headers, body = api(farm, "openapi.json", method="GET",
                                 path="/api/v1/openapi.json")
    document = json.loads(body)
    assert status == 200 and document["openapi"].startswith("3.")
    for op in protocol.REQUESTS:  # every operation of the protocol, with its fields
        assert f"/api/v1/{op}" in document["paths"], op
    submit = document["paths"]["/api/v1/submit"]["post"]
    schema = submit["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) == {"spec", "filename"}
    # who may do what: the same answers as the ZeroMQ protocol
    assert api(farm, "hello")[0] == 401  # no token
    status, _h, body = api(farm, "hello", {}, token=tokens["alice"])
    assert status == 200 and json.loads(body)["you"] == "alice"
    blend = make_scene(width=48, height=32, samples=4, frames=2)
    with client_of(farm, "alice") as alice:
        job_id = alice.submit(blend, {"frames": "1-2", "output": "h_####.png"})
        wait_state(alice, job_id, ("done",))
    status, _h, body = api(farm, "status", {"job_id": job_id}, token=tokens["alice"])
    assert status == 200 and json.loads(body)["job"]["state"] == "done"
    status, _h, body = api(farm, "status", {"job_id": job_id}, token=tokens["bob"])
    assert status == 404 and "no job" in json.loads(body)["error"]["message"]
    status, _h, body = api(farm, "status", {"job_id": "../etc"}, token=tokens["alice"])
    assert status == 400 and "not a job id" in json.loads(body)["error"]["message"]
    status, _h, body = api(farm, "cancel", {"job_id": job_id}, token=tokens["alice"])
    assert status == 409 and "cannot cancel a job that is done" in body.decode()
    status, _h, body = api(farm, "nosuchop", {}, token=tokens["alice"])
    assert status == 404
    status, _h, body = api(farm, "worker", {"worker_id": "cpu-1", "enabled": False},
                           token=tokens["alice"])
    assert status == 403 and "administrators" in body.decode()
    # bytes come as the body, the reply's fields in a header; checked against the report
    status, headers, frame = api(farm, "fetch", {"job_id": job_id, "frame": 1, "offset": 0,
                                                 "length": 0}, token=tokens["alice"])
    reply = json.loads(headers["x-renderfarm-reply"])
    assert status == 200 and reply["name"] == "h_0001.png" and len(frame) == reply["size"]
    import hashlib

    assert hashlib.sha256(frame).hexdigest() == reply["sha256"]
    # a form from another site cannot act with the page's login cookie
    cookie = session_cookie(farm, "alice")
    assert tokens["alice"] not in cookie  # the cookie is a session, not the token
    status, _h, _b = api(farm, "cancel", {"job_id": job_id}, headers={
        "Cookie": cookie, "Origin": "http://evil.example"})
    assert status == 403
    status, _h, body = api(farm, "status", {"job_id": job_id}, headers={"Cookie": cookie})
    assert status == 200 and json.loads(body)["job"]["job_id"] == job_id


def session_cookie(farm: dict[str, Any], name: str) -> str:
    """The ``Cookie`` header of a browser that logged in as ``name`` through the form."""
    status, headers, _b = api(farm, "", method="POST", path="/login", body=urllib.parse.urlencode(
        {"token": farm["tokens"][name], "next": "/"}).encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303, (status, headers)
    return headers["set-cookie"].split(";", 1)[0]


def test_events_stream_the_callers_own_jobs(farm: dict[str, Any], make_scene) -> None:
    tokens = farm["tokens"]
    where = urllib.parse.urlsplit(farm["base"])
    got: list[dict[str, Any]] = []

    def listen() -> None:
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        conn.request("GET", "/api/v1/events", headers={
            "Authorization": f"Bearer {tokens['bob']}"})
        answer = conn.getresponse()
        assert answer.status == 200
        while len(got) < 50:
            line = answer.fp.readline()
            if not line:
                return
            if line.startswith(b"data: "):
                got.append(json.loads(line[6:]))
                if got[-1].get("kind") == "job_done":
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.5)
    blend = make_scene(width=48, height=32, samples=4, frames=2)
    with client_of(farm, "alice") as alice, client_of(farm, "bob") as bob:
        theirs = alice.submit(blend, {"frames": "1-2", "output": "a_####.png"})
        mine = bob.submit(blend, {"frames": "1-2", "output": "b_####.png"})
        wait_state(bob, mine, ("done",))
        wait_state(alice, theirs, ("done",))
    thread.join(30)
    assert {e["job_id"] for e in got} == {mine}  # never alice's
    assert "job_done" in [e["kind"] for e in got] and "frame_merged" in [e["kind"] for e in got]


def test_the_web_app_acts_in_a_real_browser(farm: dict[str, Any], make_scene) -> None:
    if CHROMIUM is None:
        message = "Chromium is not installed: apt-get install chromium (.ci/run does)"
        if os.environ.get("RENDERFARM_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import expect, sync_playwright

    base, tokens = farm["base"], farm["tokens"]
    slow = make_scene(width=96, height=64, samples=64, frames=30)
    with client_of(farm, "alice") as alice, sync_playwright() as pw:
        job_id = alice.submit(slow, {"frames": "1-30", "output": "w_####.png"})
        wait_state(alice, job_id, ("running",))
        deadline = time.monotonic() + 60  # the workers say what they render now
        while not any(job_id in (w["current"] or "") for w in
                      alice.request("workers")[0]["workers"]):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(f"{base}/login#token={tokens['alice']}")  # the login link fills in
            page.click("#login button")  # the token; the user logs in
            page.wait_for_url(f"{base}/")
            expect(page.locator(f"tr[data-job='{job_id}']")).to_be_visible()
            page.goto(f"{base}/job/{job_id}")
            expect(page.locator("body[data-live='1']")).to_have_count(1)
            page.click("button[data-op='pause']")
            expect(page.locator("#state")).to_have_text("paused", timeout=30000)
            assert alice.status(job_id)["state"] == "paused"
            page.click("button[data-op='resume']")
            expect(page.locator("#state")).to_have_text("running", timeout=30000)
            page.fill("#new-priority", "7")
            page.click("button:has-text('Set priority')")
            expect(page.locator("#priority")).to_have_text("7", timeout=30000)
            assert alice.status(job_id)["priority"] == 7
            # frames appear with their thumbnails as they are written, without a reload
            expect(page.locator("tr.frame").first).to_be_visible(timeout=60000)
            assert int(page.evaluate("document.body.dataset.updates || '0'")) > 0
            # while it runs, Resume cannot apply and says why; Cancel asks first
            resume = page.locator("button[data-action='resume']")
            expect(resume).to_be_disabled()
            assert "only a paused job resumes" in (resume.get_attribute("title") or "")
            asked: list[str] = []
            page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
            page.click("button[data-op='cancel']")
            expect(page.locator("#flash")).to_have_text("Cancel: not done")
            assert asked and job_id in asked[0] and "kept" in asked[0]
            assert alice.status(job_id)["state"] == "running"  # a no leaves it running
            page.once("dialog", lambda d: d.accept())
            page.click("button[data-op='cancel']")
            expect(page.locator("#state")).to_have_text("cancelled", timeout=30000)
            # the kept buttons follow the job's state without a reload
            expect(page.locator("button[data-action='cancel']")).to_be_disabled()
            expect(page.locator("button[data-action='requeue-frames']")).to_be_enabled()
            written = alice.status(job_id)["frames_done"]
            assert written < 30
            # requeue two chosen frames: only those render again, into the same files
            before = len(alice.log(job_id))
            page.fill("#requeue-frames", "1-2")
            page.once("dialog", lambda d: (asked.append(d.message), d.accept()))
            page.click("button:has-text('Requeue frames')")
            expect(page.locator("#flash")).to_have_text("requeue: done")
            job = wait_state(alice, job_id, ("done",), timeout=180)
            again = [e["frame"] for e in alice.log(job_id)[before:]
                     if e["kind"] == "render" and e["ok"]]
            assert sorted(set(again)) == [1, 2]  # only the chosen frames rendered again
            assert {1, 2} <= {int(f) for f in job["outputs"]}
            image = page.request.get(f"{base}/thumb/{job_id}/1.png")
            assert image.status == 200 and image.body()[:4] == b"\x89PNG"
            assert "Render frames 1-2 of job" in asked[-1]
            # an action the job's state refuses is refused by the farm too, and says so
            # (a page left open while another user acted)
            page.goto(f"{base}/job/{job_id}")
            expect(page.locator("button[data-action='resume']")).to_be_disabled()
            page.evaluate("(job) => act('resume', {job_id: job})", job_id)
            expect(page.locator("#flash")).to_contain_text("cannot resume a job that is done")
            # the admin's job list shows whose job it is and when it came
            admin_list = browser.new_page()
            admin_list.goto(f"{base}/login#token={tokens['boss']}")
            admin_list.click("#login button")
            admin_list.wait_for_url(f"{base}/")
            row = admin_list.locator(f"tr[data-job='{job_id}']")
            expect(row.locator(".owner")).to_have_text("alice")
            expect(row.locator(".submitted time")).to_have_attribute(
                "datetime", re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"))
            # an admin takes a worker out and puts it back, from the workers page
            admin = browser.new_page()
            admin.goto(f"{base}/login#token={tokens['boss']}")
            admin.click("#login button")
            admin.wait_for_url(f"{base}/")
            admin.goto(f"{base}/workers")
            worker = alice.request("workers")[0]["workers"][0]["worker"]
            row = admin.locator(f"tr[data-worker='{worker}']")
            row.locator("button:has-text('Disable')").click()
            expect(row.locator(".state")).to_have_text("disabled", timeout=30000)
            states = {w["worker"]: w["state"] for w in
                      alice.request("workers")[0]["workers"]}
            assert states[worker] == "disabled"
            admin.locator(f"tr[data-worker='{worker}'] button:has-text('Enable')").click()
            expect(admin.locator(f"tr[data-worker='{worker}'] .state")).not_to_have_text(
                "disabled", timeout=30000)
            # a client sees no buttons for workers
            page.goto(f"{base}/workers")
            expect(page.locator(f"tr[data-worker='{worker}']")).to_be_visible()
            assert page.locator("#farm-workers button").count() == 0
        finally:
            browser.close()
