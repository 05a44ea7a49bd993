"""A short soak: jobs run while random faults fire (a worker's render raises, its Blender
aborts or lags; a job's own piece handling or merge raises). Every job ends as it must: done
with every frame, or failed with its injected fault; no piece is lost, rendered twice or
merged twice, and no other job is taken down (`benchmarks/run.py --soak MINUTES` runs it
long)."""

from __future__ import annotations

from pathlib import Path

import pytest

from renderfarm.soak import soak

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def test_jobs_finish_exactly_while_faults_fire(farm, make_scene, tmp_path: Path) -> None:
    blend = make_scene(width=32, height=24, frames=3, samples=1)
    report = soak(farm, str(blend), tmp_path, seconds=40, seed=7)
    summary = report.to_dict()
    assert report.jobs >= 6 and sum(report.faults_armed.values()) >= 3, summary
    assert report.done + report.failed_as_injected == report.jobs, summary
    assert report.ok, summary
    assert all(runner.error is None for runner in farm._runners.values())


def test_jobs_finish_exactly_while_nodes_come_and_go_and_faults_fire(
        make_scene, tmp_path: Path) -> None:
    """The soak on a multi-node cluster: besides the faults, worker nodes are replaced
    mid-round (one joins, the oldest goes, with whatever it was rendering)."""
    import ray
    from ray.cluster_utils import Cluster

    from renderfarm.farm import Farm

    blend = make_scene(width=32, height=24, frames=3, samples=1)
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        with Farm(address=cluster.address) as farm:  # elastic: one worker per node
            report = soak(farm, str(blend), tmp_path, seconds=60, seed=11, cluster=cluster)
            summary = report.to_dict()
            assert all(runner.error is None for runner in farm._runners.values())
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(summary)
    assert report.nodes_removed >= 2 and report.jobs >= 6, summary
    assert report.done + report.failed_as_injected == report.jobs, summary
    assert report.ok, summary
