"""Jobs carry every file they need: a project copied, submitted, then deleted renders as
Blender renders the original; missing files are never silent (real bpy, a real local Ray)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from renderfarm.errors import MissingFilesError
from renderfarm.job import JobSpec
from renderfarm.merge import read_layers
from tests.conftest import copy_project

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def reference_of(project: Path, tmp_path: Path, reference, frames: list[int],
                 name: str) -> dict[int, Path]:
    """Plain Blender's render of a copy of the project (named apart: references are cached
    by file name)."""
    copy = copy_project(project, tmp_path / f"ref-{name}")
    blend = copy / f"{name}.blend"
    (copy / "shot.blend").rename(blend)
    return reference(blend, frames)


def assert_same_pixels(got: Path, want: Path) -> None:
    mine, theirs = read_layers(got), read_layers(want)
    assert mine.keys() == theirs.keys()
    for layer in theirs:
        assert np.array_equal(mine[layer], theirs[layer]), (got.name, layer)


def test_a_project_deleted_after_submit_renders_as_blender_renders_it(
        farm, project, reference, tmp_path: Path) -> None:
    work = copy_project(project, tmp_path / "work")
    handle = farm.submit(JobSpec(str(work / "shot.blend"), frames="1-2", tiles=(2, 2),
                                 output=str(tmp_path / "out" / "f_####.exr")))
    shutil.rmtree(work)  # moved away, as on another machine
    result = handle.result(timeout=300)
    assert result.warnings == ()
    assert handle.transfer["bundle_files"] == 7  # shot, library, its texture, 4 frames
    want = reference_of(project, tmp_path, reference, [1, 2], "shot_moved")
    for frame in (1, 2):
        assert_same_pixels(result.outputs[frame], want[frame])


def test_missing_files_fail_the_job_naming_each_or_warn_when_allowed(
        farm, project, reference, tmp_path: Path) -> None:
    work = copy_project(project, tmp_path / "work")
    (work / "lib" / "tex" / "props.png").unlink()  # the library's own texture
    (work / "textures" / "seq" / "seq_0001.png").unlink()
    spec = JobSpec(str(work / "shot.blend"), frames="1", tiles=(2, 1),
                   output=str(tmp_path / "out" / "m_####.exr"))
    with pytest.raises(MissingFilesError) as caught:
        farm.submit(spec)
    message = caught.value.one_line()
    assert "props.png" in message and "seq_0001.png" in message, message
    assert "--allow-missing" in message and caught.value.exit_code == 3
    assert not list((tmp_path / "out").glob("*"))  # nothing rendered

    result = farm.render(dataclasses.replace(spec, allow_missing=True))
    warned = " ".join(result.warnings)
    assert "props.png" in warned and "seq_0001.png" in warned, result.warnings
    want = reference_of(project, tmp_path, reference, [1], "shot_missing")
    # rendered without them: not the artist's picture (this is what the check prevents)
    mine, theirs = read_layers(result.outputs[1]), read_layers(want[1])
    assert not np.array_equal(mine["ViewLayer.Combined.R"], theirs["ViewLayer.Combined.R"])


def test_shared_files_are_read_in_place_and_missing_ones_named(
        farm, project, reference, tmp_path: Path) -> None:
    work = copy_project(project, tmp_path / "work")
    result = farm.render(JobSpec(str(work / "shot.blend"), frames="2", files="shared",
                                 output=str(tmp_path / "out" / "s_####.exr")))
    want = reference_of(project, tmp_path, reference, [2], "shot_shared")
    assert_same_pixels(result.outputs[2], want[2])
    (work / "lib" / "tex" / "props.png").unlink()
    handle = farm.submit(JobSpec(str(work / "shot.blend"), frames="2", files="shared",
                                 output=str(tmp_path / "out" / "t_####.exr")))
    with pytest.raises(MissingFilesError, match="props.png"):
        handle.result(timeout=120)


def test_a_bundle_that_lacks_a_file_fails_on_the_worker(farm, project, tmp_path: Path) -> None:
    """A client that leaves a file out of its manifest (and does not say it is missing):
    Blender on the worker reports it, and the job fails instead of rendering without it."""
    work = copy_project(project, tmp_path / "work")
    spec, _ = farm.bundle(JobSpec(str(work / "shot.blend"), frames="1",
                                  output=str(tmp_path / "out" / "l_####.exr")))
    assert spec.bundle is not None
    lying = {**spec.bundle, "files": [f for f in spec.bundle["files"]
                                      if f["path"] != "lib/tex/props.png"]}
    handle = farm.submit(dataclasses.replace(spec, bundle=lying))
    with pytest.raises(MissingFilesError, match="props.png"):
        handle.result(timeout=120)
    assert not list((tmp_path / "out").glob("*"))


def _downloads() -> dict[str, int]:
    from collections import Counter

    from renderfarm.bundle import NodeCache, default_cache_root

    return dict(Counter(NodeCache(default_cache_root()).downloads()))


def test_a_many_task_job_downloads_each_file_once_per_machine(farm, project,
                                                           tmp_path: Path) -> None:
    import OpenImageIO as oiio

    from renderfarm.bundle import file_sha256

    work = copy_project(project, tmp_path / "work")
    texture = work / "lib" / "tex" / "props.png"
    noise = np.random.default_rng().random((8, 8, 3)).astype(np.float32)  # new content
    out = oiio.ImageOutput.create(str(texture))
    out.open(str(texture), oiio.ImageSpec(8, 8, 3, oiio.UINT8))
    out.write_image(noise)
    out.close()
    before = _downloads()
    handle = farm.submit(JobSpec(str(work / "shot.blend"), frames="1-2", tiles=(4, 4),
                                 group_tiles=False, percentage=50,
                                 output=str(tmp_path / "out" / "d_####.exr")))
    result = handle.result(timeout=300)
    assert len(result.renders) == 32
    after = _downloads()
    new = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert all(count == 1 for count in new.values()), new
    sha = file_sha256(texture)
    assert new.get(sha) == 1  # two workers, 32 tasks: one download


#: corpus files (not ours) and the frame to render; each is copied with its folder, bundled,
#: deleted, rendered, and compared with plain Blender's render of the original
CORPUS_RENDERS = {
    "geometry-nodes/file_to_pack.blend": 1,
    "doubly_linked.blend": 1,  # a library that links another; material_textures.blend is missing
    "subdir/doubly_linked_up.blend": 1,  # a //../ link; material_textures.blend is missing
    "recursive_dependency_1.blend": 1,
    "udim/v01_UDIM_BAT_debugging.blend": 1,
    "image_sequencer.blend": 1,  # the sequencer's video is missing
    "T55539-particles/particle.blend": 10,
    "basic_file_ñønæščii.blend": 1,
    "absolute_path.blend": 1,  # absolute texture paths that do not exist here
    "alembic-user.blend": 1,
}
#: the corpus files whose scene has no camera: the test's copy gets one (by bpy) before it is
#: submitted, so they render and are compared like the others
NO_CAMERA = {"doubly_linked.blend", "subdir/doubly_linked_up.blend",
             "recursive_dependency_1.blend", "basic_file_ñønæščii.blend", "absolute_path.blend",
             "alembic-user.blend"}

#: adds a camera looking at the origin from where Blender's default scene has it, and saves
ADD_CAMERA = """
import sys, bpy
bpy.ops.wm.open_mainfile(filepath=sys.argv[-1], load_ui=False, use_scripts=False)
scene = bpy.context.scene
assert scene.camera is None, "the file has a camera already: NO_CAMERA is wrong"
camera = bpy.data.objects.new("test camera", bpy.data.cameras.new("test camera"))
scene.collection.objects.link(camera)
camera.location = (7.36, -6.93, 4.96)
camera.rotation_euler = (1.109, 0.0, 0.815)
scene.camera = camera
bpy.ops.wm.save_mainfile()
"""


@pytest.mark.parametrize("name", sorted(CORPUS_RENDERS))
def test_corpus_files_deleted_after_submit_render_as_blender_renders_them(
        farm, corpus: Path, reference, tmp_path: Path, name: str) -> None:
    from tests.conftest import run_python

    frame = CORPUS_RENDERS[name]
    work = copy_project(corpus, tmp_path / "work")
    if name in NO_CAMERA:  # the test's copy gets one; the corpus is never changed
        run_python("-c", ADD_CAMERA, str(work / name))
    # plain Blender renders a pristine copy of what is submitted
    original = copy_project(work, tmp_path / "pristine") / name
    spec = JobSpec(str(work / name), frames=str(frame), samples=1, percentage=4,
                   allow_missing=True, output=str(tmp_path / "out" / "c_####.exr"))
    handle = farm.submit(spec)
    shutil.rmtree(work)
    result = handle.result(timeout=300)  # every file renders: none is let off
    want = reference(original, [frame], samples=1, percentage=4)
    assert_same_pixels(result.outputs[frame], want[frame])


def test_a_corpus_file_without_a_camera_fails_saying_so(farm, corpus: Path,
                                                        tmp_path: Path) -> None:
    """As Blender refuses to render it: the job fails with the camera error, before any
    render, and the farm goes on."""
    from renderfarm.errors import SceneError

    work = copy_project(corpus, tmp_path / "work")
    handle = farm.submit(JobSpec(str(work / "basic_file_ñønæščii.blend"), frames="1",
                                 samples=1, percentage=4, allow_missing=True,
                                 output=str(tmp_path / "out" / "c_####.exr")))
    shutil.rmtree(work)
    with pytest.raises(SceneError, match="camera"):
        handle.result(timeout=300)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_file_that_crashes_blender_fails_its_job_and_the_farm_goes_on(
        farm, corpus: Path, make_scene, tmp_path: Path) -> None:
    """Plain Blender 5.0.1 aborts on this fluid cache (Manta::Error) when the project is a copy:
    the farm retries on fresh workers, then fails the job saying so, and keeps rendering."""
    from renderfarm.errors import WorkerDiedError

    work = copy_project(corpus, tmp_path / "work")
    handle = farm.submit(JobSpec(str(work / "T55542-smoke" / "smoke_cache_vdb.blend"),
                                 frames="5", samples=1, percentage=4, retries=1,
                                 output=str(tmp_path / "out" / "v_####.exr")))
    with pytest.raises(WorkerDiedError, match="Blender crashed"):
        handle.result(timeout=300)
    quick = make_scene(width=32, height=24, frames=1, samples=1)
    assert farm.render(JobSpec(str(quick), frames="1",
                               output=str(tmp_path / "after_####.exr"))).outputs
