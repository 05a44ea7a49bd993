"""Bundles without Blender or Ray: safe paths, manifests, the node cache, and what Blender
Asset Tracer finds in real files of the corpus (copies of them: the corpus is never changed)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from renderfarm.bundle import (
    BundleFile,
    Manifest,
    NodeCache,
    file_sha256,
    make_bundle,
    materialise,
    safe_relpath,
)
from renderfarm.errors import BundleError, IntegrityError
from tests.conftest import copy_project, tree_digest

SHA = "a" * 64


@pytest.mark.parametrize("path", ["/etc/passwd", "../x.png", "a/../../b", "a\\b.png",
                                  "C:/x.png", "", "a//b", "./a", "a/./b", "a/..", "x\0y"])
def test_paths_that_leave_a_bundle_are_refused(path: str) -> None:
    with pytest.raises(BundleError):
        safe_relpath(path)


@pytest.mark.parametrize("path", ["shot.blend", "textures/seq/seq_0001.png",
                                  "_outside_project/tmp/corp/basic_file.blend", "ñø/æ.png"])
def test_plain_relative_paths_are_kept(path: str) -> None:
    assert safe_relpath(path) == path


def _manifest(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {"root": "shot.blend", "missing": [], "files": [
        {"path": "shot.blend", "sha256": SHA, "size": 10},
        {"path": "tex/a.png", "sha256": "b" * 64, "size": 5}]}
    data.update(overrides)
    return data


@pytest.mark.parametrize("bad, words", [
    ({"root": "other.blend"}, "root"),
    ({"root": "tex/a.png"}, "root"),
    ({"files": [{"path": "shot.blend", "sha256": SHA, "size": 1},
                {"path": "SHOT.blend", "sha256": SHA, "size": 1}]}, "twice"),
    ({"files": [{"path": "shot.blend", "sha256": "xyz", "size": 1}]}, "SHA-256"),
    ({"files": [{"path": "shot.blend", "sha256": SHA, "size": -1}]}, "size"),
    ({"files": [{"path": "shot.blend", "sha256": SHA, "size": 1, "mode": 7}]}, "path, sha256"),
    ({"files": [{"path": "../shot.blend", "sha256": SHA, "size": 1}]}, "leaves"),
    ({"files": "all"}, "list of files"),
    ({"missing": "none"}, "missing"),
    ({"root": "SHOT.blend"}, "root"),  # names are case-sensitive where workers run
    ({"files": [{"path": "shot.blend", "sha256": SHA, "size": 1},
                {"path": "tex", "sha256": SHA, "size": 1},
                {"path": "tex/a.png", "sha256": SHA, "size": 1}]}, "both a file and a folder"),
    ({"files": [{"path": "shot.blend", "sha256": SHA, "size": 1},
                {"path": "x" * 256 + ".png", "sha256": SHA, "size": 1}]}, "longer than 255"),
])
def test_malformed_manifests_are_refused_with_the_reason(bad: dict[str, object],
                                                         words: str) -> None:
    with pytest.raises(BundleError, match=words):
        Manifest.from_dict(_manifest(**bad))


def test_a_bundle_over_the_size_limit_is_refused() -> None:
    assert Manifest.from_dict(_manifest(), max_bytes=15).total_bytes == 15
    with pytest.raises(BundleError, match="over the farm's limit"):
        Manifest.from_dict(_manifest(), max_bytes=14)


def test_manifest_round_trip_and_digest() -> None:
    manifest = Manifest.from_dict(_manifest())
    again = Manifest.from_dict(manifest.to_dict())
    assert again == manifest and again.digest == manifest.digest
    moved = Manifest.from_dict(_manifest(files=[
        {"path": "shot.blend", "sha256": SHA, "size": 10},
        {"path": "tex/b.png", "sha256": "b" * 64, "size": 5}]))
    assert moved.digest != manifest.digest  # the layout is part of the bundle


def _writer(content: bytes, delay: float = 0.0):
    calls = []

    def download(tmp: Path) -> None:
        calls.append(tmp)
        time.sleep(delay)
        tmp.write_bytes(content)

    return download, calls


def test_node_cache_downloads_once_and_verifies(tmp_path: Path) -> None:
    content = b"texture" * 100
    sha = __import__("hashlib").sha256(content).hexdigest()
    cache = NodeCache(tmp_path / "cache")
    download, calls = _writer(content)
    first = cache.get(sha, len(content), download)
    second = cache.get(sha, len(content), download)
    assert first == second and first.read_bytes() == content and len(calls) == 1
    assert cache.downloads() == [sha]
    bad, _ = _writer(b"something else")
    other = "c" * 64
    with pytest.raises(IntegrityError, match="SHA-256") as caught:
        cache.get(other, 14, bad)
    assert caught.value.retryable
    assert not cache.path(other).exists()
    assert not list((tmp_path / "cache" / "files").rglob("*.part"))


def test_node_cache_evicts_least_recently_used(tmp_path: Path) -> None:
    import hashlib

    cache = NodeCache(tmp_path / "cache", max_bytes=250)
    blobs = [bytes([i]) * 100 for i in range(3)]
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    for blob, sha in zip(blobs[:2], shas[:2], strict=True):
        cache.get(sha, 100, _writer(blob)[0])
        time.sleep(0.02)
    os.utime(cache.path(shas[0]))  # used again: the second is now the oldest
    cache.get(shas[2], 100, _writer(blobs[2])[0])
    assert cache.path(shas[0]).exists() and cache.path(shas[2]).exists()
    assert not cache.path(shas[1]).exists()


def _fetch_in_process(root: str, sha: str, size: int, content: bytes) -> str:
    download, _ = _writer(content, delay=0.3)
    return str(NodeCache(root).get(sha, size, download))


def test_workers_of_a_node_share_one_download(tmp_path: Path) -> None:
    import hashlib

    content = os.urandom(4096)
    sha = hashlib.sha256(content).hexdigest()
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        paths = pool.starmap(_fetch_in_process, [(str(tmp_path / "c"), sha, len(content),
                                                  content)] * 4)
    assert len(set(paths)) == 1
    assert NodeCache(tmp_path / "c").downloads() == [sha]  # four workers, one download


def test_materialise_refuses_a_link_that_leaves_the_bundle(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "tex").symlink_to(outside)
    source = tmp_path / "blob"
    source.write_bytes(b"x")
    manifest = Manifest("shot.blend", (BundleFile("shot.blend", SHA, 1),
                                       BundleFile("tex/a.png", "b" * 64, 1)))
    with pytest.raises(BundleError, match="leaves the bundle"):
        materialise(manifest, bundle, lambda entry: source)
    assert not (outside / "a.png").exists()


def test_materialise_lays_out_every_file(tmp_path: Path) -> None:
    sources = {}
    for name, data in (("shot.blend", b"BLENDER"), ("tex/a.png", b"png")):
        path = tmp_path / "src" / name.replace("/", "_")
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        sources[name] = path
    manifest = Manifest("shot.blend", tuple(
        BundleFile(n, file_sha256(p), p.stat().st_size) for n, p in sources.items()))
    root = materialise(manifest, tmp_path / "b", lambda entry: sources[entry.path])
    assert root == (tmp_path / "b" / "shot.blend").resolve()
    assert (tmp_path / "b" / "tex" / "a.png").read_bytes() == b"png"
    # laid out again: nothing is fetched
    assert materialise(manifest, tmp_path / "b", lambda entry: 1 / 0) == root


# -- what Blender Asset Tracer finds in real files ------------------------------------------
CORPUS_EXPECTED = {
    # file: (files in the bundle (besides the root), missing files by name)
    "geometry-nodes/file_to_pack.blend": ({"node_lib.blend", "object_lib.blend"}, set()),
    "doubly_linked.blend": ({"linked_cube.blend", "basic_file.blend"},
                            {"material_textures.blend"}),
    "subdir/doubly_linked_up.blend": ({"_outside_project/basic_file.blend",
                                       "_outside_project/linked_cube.blend"},
                                      {"material_textures.blend"}),
    "recursive_dependency_1.blend": ({"recursive_dependency_2.blend"}, set()),
    "udim/v01_UDIM_BAT_debugging.blend": ({f"cube_UDIM.color.{n}.png"
                                           for n in (1001, 1002, 1003)}, set()),
    "image_sequencer.blend": ({f"imgseq/{n:06d}.png" for n in range(210, 215)},
                              {"video-tiny.mkv"}),
    "T55539-particles/particle.blend": ({"blendcache_particle/43756265_000000_01.bphys"},
                                        set()),
    "T55542-smoke/smoke_cache_vdb.blend": (
        {"blendcache_smoke_cache_vdb/536D6F6B6520446F6D61696E_000001_00.vdb"}, set()),
    "alembic-user.blend": ({"clothsim.abc"}, set()),
    "basic_file_ñønæščii.blend": (set(), set()),
    "absolute_path.blend": (set(), {"brick_dotted_04-color.jpg",
                                    "buildings_roof_04-color.png"}),
}


@pytest.fixture(scope="module")
def corpus_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import CORPUS

    return copy_project(CORPUS, tmp_path_factory.mktemp("corpus") / "blendfiles")


@pytest.mark.parametrize("name", sorted(CORPUS_EXPECTED))
def test_bundles_of_corpus_files(corpus_copy: Path, tmp_path: Path, name: str) -> None:
    before = tree_digest(corpus_copy)
    manifest = make_bundle(corpus_copy / name, tmp_path / "bundle")
    expected, missing = CORPUS_EXPECTED[name]
    paths = {f.path for f in manifest.files}
    assert manifest.root == Path(name).name
    # files outside the project keep their place below _outside_project/<absolute path>
    shortened = {("_outside_project/" + Path(p).name) if p.startswith("_outside_project/")
                 else p for p in paths}
    assert expected <= shortened, sorted(shortened)
    assert {Path(m).name for m in manifest.missing} == missing
    for entry in manifest.files:
        assert entry.sha256 == file_sha256(entry.source) and entry.size > 0
    assert tree_digest(corpus_copy) == before  # bundling changes nothing in the project


def test_a_librarys_own_texture_is_in_the_bundle(project: Path, tmp_path: Path) -> None:
    """Blender Asset Tracer 1.23 misses the textures of materials in linked libraries of
    Blender 5.0 files; the bundle must not."""
    manifest = make_bundle(project / "shot.blend", tmp_path / "bundle")
    assert {f.path for f in manifest.files} == {
        "shot.blend", "lib/props.blend", "lib/tex/props.png",
        *(f"textures/seq/seq_{n:04d}.png" for n in range(1, 5))}
    assert manifest.missing == ()


def test_a_bundle_is_made_again_only_when_a_file_changed(project: Path, tmp_path: Path) -> None:
    import os as _os

    from renderfarm.bundle import BundleCache

    work = copy_project(project, tmp_path / "work")
    cache = BundleCache()
    first = cache.make(work / "shot.blend")
    assert cache.make(work / "shot.blend") is first  # nothing changed: not walked again
    texture = work / "textures" / "seq" / "seq_0003.png"
    texture.write_bytes(texture.read_bytes() + b"\0")  # touched
    stat = texture.stat()
    _os.utime(texture, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = cache.make(work / "shot.blend")
    assert second is not first
    changed = {f.path for f in second.files if f not in set(first.files)}
    assert changed == {"textures/seq/seq_0003.png"}
    (work / "lib" / "tex" / "props.png").unlink()
    third = cache.make(work / "shot.blend")  # a file went missing: walked again
    assert [Path(m).name for m in third.missing] == ["props.png"]
    cache.clear()


def test_a_frame_missing_inside_an_image_sequence_is_named(project: Path,
                                                           tmp_path: Path) -> None:
    """BAT bundles the frames that exist; a frame deleted from the middle would render
    magenta. The gap is named as missing."""
    work = copy_project(project, tmp_path / "work")
    (work / "textures" / "seq" / "seq_0003.png").unlink()
    manifest = make_bundle(work / "shot.blend", tmp_path / "bundle")
    assert [Path(m).name for m in manifest.missing] == ["seq_0003.png"]
