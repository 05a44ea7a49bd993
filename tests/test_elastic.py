"""The pool follows the cluster: a node removed mid-job does not stall it, nodes added
mid-job get workers that take tasks, and jobs soaked in faults finish exactly while nodes are
replaced (a real multi-node `ray.cluster_utils.Cluster`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from renderfarm.job import JobSpec
from tests.conftest import cpu_less_head_cluster

pytestmark = [pytest.mark.ray, pytest.mark.blender]


@pytest.fixture()
def cluster() -> Iterator[object]:
    """A head without CPUs (the driver) and two 1-CPU worker nodes."""
    yield from cpu_less_head_cluster(2)


def _wait_for(test: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not test() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)


def test_a_lost_node_does_not_stall_the_job_and_new_nodes_take_tasks(
        cluster, make_scene, reference, tmp_path: Path) -> None:
    from renderfarm.farm import Farm
    from tests.test_bundle_farm import assert_same_pixels

    blend = make_scene(width=64, height=48, samples=16, frames=10)
    with Farm(address=cluster.address) as farm:  # no count given: one worker per node
        handle = farm.submit(JobSpec(str(blend), frames="1-10", tiles=(2, 1), device="cpu",
                                     task_timeout=240, group_tiles=False,
                                     output=str(tmp_path / "lost" / "e_####.exr")))
        merged: list[int] = []
        events = iter(handle.events())
        for event in events:
            if event.kind == "frame_merged":
                merged.append(event.frame)
                break
        cluster.remove_node(cluster.render_nodes[0])  # a spot instance goes away
        removed_at = time.monotonic()
        result = handle.result(timeout=600)
        after_loss = time.monotonic() - removed_at
        # no task waited for its 240 s timeout on a worker that could not be placed
        errors = [t.error for t in result.tasks if not t.ok]
        assert not any("timeout" in str(e) for e in errors), errors
        assert after_loss < 120, f"the job took {after_loss:.0f} s after the node went away"
        want = reference(blend, list(range(1, 11)))  # every frame it wrote is Blender's
        assert sorted(result.outputs) == list(range(1, 11))
        for frame in range(1, 11):
            assert_same_pixels(result.outputs[frame], want[frame])

        # two nodes join: workers start there and take tasks of the next job
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        pool = farm.runner("cpu").pool
        _wait_for(lambda: len(pool.ready) >= 3, timeout=120)
        assert len(pool.ready) == 3
        grown = farm.render(JobSpec(str(blend), frames="1-10", tiles=(2, 1), device="cpu",
                                    group_tiles=False,
                                    output=str(tmp_path / "grown" / "g_####.exr")))
        assert len({t.node for t in grown.tasks}) == 3, "a new node took no task"
        for frame in range(1, 11):  # and the frames the grown pool wrote are Blender's too
            assert_same_pixels(grown.outputs[frame], want[frame])


def test_soak_jobs_finish_exactly_while_nodes_come_and_go_and_faults_fire(
        cluster, make_scene, reference, tmp_path: Path) -> None:
    """The soak on a multi-node cluster: besides the faults (a worker's render raises, its
    Blender aborts or lags; a job's own piece handling or merge raises), worker nodes are
    replaced mid-round (one joins, the oldest goes, with whatever it was rendering)."""
    from renderfarm.farm import Farm
    from renderfarm.soak import soak

    blend = make_scene(width=32, height=24, frames=3, samples=1)
    want = reference(blend, [1, 2, 3])  # plain Blender's frames: every job's must equal them
    with Farm(address=cluster.address) as farm:  # elastic: one worker per node
        report = soak(farm, str(blend), tmp_path / "soak", seconds=60, seed=11,
                      cluster=cluster, reference=want)
        summary = report.to_dict()
        assert all(runner.error is None for runner in farm.runners())
    assert report.nodes_removed >= 2 and report.jobs >= 6, summary
    assert report.done + report.failed_as_injected == report.jobs, summary
    assert report.frames_compared == 3 * report.done, summary
    assert sum(report.faults_fired.values()) >= 1, summary
    assert report.ok, summary
