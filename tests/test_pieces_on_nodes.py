"""Pixels off the head: on a Ray cluster whose head has no CPU, pieces stay on the nodes that
rendered them and frames are merged, finished, checked and previewed there, and every file
still equals plain Blender's."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from renderfarm.job import JobSpec
from tests import test_outputs
from tests.conftest import cpu_less_head_cluster
from tests.filecompare import differences
from tests.test_outputs import KNOWN, SETUPS, _copy, _files
from tests.test_render import assert_same_image, parts

pytestmark = [pytest.mark.ray, pytest.mark.blender]

#: the files plain Blender writes for a setup of ``test_outputs`` (its fixture, shared)
blender_files = test_outputs.blender_files


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """A head with no CPU (the driver's node: no worker, no merge can run there) and three
    1-CPU render nodes (three workers: a check that disagrees can get a third opinion)."""
    yield from cpu_less_head_cluster(3)


def head_node() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


@pytest.fixture(scope="module")
def passes_scene(make_scene) -> Path:
    """Every pass Blender has: pieces of a few hundred KB (Ray keeps them on their node)."""
    return make_scene(width=61, height=43, frames=2, samples=4, all_passes=True)


def test_pieces_stay_on_the_nodes_and_frames_equal_blenders(cluster, passes_scene, reference,
                                                            tmp_path) -> None:
    from renderfarm.farm import Farm

    with Farm(address=cluster.address, cpus_per_worker=1) as farm:
        result = farm.render(JobSpec(str(passes_scene), frames="1-2", tiles=(2, 2),
                                     group_tiles=False, output=str(tmp_path / "n_####.exr")))
    refs = reference(passes_scene, [1, 2])
    for frame in (1, 2):
        assert parts(result.outputs[frame]) == parts(refs[frame])
        assert_same_image(result.outputs[frame], refs[frame])
    assert result.pieces is not None and result.pieces["kept_on"] == "nodes"
    # merged on the render nodes, never on the head (it has no CPU, and nothing ran there)
    assert result.pieces["merged_on"] and head_node() not in result.pieces["merged_on"]
    renders = result.renders
    assert len(renders) == 8 and all(t.piece_bytes > 100_000 for t in renders)
    assert all(len(t.piece_sha256) == 64 for t in renders)
    assert not list(tmp_path.glob(".renderfarm-shared-*")), "the marker was left behind"


#: setups of ``test_outputs`` whose files a node writes: converted by a worker there (PNG,
#: JPEG), composited with File Output nodes, a file per view, a stamp, passes in EXR
ON_NODES = ["png 8-bit RGBA (Blender's default)", "multilayer exr half PIZ, passes",
            "compositor File Output node (Depth to EXR)", "jpeg, File Output node",
            "stereo 3D, a PNG file per view", "burn-in stamp, multilayer exr"]


@pytest.mark.parametrize("setup", ON_NODES)
def test_a_node_writes_the_files_blender_writes(cluster, blender_files, tmp_path,
                                                setup) -> None:
    """Tiles merged, finished (converted, composited) and written on a node: every file,
    named and written as plain Blender does."""
    from renderfarm.farm import Farm

    blend, want = blender_files(setup)
    _options, frames = SETUPS[setup]
    copy = _copy(blend, tmp_path / "project")
    with Farm(address=cluster.address, cpus_per_worker=1) as farm:
        result = farm.render(JobSpec(str(copy), frames=frames, tiles=(2, 2)))
    got = _files(tmp_path / "project")
    assert sorted(got) == sorted(want)
    for name in want:
        found = differences(got[name], want[name], known=KNOWN)
        assert found == [], (name, *found)
    assert result.pieces is not None and result.pieces["kept_on"] == "nodes"
    assert result.pieces["merged_on"] and head_node() not in result.pieces["merged_on"]
    listed = {p for files in result.frame_files.values() for p in files}
    assert {str(p.relative_to(tmp_path / "project")) for p in listed} == set(want)
    for frame, path in result.outputs.items():  # the hash the node took is the file's
        import hashlib

        assert result.hashes[frame] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_checks_compare_pieces_on_the_nodes(cluster, passes_scene, tmp_path) -> None:
    from renderfarm.farm import Farm

    with Farm(address=cluster.address, cpus_per_worker=1) as farm:
        result = farm.render(JobSpec(str(passes_scene), frames="1", tiles=(2, 1), verify=1.0,
                                     output=str(tmp_path / "v_####.exr")))
    assert result.checks and all(c["outcome"] == "agreed" for c in result.checks)
    assert not result.suspects
    assert result.pieces is not None and result.pieces["kept_on"] == "nodes"


def test_a_spoiled_piece_is_caught_by_a_check_on_the_nodes(cluster, passes_scene, reference,
                                                          tmp_path) -> None:
    """A worker that returns wrong pixels is found out by comparing on the nodes, and the
    frame still equals Blender's."""
    from renderfarm import faults
    from renderfarm.farm import Farm
    from tests.conftest import FAULT_FILE  # the file every worker of this machine reads

    faults.arm_workers(FAULT_FILE, [faults.Fault("worker.piece", "pixels", times=-1,
                                                 match={"worker": "cpu-2"})])
    try:
        with Farm(address=cluster.address, cpus_per_worker=1) as farm:
            result = farm.render(JobSpec(str(passes_scene), frames="1", tiles=(2, 2),
                                         verify=1.0, group_tiles=False,
                                         output=str(tmp_path / "s_####.exr")))
    finally:
        FAULT_FILE.unlink(missing_ok=True)
    assert result.suspects == ("cpu-2",)
    assert_same_image(result.outputs[1], reference(passes_scene, [1])[1])


def rendered(handle: object, count: int, timeout: float = 120) -> list[dict]:
    """The job's render calls once ``count`` of them succeeded (each its piece)."""
    deadline = time.monotonic() + timeout
    while True:
        done = [t for t in handle.snapshot()["tasks"]  # type: ignore[attr-defined]
                if t["ok"] and t["kind"] == "render"]
        if len(done) >= count or time.monotonic() > deadline:
            assert len(done) == count, done
            return done
        time.sleep(0.2)


def merge_after(monkeypatch) -> threading.Event:
    """Frames are merged only once the returned event is set (a test removes a node
    first)."""
    from renderfarm import faults

    gone = threading.Event()
    fire = faults.fire

    def merge_after_it(point: str, **context: object) -> None:
        if point == "driver.merge":
            assert gone.wait(120), "the node was not removed"
        fire(point, **context)

    monkeypatch.setattr(faults, "fire", merge_after_it)
    return gone


def remove(cluster, node) -> None:
    """Remove ``node`` from the cluster and wait until Ray knows it is gone."""
    import ray

    cluster.remove_node(node)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(
            n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes()):
        time.sleep(0.2)


def test_pieces_lost_with_their_node_are_rendered_again(cluster, make_scene, reference,
                                                        tmp_path, monkeypatch) -> None:
    """A node leaves after rendering its pieces, before its frame is merged: the pieces it
    held render again on the other node, and the frame equals Blender's."""
    from renderfarm.farm import Farm

    passes_scene = make_scene(width=128, height=96, frames=1, samples=4, all_passes=True)
    gone = merge_after(monkeypatch)
    spare = cluster.add_node(num_cpus=1)  # the node that leaves; the fixture's stay
    cluster.wait_for_nodes()
    try:
        with Farm(address=cluster.address, cpus_per_worker=1) as farm:
            handle = farm.submit(JobSpec(str(passes_scene), frames="1", tiles=(2, 2),
                                         group_tiles=False,
                                         output=str(tmp_path / "l_####.exr")))
            spare_id = spare.node_id
            done = rendered(handle, 4)  # the merge waiting
            # pieces above Ray's 100 KB inline limit stay on their node (smaller ones
            # travel with the reply)
            assert all(t["piece_bytes"] > 100_000 for t in done)
            held = [t for t in done if t["node"] == spare_id]
            remove(cluster, spare)
            gone.set()
            if not held:
                handle.result(300)
                pytest.skip("the spare node rendered no piece this time")
            result = handle.result(300)
    finally:
        gone.set()
    assert result.pieces is not None and result.pieces["lost"] >= len(held), result.pieces
    assert result.pieces["stored"] == 0  # a job not kept for a restart stores nothing
    assert_same_image(result.outputs[1], reference(passes_scene, [1])[1])


@pytest.mark.parametrize("spoiled", [False, True], ids=["stored", "stored-then-spoiled"])
def test_pieces_a_lost_node_stored_are_merged_from_there(cluster, make_scene, reference,
                                                        tmp_path, monkeypatch,
                                                        spoiled) -> None:
    """A job kept for a restart (a ``workdir``, as the service's): each node also writes its
    pieces there (it sees that folder); when a node leaves before its frame is merged, its
    pieces are merged from there and nothing renders twice. A stored copy that is not the
    piece its worker described (changed on the file server) is not used: it renders again."""
    from renderfarm.farm import Farm

    scene = make_scene(width=128, height=96, frames=1, samples=4, all_passes=True)
    workdir = tmp_path / "pieces"
    gone = merge_after(monkeypatch)
    spare = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        with Farm(address=cluster.address, cpus_per_worker=1) as farm:
            handle = farm.submit(JobSpec(str(scene), frames="1", tiles=(2, 2),
                                         group_tiles=False, output=str(tmp_path / "k_####.exr")),
                                 workdir=workdir)
            done = rendered(handle, 4)  # the merge waiting
            assert all(t["piece_bytes"] > 100_000 for t in done)
            stored = sorted(p.name for p in workdir.glob("*.exr"))
            assert len(stored) == 4, stored  # each node wrote its piece where it was told
            held = [t for t in done if t["node"] == spare.node_id]
            if spoiled:  # every stored copy changed after it was written
                for path in workdir.glob("*.exr"):
                    data = bytearray(path.read_bytes())
                    data[-100] ^= 0xFF
                    path.write_bytes(bytes(data))
            remove(cluster, spare)
            gone.set()
            if not held:
                handle.result(300)
                pytest.skip("the spare node rendered no piece this time")
            result = handle.result(300)
    finally:
        gone.set()
    assert result.pieces is not None
    if spoiled:  # the lost node's pieces rendered again (and stored again)
        assert result.pieces["stored"] == 4 + len(held), result.pieces
        assert result.pieces["restored"] == 0, result.pieces
        assert result.pieces["lost"] == len(held), result.pieces
        assert len([t for t in result.renders if t.ok]) == 4 + len(held)
    else:  # merged from their stored copies, nothing rendered twice
        assert result.pieces["stored"] == 4 and result.pieces["lost"] == 0, result.pieces
        assert result.pieces["restored"] == len(held), result.pieces
        assert len([t for t in result.renders if t.ok]) == 4
    assert_same_image(result.outputs[1], reference(scene, [1])[1])
    assert not list(workdir.glob("*.exr")), "merged pieces are removed"
    assert not list(workdir.glob(".renderfarm-shared-*")), "the marker was left behind"


def test_a_piece_that_is_not_what_its_worker_described_counts_as_lost(cluster,
                                                                     tmp_path) -> None:
    """Where a piece is fetched on a node (a merge, a check, a preview), its bytes must have
    the SHA-256 its worker gave; otherwise it renders again, as a lost one."""
    import hashlib

    import ray

    from renderfarm.pieces import _fetch

    data = bytes(range(256)) * 800  # above Ray's inline limit: kept in the object store
    ref = ray.put(data)
    assert _fetch([ref, hashlib.sha256(data).hexdigest()], tmp_path / "good.exr")
    assert (tmp_path / "good.exr").read_bytes() == data
    assert not _fetch([ref, hashlib.sha256(b"other").hexdigest()], tmp_path / "bad.exr")
    assert not (tmp_path / "bad.exr").exists()
    assert _fetch([ref, ""], tmp_path / "unsaid.exr")  # an earlier run's file: the head hashed it


def test_a_node_that_does_not_see_the_folder_stores_nothing(tmp_path) -> None:
    """A node stores a piece only in the folder whose marker it reads (a shared file
    system), and only there."""
    from renderfarm.pieces import SharedMarker, store_here

    folder = tmp_path / "pieces"
    marker = SharedMarker(folder)
    path, token = marker.pair()
    assert store_here(b"piece", (str(folder / "a.exr"), path, token))
    assert (folder / "a.exr").read_bytes() == b"piece"
    assert not store_here(b"piece", (str(folder / "b.exr"), path, "another token"))
    assert not store_here(b"piece", (str(tmp_path / "c.exr"), path, token))  # not its folder
    assert not store_here(b"piece", None)
    marker.release()
    assert not store_here(b"piece", (str(folder / "d.exr"), path, token))
    assert sorted(p.name for p in folder.iterdir()) == ["a.exr"]


def test_previews_are_made_on_the_node(cluster, passes_scene, tmp_path) -> None:
    """A live tile's 8-bit preview made on the piece's node is the one the head makes from
    the same piece."""
    import ray

    from renderfarm.farm import Farm
    from renderfarm.job import Rect, Tile
    from renderfarm.pieces import NodePiece, preview_on_node
    from renderfarm.server.preview import tile_preview

    got: list[tuple[object, Path]] = []
    with Farm(address=cluster.address, cpus_per_worker=1) as farm:
        result = farm.submit(JobSpec(str(passes_scene), frames="1", tiles=(2, 2),
                                     output=str(tmp_path / "pv_####.exr")),
                             on_piece=lambda task, piece: got.append((task, piece))
                             ).result(300)
        assert len(got) == 4
        for task, piece in got:
            assert isinstance(piece, NodePiece) and piece.node != head_node()
            canvas = Rect(0, 0, 61, 43)
            remote = preview_on_node(piece, task.tile, canvas, None)
            local_file = tmp_path / f"{task.task_id}.exr"
            local_file.write_bytes(ray.get(piece.ref))  # the test fetches it to compare
            here = tile_preview(local_file, task.tile, canvas)
            assert remote == here and remote is not None
            assert isinstance(task.tile, Tile)
    assert result.outputs[1].is_file()
