"""A farm many people share: a client is its CurveZMQ key (named by its key file); jobs and
their events belong to their owner; admins see everything; keys added or removed in
``--clients`` take effect without a restart; every state-changing request is audited.
A real keyed ``renderfarm serve`` on loopback, three keys."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from renderfarm.errors import ServiceError
from tests.conftest import ServerProcess, key_folder, run_python

pytestmark = [pytest.mark.blender, pytest.mark.ray]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's key, clients alice and bob (and ``client``, which the fixture's readiness
    probe uses), admin wrangler, and carol (not yet allowed)."""
    return key_folder(tmp_path_factory.mktemp("people"), ("client", "alice", "bob"),
                      admins=("wrangler",), others=("carol",))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Iterator[ServerProcess]:
    state = tmp_path_factory.mktemp("shared-farm") / "state"
    proc = ServerProcess(state, keys, "--workers", "1", "--admins", str(keys / "admins"),
                         "--max-frames-per-job", "20", "--max-tasks-per-job", "50",
                         "--max-tasks-per-client", "60", "--max-samples", "64",
                         "--max-stored-gb-per-client", "0.05", "--requests-per-second", "20")
    proc.start()
    yield proc
    proc.stop()


def client_of(server: ServerProcess, keys: Path, name: str, timeout: float = 15) -> Any:
    return server.client(timeout=timeout, client_key=str(keys / f"{name}.key_secret"))


