"""Verification on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``, three 1-CPU
nodes, one worker each): a worker that a fault hook makes return wrong pixels — a few values
off, a blank tile, another frame's tile — is caught by ``--verify``, marked suspect, sent no
more tasks and named in the job's report, and the job's files are Blender's own bit for bit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from renderfarm import faults
from renderfarm.errors import VerificationError
from renderfarm.job import JobSpec
from renderfarm.merge import read_layers
from tests.conftest import FAULT_FILE

pytestmark = [pytest.mark.ray, pytest.mark.blender]


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """A head without CPUs (the driver) and three 1-CPU worker nodes."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    the_cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(3):
        the_cluster.add_node(num_cpus=1)
    ray.init(address=the_cluster.address, log_to_driver=False, logging_level="ERROR")
    the_cluster.wait_for_nodes()
    yield the_cluster
    ray.shutdown()
    the_cluster.shutdown()


@pytest.fixture(autouse=True)
def no_faults() -> Iterator[None]:
    faults.disarm()
    yield
    FAULT_FILE.unlink(missing_ok=True)


def liar(action: str, worker: str = "cpu-2") -> None:
    """Make ``worker`` spoil every piece it renders."""
    faults.arm_workers(FAULT_FILE, [faults.Fault("worker.piece", action=action, times=-1,
                                                 match={"worker": worker})])


def assert_exact(outputs: dict[int, Path], references: dict[int, Path]) -> None:
    for frame, path in references.items():
        got, want = read_layers(outputs[frame]), read_layers(path)
        assert sorted(got) == sorted(want)
        for name in want:
            assert np.array_equal(got[name], want[name]), f"frame {frame} {name} differs"


@pytest.mark.parametrize("spoil", [None, "pixels", "blank", "other_frame"])
def test_a_lying_worker_is_caught_and_its_pieces_rendered_again(
        cluster, make_scene, reference, tmp_path: Path, spoil: str | None) -> None:
    from renderfarm.farm import Farm

    # four frames in the scene, three rendered: the liar's "next frame" of frame 3 is a
    # different picture (past the last keyframe it would equal frame 3 and could not be caught)
    blend = make_scene(width=64, height=48, samples=8, frames=4)
    if spoil is not None:
        liar(spoil)
    with Farm(address=cluster.address) as farm:
        result = farm.render(JobSpec(str(blend), frames="1-3", tiles=(2, 1), device="cpu",
                                     group_tiles=False, verify=1.0, task_timeout=240,
                                     output=str(tmp_path / "v_####.exr")))
        pool = farm.runner("cpu").pool
        suspects = sorted(h.worker_id for h in pool.workers.values() if h.suspect)
    assert_exact(result.outputs, reference(blend, [1, 2, 3]))
    outcomes = [c["outcome"] for c in result.checks]
    if spoil is None:
        assert result.suspects == () and suspects == []
        assert outcomes and set(outcomes) == {"agreed"}
        assert len(outcomes) == 6  # every piece checked once
        return
    assert result.suspects == ("cpu-2",) and suspects == ["cpu-2"]
    settled = [c for c in result.checks if c["outcome"] == "settled"]
    assert settled and all(c["suspects"] == ["cpu-2"] for c in settled)
    # one check took a third render to settle; others were settled by that verdict (the
    # only render that disputed their original was the liar's)
    assert any(len(c["workers"]) == 3 for c in settled)
    assert all(len(c["workers"]) in (2, 3) and "cpu-2" in c["workers"] for c in settled)
    assert any("worker cpu-2" in w and "suspect" in w for w in result.warnings)
    # nothing cpu-2 rendered is in the files: every piece it rendered was rendered again
    used = {(t.frame, t.tile) for t in result.tasks if t.kind == "render" and t.ok
            and t.worker != "cpu-2"}
    assert used >= {(f, t) for f in (1, 2, 3) for t in (0, 1)}


