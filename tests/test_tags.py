"""Worker tags and job requirements (issue 14 item 6): what a Ray node says of itself (labels,
custom resources, GPU model) becomes its workers' tags; a job asks for them (``--require``)
and renders only there; a job no worker can take says so at once. Pure rules, then a real
``ray.cluster_utils.Cluster`` whose nodes carry labels and resources."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from renderfarm.errors import InputError, ResourceError
from renderfarm.job import JobSpec
from renderfarm.tags import WorkerTags, node_tags, parse_requirements, satisfies


def test_a_nodes_labels_and_resources_are_its_tags() -> None:
    node = {"Labels": {"ray.io/node_id": "x", "tags": "lighting, fx", "site": "paris"},
            "Resources": {"CPU": 8.0, "GPU": 2.0, "tag:hero": 1.0, "vram_gb": 24.0,
                          "accelerator_type:A10": 1.0, "memory": 1e9, "node:1.2.3.4": 1.0}}
    tags = node_tags(node)
    assert tags.tags == {"lighting", "fx", "hero"}
    assert tags.props == {"site": "paris", "cpus": "8", "gpus": "2", "vram_gb": "24",
                          "vram": "24", "gpu": "A10"}


def test_requirements_compare_numbers_as_numbers() -> None:
    worker = WorkerTags(frozenset({"lighting"}), {"vram": "24", "gpu": "A10"})
    assert satisfies(worker, parse_requirements("vram>=16,tag=lighting"))
    assert satisfies(worker, parse_requirements("vram > 9, gpu=a10, tag!=fx"))
    assert not satisfies(worker, parse_requirements("vram>=32"))
    assert not satisfies(worker, parse_requirements("tag=fx"))
    assert not satisfies(worker, parse_requirements("site=paris"))  # not offered: no
    for bad in ("vram", "vram>>16", ">=16", "tag=lighting,,"):
        with pytest.raises(InputError, match="KEY OP VALUE"):
            parse_requirements(bad)
    with pytest.raises(InputError, match="KEY OP VALUE"):
        JobSpec("x.blend", require="vram=")


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """A head without CPUs, a plain node, and a 'lighting' node with 24 GB of VRAM."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    the_cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    the_cluster.add_node(num_cpus=1)
    the_cluster.add_node(num_cpus=1, resources={"tag:lighting": 1, "vram_gb": 24},
                         labels={"site": "paris"})
    ray.init(address=the_cluster.address, log_to_driver=False, logging_level="ERROR")
    the_cluster.wait_for_nodes()
    yield the_cluster
    ray.shutdown()
    the_cluster.shutdown()


@pytest.mark.ray
@pytest.mark.blender
def test_a_job_renders_only_on_workers_that_meet_it(cluster, make_scene,
                                                    tmp_path: Path) -> None:
    from renderfarm.farm import Farm

    blend = make_scene(width=48, height=32, samples=4, frames=4)
    with Farm(address=cluster.address) as farm:
        workers = {w["worker"]: w for w in farm.workers()}
        result = farm.render(JobSpec(str(blend), frames="1-4", tiles=(2, 1), device="cpu",
                                     group_tiles=False, require="vram>=16,tag=lighting",
                                     output=str(tmp_path / "t_####.exr")))
        workers = {w["worker"]: w for w in farm.workers()}
        lighting = {w for w, info in workers.items() if "lighting" in info["tags"]}
        assert len(lighting) == 1 and workers[next(iter(lighting))]["props"]["site"] == "paris"
        assert {t.worker for t in result.renders} == lighting
        assert sorted(result.outputs) == [1, 2, 3, 4]
        # a job nobody can take says so before anything renders, naming what is offered
        handle = farm.submit(JobSpec(str(blend), frames="1", device="cpu",
                                     require="tag=fx", output=str(tmp_path / "n_####.exr")))
        with pytest.raises(ResourceError, match="no worker of this farm meets --require "
                                                "tag=fx") as caught:
            handle.result(timeout=120)
        assert "lighting" in str(caught.value) and not list(tmp_path.glob("n_*"))
        # and jobs without requirements use every worker
        plain = farm.render(JobSpec(str(blend), frames="1-4", tiles=(2, 1), device="cpu",
                                    group_tiles=False, output=str(tmp_path / "p_####.exr")))
        assert len({t.worker for t in plain.renders}) == 2