def wait_final(client: Any, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.status(job_id)
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end: {job}")


def test_jobs_belong_to_their_owner_and_admins_see_all(server: ServerProcess, keys: Path,
                                                       make_scene, tmp_path: Path) -> None:
    blend = make_scene(width=32, height=24, samples=1, frames=2)
    with client_of(server, keys, "alice") as alice, client_of(server, keys, "bob") as bob, \
            client_of(server, keys, "wrangler") as wrangler:
        assert alice.hello()["you"] == "alice" and not alice.hello()["admin"]
        assert wrangler.hello()["admin"] is True
        job_id = alice.submit(blend, {"frames": "1-2", "output": "a_####.png"})
        assert alice.status(job_id)["owner"] == "alice"
        for act in (bob.status, bob.cancel, bob.pause, bob.resume,
                    lambda j: bob.set_priority(j, 5),
                    lambda j: bob.fetch(j, 1, tmp_path / "b")):
            with pytest.raises(ServiceError) as info:
                act(job_id)
            assert info.value.kind == "not_found", info.value
            assert job_id in info.value.message
        assert job_id not in {j["job_id"] for j in bob.list()}
        assert job_id in {j["job_id"] for j in alice.list()}
        assert job_id in {j["job_id"] for j in wrangler.list()}
        assert wait_final(wrangler, job_id)["state"] == "done"  # an admin sees it
        assert sorted(alice.fetch_outputs(job_id, tmp_path / "a")) == [1, 2]
        assert not any((tmp_path / "b").iterdir())  # nothing left behind
    db = sqlite3.connect(server.state / "farm.db")
    rows = db.execute("SELECT client, op, job_id, ok FROM audit WHERE job_id = ? "
                      "ORDER BY at", (job_id,)).fetchall()
    assert ("alice", "submit", job_id, 1) in rows
    assert ("bob", "cancel", job_id, 0) in rows  # refused, and recorded as such
    assert ("bob", "priority", job_id, 0) in rows
    assert not any(r[0] == "bob" and r[3] == 1 for r in rows), rows


def test_events_reach_only_their_owner(server: ServerProcess, keys: Path,
                                       make_scene) -> None:
    import zmq

    from renderfarm.server.transport import read_key, secure_client

    blend = make_scene(width=32, height=24, samples=1, frames=2)
    with client_of(server, keys, "alice") as alice, client_of(server, keys, "bob") as bob:
        alice.subscribe()  # all of alice's jobs
        bob.subscribe()  # all of bob's: none
        port = alice.hello()["publish_port"]
        # bob asks for alice's topics, and for everything, by hand
        sock = zmq.Context.instance().socket(zmq.SUB)
        secure_client(sock, read_key(str(keys / "server.key")).public,
                      read_key(str(keys / "bob.key_secret"), secret=True))
        sock.connect(f"tcp://127.0.0.1:{port}")
        for topic in (b"job.alice.", b"job.", b"", b"preview."):
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        time.sleep(0.5)
        job_id = alice.submit(blend, {"frames": "1-2", "output": "e_####.png"})
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            seen += alice.poll_events(0.5)
            if any(e["kind"] == "job_done" and e["job_id"] == job_id for e in seen):
                break
        assert {"job_queued", "job_started", "job_done"} <= {e["kind"] for e in seen}
        assert bob.poll_events(0.5) == []
        assert sock.poll(500) == 0, "bob received alice's events"
        sock.close(0)


def test_keys_added_and_removed_take_effect_without_a_restart(server: ServerProcess,
                                                              keys: Path) -> None:
    with client_of(server, keys, "carol", timeout=5) as carol, \
            pytest.raises(ServiceError) as info:
        carol.list()
    assert info.value.kind == "refused_key"
    shutil.copy(keys / "carol.key", keys / "clients" / "carol.key")
    with client_of(server, keys, "carol") as carol:
        assert carol.hello()["you"] == "carol"
        carol.list()
        (keys / "clients" / "carol.key").unlink()
        with pytest.raises(ServiceError) as info:  # the open connection, too
            carol.list()
        assert info.value.kind == "refused" and "no longer allowed" in info.value.message
    with client_of(server, keys, "carol", timeout=5) as carol, \
            pytest.raises(ServiceError) as info:
        carol.list()
    assert info.value.kind == "refused_key"
    with client_of(server, keys, "bob") as bob:  # the others go on
        bob.list()


def _leftovers(state: Path) -> set[str]:
    """Job folders and partial uploads in the service's state folder."""
    found = {p.name for p in (state / "jobs").iterdir()} if (state / "jobs").is_dir() else set()
    uploads = state / "uploads"
    return found | ({p.name for p in uploads.glob("*.part")} if uploads.is_dir() else set())


def test_limits_refuse_clearly_and_leave_nothing_behind(server: ServerProcess, keys: Path,
                                                        make_scene, tmp_path: Path) -> None:
    import os

    blend = make_scene(width=32, height=24, samples=1, frames=2)
    with client_of(server, keys, "alice") as alice, client_of(server, keys, "bob") as bob:
        before = _leftovers(server.state)
        refused = [({"frames": "1-30"}, "more than 20 frames"),
                   ({"frames": "1-10", "tiles": [4, 2]}, "at most 50 per job"),
                   ({"frames": "1-2", "samples": 100}, "at most 64"),
                   ({"frames": "1-2", "output": 7}, "output must be a file name")]
        for spec, message in refused:
            with pytest.raises(ServiceError) as info:
                alice.submit(blend, {"output": "l_####.png", **spec})
            assert message in info.value.message, (spec, info.value.message)
            assert info.value.kind in ("limit", "bad_input", "bad_request"), info.value.kind
        assert _leftovers(server.state) == before  # no job folder, no output folder
        # a client's unfinished jobs together: 40 tasks held, 40 more is over 60
        first = alice.submit(blend, {"frames": "1-10", "tiles": [2, 2],
                                     "output": "p_####.png"})
        alice.pause(first)
        with pytest.raises(ServiceError) as info:
            alice.submit(blend, {"frames": "1-10", "tiles": [2, 2], "output": "q_####.png"})
        assert info.value.kind == "limit" and "60 per client" in info.value.message
        second = bob.submit(blend, {"frames": "1-10", "tiles": [2, 2],
                                    "output": "r_####.png"})  # bob's own budget
        alice.cancel(first)
        bob.cancel(second)
        # stored bytes per client: 60 MB is over 0.05 GB
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(60 * 1024 * 1024))
        with pytest.raises(ServiceError) as info:
            bob.upload(big)
        assert info.value.kind == "limit" and "per client" in info.value.message
        assert not any(p.endswith(".part") for p in _leftovers(server.state) - before)
        # over the request rate: refused with the reason, then served again
        kinds = []
        for _ in range(120):
            try:
                bob.request("list")
            except ServiceError as exc:
                kinds.append(exc.kind)
        assert kinds and set(kinds) == {"rate_limited"}, kinds
        time.sleep(2.5)
        bob.request("list")
    db = sqlite3.connect(server.state / "farm.db")
    rows = db.execute("SELECT client, op, ok, detail FROM audit WHERE op = 'submit' AND "
                      "ok = 0").fetchall()
    assert sum(1 for r in rows if r[0] == "alice") >= 5, rows


def _renewals(server: ServerProcess) -> int:
    return server.log.read_text(errors="replace").count("event subscriptions renewed")


