"""Workers that die, tasks that hang, jobs that are cancelled: the farm keeps serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from renderfarm.errors import BlendFileError, CancelledError, TaskTimeoutError
from renderfarm.job import JobSpec
from renderfarm.merge import read_layers

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def worker_pids(farm) -> dict[str, int]:
    import ray

    pool = farm.runner("cpu").pool
    return {h.worker_id: ray.get(h.actor.ping.remote())["pid"] for h in pool.workers.values()}


def test_a_worker_killed_mid_task_is_replaced_and_the_task_retried(
        farm, make_scene, reference, tmp_path) -> None:
    blend = make_scene(width=96, height=64, frames=3, samples=64)
    pids = worker_pids(farm)
    handle = farm.submit(JobSpec(str(blend), frames="1-3", tiles=(2, 1),
                                 output=str(tmp_path / "k_####.exr")))
    killed = None
    for event in handle.events():
        if event.kind == "task_started" and killed is None:
            killed = event.data["worker"]
            time.sleep(0.2)
            os.kill(pids[killed], signal.SIGKILL)  # as when Blender aborts
    result = handle.result()
    assert sorted(result.outputs) == [1, 2, 3]
    assert any(t.attempt == 2 for t in result.tasks), "no task was retried"
    refs = reference(blend, [1, 2, 3])
    for frame in (1, 2, 3):
        got = read_layers(result.outputs[frame])
        want = read_layers(refs[frame])
        assert all((got[k] == want[k]).all() for k in want)
    assert len(farm.runner("cpu").pool.workers) == 2
    assert killed not in farm.runner("cpu").pool.workers


@pytest.mark.parametrize("action", ["segv", "abort"])
def test_a_blender_crash_ends_its_process_not_the_worker(farm, make_scene, reference,
                                                          tmp_path, action) -> None:
    """Blender runs in a child process of each worker: when it crashes mid-task, the worker's
    actor stays (same process, same worker), starts a new Blender, and the task is retried;
    the frames are Blender's own."""
    from renderfarm import faults
    from tests.conftest import FAULT_FILE

    blend = make_scene(width=64, height=48, frames=2, samples=8)
    pids = worker_pids(farm)
    job_id = f"crash-{action}"
    faults.arm_workers(FAULT_FILE, [faults.Fault("blender.render", action=action, times=1,
                                                 match={"job_id": job_id, "frame": 2})])
    try:
        result = farm.submit(JobSpec(str(blend), frames="1-2", tiles=(2, 1),
                                     output=str(tmp_path / "c_####.exr")),
                             job_id=job_id).result(timeout=240)
    finally:
        FAULT_FILE.unlink(missing_ok=True)
    failed = [t for t in result.tasks if not t.ok]
    assert len(failed) == 1 and "Blender's process died" in failed[0].error["message"]
    assert ("SIGSEGV" if action == "segv" else "SIGABRT") in failed[0].error["message"]
    assert any(t.attempt == 2 and t.ok and t.frame == 2 for t in result.tasks)
    assert worker_pids(farm) == pids  # no worker was replaced
    refs = reference(blend, [1, 2])
    for frame in (1, 2):
        got, want = read_layers(result.outputs[frame]), read_layers(refs[frame])
        assert all((got[k] == want[k]).all() for k in want)


def test_a_task_over_its_timeout_fails_clearly_and_the_farm_goes_on(
        farm, make_scene, tmp_path) -> None:
    slow = make_scene(width=128, height=96, frames=1, samples=512)
    handle = farm.submit(JobSpec(str(slow), frames="1", task_timeout=0.5, retries=1,
                                 output=str(tmp_path / "slow_####.exr")))
    with pytest.raises(TaskTimeoutError, match="longer than its 0.5 s timeout"):
        handle.result(timeout=120)
    events = [e.kind for e in handle.events()]
    assert events.count("task_retry") == 1 and "job_failed" in events
    assert not (tmp_path / "slow_0001.exr").exists()
    quick = make_scene(width=32, height=24, frames=1, samples=1)
    result = farm.render(JobSpec(str(quick), frames="1", output=str(tmp_path / "q_####.exr")))
    assert result.outputs[1].exists()


def test_cancel_stops_running_tasks_and_keeps_finished_frames(farm, make_scene,
                                                              tmp_path) -> None:
    blend = make_scene(width=96, height=64, frames=6, samples=128)
    handle = farm.submit(JobSpec(str(blend), output=str(tmp_path / "c_####.exr")))
    for event in handle.events():
        if event.kind == "frame_merged":
            handle.cancel()
    with pytest.raises(CancelledError):
        handle.result(timeout=60)
    written = sorted(tmp_path.glob("c_*.exr"))
    assert 1 <= len(written) < 6
    # the farm still renders after a cancel
    quick = make_scene(width=32, height=24, frames=1, samples=1)
    assert farm.render(JobSpec(str(quick), frames="1",
                               output=str(tmp_path / "after_####.exr"))).outputs


