"""The scale benchmark's simulated farm (:mod:`renderfarm.synthetic`): simulated GPUs that
replay real pieces, and modelled render nodes that merge and write frames for the head, on a
real Ray cluster, through the farm's own dispatch and pieces-on-nodes path."""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

import pytest

from renderfarm.job import JobSpec

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def record(farm: object, blend: Path, out: Path) -> tuple[dict[int, bytes], bytes, dict]:
    """A real frame in 2x2 tiles: each tile's piece, the frame's file, the scene's facts."""
    pieces: dict[int, bytes] = {}
    handle = farm.submit(JobSpec(str(blend), frames="1", tiles=(2, 2), group_tiles=False,  # type: ignore[attr-defined]
                                 output=str(out / "rec_####.exr")),
                         on_piece=lambda task, path: pieces.__setitem__(task.tile.index,
                                                                          path.read_bytes()))
    result = handle.result()
    return pieces, result.outputs[1].read_bytes(), result.scene.to_dict()


def test_modelled_render_nodes_write_every_frame_for_the_head(
        farm: object, make_scene, tmp_path: Path) -> None:
    import ray

    from renderfarm import pieces as node_pieces
    from renderfarm.farm import Farm, FarmConfig
    from renderfarm.synthetic import Recording, SimulatedPool, start_hosts, stop_hosts

    blend = make_scene(width=64, height=48, samples=1, frames=1, passes=True)
    pieces, frame, info = record(farm, blend, tmp_path / "rec")
    recording = Recording(info, pieces, 0.2, gpus_per_node=2, merge_seconds=0.05,
                          frame=frame)
    hosts = start_hosts(recording, 2)
    try:
        names = set(node_pieces.MODELLED_NODES)
        assert len(names) == 2
        with Farm(config=FarmConfig(workers=8, pieces="nodes"),
                  pool_class=partial(SimulatedPool, hosts=hosts)) as sim:
            result = sim.render(JobSpec(str(blend), frames="1-6", tiles=(2, 2),
                                        group_tiles=False, output=str(tmp_path / "f_####.exr")))
            gpu_nodes = {h.node for h in sim.runner("cpu").pool.workers.values()}
        served = ray.get([host.served.remote() for host in hosts])
    finally:
        stop_hosts(hosts)
    assert not names & set(node_pieces.MODELLED_NODES)  # forgotten with their hosts
    # every frame is the recorded file, written by a modelled node, its hash the head's
    assert sorted(result.outputs) == [1, 2, 3, 4, 5, 6]
    for number, path in result.outputs.items():
        assert path.read_bytes() == frame
        assert result.hashes[number] == hashlib.sha256(frame).hexdigest()
    merged_on = result.pieces["merged_on"]
    assert result.pieces["kept_on"] == "nodes" and len(merged_on) > 1
    # 8 GPUs on 2 hosts, 2 GPUs a node: 4 modelled nodes, where the frames merged
    assert len(gpu_nodes) == 4 and {n.rpartition("-")[0] for n in gpu_nodes} == names
    assert set(merged_on) <= gpu_nodes
    assert sum(s["pieces"] for s in served) == 24
    # a simulated GPU renders one piece at a time, as a worker does (the dispatcher queues
    # its next call while one runs)
    spans: dict[str, list[tuple[float, float]]] = {}
    for gpu, started, finished in (t for s in served for t in s["trace"]):
        spans.setdefault(gpu, []).append((started, finished))
    assert len(spans) == 8
    for gpu, times in spans.items():
        times.sort()
        assert all(b[0] >= a[1] for a, b in zip(times, times[1:], strict=False)), gpu


def test_a_modelled_node_s_work_goes_to_its_host_and_a_real_node_s_to_ray() -> None:
    from renderfarm import pieces as node_pieces

    calls: list[tuple[object, ...]] = []

    class Host:  # what a host's actor handle offers the routing: node_call.remote
        class node_call:  # noqa: N801
            @staticmethod
            def remote(*args: object) -> str:
                calls.append(args)
                return "ref"

    node_pieces.MODELLED_NODES["simabc"] = Host()
    try:
        assert node_pieces._on_node(node_pieces.compare_here, "simabc-3")(1, 2) == "ref"
        assert calls == [("compare_here", "simabc-3", 1, 2)]
        node_pieces._on_node(node_pieces.compare_here, "ab" * 28)  # a Ray node id: to Ray
    finally:
        del node_pieces.MODELLED_NODES["simabc"]
    assert calls == [("compare_here", "simabc-3", 1, 2)]