def _wait_for_renewals(server: ServerProcess, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _renewals(server) < count:
        assert time.monotonic() < deadline, "the service did not renew its event socket"
        time.sleep(0.1)


def test_a_key_replaced_or_removed_stops_its_open_connections_and_subscriptions(
        server: ServerProcess, keys: Path, make_scene, tmp_path: Path) -> None:
    """A new key under an old name does not inherit the old key's open connection; a key
    removed from --clients receives no more events on a subscription it made before."""
    blend = make_scene(width=32, height=24, samples=1, frames=20)
    run_python("-m", "renderfarm", "keys", str(tmp_path), "--name", "carol")  # a new carol
    shutil.copy(keys / "carol.key", keys / "clients" / "carol.key")
    renewals = _renewals(server)
    try:
        with client_of(server, keys, "carol") as old_carol:
            old_carol.list()
            shutil.copy(tmp_path / "carol.key", keys / "clients" / "carol.key")
            with pytest.raises(ServiceError) as info:
                old_carol.list()
            assert info.value.kind == "refused" and "no longer allowed" in info.value.message
        shutil.copy(keys / "carol.key", keys / "clients" / "carol.key")  # carol is back
        # each removal renews the event socket (a gap of events for everyone): let the
        # service see the key swaps above before carol subscribes
        _wait_for_renewals(server, renewals + 1)
        time.sleep(1.5)  # a second swap inside the service's one-second check comes too
        with client_of(server, keys, "carol") as carol:
            carol.subscribe()
            job_id = carol.submit(blend, {"frames": "1-20", "output": "k_####.png"})
            carol.pause(job_id)  # it waits while the key goes away
            deadline = time.monotonic() + 60
            seen: list[dict[str, Any]] = []
            while not any(e["kind"] == "job_queued" for e in seen):  # events reach carol
                assert time.monotonic() < deadline, seen
                seen += carol.poll_events(0.5)
            (keys / "clients" / "carol.key").unlink()
            time.sleep(3)  # the service notices within a second, and renews subscriptions
            carol.poll_events(0.2)  # what was on the way
            with client_of(server, keys, "wrangler") as wrangler:
                wrangler.resume(job_id)  # events of carol's job flow again
                wait_final(wrangler, job_id)
            assert carol.poll_events(2.0) == [], "a removed key still receives events"
    finally:
        (keys / "clients" / "carol.key").unlink(missing_ok=True)


def test_unfinished_uploads_count_against_the_quota(server: ServerProcess, keys: Path,
                                                    tmp_path: Path) -> None:
    """The quota counts uploads in progress: many half-sent uploads cannot go past it."""
    import hashlib
    import os

    from renderfarm.server import protocol

    chunk = 8 * 1024 * 1024
    with client_of(server, keys, "bob") as bob:
        refused = None
        for index in range(8):  # eight 30 MB uploads, each stopped after 8 MB (quota 53 MB)
            data = os.urandom(30 * 1024 * 1024)
            sha = hashlib.sha256(data).hexdigest()
            try:
                bob.request("upload", data[:chunk], sha256=sha, offset=0, total=len(data))
            except ServiceError as exc:
                refused = (index, exc)
                break
        assert refused is not None and refused[1].kind == "limit", refused
        # 3 x 8 MB in progress + 30 MB announced is over 53.7 MB: refused before the 4th
        assert refused[0] == 3 and "unfinished uploads" in refused[1].message
        with pytest.raises(ServiceError) as info:  # more than one request's worth of hashes
            bob.request("have", hashes=["0" * 64] * (protocol.MAX_HASHES + 1))
        assert "at most" in info.value.message or "more than" in info.value.message


def test_a_hash_alone_gives_nobody_another_clients_file(server: ServerProcess, keys: Path,
                                                        make_scene, tmp_path: Path) -> None:
    """Content is stored once, but a client may use a file only after sending it itself:
    knowing another client's hash is not enough to render (and fetch) that file."""
    import os

    from renderfarm.bundle import file_sha256 as file_hash

    blend = make_scene(width=32, height=24, samples=1, frames=3)
    sha = file_hash(str(blend))
    with client_of(server, keys, "alice") as alice, client_of(server, keys, "bob") as bob:
        assert alice.upload(blend) == sha
        assert alice.request("have", hashes=[sha])[0]["missing"] == []
        assert bob.request("have", hashes=[sha])[0]["missing"] == [sha]
        with pytest.raises(ServiceError) as info:
            bob.request("submit", spec={"frames": "1", "output": "s_####.png"}, blob=sha,
                        filename="stolen.blend")
        assert info.value.kind == "not_found"
        assert bob.upload(blend) == sha  # bob has the file: he sends it, and may use it
        assert bob.request("have", hashes=[sha])[0]["missing"] == []
        reply = bob.request("submit", spec={"frames": "1", "output": "s_####.png"},
                            blob=sha, filename="own.blend")[0]
        assert wait_final(bob, reply["job_id"])["state"] == "done"
        for size in (177, 126_370):  # new content from a client that has stored some before
            path = tmp_path / f"new-{size}.bin"
            path.write_bytes(os.urandom(size))
            sha = bob.upload(path)
            assert bob.request("have", hashes=[sha])[0]["missing"] == []
            assert (server.state / "storage" / "files" / sha).stat().st_size == size