def test_a_corrupt_file_fails_its_job_only(farm, corpus, make_scene, tmp_path) -> None:
    # bundling reads the file first: a damaged one is refused before anything starts
    with pytest.raises(BlendFileError, match="DNA1 block"):
        farm.submit(JobSpec(str(corpus / "corrupt_only_magic.blend"),
                            output=str(tmp_path / "bad_####.exr")))
    # with shared files the job itself fails, and only that job
    bad = farm.submit(JobSpec(str(corpus / "corrupt_only_magic.blend"), files="shared",
                              output=str(tmp_path / "bad_####.exr")))
    good_blend = make_scene(width=32, height=24, frames=2, samples=1)
    good = farm.submit(JobSpec(str(good_blend), output=str(tmp_path / "good_####.exr")))
    with pytest.raises(BlendFileError, match="DNA1 block"):
        bad.result(timeout=120)
    assert sorted(good.result(timeout=120).outputs) == [1, 2]


def _descendants(pid: int) -> set[int]:
    """Every process under ``pid``."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        out = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True)
        children = {int(p) for p in out.stdout.split()} - found
        found |= children
        todo += children
    return found


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except OSError:  # gone meanwhile
        return ""


def _workers_of(raylets: set[int]) -> set[int]:
    """The Blender workers of the Ray clusters whose raylets are ``raylets`` (each worker
    carries its raylet's pid): another program's workers on this machine do not count."""
    out = subprocess.run(["pgrep", "-f", "ray::BlenderWorker"], capture_output=True, text=True)
    mine = set()
    for pid in out.stdout.split():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if any(e.startswith(b"RAY_RAYLET_PID=") and int(e.split(b"=")[1]) in raylets
               for e in environ):
            mine.add(int(pid))
    return mine


def test_ctrl_c_in_the_cli_cancels_and_leaves_no_worker(make_scene, tmp_path) -> None:
    blend = make_scene(width=96, height=64, frames=20, samples=128)
    proc = subprocess.Popen(
        [sys.executable, "-m", "renderfarm.cli", "render", str(blend), "--no-progress",
         "--workers", "2", "-o", str(tmp_path / "i_####.exr"), "-v"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    raylets: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_workers_of(raylets)) < 2:
        raylets |= {p for p in _descendants(proc.pid) if "raylet" in _name(p)}
        time.sleep(0.5)
    workers = _workers_of(raylets)
    assert len(workers) == 2, "the CLI's farm never started its two workers"
    time.sleep(3)  # rendering now
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _workers_of(raylets):
        time.sleep(0.5)
    assert not _workers_of(raylets)  # the CLI's own workers are gone
    assert len(list(Path(tmp_path).glob("i_*.exr"))) < 20


def test_every_corpus_file_renders_or_fails_with_a_clear_input_error(farm, corpus, make_scene,
                                                                    tmp_path) -> None:
    """Real files written by others, one after the other on the same workers: each job ends
    in frames or in an input error that names the problem, never an internal error, and the
    farm still renders afterwards (Blender may abort after many files: workers are replaced)."""
    from renderfarm.errors import InputError, RenderFarmError

    outcomes = {}
    for index, blend in enumerate(sorted(corpus.rglob("*.blend"))):
        spec = JobSpec(str(blend), frames="1", samples=1, percentage=2,
                       output=str(tmp_path / f"c{index}_####.png"))
        try:
            result = farm.render(spec)  # bundled: workers render from their own copy
            assert result.outputs[1].stat().st_size > 0
            outcomes[blend.name] = "rendered"
        except InputError as exc:
            assert exc.exit_code == 3 and exc.message, exc
            outcomes[blend.name] = type(exc).__name__
        except RenderFarmError as exc:  # pragma: no cover - reported with its name
            pytest.fail(f"{blend.name}: {type(exc).__name__}: {exc.one_line()}")
    assert outcomes["file_to_pack.blend"] == "rendered"
    assert outcomes["corrupt_only_magic.blend"] == "BlendFileError"
    assert outcomes["basic_file.blend"] == "SceneError"
    # the video sequencer makes the image: no camera needed, as in Blender
    assert outcomes["with_sequencer.blend"] == "rendered"
    quick = make_scene(width=32, height=24, frames=1, samples=1)
    assert farm.render(JobSpec(str(quick), frames="1",
                               output=str(tmp_path / "last_####.exr"))).outputs