def test_two_workers_that_disagree_stop_the_job_naming_both(
        cluster, make_scene, tmp_path: Path) -> None:
    from renderfarm.farm import Farm

    blend = make_scene(width=64, height=48, samples=8, frames=2)
    liar("blank", worker="cpu-1")
    with Farm(address=cluster.address, workers=2) as farm:
        handle = farm.submit(JobSpec(str(blend), frames="1-2", device="cpu", verify=1.0,
                                     output=str(tmp_path / "two_####.exr")))
        with pytest.raises(VerificationError, match="cpu-1, cpu-2 disagree|cpu-2, cpu-1 "
                                                    "disagree") as caught:
            handle.result(timeout=300)
        assert "add a worker" in str(caught.value)
        FAULT_FILE.unlink()
        # the farm goes on: the next job renders (the honest worker checks nothing alone)
        result = farm.render(JobSpec(str(blend), frames="1", device="cpu", verify=0.0,
                                     output=str(tmp_path / "after_####.exr")))
        assert result.outputs[1].is_file()


def test_a_slower_worker_still_checks_the_faster_ones_pieces(
        cluster, make_scene, reference, tmp_path: Path) -> None:
    """A worker measured slower than the others leaves a job's last tasks to them, except
    the checks of their own pieces, which only it may render (this used to hang)."""
    from renderfarm.farm import Farm

    faults.arm_workers(FAULT_FILE, [faults.Fault("worker.render", action="sleep", times=-1,
                                                 seconds=0.5, match={"worker": "cpu-2"})])
    blend = make_scene(width=64, height=48, samples=8, frames=6)
    with Farm(address=cluster.address, workers=2) as farm:
        handle = farm.submit(JobSpec(str(blend), frames="1-6", device="cpu", verify=1.0,
                                     output=str(tmp_path / "s_####.exr")))
        result = handle.result(timeout=240)
    assert_exact(result.outputs, reference(blend, [1, 6]))
    assert {c["outcome"] for c in result.checks} == {"agreed"} and len(result.checks) == 6


def test_only_the_liar_is_suspect_among_workers_of_one_machine() -> None:
    """Workers that share a machine (CPU slots, GPUs of one node) are not suspect with it."""
    from renderfarm.executor import PoolShape, WorkerHandle, WorkerPool

    pool = WorkerPool(PoolShape("cpu", 3, 1.0, 0.0, 1))
    for number in (1, 2, 3):
        pool.workers[f"cpu-{number}"] = WorkerHandle(f"cpu-{number}", None, node="one",
                                                     ready=True)
    pool.suspect("cpu-2", "its pixels disagree")
    assert [h.worker_id for h in pool.trusted] == ["cpu-1", "cpu-3"]
    pool.set_enabled("cpu-2", True)
    assert len(pool.trusted) == 3


@pytest.mark.usefixtures("no_faults")
def test_a_service_killed_after_catching_a_liar_resumes_without_its_pieces(
        tmp_path: Path, make_scene, reference) -> None:
    """Three workers on one machine, one of them lying, every piece checked; the service
    is killed (its Ray too) once it has caught the liar and started again without it: the
    job ends with Blender's own frames (pieces are kept for a restart only once checked)."""
    import ray

    from tests.conftest import ServerProcess

    ray.shutdown()  # the module's cluster stays; the service runs its own Ray
    liar("blank")
    blend = make_scene(width=64, height=48, samples=16, frames=8)
    server = ServerProcess(tmp_path / "state", None, "--workers", "3", "--verify", "1")
    server.start()
    try:
        with server.client() as client:
            job_id = client.submit(blend, {"frames": "1-8", "tiles": [2, 1],
                                           "group_tiles": False, "output": "k_####.exr"})
            deadline = time.monotonic() + 240
            while not any("is suspect" in w for w in client.status(job_id)["warnings"]):
                assert time.monotonic() < deadline, client.status(job_id)
                assert client.status(job_id)["state"] != "failed", client.status(job_id)
                time.sleep(0.05)
            killed_at = client.status(job_id)
    finally:
        server.stop(9)
    assert killed_at["state"] == "running" and killed_at["frames_done"] < 8, killed_at
    FAULT_FILE.unlink(missing_ok=True)
    server.start()
    try:
        with server.client() as client:
            deadline = time.monotonic() + 240
            while client.status(job_id)["state"] not in ("done", "failed"):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            job = client.status(job_id)
            assert job["state"] == "done", job
            fetched = client.fetch_outputs(job_id, tmp_path / "fetched")
    finally:
        server.stop()
    assert_exact(fetched, reference(blend, list(range(1, 9))))
