"""Each job renders with the Blender its file was saved with: scenes built by ``bpy`` 4.2 LTS
and 4.5 LTS (each in the environment the farm prepares itself from the package index, as a
worker does on first use) render through the farm, tiled and whole, into files equal to that
Blender's own; jobs of two Blenders run at once on the same workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from renderfarm.blenders import Blender, Version
from renderfarm.job import JobSpec
from tests.filecompare import differences

pytestmark = [pytest.mark.blender, pytest.mark.ray]

ROOT = Path(__file__).resolve().parent.parent
#: Blender's own render of one frame, with the scene's own output settings
REFERENCE = """
import bpy, sys
path, out, frame = sys.argv[-3], sys.argv[-2], int(sys.argv[-1])
bpy.ops.wm.open_mainfile(filepath=path)
scene = bpy.context.scene
scene.frame_set(frame)
scene.render.filepath = out
bpy.ops.render.render(write_still=True)
"""


@pytest.fixture(scope="module", params=["4.2", "4.5"])
def blender(request: pytest.FixtureRequest) -> Blender:
    """The environment of that Blender, prepared (once per machine) as a worker would."""
    from renderfarm.blender_envs import prepare

    return prepare(Version.parse(request.param), progress=print)


def run_in(blender: Blender, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([blender.path, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def scene_of(blender: Blender, folder: Path, *options: str) -> Path:
    """A scene built by ``blender``'s own ``bpy`` (renderfarm's deterministic demo)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"made-by-{blender.version}.blend"
    run_in(blender, "-m", "renderfarm.blender.scenes", str(path), "--width", "64", "--height",
           "48", "--samples", "8", "--frames", "2", *options)
    return path


