"""The farm service for real: `renderfarm serve` in a child process (its own Ray, real Blender
workers), CURVE keys, ZeroMQ on loopback, SQLite, the CLI client commands."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from renderfarm.errors import ServiceError
from renderfarm.merge import read_layers
from tests.conftest import ServerProcess

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the ``renderfarm`` command; the caller checks the exit code."""
    return subprocess.run([sys.executable, "-m", "renderfarm", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def wait_state(client: Any, job_id: str, states: tuple[str, ...],
               timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.status(job_id)
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not {states} after {timeout} s: {job}")


def wait_until(client: Any, job_id: str, test: Any, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.status(job_id)
        if test(job):
            return job
        assert job["state"] not in ("failed", "cancelled"), job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id}: condition not met after {timeout} s: {job}")


def test_submit_wait_fetch_equals_blender(farm_server: ServerProcess, make_scene, reference,
                                          tmp_path: Path) -> None:
    blend = make_scene(width=67, height=45, samples=4, frames=2)
    out = tmp_path / "out"
    proc = cli("submit", str(blend), *farm_server.cli_args(), "--tiles", "3x2",
               "--frames", "1-2", "-o", str(out / "shot_####.exr"), "--wait", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["state"] == "done" and summary["frames_done"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["shot_0001.exr", "shot_0002.exr"]
    want = reference(blend, [1, 2])
    for frame in (1, 2):
        got, ref = read_layers(out / f"shot_{frame:04d}.exr"), read_layers(want[frame])
        assert got.keys() == ref.keys()
        for name in ref:
            assert np.array_equal(got[name], ref[name]), name


def test_status_list_cancel_from_the_cli(farm_server: ServerProcess, make_scene) -> None:
    blend = make_scene(width=96, height=64, samples=64, frames=40)
    proc = cli("submit", str(blend), *farm_server.cli_args(), "--frames", "1-40")
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    with farm_server.client() as client:
        wait_until(client, job_id, lambda j: j["tasks_done"] >= 1)
    status = cli("status", job_id, *farm_server.cli_args(), "--json")
    running = json.loads(status.stdout)
    assert status.returncode == 0 and running["state"] == "running"
    # the ETA comes from the job's own pace: about the time its tasks took per task, for
    # each task left, shared by the two workers (within noise)
    assert running["eta"] is not None and running["eta"] > 0
    per_task = running["elapsed"] / max(running["tasks_done"], 1)
    left = running["tasks_total"] - running["tasks_done"]
    assert running["eta"] < 3 * per_task * left, running
    status = cli("status", job_id, *farm_server.cli_args())
    assert status.returncode == 0 and " ETA " in status.stdout, status.stdout
    cancel = cli("cancel", job_id, *farm_server.cli_args())
    assert cancel.returncode == 0 and "cancelled" in cancel.stdout
    listing = cli("list", *farm_server.cli_args(), "--json")
    jobs = {j["job_id"]: j for j in json.loads(listing.stdout)}
    assert jobs[job_id]["state"] == "cancelled"
    assert jobs[job_id]["frames_done"] < 40
    again = cli("cancel", job_id, *farm_server.cli_args())
    assert again.returncode == 3 and "cannot cancel a job that is cancelled" in again.stderr
    unknown = cli("status", "no-such-job", *farm_server.cli_args())
    assert unknown.returncode == 3 and "no job 'no-such-job'" in unknown.stderr


def test_priorities_pause_and_resume(farm_server: ServerProcess, make_scene) -> None:
    blend = make_scene(width=96, height=64, samples=16, frames=8)
    with farm_server.client() as client:
        low = client.submit(blend, {"frames": "1-8", "output": "low_####.exr"})
        wait_until(client, low, lambda j: j["tasks_done"] >= 1 and j["eta"] is not None)
        client.pause(low)  # a paused job's ETA is not counted down: it says none
        assert client.status(low)["eta"] is None
        client.resume(low)
        # queued together while the farm is busy: first come, but the urgent one is higher
        later = client.submit(blend, {"frames": "1-8", "output": "later_####.exr"})
        urgent = client.submit(blend, {"frames": "1-2", "output": "urgent_####.exr"},
                               priority=5)
        paused = client.submit(blend, {"frames": "1-3", "output": "paused_####.exr"})
        assert client.pause(paused)["state"] == "paused"
        for job_id in (urgent, later, low):
            wait_state(client, job_id, ("done",))
        assert client.status(urgent)["ended"] < client.status(later)["ended"]
        on_hold = client.status(paused)
        assert on_hold["state"] == "paused" and on_hold["tasks_done"] == 0
        time.sleep(1.5)
        assert client.status(paused)["tasks_done"] == 0
        assert client.resume(paused)["state"] in ("queued", "running")
        assert wait_state(client, paused, ("done", "failed"))["state"] == "done"
        reordered = client.set_priority(paused, 7)
        assert reordered["priority"] == 7
        assert client.list(["paused"]) == []


def test_bad_messages_get_error_replies_and_the_server_lives_on(
        farm_server: ServerProcess, farm_keys: Path) -> None:
    import zmq

    from renderfarm.server.transport import read_key, secure_client

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure_client(sock, read_key(str(farm_keys / "server.key")).public,
                  read_key(str(farm_keys / "client.key_secret"), secret=True))
    sock.connect(farm_server.address)

    def ask(*frames: bytes) -> dict[str, Any]:
        sock.send_multipart(list(frames))
        assert sock.poll(15000), "no reply"
        return json.loads(sock.recv_multipart()[0])

    cases = [
        ([b"\xff not json"], "bad_request", "not JSON"),
        ([b"[1, 2]"], "bad_request", "JSON object"),
        ([b'{"v": 99, "op": "hello"}'], "version", "version 99"),
        ([b'{"v": 1, "op": "explode"}'], "bad_request", "unknown operation 'explode'"),
        ([b'{"v": 1, "op": "status"}'], "bad_request", "'job_id' is missing"),
        ([b'{"v": 1, "op": "status", "job_id": 5}'], "bad_request", "must be str"),
        ([b'{"v": 1, "op": "list", "states": ["melting"]}'], "bad_request", "unknown states"),
        ([b'{"v": 1, "op": "hello", "extra": 1}'], "bad_request", "unknown field(s) extra"),
        ([b'{"v": 1, "op": "upload", "sha256": "' + b"a" * 64 + b'", "offset": 0, '
          b'"total": 3}'], "bad_request", "exactly one data frame"),
        ([b'{"v": 1, "op": "upload", "sha256": "' + b"a" * 64 + b'", "offset": 0, '
          b'"total": 3}', b"abc"], "bad_upload", "damaged"),
        ([b'{"v": 1, "op": "submit", "spec": {}, "blob": "' + b"b" * 64 + b'", '
          b'"filename": "x.blend"}'], "not_found", "not uploaded"),
        ([b'{"v": 1, "op": "submit", "spec": {}, "blob": "' + b"b" * 64 + b'", '
          b'"filename": "../x.blend"}'], "bad_request", "plain file name"),
        ([b'{"v": 1, "op": "hello"}', b"x" * (17 * 1024 * 1024)], "too_big", "over the limit"),
        # an id nested 986 deep once made the reply unencodable and stopped the service
        ([b'{"v": 1, "op": "hello", "id": ' + b"[" * 986 + b"]" * 986 + b"}"], "bad_request",
         "nests deeper"),
        ([b'{"v": 1, "op": "hello", "id": ' + b"[" * 100000 + b"]" * 100000 + b"}"],
         "bad_request", "nests deeper"),
        ([b'{"v": 1, "op": "submit", "spec": {"frames": "'
          + b",".join([b"-1048574-1048574"] * 100) + b'"}, "blob": "' + b"b" * 64
          + b'", "filename": "x.blend"}'], "not_found", "not uploaded"),
    ]
    for frames, kind, text in cases:
        reply = ask(*frames)
        assert reply["ok"] is False, frames[0][:60]
        assert reply["error"]["type"] == kind, (frames[0][:60], reply)
        assert text in reply["error"]["message"], (frames[0][:60], reply)
    sock.close(0)
    with farm_server.client() as client:
        assert client.hello()["protocol"] == 1


def test_a_client_with_an_unknown_key_is_refused(farm_server: ServerProcess,
                                                 farm_keys: Path) -> None:
    with farm_server.client(timeout=5, client_key=str(farm_keys / "stranger.key_secret")) \
            as client, pytest.raises(ServiceError) as info:
        client.list()
    assert info.value.kind == "refused_key"
    assert "refused this client's key" in info.value.message
    proc = cli("list", "--farm", farm_server.address, "--server-key",
               str(farm_keys / "server.key"), "--client-key",
               str(farm_keys / "stranger.key_secret"), "--reply-timeout", "5")
    assert proc.returncode == 3 and "refused this client's key" in proc.stderr
    nokey = cli("list", "--farm", farm_server.address, "--reply-timeout", "3")
    assert nokey.returncode == 3 and "secure handshake with the farm failed" in nokey.stderr


def test_server_without_keys_serves_loopback_only(tmp_path: Path) -> None:
    proc = cli("serve", "--bind", "tcp://0.0.0.0:5999", "--insecure-loopback", "--state",
               str(tmp_path / "s"), timeout=60)
    assert proc.returncode == 3 and "not a loopback address" in proc.stderr
    proc = cli("serve", "--bind", "tcp://127.0.0.1:5999", "--state", str(tmp_path / "s"),
               timeout=60)
    assert proc.returncode == 3 and "needs keys" in proc.stderr


_VANISHING_CLIENT = """
import sys, time
from renderfarm.client import FarmClient
c = FarmClient(sys.argv[1], server_key=sys.argv[2], client_key=sys.argv[3])
c.subscribe()
job = c.submit(sys.argv[4], {"frames": "1-6", "tiles": [2, 2], "output": "gone_####.exr"})
print(job, flush=True)
c.subscribe(job, previews=True)
while True:
    c.poll_events(0.5)
"""


def test_server_survives_a_client_that_disappears_mid_job(farm_server: ServerProcess,
                                                          farm_keys: Path, make_scene) -> None:
    blend = make_scene(width=64, height=48, samples=16, frames=6)
    child = subprocess.Popen([sys.executable, "-c", _VANISHING_CLIENT, farm_server.address,
                              str(farm_keys / "server.key"),
                              str(farm_keys / "client.key_secret"), str(blend)],
                             stdout=subprocess.PIPE, text=True)
    job_id = child.stdout.readline().strip()  # type: ignore[union-attr]
    with farm_server.client() as client:
        wait_until(client, job_id, lambda j: j["tasks_done"] >= 1)
        child.kill()
        child.wait()
        job = wait_state(client, job_id, ("done", "failed"))
        assert job["state"] == "done" and job["frames_done"] == 6
        assert farm_server.proc.poll() is None


def test_a_subscription_to_previews_is_confirmed_and_each_preview_has_pixels(
        farm_server: ServerProcess, make_scene, caplog) -> None:
    """The farm's confirmation of a preview subscription is taken as one (the client does
    not wait out its timeout, nor take it for a tile), and every preview is a tile's
    pixels."""
    blend = make_scene(width=64, height=48, samples=4, frames=1)
    with farm_server.client() as client:
        job_id = client.submit(blend, {"frames": "1", "tiles": [2, 2], "group_tiles": False,
                                       "output": "sub_####.exr"})
        client.subscribe(job_id, previews=True)
        assert "did not confirm" not in caplog.text
        previews, deadline = [], time.monotonic() + 180
        while time.monotonic() < deadline:
            events = client.poll_events(0.5)
            previews += [e for e in events if e.get("kind") == "preview"]
            if any(e.get("kind") == "job_done" for e in events):
                break
    assert previews and all(p.get("kind") == "preview" and "tile" in p for p in previews)
    assert all(len(p["rgba"]) == p["width"] * p["height"] * 4 > 0 for p in previews)


def finish_after_restart(server: ServerProcess, job_id: str, folder: Path
                         ) -> tuple[dict[int, Path], dict[str, Any]]:
    """Start the killed ``server`` again, wait for its job to be done; its frames fetched
    into ``folder``, and its report."""
    server.start()
    try:
        with server.client() as client:
            job = wait_state(client, job_id, ("done", "failed"))
            assert job["state"] == "done", job
            return client.fetch_outputs(job_id, folder), client.report(job_id)
    finally:
        server.stop()


def test_restart_mid_job_resumes_without_rendering_finished_pieces_again(
        tmp_path: Path, make_scene, reference, s3_server: str) -> None:
    """Storage in S3 (a real S3 server on loopback); the service is killed mid-job."""
    import boto3

    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    s3.create_bucket(Bucket="frames")
    blend = make_scene(width=64, height=48, samples=24, frames=6)
    server = ServerProcess(tmp_path / "state", None, "--workers", "2", "--storage",
                           "s3://frames/farm", env=env).start()
    try:
        with server.client() as client:
            job_id = client.submit(blend, {"frames": "1-6", "tiles": [2, 2],
                                           "output": "shot_####.exr", "group_tiles": False})
            before = wait_until(client, job_id, lambda j: j["tasks_done"] >= 8)
    finally:
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    fetched, _report = finish_after_restart(server, job_id, tmp_path / "fetched")
    db = sqlite3.connect(server.state / "farm.db")
    runs = [row[0] for row in db.execute("SELECT task_id FROM runs WHERE job_id = ?",
                                         (job_id,))]
    # every one of the 24 tiles rendered exactly once, across both runs of the service
    assert len(runs) == 24 and len(set(runs)) == 24, runs
    assert before["tasks_done"] >= 8
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="frames")["Contents"]}
    assert {f"farm/jobs/{job_id}/shot_{f:04d}.exr" for f in range(1, 7)} <= keys
    assert any(k.startswith("farm/files/") for k in keys)  # the bundle, by content hash
    want = reference(blend, [1, 6])
    for frame in (1, 6):
        got, ref = read_layers(fetched[frame]), read_layers(want[frame])
        for name in ref:
            assert np.array_equal(got[name], ref[name]), (frame, name)


def test_restart_with_pieces_on_the_nodes_renders_nothing_twice(tmp_path: Path, make_scene,
                                                                reference) -> None:
    """On a Ray cluster whose head has no CPU, pieces kept on the nodes die with the service
    that owned them; each node also wrote its pieces into the service's state folder, so the
    restarted service merges unfinished frames from those and renders only what was not
    finished."""
    from renderfarm import faults
    from tests.conftest import cpu_less_head_cluster

    # frame 2's merge waits in the first run: its pieces are in, stored, not merged
    fault_file = tmp_path / "faults.json"
    faults.arm_workers(fault_file, [faults.Fault("driver.merge", "sleep", times=1,
                                                 seconds=120.0, match={"frame": 2})])
    clusters = cpu_less_head_cluster(2)
    cluster = next(clusters)
    blend = make_scene(width=96, height=72, samples=64, frames=6)
    server = ServerProcess(tmp_path / "state", None, "--address", cluster.address,
                           "--workers", "2", "--cpus-per-worker", "1",  # pieces: auto
                           env={faults.FAULTS_ENV: str(fault_file)})
    try:
        server.start()
        try:
            with server.client() as client:
                job_id = client.submit(blend, {"frames": "1-6", "tiles": [2, 2],
                                               "output": "shot_####.exr",
                                               "group_tiles": False})
                before = wait_until(client, job_id, lambda j: j["tasks_done"] >= 10)
        finally:
            assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        pieces = server.state / "jobs" / job_id / "pieces"
        left = sorted(p.name for p in pieces.glob("*.exr"))
        marked = list(pieces.glob(".renderfarm-shared-*"))
        # one stored piece changed on the file server: it is not used, its tile renders again
        spoiled = pieces / next(name for name in left if name.startswith("f0002-"))
        data = bytearray(spoiled.read_bytes())
        data[-100] ^= 0xFF
        spoiled.write_bytes(bytes(data))
        fetched, report = finish_after_restart(server, job_id, tmp_path / "fetched")
        kept = report["pieces_kept"]
    finally:
        next(clusters, None)  # the cluster shuts down
    assert kept["on"] == "nodes" and kept["stored"] >= 1 and kept["lost"] == 0, kept
    # pieces on the nodes (the head writes none then), stored by the nodes that saw the
    # folder's marker (left behind by the killed service)
    assert marked, "the pieces' folder had no marker: were the pieces kept on the nodes?"
    stored = [name for name in left if name.startswith("f0002-")]
    assert len(stored) == 4, left  # frame 2's, each by the node that rendered it
    db = sqlite3.connect(server.state / "farm.db")
    runs = [row[0] for row in db.execute("SELECT task_id FROM runs WHERE job_id = ?",
                                         (job_id,))]
    # every one of the 24 tiles rendered once across both runs of the service, but the one
    # whose stored piece was spoiled: twice
    again = spoiled.name.split("-a")[0]
    assert len(set(runs)) == 24 and runs.count(again) == 2 and len(runs) == 25, runs
    assert before["tasks_done"] >= 10
    want = reference(blend, [1, 6])
    for frame in (1, 6):
        got, ref = read_layers(fetched[frame]), read_layers(want[frame])
        for name in ref:
            assert np.array_equal(got[name], ref[name]), (frame, name)


def test_the_example_client_script_renders_on_the_farm(farm_server: ServerProcess,
                                                       farm_keys: Path, make_scene,
                                                       tmp_path: Path) -> None:
    blend = make_scene(width=48, height=32, samples=2, frames=2)
    example = Path(__file__).parent.parent / "examples" / "submit_to_farm.py"
    proc = subprocess.run([sys.executable, str(example), str(blend), "--farm",
                           farm_server.address, "--server-key", str(farm_keys / "server.key"),
                           "--client-key", str(farm_keys / "client.key_secret"),
                           "--frames", "1-2", "--out", str(tmp_path / "ex")],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "job_done" in proc.stdout and ": done, 2 frame(s)" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == ["shot_0001.exr",
                                                                   "shot_0002.exr"]


def test_a_project_deleted_after_submit_renders_and_a_resubmission_sends_one_texture(
        farm_server: ServerProcess, project: Path, reference, tmp_path: Path) -> None:
    import shutil

    import OpenImageIO as oiio

    from tests.conftest import copy_project
    from tests.test_bundle_farm import assert_same_pixels, reference_of

    work = copy_project(project, tmp_path / "work")
    spec = {"frames": "1-2", "tiles": [2, 2], "output": "shot_####.exr"}
    with farm_server.client() as client:
        job_id = client.submit(work / "shot.blend", spec)
        first = dict(client.last_transfer)
        shutil.rmtree(work)  # the artist's machine is gone
        job = wait_state(client, job_id, ("done", "failed"))
        assert job["state"] == "done" and job["warnings"] == [], job
        fetched = client.fetch_outputs(job_id, tmp_path / "fetched")
        want = reference_of(project, tmp_path, reference, [1, 2], "shot_service")
        for frame in (1, 2):
            assert_same_pixels(fetched[frame], want[frame])
        assert first["bundle_files"] == 7

        again = copy_project(project, tmp_path / "again")
        texture = again / "textures" / "seq" / "seq_0002.png"
        out = oiio.ImageOutput.create(str(texture))
        out.open(str(texture), oiio.ImageSpec(8, 8, 3, oiio.UINT8))
        out.write_image(np.full((8, 8, 3), 0.3, dtype=np.float32))
        out.close()
        second = client.submit(again / "shot.blend", spec)
        sent = client.last_transfer
        assert sent["sent_files"] == 1 and sent["sent_bytes"] == texture.stat().st_size
        assert sent["sent_bytes"] / sent["bundle_bytes"] <= 0.05
        assert wait_state(client, second, ("done", "failed"))["state"] == "done"


def test_missing_files_are_refused_at_submit_or_warned_in_status(
        farm_server: ServerProcess, project: Path, tmp_path: Path) -> None:
    from tests.conftest import copy_project

    work = copy_project(project, tmp_path / "work")
    (work / "lib" / "tex" / "props.png").unlink()
    proc = cli("submit", str(work / "shot.blend"), *farm_server.cli_args(), "--frames", "1")
    assert proc.returncode == 3, proc.stderr
    assert "props.png" in proc.stderr and "--allow-missing" in proc.stderr
    proc = cli("submit", str(work / "shot.blend"), *farm_server.cli_args(), "--frames", "1",
               "--allow-missing", "--json")
    assert proc.returncode == 0, proc.stderr
    job_id = json.loads(proc.stdout)["job_id"]
    with farm_server.client() as client:
        job = wait_state(client, job_id, ("done", "failed"))
    assert job["state"] == "done"
    status = json.loads(cli("status", job_id, *farm_server.cli_args(), "--json").stdout)
    assert any("props.png" in w for w in status["warnings"]), status


def test_workers_fetch_bundles_straight_from_s3(tmp_path: Path, project: Path, reference,
                                                 s3_server: str) -> None:
    """Storage in S3 (moto_server on loopback): the client uploads the bundle to the service,
    which stores each file by hash in the bucket; workers fetch them from S3 themselves."""
    import shutil

    import boto3

    from renderfarm.bundle import Manifest, make_bundle
    from tests.conftest import copy_project
    from tests.test_bundle_farm import assert_same_pixels, reference_of

    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    s3.create_bucket(Bucket="bundles")
    work = copy_project(project, tmp_path / "work")
    hashes = Manifest.from_dict(make_bundle(work / "shot.blend",
                                            tmp_path / "b").to_dict()).hashes()
    server = ServerProcess(tmp_path / "state", None, "--workers", "1", "--storage",
                           "s3://bundles/farm", env=env).start()
    try:
        with server.client() as client:
            job_id = client.submit(work / "shot.blend", {"frames": "2", "tiles": [2, 1],
                                                         "output": "s_####.exr"})
            shutil.rmtree(work)
            job = wait_state(client, job_id, ("done", "failed"))
            assert job["state"] == "done", job
            fetched = client.fetch_outputs(job_id, tmp_path / "fetched")
    finally:
        server.stop()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="bundles")["Contents"]}
    assert {f"farm/files/{h}" for h in hashes} <= keys
    assert not (tmp_path / "state" / "storage").exists()  # nothing went through a folder
    want = reference_of(project, tmp_path, reference, [2], "shot_s3")
    assert_same_pixels(fetched[2], want[2])


def test_a_manifest_that_lies_about_sizes_is_refused(farm_server: ServerProcess, project: Path,
                                                     tmp_path: Path) -> None:
    from renderfarm.bundle import make_bundle

    manifest = make_bundle(project / "shot.blend", tmp_path / "b")
    with farm_server.client() as client:
        for entry in manifest.files:
            client.upload(entry.source, sha256=entry.sha256)
        lying = manifest.to_dict()
        lying["files"][0]["size"] = 0  # would slip under a bundle size limit
        with pytest.raises(ServiceError, match="bytes on the farm") as caught:
            client.request("submit", spec={"frames": "1"}, bundle=lying, filename="shot.blend")
        assert caught.value.kind == "bad_bundle"
        assert client.hello()["protocol"] == 1


def _ray_processes(session: int, name: str) -> list[int]:
    """Pids of the processes called ``name`` in a process session (Ray's GCS and raylet of
    a service started in a session of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if comm == name and int(fields[3]) == session:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("process", ["raylet", "gcs_server"])
def test_ray_killed_under_the_service_recovers_and_resumes_the_job(
        tmp_path: Path, make_scene, reference, process: str) -> None:
    """The raylet or the GCS of the service's own Ray killed mid-job: requests are answered
    all along (the farm says it is recovering), Ray restarts, the job resumes from SQLite
    without rendering a finished tile again, and its frames are Blender's."""
    import os

    blend = make_scene(width=64, height=48, samples=24, frames=6)
    server = ServerProcess(tmp_path / "state", None, "--workers", "2").start()
    try:
        with server.client() as client:
            job_id = client.submit(blend, {"frames": "1-6", "tiles": [2, 2],
                                           "output": "shot_####.exr", "group_tiles": False})
            before = wait_until(client, job_id, lambda j: j["tasks_done"] >= 8)
            assert client.hello()["farm"] == "ok"
            pids = _ray_processes(server.proc.pid, process)
            assert len(pids) == 1, pids
            os.kill(pids[0], signal.SIGKILL)
            farm_states, job = [], before
            deadline = time.monotonic() + 240
            while job["state"] != "done" and time.monotonic() < deadline:
                job = client.status(job_id)  # each answered within the client's timeout
                farm_states.append(job["farm"])
                assert job["state"] not in ("failed", "cancelled"), job
                time.sleep(0.1)
            assert job["state"] == "done", job
            assert "recovering" in farm_states, farm_states
            assert farm_states[-1] == "ok"
            fetched = client.fetch_outputs(job_id, tmp_path / "fetched")
        assert _ray_processes(server.proc.pid, process) != pids  # a new Ray
    finally:
        server.stop()
    log = server.log.read_text()
    assert "recovering" in log and "the farm has recovered" in log
    db = sqlite3.connect(server.state / "farm.db")
    runs = [row[0] for row in db.execute("SELECT task_id FROM runs WHERE job_id = ?",
                                         (job_id,))]
    # every one of the 24 tiles rendered once: none finished before the kill ran again
    assert len(runs) == 24 and len(set(runs)) == 24, runs
    want = reference(blend, [1, 6])
    for frame in (1, 6):
        got, ref = read_layers(fetched[frame]), read_layers(want[frame])
        for name in ref:
            assert np.array_equal(got[name], ref[name]), (frame, name)


def test_jobs_wait_for_the_jobs_they_come_after(farm_server: ServerProcess, make_scene,
                                                corpus: Path) -> None:
    """``submit --after``: a whole job, frame by frame (``--per-frame``), and a job held
    because the one it comes after failed; unknown jobs refused."""
    blend = make_scene(width=64, height=48, samples=16, frames=4)
    longer = make_scene(width=64, height=48, samples=16, frames=24)
    args = farm_server.cli_args()
    first = cli("submit", str(longer), *args, "--frames", "1-24", "-o", "a_####.exr")
    assert first.returncode == 0, first.stderr
    a = first.stdout.strip()
    # paused, it waits for us however fast the farm is (tasks already handed to workers
    # finish, the other 20 wait)
    assert cli("pause", a, *args).returncode == 0
    second = cli("submit", str(blend), *args, "--frames", "1-4", "-o", "b_####.exr",
                 "--after", a)
    b = second.stdout.strip()
    third = cli("submit", str(blend), *args, "--frames", "1-4", "-o", "c_####.exr",
                "--after", b, "--per-frame")
    c = third.stdout.strip()
    assert second.returncode == 0 and third.returncode == 0, second.stderr + third.stderr
    with farm_server.client() as client:
        waiting = client.status(b)
        assert waiting["state"] == "queued", waiting
        assert f"waiting for job {a} (paused)" in waiting["waiting"], waiting
        client.resume(a)
        done = {j: wait_state(client, j, ("done", "failed"), timeout=300) for j in (a, b, c)}
        assert all(job["state"] == "done" for job in done.values()), done
        assert done[b]["started"] >= done[a]["ended"]  # the whole job waited
        # frame by frame: each frame of c rendered after that frame of b was written
        for frame in (1, 2, 3, 4):
            b_last = max(e["at"] for e in client.log(b, frame) if e["kind"] == "render")
            c_first = min(e["at"] for e in client.log(c, frame) if e["kind"] == "render")
            assert c_first > b_last, (frame, b_last, c_first)
        # a job that comes after a failed one is held, saying why
        broken = cli("submit", str(corpus / "basic_file.blend"), *args, "-o", "x_####.png")
        x = broken.stdout.strip()
        assert wait_state(client, x, ("failed",))["state"] == "failed"
        held = cli("submit", str(blend), *args, "--frames", "1", "--after", x)
        y = held.stdout.strip()
        time.sleep(1.0)
        status = client.status(y)
        assert status["state"] == "queued", status
        assert f"held: job {x} it comes after failed" in status["waiting"]
        line = cli("status", y, *args)
        assert "held: job" in line.stdout, line.stdout
        client.cancel(y)
    unknown = cli("submit", str(blend), *args, "--after", "no-such-job")
    assert unknown.returncode == 3 and "no job 'no-such-job'" in unknown.stderr
    lonely = cli("submit", str(blend), *args, "--per-frame")
    assert lonely.returncode == 3 and "--per-frame goes with --after" in lonely.stderr


def test_requeue_renders_frames_again_into_the_same_outputs(
        farm_server: ServerProcess, make_scene, tmp_path: Path) -> None:
    blend = make_scene(width=48, height=32, samples=4, frames=3)
    args = farm_server.cli_args()
    submitted = cli("submit", str(blend), *args, "--frames", "1-3", "-o", "r_####.png",
                    "--wait", "--fetch-to", str(tmp_path / "first"), "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    everything = cli("requeue", job_id, *args)
    assert everything.returncode == 3 and "has written every frame" in everything.stderr
    again = cli("requeue", job_id, *args, "--frames", "2")
    assert again.returncode == 0 and "frames again: 2" in again.stdout, again.stderr
    with farm_server.client() as client:
        job = wait_state(client, job_id, ("done", "failed"))
        assert job["state"] == "done" and job["error"] is None
        assert sorted(client.fetch_outputs(job_id, tmp_path / "second")) == [1, 2, 3]
        renders = [e["frame"] for e in client.log(job_id) if e["kind"] == "render" and e["ok"]]
        assert sorted(renders) == [1, 2, 2, 3]  # only frame 2 rendered again
        report = client.report(job_id)
    from renderfarm.merge import compare_images

    for frame in (1, 3):  # kept as they were
        first = (tmp_path / "first" / f"r_{frame:04d}.png").read_bytes()
        assert (tmp_path / "second" / f"r_{frame:04d}.png").read_bytes() == first
    # rendered again into the same name: the same pixels (its render time differs)
    assert compare_images(tmp_path / "first" / "r_0002.png",
                          tmp_path / "second" / "r_0002.png") == (True, "")
    assert len(report["outputs"]) == 3 and all(o["sha256"] for o in report["outputs"])
    unknown = cli("requeue", job_id, *args, "--frames", "9")
    assert unknown.returncode == 3 and "not frames of job" in unknown.stderr
    listed = cli("workers", *args, "--json")
    workers = json.loads(listed.stdout)
    assert len(workers) == 2 and {w["device"] for w in workers} == {"CPU"}
    assert all(w["state"] in ("idle", "busy") for w in workers)
    assert all(w["blenders"][0].startswith("5.") for w in workers)  # its machine's Blenders
    plain = cli("workers", *args)
    assert plain.returncode == 0 and " blender 5." in plain.stdout, plain.stdout
    refused = cli("worker", "disable", workers[0]["worker"], *args)
    assert refused.returncode == 3 and "administrators" in refused.stderr
    # a job no worker can take is refused at submit, naming what the workers offer
    nobody = cli("submit", str(blend), *args, "--require", "vram>=16")
    assert nobody.returncode == 3 and "no worker of this farm meets --require vram>=16" \
        in nobody.stderr and "cpus=" in nobody.stderr, nobody.stderr


def test_serve_says_what_it_does_and_when_it_stops(tmp_path: Path) -> None:
    """``renderfarm serve`` prints where it listens (requests, events, the web app), its
    state and storage and the Ray it uses once it serves, and a line when it stops."""
    from tests.conftest import free_port_pair

    http = free_port_pair()
    server = ServerProcess(tmp_path / "state", None, "--workers", "1", "--http",
                           f"127.0.0.1:{http}").start()
    deadline = time.monotonic() + 30
    while "Ray: " not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    server.stop()
    said = [line.removeprefix("renderfarm serve: ") for line in
            server.log.read_text().splitlines() if line.startswith("renderfarm serve: ")]
    port = int(server.address.rsplit(":", 1)[1])
    assert said[:6] == [
        f"requests on {server.address} (no keys (loopback only))",
        f"events on tcp://127.0.0.1:{port + 1}",
        f"web app and HTTP API on http://127.0.0.1:{http}/",
        f"state (job database) in {tmp_path / 'state'}",
        f"storage {tmp_path / 'state' / 'storage'}",
        said[5]], said
    assert said[5].startswith("Ray: its own, started on this machine (GCS "), said
    assert said[-1] == "stopped; unfinished jobs resume at the next start", said
