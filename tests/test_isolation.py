"""No job takes another down: a fault injected into each of a job's code paths fails that job
with its reason, while a second job on the same workers runs to the end (real renders on a
real local Ray; faults switched on deterministically, not by timing luck)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from renderfarm import faults
from renderfarm.errors import RenderFarmError
from renderfarm.job import JobSpec
from tests.conftest import FAULT_FILE

pytestmark = [pytest.mark.blender, pytest.mark.ray]


@pytest.fixture(autouse=True)
def no_faults() -> Iterator[None]:
    faults.disarm()
    faults.fired.clear()
    yield
    faults.disarm()
    FAULT_FILE.unlink(missing_ok=True)


@pytest.mark.parametrize("point", ["driver.next_task", "driver.call", "driver.done",
                                   "driver.store_piece", "driver.merge", "driver.failed",
                                   "on_piece"])
def test_a_fault_in_one_jobs_code_fails_that_job_only(farm, make_scene, tmp_path: Path,
                                                     point: str) -> None:
    other_blend = make_scene(width=40, height=30, frames=3, samples=2)
    victim_blend = make_scene(width=48, height=32, frames=4, samples=2)
    other = farm.submit(JobSpec(str(other_blend), tiles=(2, 1),
                                output=str(tmp_path / "other" / "o_####.exr")))
    victim_id = f"victim-{point.replace('.', '-')}"
    extra: dict[str, object] = {}
    spec = JobSpec(str(victim_blend), tiles=(2, 1), output=str(tmp_path / "v" / "v_####.exr"))
    if point == "on_piece":  # a hook of the caller's (the service records pieces this way)
        def hook(task: object, path: Path) -> None:
            raise RuntimeError("the hook broke")

        extra["on_piece"] = hook
    else:
        faults.arm(point, job_id=victim_id, times=-1)
    if point == "driver.failed":  # only called when a task fails: the worker fails them
        faults.arm_workers(FAULT_FILE, [faults.Fault("worker.render", times=-1,
                                                     match={"job_id": victim_id})])
    victim = farm.submit(spec, job_id=victim_id, **extra)
    with pytest.raises(RenderFarmError) as caught:
        victim.result(timeout=180)
    assert "injected fault" in str(caught.value) or "hook broke" in str(caught.value), \
        caught.value
    result = other.result(timeout=180)  # the other job ran to its end
    assert sorted(result.outputs) == [1, 2, 3]
    assert all(path.stat().st_size > 0 for path in result.outputs.values())
    assert all(runner.error is None for runner in farm.runners())
    faults.disarm()
    again = farm.render(JobSpec(str(other_blend), frames="1",
                                output=str(tmp_path / "again" / "a_####.exr")))
    assert again.outputs[1].is_file()


def test_a_result_that_arrives_after_cancel_is_dropped_unread(farm, make_scene,
                                                             tmp_path: Path) -> None:
    """The race seen in CI: a piece of a cancelled job reached `done` after the job's folder
    was removed. The dispatcher now holds the piece (a fault makes `done` wait) while the
    job is cancelled and its folder removed; the piece is dropped and counted."""
    blend = make_scene(width=48, height=32, frames=2, samples=2)
    faults.arm("driver.done", "sleep", seconds=2.0, job_id="late-one")
    handle = farm.submit(JobSpec(str(blend), output=str(tmp_path / "l_####.exr")),
                         job_id="late-one")
    deadline = time.monotonic() + 120
    while not faults.fired.get("driver.done") and time.monotonic() < deadline:
        time.sleep(0.02)
    handle.cancel()
    with pytest.raises(RenderFarmError, match="cancelled"):
        handle.result(timeout=60)
    deadline = time.monotonic() + 30
    while handle.late_results < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handle.late_results >= 1
    assert not list(tmp_path.glob("l_*.exr"))
    assert all(runner.error is None for runner in farm.runners())
    assert farm.render(JobSpec(str(blend), frames="1",
                               output=str(tmp_path / "after_####.exr"))).outputs


def test_a_task_failing_on_every_try_fails_the_job_with_blenders_log(
        farm, make_scene, tmp_path: Path) -> None:
    """The same failure on three different workers' tries: the job fails with the reason and
    the tail of what Blender printed while rendering."""
    blend = make_scene(width=32, height=24, frames=1, samples=1)
    faults.arm_workers(FAULT_FILE, [faults.Fault("worker.rendered", times=-1,
                                                 match={"job_id": "always-fails"})])
    handle = farm.submit(JobSpec(str(blend), frames="1", retries=2,
                                 output=str(tmp_path / "f_####.exr")), job_id="always-fails")
    with pytest.raises(RenderFarmError, match="injected fault") as caught:
        handle.result(timeout=180)
    tail = caught.value.log_tail or ""
    assert "--- Blender:" in tail and len(tail.split("--- Blender:")[1].strip()) > 20, tail


def test_a_job_slow_to_store_its_pieces_slows_only_itself(farm, make_scene,
                                                          tmp_path: Path) -> None:
    """Job A's piece writes are held 8 s each (a slow disk); job B, on the same two workers,
    renders all its frames while A's first piece is still being stored: storing a piece
    runs on the job's own thread, never on the dispatcher's."""
    slow = make_scene(width=40, height=30, frames=2, samples=2)
    quick = make_scene(width=32, height=24, frames=6, samples=1)
    faults.arm("driver.store_piece", "sleep", times=-1, seconds=8.0, job_id="slow-disk")
    a = farm.submit(JobSpec(str(slow), frames="1-2", output=str(tmp_path / "a" / "a_####.exr")),
                    priority=5, job_id="slow-disk")
    first_render = None
    for event in a.events():  # A has a result in its worker's hands: its store is held
        if event.kind == "task_started":
            first_render = time.monotonic()
            break
    assert first_render is not None
    b = farm.submit(JobSpec(str(quick), frames="1-6", output=str(tmp_path / "b" / "b_####.exr")))
    result = b.result(timeout=120)
    finished_b = time.monotonic()
    assert sorted(result.outputs) == [1, 2, 3, 4, 5, 6]
    assert not a.done()  # A still waits on its own slow store
    assert finished_b - first_render < 8.0, finished_b - first_render
    a.result(timeout=180)  # and A ends well, only later
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["a_0001.exr", "a_0002.exr"]


def test_no_hook_of_a_job_runs_on_the_dispatcher_thread(farm, make_scene,
                                                        tmp_path: Path) -> None:
    """The service's result hook writes a database: it runs on the job's own thread for
    every call, kept, failed and retried alike (a slow database slows only that job)."""
    import threading

    blend = make_scene(width=48, height=32, frames=2, samples=2)
    threads: list[str] = []
    kinds: list[bool] = []

    def hook(result: object) -> None:
        threads.append(threading.current_thread().name)
        kinds.append(bool(getattr(result, "ok", True)))

    faults.arm_workers(FAULT_FILE, [faults.Fault("worker.render", times=1,
                                                 match={"job_id": "hooked"})])
    result = farm.submit(JobSpec(str(blend), tiles=(2, 1), output=str(tmp_path / "h_####.exr")),
                         job_id="hooked", on_result=hook).result(timeout=180)
    assert sorted(result.outputs) == [1, 2]
    assert False in kinds and True in kinds, kinds  # a failed call and kept ones
    assert threads and not [t for t in threads if "dispatch" in t], threads
