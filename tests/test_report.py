"""Job reports (issue 13): device-seconds and cost per piece, worker, device and client,
verification, outputs' SHA-256 checked on fetch and against a delivery folder. Pure tests of
the report, then a real keyed ``renderfarm serve`` (verification and prices as farm
defaults, two client keys) driven through the CLI."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from renderfarm import faults
from renderfarm.errors import InputError, ServiceError
from renderfarm.report import (
    build_report,
    check_folder,
    device_units,
    parse_prices,
    render_html,
    summary_lines,
)
from tests.conftest import FAULT_FILE, ServerProcess, key_folder


def call(worker: str, start: float, seconds: float, **more: Any) -> dict[str, Any]:
    return {"worker": worker, "node": f"node-{worker}", "device": "CPU", "ok": True,
            "frame": 1, "tile": 0, "started": start, "finished": start + seconds,
            "render_seconds": seconds * 0.9, "pixels": 1000, "samples": 10, **more}


def test_every_call_counts_and_cost_follows_the_price_per_device() -> None:
    run = {"job_id": "j1", "device": "cpu", "worker_cpus": 2.0, "frames": [1, 2],
           "wall_seconds": 10.0,
           "tasks": [call("cpu-1", 100, 4.0), call("cpu-2", 100, 2.0, kind="check"),
                     call("cpu-2", 102, 1.0, ok=False,
                          error={"type": "WorkerDiedError", "message": "died"}),
                     call("cpu-1", 104, 0.5, kind="finish"),
                     call("cpu-1", 99, 0.5, kind="inspect", device="")],
           "checks": [{"frame": 1, "tile": 0, "workers": ["cpu-1", "cpu-2"],
                       "outcome": "agreed", "suspects": []}],
           "outputs": {"1": "/farm/out/a_0001.png"}, "hashes": {"1": "ab" * 32}}
    report = build_report(run, client="alice", prices={"CPU": 36.0}, name="shot")
    # 8 seconds of calls on 2-core workers: 16 core-seconds at 36 per core-hour
    assert report["total"]["device_seconds"] == pytest.approx(16.0)
    assert report["total"]["cost"] == pytest.approx(16.0 * 36 / 3600)
    assert report["by_kind"] == pytest.approx({"render": 8.0, "check": 4.0, "finish": 1.0,
                                               "inspect": 1.0, "probe": 0.0, "encode": 0.0,
                                               "failed": 2.0})
    assert report["workers"]["cpu-2"]["failures"] == 1
    assert report["workers"]["cpu-1"]["device"] == "CPU"  # the inspect call had no label
    assert report["clients"] == {"alice": {"device_seconds": pytest.approx(16.0),
                                           "cost": pytest.approx(0.16)}}
    render = next(p for p in report["pieces"] if p["kind"] == "render")
    assert render["verification"] == "agreed"
    assert render["samples_per_second"] == pytest.approx(1000 * 10 / 3.6)
    assert report["outputs"] == [{"frame": 1, "name": "a_0001.png", "sha256": "ab" * 32}]
    assert "cost 0.1600" in " ".join(summary_lines(report))
    page = render_html(report, {1: b"\x89PNG..."})
    assert page.count("<rect") == 5 and "data:image/png;base64," in page


def test_an_autoscaled_jobs_report_says_what_its_nodes_cost() -> None:
    from renderfarm.elastic import NodeSpan, summary

    tasks = [call("cpu-1", 110, 30.0), call("cpu-2", 115, 25.0)]
    elastic = summary({"node-cpu-1": NodeSpan(105.0, 150.0, True),
                       "node-cpu-2": NodeSpan(112.0, 152.0, True)}, tasks, 100.0, 160.0)
    run = {"job_id": "j", "device": "cpu", "frames": [1], "wall_seconds": 60.0,
           "tasks": tasks, "elastic": elastic}
    report = build_report(run)
    assert report["elastic"]["node_seconds"] == pytest.approx(45.0 + 40.0)
    assert report["elastic"]["busy_seconds"] == pytest.approx(55.0)
    line = next(x for x in summary_lines(report) if x.startswith("elastic"))
    assert line == ("elastic: render nodes up 85.0 node-s, busy 55.0 s (65 %); 2 node(s) "
                    "started for it, its first task on one after 10.0 s")
    assert "render nodes up 85.0 node-s" in render_html(report)
    assert build_report({**run, "elastic": None})["elastic"] is None


def test_gpus_are_priced_by_model_and_unpriced_devices_are_said() -> None:
    assert device_units("OPTIX:NVIDIA A10,NVIDIA A10", "gpu", 8) == [("NVIDIA A10", 1.0),
                                                                     ("NVIDIA A10", 1.0)]
    assert device_units("CPU", "cpu", 4) == [("CPU", 4.0)]
    run = {"job_id": "j", "device": "gpu",
           "tasks": [call("gpu-1", 100, 10.0, device="OPTIX:NVIDIA A10"),
                     call("gpu-2", 100, 10.0, device="CUDA:NVIDIA L4")]}
    report = build_report(run, prices={"NVIDIA A10": 3.6})
    assert report["devices"]["NVIDIA A10"]["cost"] == pytest.approx(0.01)
    assert report["devices"]["NVIDIA L4"]["cost"] is None
    assert report["total"]["unpriced"] == ["NVIDIA L4"]
    assert "no price for NVIDIA L4" in " ".join(summary_lines(report))
    report = build_report(run, prices={"NVIDIA A10": 3.6, "*": 7.2})
    assert report["total"]["cost"] == pytest.approx(0.01 + 0.02)


def test_calls_are_named_as_what_they_are() -> None:
    """Tables in the user's words: inspection names no frame or tile, finishing no tile, a
    call that rendered four tiles lists all four."""
    run = {"job_id": "j", "device": "cpu", "wall_seconds": 9.0,
           "tasks": [call("cpu-1", 100, 1.0, kind="inspect", frame=0, tile=-1),
                     call("cpu-1", 101, 4.0, tile=0, covers=[4, 5, 6, 7], tiles=[0, 1, 2, 3]),
                     call("cpu-1", 105, 1.0, kind="finish", tile=-1)]}
    page = render_html(build_report(run))
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>cpu-1</td>",
                      page)
    assert rows == [("", "", "inspection"), ("1", "0, 1, 2, 3", "render"),
                    ("1", "", "finishing")], rows
    assert "tile -1" not in page and "frame 0" not in page
    assert "render frame 1 tiles 0, 1, 2, 3 4.00 s ok" in page  # the timeline's label


def test_an_unpriced_device_is_never_shown_as_free() -> None:
    """No price set: the workers' and calls' cost is unknown (None in JSON, "no price set" on
    the page), never 0; a priced worker beside it keeps its cost."""
    run = {"job_id": "j", "device": "gpu",
           "tasks": [call("gpu-1", 100, 10.0, device="OPTIX:NVIDIA A10"),
                     call("gpu-2", 100, 10.0, device="CUDA:NVIDIA L4")]}
    report = build_report(run, prices={"NVIDIA A10": 3.6})
    assert report["workers"]["gpu-2"]["cost"] is None
    assert report["workers"]["gpu-1"]["cost"] == pytest.approx(0.01)
    assert [p["cost"] for p in report["pieces"] if p["worker"] == "gpu-2"] == [None]
    nothing = build_report(run)  # no price at all
    assert nothing["total"]["cost"] is None
    assert all(w["cost"] is None for w in nothing["workers"].values())
    assert json.loads(json.dumps(nothing))["workers"]["gpu-1"]["cost"] is None
    page = render_html(nothing)
    assert "0.0000" not in page and page.count("no price set") >= 4  # devices, workers
    assert "Job j</h1>" in page  # no name: no dangling dash


def test_prices_are_read_strictly() -> None:
    assert parse_prices(["CPU=0.04", "NVIDIA A10=1.10", "*=0"]) == {
        "CPU": 0.04, "NVIDIA A10": 1.10, "*": 0.0}
    for bad in ("CPU", "CPU=-1", "=3", "CPU=cheap"):
        with pytest.raises(InputError, match="DEVICE=PRICE"):
            parse_prices([bad])


def test_a_delivery_folder_is_checked_file_by_file(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"frame one")
    (tmp_path / "b.png").write_bytes(b"tampered")
    report = {"outputs": [
        {"frame": 1, "name": "a.png", "sha256": hashlib.sha256(b"frame one").hexdigest()},
        {"frame": 2, "name": "b.png", "sha256": hashlib.sha256(b"frame two").hexdigest()},
        {"frame": 3, "name": "c.png", "sha256": "00" * 32}]}
    assert [r["status"] for r in check_folder(report, tmp_path)] == ["ok", "differs",
                                                                    "missing"]


# -- the farm service -------------------------------------------------------------------------
class Webhook:
    """A real HTTP server on loopback that keeps what is POSTed to it."""

    def __init__(self) -> None:
        import http.server
        import threading

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 30) -> list[tuple[str, dict]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return list(self.received)


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "renderfarm", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def assert_accounting_adds_up(report: dict[str, Any], slack: float = 0.05) -> None:
    """What a report must hold whatever the job did: a worker's calls never overlap (a
    worker does one thing at a time: a call counts from when it started it, not from when
    it was queued), a worker's busy seconds never exceed the job's wall time, and the job's
    device-seconds never exceed what its workers could give in that time."""
    wall = report["wall_seconds"]
    spans: dict[str, list[tuple[float, float, str]]] = {}
    for piece in report["pieces"]:
        if piece["finished"] > piece["started"] > 0:
            spans.setdefault(piece["worker"], []).append((piece["started"], piece["finished"],
                                                         piece["kind"]))
    assert spans, "no call was timed"
    for worker, calls in spans.items():
        calls.sort()
        first = calls[0][0]
        for (_s0, end, kind), (start, _e1, later) in zip(calls, calls[1:], strict=False):
            assert start >= end - slack, (
                f"{worker}: a {later} call from {start - first:.2f} s overlaps a {kind} call "
                f"until {end - first:.2f} s")
        busy = report["workers"][worker]["busy_seconds"]
        assert busy <= wall + slack, f"{worker} busy {busy:.2f} s in a {wall:.2f} s job"
    most = len(report["workers"]) * report["worker_cpus"] * wall
    assert report["total"]["device_seconds"] <= most + slack, (report["total"], most)


@pytest.mark.blender
@pytest.mark.ray
def test_a_local_jobs_accounting_adds_up(farm, make_scene, tmp_path: Path) -> None:
    """A tiled job with grouped tiles, checks and frames finished on the workers (PNG):
    every finishing call counts from when its worker started it, so no worker is busier
    than the job was long."""
    from renderfarm.job import JobSpec

    blend = make_scene(width=64, height=48, samples=8, frames=4)
    handle = farm.submit(JobSpec(str(blend), frames="1-4", tiles=(2, 2), verify=0.5,
                                 output=str(tmp_path / "a_####.png")))
    handle.result(timeout=300)
    report = handle.report()
    assert report["by_kind"]["finish"] > 0 and report["by_kind"]["check"] > 0, report["by_kind"]
    assert_accounting_adds_up(report)
    # each frame's render calls name the grid tiles they rendered: 0 to 3 once each
    for frame in range(1, 5):
        renders = [p for p in report["pieces"] if p["kind"] == "render"
                   and p["frame"] == frame and p["status"] == "ok"]
        tiles = sorted(t for p in renders for t in (p["tiles"] or [p["tile"]]))
        assert tiles == [0, 1, 2, 3], (frame, renders)


@pytest.mark.blender
@pytest.mark.ray
def test_pause_stops_rendering_not_the_frames_whose_pieces_are_in(farm, make_scene,
                                                                  tmp_path: Path) -> None:
    """A job paused with every piece checked (verify 1): no render starts while it is
    paused, its ETA says so (None), and every frame whose renders had finished is checked,
    merged and written before it resumes."""
    import threading

    from renderfarm.job import JobSpec

    blend = make_scene(width=64, height=48, samples=16, frames=6)
    out = tmp_path / "out"
    handle = farm.submit(JobSpec(str(blend), frames="1-6", tiles=(2, 2), verify=1.0,
                                 group_tiles=False, output=str(out / "p_####.png")))
    rendered: dict[int, set[int]] = {}
    lock = threading.Lock()
    eight = threading.Event()

    def follow() -> None:
        for event in handle.events():
            if event.kind == "task_done" and event.frame is not None:  # renders, not checks
                with lock:
                    rendered.setdefault(event.frame, set()).add(event.tile or 0)
                    if sum(len(t) for t in rendered.values()) >= 8:
                        eight.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert eight.wait(180)
    handle.pause()
    paused_at = time.time()
    assert handle.eta() is None  # paused: no time left to count

    def complete() -> set[int]:  # pieces in flight at the pause finish too
        with lock:
            return {f for f, tiles in rendered.items() if len(tiles) == 4}

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
            complete() and all((out / f"p_{f:04d}.png").is_file() for f in complete())):
        time.sleep(0.2)
    time.sleep(2.0)  # a render wrongly started while paused would show by now
    written = {int(p.stem[2:]) for p in out.glob("p_*.png")}
    assert complete() and complete() <= written, (complete(), written)
    assert len(complete()) < 6 and not handle.done()
    resumed_at = time.time()
    handle.resume()
    handle.result(timeout=300)
    follower.join(10)
    assert sorted(int(p.stem[2:]) for p in out.glob("p_*.png")) == [1, 2, 3, 4, 5, 6]
    renders = [p for p in handle.report()["pieces"] if p["kind"] == "render"]
    # calls sent just before the pause may start a moment later on their worker
    late = [p for p in renders if paused_at + 1.0 < p["started"] < resumed_at]
    assert not late, late  # no render started while it was paused
    assert any(p["started"] >= resumed_at for p in renders)  # the rest rendered after


@pytest.mark.blender
@pytest.mark.ray
def test_a_farm_reports_cost_and_verification_and_guards_its_outputs(
        tmp_path: Path, make_scene) -> None:
    keys = key_folder(tmp_path / "keys", ("client", "alice", "bob"), admins=("boss",))
    hook = Webhook()
    server = ServerProcess(tmp_path / "state", keys, "--admins", str(keys / "admins"),
                           "--workers", "2", "--verify", "0.5",
                           "--price", "CPU=36", "--price", "NVIDIA A10=1.2",
                           "--notify", f"{hook.url}/farm", "--notify-allow",
                           f"{hook.url}/people/").start()
    alice_args = ["--farm", server.address, "--server-key", str(keys / "server.key"),
                  "--client-key", str(keys / "alice.key_secret")]
    try:
        blend = make_scene(width=64, height=48, samples=8, frames=2)
        out = tmp_path / "delivered"
        # one attempt fails (a worker's error): it is retried, logged and billed
        faults.arm_workers(FAULT_FILE, [faults.Fault("worker.rendered", times=1,
                                                     match={"frame": 2},
                                                     message="the GPU fell off the bus")])
        try:
            proc = cli("submit", str(blend), *alice_args, "--frames", "1-2", "--tiles", "2x1",
                       "--one-call-per-tile", "--verify", "1", "-o",
                       str(out / "shot_####.png"), "--wait", "--json", "--notify",
                       f"{hook.url}/people/alice")
        finally:
            FAULT_FILE.unlink(missing_ok=True)
        assert proc.returncode == 0, proc.stderr
        job_id = json.loads(proc.stdout)["job_id"]
        # the job's webhook and the farm's each heard of its end once, with its outputs
        heard = dict(hook.wait_for(2))
        assert sorted(heard) == ["/farm", "/people/alice"]
        for summary in heard.values():
            assert summary["event"] == "job_done" and summary["job_id"] == job_id
            assert summary["owner"] == "alice" and summary["frames_done"] == 2
            assert [o["name"] for o in summary["outputs"]] == ["shot_0001.png",
                                                               "shot_0002.png"]
            assert all(len(o["sha256"]) == 64 for o in summary["outputs"])
            assert summary["verification"]["checks"] == 4
        # a webhook the farm does not allow is refused at submit
        proc = cli("submit", str(blend), *alice_args, "--notify", "http://10.0.0.1/steal")
        assert proc.returncode == 3 and "--notify-allow" in proc.stderr, proc.stderr
        # Blender's output is kept with every task: a tail for each, all of a failed one
        proc = cli("log", job_id, *alice_args, "--frame", "1")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("== render frame 1 tile ") >= 2 and "Saved:" in proc.stdout
        proc = cli("log", job_id, *alice_args, "--failed", "--json")
        failed = json.loads(proc.stdout)
        assert len(failed) == 1 and failed[0]["frame"] == 2 and not failed[0]["ok"]
        assert "the GPU fell off the bus" in failed[0]["error"]
        assert "Saved:" in failed[0]["log"]  # what Blender printed before the fault
        proc = cli("report", job_id, *alice_args, "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["client"] == "alice" and report["state"] == "done"
        renders = [p for p in report["pieces"] if p["kind"] == "render" and p["status"] == "ok"]
        assert {(p["frame"], p["tile"]) for p in renders} == {(1, 0), (1, 1), (2, 0), (2, 1)}
        for piece in renders:
            assert piece["worker"] in ("cpu-1", "cpu-2") and piece["device"] == "CPU"
            assert piece["busy_seconds"] >= piece["render_seconds"] > 0
            assert piece["samples_per_second"] > 0 and piece["node"]
            assert piece["verification"] == "agreed"  # every piece checked (--verify 1)
        assert report["verification"]["checks"] == 4
        assert report["verification"]["outcomes"] == {"agreed": 4}
        assert report["by_kind"]["check"] > 0 and report["by_kind"]["inspect"] > 0
        assert report["by_kind"]["failed"] > 0  # the failed attempt's time counts too
        assert sum(w["failures"] for w in report["workers"].values()) == 1
        total = report["total"]
        assert total["cost"] == pytest.approx(total["device_seconds"] * 36 / 3600)
        assert total["device_seconds"] == pytest.approx(
            sum(w["device_seconds"] for w in report["workers"].values()))
        assert set(report["clients"]) == {"alice"}
        assert_accounting_adds_up(report)  # finishing, checks, a retry, inspection
        # each output's SHA-256 is the delivered file's
        for output in report["outputs"]:
            data = (out / output["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == output["sha256"]
        assert sorted(o["name"] for o in report["outputs"]) == ["shot_0001.png",
                                                                "shot_0002.png"]
        page = tmp_path / "report.html"
        proc = cli("report", job_id, *alice_args, "--html", str(page))
        assert proc.returncode == 0, proc.stderr
        html = page.read_text()
        assert "<svg class='timeline'" in html and html.count("data:image/png;base64,") == 2
        assert "cpu-1" in html and "cpu-2" in html
        # the delivery folder, checked
        proc = cli("report", job_id, *alice_args, "--check", str(out))
        assert proc.returncode == 0 and proc.stdout.count("ok ") == 2, proc.stdout
        (out / "shot_0002.png").write_bytes(b"not the frame")
        proc = cli("report", job_id, *alice_args, "--check", str(out))
        assert proc.returncode == 4 and "differs  shot_0002.png" in proc.stdout
        # a damaged copy on the farm is refused on arrival
        stored = next((tmp_path / "state").rglob("shot_0001.png"))
        stored.write_bytes(stored.read_bytes()[:-10] + b"0123456789")
        fresh = tmp_path / "fresh"
        proc = cli("fetch", job_id, str(fresh), *alice_args)
        assert proc.returncode == 4, proc.stderr
        assert re.search(r"frame 1 of job \S+ \(shot_0001.png\) arrived with SHA-256",
                         proc.stderr)
        assert not (fresh / "shot_0001.png").exists()
        assert not list(fresh.glob(".*part"))
        # another client's job does not exist for bob
        with server.client(client_key=str(keys / "bob.key_secret")) as bob:
            with pytest.raises(ServiceError, match="no job"):
                bob.report(job_id)
        # a budget the estimate exceeds stops the job before it renders
        proc = cli("submit", str(blend), *alice_args, "--frames", "1-2", "--budget", "0",
                   "-o", str(tmp_path / "over" / "o_####.png"), "--wait")
        assert proc.returncode == 4 and "its budget is 0" in proc.stdout, proc.stdout
        assert "estimate:" in proc.stderr and not (tmp_path / "over").exists()
        failed = [body for path, body in hook.wait_for(3) if body["state"] == "failed"]
        assert len(failed) == 1 and "its budget is 0" in failed[0]["error"]
        # an admin takes a worker out: jobs render on the others; back in, it takes tasks
        boss_args = [*alice_args[:4], "--client-key", str(keys / "boss.key_secret")]
        proc = cli("worker", "disable", "cpu-1", *boss_args, "--reason", "fan noise")
        assert proc.returncode == 0 and "cpu-1 disabled" in proc.stdout, proc.stderr
        listed = {w["worker"]: w for w in json.loads(cli("workers", *alice_args,
                                                         "--json").stdout)}
        assert listed["cpu-1"]["state"] == "disabled" and listed["cpu-1"]["reason"] == \
            "fan noise"
        with server.client(client_key=str(keys / "alice.key_secret")) as alice:
            only = alice.submit(blend, {"frames": "1-2", "tiles": [2, 1], "verify": 0.0,
                                        "group_tiles": False, "output": "w_####.exr"})
            deadline = time.monotonic() + 180
            while alice.status(only)["state"] not in ("done", "failed"):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            used = {p["worker"] for p in alice.report(only)["pieces"] if p["kind"] == "render"}
        assert used == {"cpu-2"}
        proc = cli("worker", "enable", "cpu-1", *boss_args)
        assert proc.returncode == 0 and "cpu-1 idle" in proc.stdout, proc.stdout
        proc = cli("worker", "disable", "cpu-9", *boss_args)
        assert proc.returncode == 3 and "no worker 'cpu-9'" in proc.stderr
        # the farm's default share applies to jobs that do not say
        with server.client(client_key=str(keys / "alice.key_secret")) as alice:
            second = alice.submit(blend, {"frames": "1", "tiles": [2, 1],
                                          "group_tiles": False, "output": "d_####.exr"})
            deadline = time.monotonic() + 180
            while alice.status(second)["state"] not in ("done", "failed"):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            report = alice.report(second)
            assert report["verification"]["share"] == 0.5
    finally:
        server.stop()
