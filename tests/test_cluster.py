"""Multi-node behaviour on a real Ray cluster of several nodes on this machine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from renderfarm.job import JobSpec

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """Two 1-CPU nodes and one node with two (declared) GPUs, joined by this driver."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    the_cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    the_cluster.add_node(num_cpus=1)
    the_cluster.add_node(num_cpus=2, num_gpus=2)
    ray.init(address=the_cluster.address, log_to_driver=False, logging_level="ERROR")
    the_cluster.wait_for_nodes()
    yield the_cluster
    ray.shutdown()
    the_cluster.shutdown()


def test_each_gpu_worker_gets_its_own_gpu(cluster) -> None:
    import ray

    from renderfarm.executor import WorkerPool, cluster_resources, plan_pool

    class GpuProbe:
        """A stand-in worker that reports what Ray assigned to it (defined here so Ray ships
        it by value to workers that cannot import the tests)."""

        def __init__(self, worker_id: str) -> None:
            self.worker_id = worker_id

        def ping(self) -> dict[str, object]:
            ctx = ray.get_runtime_context()
            return {"worker": self.worker_id, "node": ctx.get_node_id(),
                    "gpus": [int(g) for g in ray.get_gpu_ids()]}

    cpus, gpus = cluster_resources()
    assert sorted(cpus) == [1.0, 1.0, 2.0] and gpus == 2
    shape = plan_pool("gpu", cpus, gpus)
    assert shape.workers == 2
    pool = WorkerPool(shape, actor_class=GpuProbe, start_timeout=60)
    pool.start()
    try:
        replies = [ray.get(h.actor.ping.remote()) for h in pool.workers.values()]
        assert sorted(g for r in replies for g in r["gpus"]) == [0, 1]
        assert len({r["node"] for r in replies}) == 1  # the GPU node
    finally:
        pool.kill_all()


@pytest.mark.blender
def test_frames_spread_over_nodes(cluster, make_scene, tmp_path) -> None:
    from renderfarm.farm import Farm

    blend = make_scene(width=48, height=32, frames=6, samples=16)
    with Farm(address=cluster.address, workers=3, cpus_per_worker=1) as farm:
        result = farm.render(JobSpec(str(blend), device="cpu",
                                     output=str(tmp_path / "n_####.exr")))
    assert sorted(result.outputs) == [1, 2, 3, 4, 5, 6]
    assert len({t.node for t in result.renders}) >= 2, "all tasks ran on one node"


def test_a_cluster_too_small_fails_at_once(cluster) -> None:
    from renderfarm.errors import ResourceError
    from renderfarm.farm import Farm

    farm = Farm(address=cluster.address, workers=3)
    with pytest.raises(ResourceError, match="3 GPU workers asked but the Ray cluster has 2"):
        farm.pool_shape("gpu")
    with pytest.raises(ResourceError, match="largest node has 2"):
        Farm(address=cluster.address, cpus_per_worker=4).pool_shape("cpu")


@pytest.mark.blender
def test_a_bundle_reaches_every_node_and_survives_the_project_moving(
        cluster, project, reference, tmp_path) -> None:
    """Workers on three Ray nodes render a project whose folder is deleted after submit; each
    file of the bundle is downloaded once per machine, from the farm's storage."""
    import shutil

    import numpy as np
    import OpenImageIO as oiio

    from renderfarm.bundle import Manifest, NodeCache, default_cache_root, file_sha256
    from renderfarm.farm import Farm
    from tests.conftest import copy_project
    from tests.test_bundle_farm import assert_same_pixels

    work = copy_project(project, tmp_path / "work")
    texture = work / "lib" / "tex" / "props.png"  # new content: no node has it yet
    out = oiio.ImageOutput.create(str(texture))
    out.open(str(texture), oiio.ImageSpec(8, 8, 3, oiio.UINT8))
    out.write_image(np.random.default_rng().random((8, 8, 3)).astype(np.float32))
    out.close()
    texture_sha = file_sha256(texture)
    ref_copy = copy_project(work, tmp_path / "ref")
    (ref_copy / "shot.blend").rename(ref_copy / "shot_cluster.blend")
    with Farm(address=cluster.address, workers=4, cpus_per_worker=1) as farm:
        handle = farm.submit(JobSpec(str(work / "shot.blend"), frames="1-2", tiles=(4, 2),
                                     group_tiles=False, device="cpu",
                                     output=str(tmp_path / "out" / "k_####.exr")))
        shutil.rmtree(work)
        result = handle.result(timeout=300)
        hashes = set(Manifest.from_dict(handle.spec.bundle).hashes())
    nodes = {t.node for t in result.renders}
    assert len(nodes) >= 2, "all tasks ran on one node"
    want = reference(ref_copy / "shot_cluster.blend", [1, 2])
    for frame in (1, 2):
        assert_same_pixels(result.outputs[frame], want[frame])
    # the three nodes are one machine here: they share its cache, so the new texture was
    # downloaded once for all of them, by whichever worker came first
    downloads = NodeCache(default_cache_root()).downloads()
    assert downloads.count(texture_sha) == 1
    assert all(downloads.count(h) <= 1 for h in hashes)