def own_render(blender: Blender, blend: Path, folder: Path, frame: int,
               extension: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "reference.py"
    script.write_text(REFERENCE)
    out = folder / f"own_{frame:04d}{extension}"
    run_in(blender, str(script), "--", str(blend), str(out), str(frame))
    return out


@pytest.mark.parametrize("tiles", [(2, 2), (1, 1)])
@pytest.mark.parametrize(("output", "extension"), [("PNG,8,RGBA", ".png"), (None, ".exr")])
def test_a_scene_renders_with_the_blender_that_saved_it(
        farm, blender: Blender, tmp_path: Path, tiles: tuple[int, int], output: str | None,
        extension: str) -> None:
    blend = scene_of(blender, tmp_path, *(["--output", output] if output else ["--passes"]))
    result = farm.render(JobSpec(str(blend), frames="1-2", tiles=tiles,
                                 output=str(tmp_path / "farm" / f"f_####{extension}")))
    assert result.scene.blender == str(blender.version)
    assert not [w for w in result.warnings if "saved with Blender" in w], result.warnings
    for frame in (1, 2):
        want = own_render(blender, blend, tmp_path / "own", frame, extension)
        assert differences(result.outputs[frame], want) == [], (frame, tiles)


#: what a scene made by an older Blender asks of the farm's finishing, tiled: its options for
#: ``renderfarm.blender.scenes``, the tile grid, the output's extension
OUTPUTS = {
    "stereo 3D, a PNG file per view": (
        ("--output", "PNG,8,RGBA", "--set", "scene.render.use_multiview=True"), (2, 2), ".png"),
    "multilayer EXR, half float PIZ, passes": (
        ("--output", "OPEN_EXR_MULTILAYER,16", "--passes", "--set",
         "scene.render.image_settings.exr_codec='PIZ'"), (2, 2), ".exr"),
    "burn-in stamp, png": (("--output", "PNG,8,RGBA", "--extra", "stamp"), (2, 1), ".png"),
    "the compositor on the merged frame, 16-bit png": (
        ("--output", "PNG,16,RGBA", "--compositor"), (2, 2), ".png"),
    "the compositor on the merged frame, multilayer EXR, half float, passes": (
        ("--output", "OPEN_EXR_MULTILAYER,16", "--compositor", "--passes"), (2, 1), ".exr"),
}


@pytest.mark.parametrize("case", sorted(OUTPUTS))
def test_older_blenders_outputs_finished_by_the_farm_equal_their_own(
        farm, blender: Blender, case: str, tmp_path: Path) -> None:
    """Views, EXR encodings and passes, the stamp and the compositor, each finished on a
    worker by the Blender that made the scene: every file equals that Blender's own."""
    options, tiles, extension = OUTPUTS[case]
    made = scene_of(blender, tmp_path / "made", *options)
    result = farm.render(JobSpec(str(made), frames="1", tiles=tiles,
                                 output=str(tmp_path / "farm" / f"f_####{extension}")))
    assert result.tiles == tiles, result.warnings
    assert result.scene.blender.startswith(str(blender.version.series[0])), result.scene
    own = own_render(blender, made, tmp_path / "own", 1, extension)
    got = sorted(result.frame_files[1])
    if "stereo" in case:  # Blender writes a file per view: own_0001_L.png, own_0001_R.png
        want = sorted(own.parent.glob(f"own_0001_*{extension}"))
        assert [p.name[-6:] for p in got] == [p.name[-6:] for p in want] == \
            [f"_L{extension}", f"_R{extension}"]
    else:
        want = [own]
    for mine, theirs in zip(got, want, strict=True):
        assert differences(mine, theirs) == [], (mine.name, theirs.name)


#: Blender's own Render Animation of a file (its output path, its format: a video)
ANIMATION = """
import bpy, sys
bpy.ops.wm.open_mainfile(filepath=sys.argv[-1])
bpy.ops.render.render(animation=True)
"""
#: a scene that writes an H.264 MP4 as artists set it up in Blender 4
VIDEO_4 = ("--set", "scene.render.filepath='//render/shot_'",
           "--set", "scene.render.image_settings.file_format='FFMPEG'",
           "--set", "scene.render.ffmpeg.format='MPEG4'",
           "--set", "scene.render.ffmpeg.codec='H264'",
           "--set", "scene.render.ffmpeg.constant_rate_factor='HIGH'")


def test_older_blenders_video_equals_their_own(farm, blender: Blender,
                                               tmp_path: Path) -> None:
    """Tiles merged, then encoded by a worker with the Blender that made the scene (its
    FFmpeg writer, the stamp, the sound strip where its bpy has Audaspace: 4.5's has, 4.2's
    wheel has not): the decoded frames and sound equal that Blender's own video."""
    import shutil

    import numpy as np

    from tests.test_outputs import _decoded

    sound = ("--extra", "sound") if blender.version.series >= (4, 5) else ()
    made = scene_of(blender, tmp_path / "made", "--output", "PNG,8,RGBA", "--extra", "stamp",
                    *sound, *VIDEO_4)
    for folder in ("own", "farm"):
        (tmp_path / folder).mkdir()
        shutil.copy(made, tmp_path / folder / "scene.blend")
    script = tmp_path / "animation.py"
    script.write_text(ANIMATION)
    run_in(blender, str(script), "--", str(tmp_path / "own" / "scene.blend"))
    result = farm.render(JobSpec(str(tmp_path / "farm" / "scene.blend"), frames="1-2",
                                 tiles=(2, 2)))
    assert result.tiles == (2, 2), result.warnings
    assert any(t.kind == "encode" for t in result.tasks)
    got = tmp_path / "farm" / "render" / "shot_0001-0002.mp4"
    want = tmp_path / "own" / "render" / "shot_0001-0002.mp4"
    assert got in result.files and want.is_file()
    got_frames, got_sound = _decoded(got)
    want_frames, want_sound = _decoded(want)
    assert len(got_frames) == len(want_frames) == 2
    for mine, theirs in zip(got_frames, want_frames, strict=True):
        assert np.array_equal(mine, theirs)
    if sound:
        assert want_sound is not None and np.array_equal(got_sound, want_sound)


def test_older_blenders_denoise_the_merged_frame_once(farm, blender: Blender,
                                                      tmp_path: Path) -> None:
    """Noisy tiles merged, then denoised once on a worker by the Blender that made the
    scene (its Cycles' standalone denoiser): the grid changes no bit, the file has the parts
    Blender writes, and its image is close to Blender's render-time denoise."""
    from tests.test_render import assert_same_image, parts
    from tests.test_seamfree import psnr

    made = scene_of(blender, tmp_path / "made", "--denoise", "--samples", "32")
    tiled = farm.render(JobSpec(str(made), frames="1", tiles=(2, 2),
                                output=str(tmp_path / "t_####.exr")))
    whole = farm.render(JobSpec(str(made), frames="1", denoise="post",
                                output=str(tmp_path / "w_####.exr")))
    assert not tiled.warnings and not whole.warnings, tiled.warnings + whole.warnings
    assert_same_image(tiled.outputs[1], whole.outputs[1])
    own = own_render(blender, made, tmp_path / "own", 1, ".exr")
    assert parts(tiled.outputs[1]) == parts(own)
    assert psnr(tiled.outputs[1], own) >= 40.0


def test_older_blenders_file_output_nodes_write_what_they_write(farm, blender: Blender,
                                                               tmp_path: Path) -> None:
    """A File Output node (Depth to a 32-bit EXR) of a scene made by an older Blender: its
    file, written when the merged frame is composited on a worker, lands where that Blender
    writes it and equals its own, as does the frame."""
    made = scene_of(blender, tmp_path / "made", "--output", "PNG,8,RGBA", "--extra",
                    "file-output")
    result = farm.render(JobSpec(str(made), frames="1", tiles=(2, 2),
                                 output=str(tmp_path / "farm" / "f_####.png")))
    assert result.tiles == (2, 2), result.warnings
    # where Blender writes it: the node's folder next to the .blend, named by Blender
    written = made.parent / "passes" / "depth_0001Depth.exr"
    assert written in result.files, result.files
    mine = written.rename(tmp_path / "farm-depth.exr")  # Blender's own render writes there
    own = own_render(blender, made, tmp_path / "own", 1, ".png")
    assert differences(result.outputs[1], own) == []
    assert written.is_file()
    assert differences(mine, written) == []


def test_jobs_of_two_blenders_run_at_once(farm, tmp_path: Path, make_scene) -> None:
    from renderfarm.blender_envs import prepare

    old = prepare(Version(4, 2))
    made_old = scene_of(old, tmp_path, "--output", "PNG,8,RGBA")
    made_new = make_scene(width=64, height=48, frames=2, samples=8)
    jobs = [farm.submit(JobSpec(str(blend), frames="1-2", tiles=(2, 1),
                                output=str(tmp_path / name / "f_####.png")))
            for name, blend in (("old", made_old), ("new", made_new))]
    results = [job.result(timeout=300) for job in jobs]
    assert results[0].scene.blender == str(old.version)
    assert results[1].scene.blender.startswith("5.")
    # the same workers ran both (each keeps a Blender process per Blender it renders with)
    assert {t.worker for t in results[0].renders} & {t.worker for t in results[1].renders}
    for frame in (1, 2):
        want = own_render(old, made_old, tmp_path / "own", frame, ".png")
        assert differences(results[0].outputs[frame], want) == []


def test_the_worker_list_names_each_workers_blenders(farm, blender: Blender) -> None:
    farm.runner("cpu")
    listed = farm.workers()
    assert listed and all(w["blenders"] and w["blenders"][0].startswith("5.")
                          for w in listed)


def test_through_the_service_with_the_file_gone_after_submit(blender: Blender,
                                                            tmp_path: Path) -> None:
    """``renderfarm serve``: a client submits a scene made by ``blender`` and deletes it; the
    farm renders it with that Blender (tiled) and the fetched frames are its own."""
    import shutil

    from tests.conftest import ServerProcess

    made = scene_of(blender, tmp_path / "made", "--output", "PNG,8,RGBA")
    sent = tmp_path / "sent" / made.name
    sent.parent.mkdir()
    shutil.copy(made, sent)
    server = ServerProcess(tmp_path / "state", None, "--workers", "2").start()
    try:
        with server.client() as client:
            job_id = client.submit(sent, {"frames": "1-2", "tiles": [2, 2],
                                          "output": "shot_####.png"})
            sent.unlink()
            job = client.wait(job_id, timeout=300)
            assert job["state"] == "done", job
            assert not [w for w in job["warnings"] if "Blender" in w], job["warnings"]
            fetched = client.fetch_outputs(job_id, tmp_path / "fetched")
        listed = subprocess.run([sys.executable, "-m", "renderfarm", "blenders", "--farm",
                                 server.address, "--json"], capture_output=True, text=True,
                                timeout=120)
        assert listed.returncode == 0, listed.stderr
        builds = {(b["version"], b["kind"]): b for b in json.loads(listed.stdout)}
        assert (str(blender.version), "bpy") in builds, builds  # the farm's, with machines
        assert builds[(str(blender.version), "bpy")]["machines"]
    finally:
        server.stop()
    shutil.copy(made, sent)  # Blender's own render names the file it read: the same path
    for frame in (1, 2):
        want = own_render(blender, sent, tmp_path / "own", frame, ".png")
        assert differences(fetched[frame], want) == [], frame


#: Debian's Blender package: the one Blender executable this machine can install (CI does)
EXECUTABLE = "/usr/bin/blender"
#: a Cycles scene as Blender 3.4 makes it (no denoise: Debian's build has no OpenImageDenoise)
MAKE_34 = """
import bpy, sys
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.samples = 8
scene.cycles.device = "CPU"
scene.cycles.use_adaptive_sampling = False
scene.cycles.use_denoising = False
scene.render.resolution_x, scene.render.resolution_y = 64, 48
scene.render.resolution_percentage = 100
scene.frame_start, scene.frame_end = 1, 2
scene.render.image_settings.file_format = "PNG"
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[-1], compress=False)
"""


@pytest.fixture(scope="module")
def debian_blender(tmp_path_factory: pytest.TempPathFactory) -> Blender:
    """Blender 3.4.1 from Debian's package, registered as ``renderfarm blenders add`` does."""
    if not os.access(EXECUTABLE, os.X_OK):
        pytest.fail(f"{EXECUTABLE} is missing: apt-get install blender (.ci/run does)")
    done = subprocess.run([sys.executable, "-m", "renderfarm.cli", "blenders", "add",
                           EXECUTABLE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Blender 3.4") and "(executable)" in done.stdout
    from renderfarm.blender_envs import executables

    return next(b for b in executables() if b.path == EXECUTABLE)


def blender_b(*args: str) -> None:
    done = subprocess.run([EXECUTABLE, "-b", *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.parametrize("tiles", [(2, 2), (1, 1)])
def test_a_blender_executable_renders_as_its_own_render_animation(
        farm, debian_blender: Blender, tmp_path: Path, tiles: tuple[int, int]) -> None:
    """``--blender /usr/bin/blender``: the worker runs that Blender (``blender -b``) in its
    Blender process; the files equal its own ``blender -b FILE -a``, tiled and whole."""
    script = tmp_path / "make.py"
    script.write_text(MAKE_34)
    blend = tmp_path / "made-by-3.4.blend"
    blender_b("--factory-startup", "--python", str(script), "--", str(blend))
    result = farm.render(JobSpec(str(blend), frames="1-2", tiles=tiles, blender=EXECUTABLE,
                                 output=str(tmp_path / "farm" / "f_####.png")))
    assert result.scene.blender == "3.4.1"
    blender_b(str(blend), "-o", str(tmp_path / "own" / "f_####"), "-a")
    for frame in (1, 2):
        assert differences(result.outputs[frame],
                           tmp_path / "own" / f"f_{frame:04d}.png") == [], (frame, tiles)


def test_what_a_blender_build_lacks_fails_the_job_at_once(farm, debian_blender: Blender,
                                                          tmp_path: Path) -> None:
    """Debian's Blender 3.4 has no OpenImageDenoise: a denoised scene fails with that
    reason, not retried into a different frame (its own render fails the same way)."""
    script = tmp_path / "make.py"
    script.write_text(MAKE_34.replace("use_denoising = False", "use_denoising = True"))
    blend = tmp_path / "denoised.blend"
    blender_b("--factory-startup", "--python", str(script), "--", str(blend))
    from renderfarm.errors import RenderError

    with pytest.raises(RenderError, match="cannot render the scene.*OpenImageDenoise") as caught:
        farm.render(JobSpec(str(blend), frames="1", blender=EXECUTABLE, denoise="render",
                            output=str(tmp_path / "d_####.png")))
    assert "--blender" in str(caught.value)
