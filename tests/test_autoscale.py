"""The farm on Ray's own autoscaler (its fake multi-node provider, no mocks): a cluster whose
head has no CPU starts with no render node; the farm asks for the workers its queue can use,
the autoscaler adds nodes, the frames equal plain Blender's, and once the queue is empty the
farm releases its workers and the nodes go back to zero. A kind of worker the cluster cannot
provide fails the job with an error naming it.

``AutoscalingCluster.start`` runs ``ray stop --force`` (every Ray of the machine stops): these
tests run last and alone (``autoscaler`` marker; ``tests/conftest.py`` orders them and stops
the session's other Rays first)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from renderfarm.elastic import render_nodes
from renderfarm.job import JobSpec

pytestmark = [pytest.mark.ray, pytest.mark.blender, pytest.mark.autoscaler]

#: seconds an idle node lives before the autoscaler removes it
IDLE_SECONDS = 9.0


@pytest.fixture(scope="module")
def cloud() -> Iterator[Any]:
    """A head with no CPU (the farm's driver runs there), a render node type of 1 CPU, 0 to 3
    nodes, and a "lighting" node type of 1 CPU tagged ``lighting`` (the resource
    ``tag:lighting``), 0 or 1 node; idle nodes removed after :data:`IDLE_SECONDS`."""
    from renderfarm.elastic import fake_cloud
    from tests.conftest import stop_every_ray

    stop_every_ray()
    cluster = fake_cloud(node_cpus=1, max_nodes=3, idle_seconds=IDLE_SECONDS,
                         more_types={"lighting": {"resources": {"CPU": 1, "tag:lighting": 1},
                                                  "max_workers": 1}})
    try:
        yield cluster
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


def wait_for(test: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if test():
            return True
        time.sleep(0.5)
    return test()


def _farm(**settings: Any) -> Any:
    from renderfarm.farm import Farm, FarmConfig

    return Farm(config=FarmConfig(address="auto", autoscale=True, release_after=2.0,
                                  **settings))


def test_a_job_grows_the_cluster_from_zero_renders_exactly_and_the_nodes_go_back(
        cloud, make_scene, reference, tmp_path: Path) -> None:
    from tests.test_bundle_farm import assert_same_pixels

    blend = make_scene(width=64, height=48, samples=128, frames=6)
    with _farm(max_workers=3, wait_for_workers=300) as farm:
        assert render_nodes() == 0
        handle = farm.submit(JobSpec(str(blend), frames="1-6", tiles=(2, 1), device="cpu",
                                     group_tiles=False,
                                     output=str(tmp_path / "grown" / "a_####.exr")))
        result = handle.result(timeout=900)
        events = list(handle.events())
        want = reference(blend, list(range(1, 7)))
        assert sorted(result.outputs) == list(range(1, 7))
        for frame in range(1, 7):
            assert_same_pixels(result.outputs[frame], want[frame])
        nodes = {t.node for t in result.tasks if t.kind == "render"}
        assert len(nodes) >= 2, "the autoscaler added one node only"
        said = [e.message for e in events if e.kind == "info" and e.message]
        assert any("asked Ray's autoscaler for" in m for m in said), said
        cost = result.elastic
        assert cost is not None and cost["new_nodes"] == len(nodes) >= 2
        assert 0 < cost["busy_seconds"] <= cost["node_seconds"]
        assert cost["first_task_on_new_node"] is not None and cost["first_task_on_new_node"] > 0

        # the queue is empty: the farm lets its workers go, the autoscaler its nodes
        pool = farm.runner("cpu").pool
        assert wait_for(lambda: not pool.workers, 60), "the farm held its idle workers"
        assert pool.asked == 0
        assert wait_for(lambda: render_nodes() == 0, 120), "the render nodes stayed up"

        # the nodes the autoscaler removed come back for the next job, as many as it asks
        again = farm.render(JobSpec(str(blend), frames="1-4", device="cpu", max_workers=1,
                                    output=str(tmp_path / "again" / "b_####.exr")))
        for frame in (1, 2, 3, 4):
            assert_same_pixels(again.outputs[frame], want[frame])
        assert len({t.node for t in again.renders}) == 1
        assert pool.asked is not None and pool.asked <= 1


def test_a_higher_priority_job_takes_the_workers_while_the_cluster_is_small(
        cloud, make_scene, tmp_path: Path) -> None:
    blend = make_scene(width=40, height=30, samples=8, frames=8)
    with _farm(max_workers=1, wait_for_workers=300) as farm:
        assert wait_for(lambda: render_nodes() == 0, 120)
        low = farm.submit(JobSpec(str(blend), frames="1-8", device="cpu",
                                  output=str(tmp_path / "low" / "l_####.png")), priority=0)
        for event in low.events():  # the low job renders on the one worker
            if event.kind == "task_done":
                break
        high = farm.submit(JobSpec(str(blend), frames="1-2", device="cpu",
                                   output=str(tmp_path / "high" / "h_####.png")), priority=5)
        high_renders = high.result(timeout=900).renders
        low_renders = low.result(timeout=900).renders
        assert len({t.node for t in low_renders + high_renders}) == 1  # --max-workers 1
        # the high job's frames went ahead of the low job's waiting ones
        assert max(t.finished for t in high_renders) < max(t.started for t in low_renders)


def test_a_job_that_requires_a_tag_gets_a_node_of_that_kind(cloud, make_scene, reference,
                                                            tmp_path: Path) -> None:
    """``--require tag=lighting``: the farm asks for a worker with the resource
    ``tag:lighting``, the autoscaler starts the one node type that has it, and the job's
    tasks render there only."""
    import ray

    from tests.test_bundle_farm import assert_same_pixels

    blend = make_scene(width=48, height=36, samples=8, frames=2)
    with _farm(wait_for_workers=300) as farm:
        assert wait_for(lambda: render_nodes() == 0, 120)
        result = farm.render(JobSpec(str(blend), frames="1-2", device="cpu",
                                     require="tag=lighting",
                                     output=str(tmp_path / "lit" / "l_####.exr")))
        lit = {n["NodeID"] for n in ray.nodes() if n.get("Alive")
               and n.get("Resources", {}).get("tag:lighting")}
        assert lit and {t.node for t in result.renders} <= lit, (lit, result.renders)
    want = reference(blend, [1, 2])
    for frame in (1, 2):
        assert_same_pixels(result.outputs[frame], want[frame])


def test_a_kind_of_worker_the_cluster_cannot_provide_fails_naming_it(
        cloud, make_scene, tmp_path: Path) -> None:
    from renderfarm.errors import ResourceError

    blend = make_scene(width=32, height=24, samples=1, frames=1)
    with _farm(wait_for_workers=15) as farm:
        started = time.monotonic()
        with pytest.raises(ResourceError) as caught:
            farm.render(JobSpec(str(blend), frames="1", device="gpu",
                                output=str(tmp_path / "g_####.png")))
        assert time.monotonic() - started < 120
    message = str(caught.value)
    assert "no worker started within 15 s" in message
    assert "'GPU': 1.0" in message and "ray status" in message
    assert not list(tmp_path.glob("g_*"))


def test_the_cli_renders_on_an_empty_cluster_as_a_new_user_tries_it(
        cloud, make_scene, reference, tmp_path: Path) -> None:
    """The issue's own try: ``renderfarm render shot.blend --frames 1-3 --address auto
    --device cpu`` on a cluster with no render node failed with exit code 3 ("no CPU to run
    workers on"); with ``--autoscale`` it renders."""
    import subprocess
    import sys

    from tests.test_bundle_farm import assert_same_pixels

    blend = make_scene(width=48, height=36, samples=8, frames=3)
    done = subprocess.run([sys.executable, "-m", "renderfarm", "render", str(blend),
                           "--frames", "1-3", "--address", "auto", "--device", "cpu",
                           "--autoscale", "--max-workers", "2", "--no-progress", "--json",
                           "-o", str(tmp_path / "cli" / "c_####.exr")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    want = reference(blend, [1, 2, 3])
    for frame in (1, 2, 3):
        assert_same_pixels(tmp_path / "cli" / f"c_{frame:04d}.exr", want[frame])


def test_the_farm_service_asks_for_workers_and_gives_them_back(
        cloud, make_scene, reference, tmp_path: Path) -> None:
    import ray

    from tests.conftest import ServerProcess
    from tests.test_bundle_farm import assert_same_pixels

    blend = make_scene(width=48, height=36, samples=8, frames=4)
    server = ServerProcess(tmp_path / "state", None, "--address", "auto", "--autoscale",
                           "--max-workers", "2", "--wait-for-workers", "300").start()
    try:
        with server.client(timeout=60) as client:
            job_id = client.submit(blend, {"frames": "1-4", "tiles": [2, 1],
                                           "output": "s_####.exr"})
            status = client.wait(job_id, timeout=600)
            assert status["state"] == "done", status
            fetched = client.fetch_outputs(job_id, tmp_path / "fetched")
        want = reference(blend, [1, 2, 3, 4])
        assert sorted(fetched) == [1, 2, 3, 4]
        for frame, path in fetched.items():
            assert_same_pixels(path, want[frame])
        ray.init(address="auto", log_to_driver=False, logging_level="ERROR")
        try:  # the service keeps running, its queue empty: the render nodes go back
            assert wait_for(lambda: render_nodes() == 0, 120), "the render nodes stayed up"
        finally:
            ray.shutdown()
    finally:
        server.stop()
