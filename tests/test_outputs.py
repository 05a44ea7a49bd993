"""Every file exactly as Blender writes it: scenes set up the way artists set them up, rendered
by plain Blender ("Render Animation" with the scene's own output settings and path) and by the
farm with the scene's own output (no ``-o``), whole frames and 2x2 tiles, compared file by
file: names, format, bit depth, channels, compression, metadata and pixels."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from renderfarm.errors import OutputError, ServiceError
from renderfarm.frames import parse_frames
from renderfarm.job import JobSpec
from tests.conftest import HERE, run_python
from tests.filecompare import differences, facts

pytestmark = [pytest.mark.blender, pytest.mark.ray]

#: File names the .blend Blender rendered: Blender's copy and the farm's are two copies of
#: one scene in two folders, so the values differ by design; the tests check instead that the
#: farm's file has the key wherever Blender's has it, naming the artist's copy
#: (:func:`_names_the_artists_file`)
KNOWN = ("File", "Blender:File")

#: OpenImageIO writes the DWA level into the header when it is not OpenEXR's default (45,
#: Blender's quality 90); Blender writes the same pixels without it
KNOWN_DWA_LEVEL = ("openexr:dwaCompressionLevel",)

#: the setup whose File Output nodes name their files every way Blender allows
FORMS = "File Output nodes named every way (no #, # in file name, folder or item, sub-paths)"

#: setup -> (scene options, frames)
SETUPS: dict[str, tuple[dict[str, object], str]] = {
    "png 8-bit RGBA (Blender's default)": ({"output": "PNG,8,RGBA"}, "1-2"),
    "png 16-bit RGB, compression 90": (
        {"output": "PNG,16,RGB", "set": ["scene.render.image_settings.compression=90"]},
        "1-2"),
    "tiff 8-bit RGB, LZW": (
        {"output": "TIFF,8,RGB", "set": ["scene.render.image_settings.tiff_codec='LZW'"]},
        "1-2"),
    "jpeg quality 70": (
        {"output": "JPEG,8,RGB", "set": ["scene.render.image_settings.quality=70"]},
        "1-2"),
    "webp": ({"output": "WEBP,8,RGBA"}, "1-2"),
    "exr single layer half DWAA": (
        {"output": "OPEN_EXR,16,RGBA", "set": ["scene.render.image_settings.exr_codec='DWAA'"]},
        "1-2"),
    "exr single layer float RGB PIZ": (
        {"output": "OPEN_EXR,32,RGB", "set": ["scene.render.image_settings.exr_codec='PIZ'"]},
        "1-2"),
    "multilayer exr half DWAA quality 60": (
        {"output": "OPEN_EXR_MULTILAYER,16",
         "set": ["scene.render.image_settings.exr_codec='DWAA'",
                 "scene.render.image_settings.quality=60"]}, "1-2"),
    "multilayer exr half PIZ, passes": (
        {"output": "OPEN_EXR_MULTILAYER,16", "passes": True,
         "set": ["scene.render.image_settings.exr_codec='PIZ'"]}, "1-2"),
    "working space ACEScg, png": (
        {"output": "PNG,8,RGBA", "set": ["data.colorspace.working_space=ACEScg"]}, "1-2"),
    "working space ACEScg, exr": (
        {"output": "OPEN_EXR_MULTILAYER,32",
         "set": ["data.colorspace.working_space=ACEScg"]}, "1-2"),
    "burn-in stamp, png": ({"output": "PNG,8,RGBA", "extra": ["stamp"]}, "1-2"),
    "burn-in stamp, multilayer exr": (
        {"output": "OPEN_EXR_MULTILAYER,32", "extra": ["stamp"]}, "1-2"),
    "compositor reads the frame (Scene Time)": (
        {"output": "PNG,16,RGBA", "extra": ["scene-time"]}, "1-3"),
    "negative frames, name without #": (
        {"output": "PNG,8,RGBA", "set": ["scene.render.filepath='//render/f'"]}, "-2-0"),
    "compositor File Output node (Depth to EXR)": (
        {"output": "PNG,8,RGBA", "extra": ["file-output"]}, "1-2"),
    "jpeg, File Output node": (
        {"output": "JPEG,8,RGB", "extra": ["file-output"]}, "2-3"),
    "stereo 3D, a PNG file per view": (
        {"output": "PNG,8,RGBA", "set": ["scene.render.use_multiview=True"]}, "1-2"),
    "stereo 3D, a multilayer EXR per view, half PIZ": (
        {"output": "OPEN_EXR_MULTILAYER,16", "passes": True,
         "set": ["scene.render.use_multiview=True",
                 "scene.render.image_settings.exr_codec='PIZ'"]}, "1-2"),
    "stereo 3D, anaglyph PNG (whole frames)": (
        {"output": "PNG,8,RGB", "set": ["scene.render.use_multiview=True",
                                        "scene.render.image_settings.views_format='STEREO_3D'"]},
        "1-2"),
    "stereo 3D, every view in one multilayer EXR (whole frames)": (
        {"output": "OPEN_EXR_MULTILAYER,32",
         "set": ["scene.render.use_multiview=True",
                 "scene.render.image_settings.views_format='MULTIVIEW'"]}, "1"),
    "File Output nodes in a node group, subfolder and ../ in their file names": (
        {"output": "PNG,8,RGBA", "extra": ["file-output-nested"]}, "1-2"),
    "stereo 3D with a File Output node (whole frames)": (
        {"output": "PNG,8,RGBA", "extra": ["file-output"],
         "set": ["scene.render.use_multiview=True"]}, "1-2"),
    FORMS: ({"output": "PNG,8,RGBA", "extra": ["file-output-forms"]}, "1-3"),
    "folder path, no extension": (
        {"output": "PNG,8,RGB", "set": ["scene.render.filepath='//out/'",
                                        "scene.render.use_file_extension=False"]}, "1-2"),
}


def _names_the_artists_file(got: Path, want: Path, blend: Path) -> None:
    """Wherever Blender's file names its .blend (``File``; JPEG ``Blender:File``; in every
    part), the farm's names the artist's copy ``blend``, not a worker's."""
    mine, theirs = facts(got).part_metadata, facts(want).part_metadata
    for index, (ours, blenders) in enumerate(zip(mine, theirs, strict=True)):
        for key in KNOWN:
            if key in blenders:
                assert ours.get(key) == str(blend), (got.name, index, key, ours.get(key))


def _copy(blend: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    return Path(shutil.copy(blend, folder / "scene.blend"))


def _files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".blend"}


@pytest.fixture(scope="module")
def blender_files(tmp_path_factory: pytest.TempPathFactory, make_scene):
    """``blender_files(setup)`` -> (the scene, {relative name: file Blender wrote})."""
    made: dict[str, tuple[Path, dict[str, Path]]] = {}

    def get(setup: str) -> tuple[Path, dict[str, Path]]:
        if setup not in made:
            options, frames = SETUPS[setup]
            settings = ["scene.render.filepath='//render/shot_####'", *options.get("set", [])]
            blend = make_scene(width=48, height=32, frames=3, samples=2,
                               **{**options, "set": settings})
            folder = tmp_path_factory.mktemp("blender")
            copy = _copy(blend, folder / "project")
            numbers = parse_frames(frames)
            run_python(str(HERE / "blender_reference.py"), str(copy), "-",
                       f"{min(numbers)},{max(numbers)}", "ANIMATION")
            made[setup] = (blend, _files(folder / "project"))
        return made[setup]

    return get


@pytest.mark.parametrize("tiles", [(1, 1), (2, 2)], ids=["whole", "tiled"])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_the_farm_writes_the_files_blender_writes(farm, blender_files, tmp_path, setup,
                                                  tiles) -> None:
    blend, want = blender_files(setup)  # the same scene the farm renders
    assert want, "Blender wrote nothing: the setup is wrong"
    _options, frames = SETUPS[setup]
    copy = _copy(blend, tmp_path / "project")
    result = farm.render(JobSpec(str(copy), frames=frames, tiles=tiles))  # no -o
    got = _files(tmp_path / "project")
    assert sorted(got) == sorted(want), "the farm's files are named otherwise"
    if "(whole frames)" in setup and tiles != (1, 1):  # said before it renders
        assert result.tiles == (1, 1)
        assert any("whole frames" in w for w in result.warnings), result.warnings
    delivered = [*result.outputs.values(),
                 *(Path(p) for files in result.extra_outputs.values() for p in files)]
    assert sorted(str(p.relative_to(tmp_path / "project")) for p in delivered) == sorted(want)
    # each frame lists every file it produced, and no file is two frames'
    listed = [p for files in result.frame_files.values() for p in files]
    assert sorted(result.frame_files) == sorted(parse_frames(frames))
    assert sorted(str(p.relative_to(tmp_path / "project")) for p in listed) == sorted(want)
    assert len({len(files) for files in result.frame_files.values()}) == 1, result.frame_files
    known = KNOWN
    if "quality" in setup and "exr" in setup and tiles != (1, 1):
        known = (*known, *KNOWN_DWA_LEVEL)
    for name in want:
        found = differences(got[name], want[name], known=known)
        assert found == [], (name, *found)
        _names_the_artists_file(got[name], want[name], copy)


#: a scene that writes an H.264 MP4 with AAC sound from a sound strip, as artists set it up
VIDEO = ["scene.render.filepath='//render/shot_'",
         "scene.render.image_settings.media_type='VIDEO'",
         "scene.render.image_settings.file_format='FFMPEG'",
         "scene.render.ffmpeg.format='MPEG4'", "scene.render.ffmpeg.codec='H264'",
         "scene.render.ffmpeg.constant_rate_factor='HIGH'"]

#: every scene format of SETUPS, and a video: the scene's own output before ``-o`` overrides it
SCENE_FORMATS = {name: options for name, (options, _frames) in SETUPS.items()
                 if "extra" not in options and "use_multiview" not in str(options)
                 and "working space" not in name and "negative" not in name
                 and "folder" not in name}
SCENE_FORMATS["video, H.264 MP4"] = {"output": "PNG,8,RGBA", "set": VIDEO}
#: the extensions ``-o`` overrides them with
OVERRIDES = (".png", ".tif", ".jpg", ".webp", ".exr")


@pytest.fixture(scope="module")
def switched_files(tmp_path_factory: pytest.TempPathFactory, make_scene):
    """``switched_files(scene format)`` -> (the scene, {override extension: the file plain
    Blender writes of frame 1 once the scene's format is switched to the override's in its
    Output properties}), for the overrides that change the scene's format."""
    from renderfarm.job import output_format

    made: dict[str, tuple[Path, dict[str, Path]]] = {}

    def get(name: str) -> tuple[Path, dict[str, Path]]:
        if name not in made:
            options = SCENE_FORMATS[name]
            blend = make_scene(width=40, height=24, frames=1, samples=1, **options)
            own = re.search(r"file_format='(\w+)'", str(options))
            scene_format = own.group(1) if own else str(options["output"]).split(",")[0]
            formats = {ext: output_format(f"x{ext}", scene_format) for ext in OVERRIDES}
            formats = {ext: f for ext, f in formats.items() if f != scene_format}
            folder = tmp_path_factory.mktemp("switched")
            copy = _copy(blend, folder / "project")
            run_python(str(HERE / "blender_reference.py"), str(copy),
                       str(folder / "{format}"), "1", "SWITCH:" + ",".join(formats.values()))
            made[name] = (blend, {ext: folder / f for ext, f in formats.items()})
        return made[name]

    return get


@pytest.mark.parametrize("tiles", [(1, 1), (2, 2)], ids=["whole", "tiled"])
@pytest.mark.parametrize("scene_format", list(SCENE_FORMATS))
def test_an_override_writes_what_blender_writes_once_the_format_is_switched(
        farm, switched_files, tmp_path, scene_format, tiles) -> None:
    """``-o out/f_####.png`` (.tif, .jpg, .webp, .exr) on a scene that writes another format:
    the depth, colour mode, compression and pixels Blender writes once the scene's format is
    switched in its Output properties (an FFMPEG scene's 8 bits stay 8 in a PNG), tiled as
    whole."""
    blend, want = switched_files(scene_format)
    assert want, "no override changes this scene's format: the table is wrong"
    copy = _copy(blend, tmp_path / "project")
    for ext, reference in want.items():
        result = farm.render(JobSpec(str(copy), frames="1", tiles=tiles,
                                     output=str(tmp_path / "out" / f"f_####{ext}")))
        assert result.tiles == tiles, result.warnings
        got = result.outputs[1]
        assert got == tmp_path / "out" / f"f_0001{ext}"
        known = (*KNOWN, *KNOWN_DWA_LEVEL) if ext == ".exr" and tiles != (1, 1) else KNOWN
        assert differences(got, reference, known=known) == [], (ext, facts(got).parts,
                                                                 facts(reference).parts)
        _names_the_artists_file(got, reference, copy)


def test_render_json_lists_every_file_of_each_frame(blender_files, tmp_path) -> None:
    """``renderfarm render --json``: each frame's files (both views, the File Output node's
    per view) under ``frame_files``, all of them under ``files``; ``outputs`` keeps the
    frame's first file."""
    from tests.test_cli import run

    blend, want = blender_files("stereo 3D with a File Output node (whole frames)")
    copy = _copy(blend, tmp_path / "project")
    proc = run("render", str(copy), "--frames", "1-2", "--workers", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    project = tmp_path / "project"
    listed = {frame: sorted(str(Path(p).relative_to(project)) for p in files)
              for frame, files in summary["frame_files"].items()}
    assert listed == {frame: sorted(n for n in want if f"000{frame}" in n)
                      for frame in ("1", "2")}
    assert len(listed["1"]) == 4, listed  # _L and _R, and the node's file of each view
    assert sorted(str(Path(p).relative_to(project)) for p in summary["files"]) == sorted(want)
    assert summary["outputs"]["1"] == summary["frame_files"]["1"][0]


def test_stamp_into_multilayer_exr_renders_whole_frames_and_says_so(farm, make_scene,
                                                                    tmp_path) -> None:
    blend = make_scene(width=48, height=32, frames=3, samples=2,
                       output="OPEN_EXR_MULTILAYER,32", extra=["stamp"],
                       set=["scene.render.filepath='//render/shot_####'"])
    result = farm.render(JobSpec(str(_copy(blend, tmp_path / "p")), frames="1", tiles=(2, 2)))
    assert result.tiles == (1, 1)
    assert any("stamp" in w and "--tiles 2x2 ignored" in w for w in result.warnings), \
        result.warnings


def test_o_picks_the_format_and_keeps_the_scenes_settings_for_it(farm, make_scene,
                                                                 tmp_path) -> None:
    """-o shot_####.exr on a single-layer half EXR scene stays single-layer half; on a PNG
    scene it is a multilayer EXR with every pass."""
    single = make_scene(width=48, height=32, frames=3, samples=2, output="OPEN_EXR,16,RGBA")
    result = farm.render(JobSpec(str(single), frames="1", tiles=(2, 1),
                                 output=str(tmp_path / "a_####.exr")))
    parts = facts(result.outputs[1]).parts
    assert [(p[2], p[3]) for p in parts] == [(("R", "G", "B", "A"), "half")]
    png = make_scene(width=48, height=32, frames=3, samples=2, output="PNG,8,RGBA")
    result = farm.render(JobSpec(str(png), frames="1", tiles=(2, 1),
                                 output=str(tmp_path / "b_####.exr")))
    parts = facts(result.outputs[1]).parts
    assert parts[0][0] == "ViewLayer.Combined" and parts[0][3] == "float"


def test_file_output_files_reach_a_client_of_the_service_through_s3(
        blender_files, tmp_path, s3_server) -> None:
    """A client of a farm service whose storage is S3 (moto_server on loopback): the files of
    File Output nodes named every way (no ``#``, ``#`` in the name, folder or an item,
    sub-paths, multilayer) of a tiled job are delivered like the frames (fetch), one per
    frame at the paths Blender gives them, equal to Blender's; the .blend is moved away
    after submit."""
    import boto3

    from tests.conftest import ServerProcess
    from tests.test_service import wait_state

    blend, want = blender_files(FORMS)  # Blender's files of frames 1-3
    frame_of = {name: int(re.findall(r"\d+", name)[-1]) for name in want}  # the last number
    extras = {name: frame for name, frame in frame_of.items()
              if not name.startswith("render/") and frame <= 2}
    assert len(extras) == 2 * 14, extras  # 8 nodes: 14 files a frame
    boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="test",
                 aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket="extras")
    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    copy = _copy(blend, tmp_path / "artist")
    server = ServerProcess(tmp_path / "state", None, "--workers", "2", "--storage",
                           "s3://extras/farm", env=env).start()
    try:
        with server.client() as client:
            job_id = client.submit(copy, {"frames": "1-2", "tiles": [2, 2]})
            shutil.rmtree(copy.parent)  # the workers never see the artist's disk
            job = wait_state(client, job_id, ("done", "failed"))
            assert job["state"] == "done", job
            assert job["extra_outputs"] == extras
            client.fetch_outputs(job_id, tmp_path / "fetched")
            with pytest.raises(ServiceError, match="no file"):
                client.fetch(job_id, 1, tmp_path / "x", name="passes/pass_depth0002.exr")
    finally:
        server.stop()
    got = _files(tmp_path / "fetched")
    assert sorted(got) == sorted(["shot_0001.png", "shot_0002.png", *extras])
    for name in extras:
        assert differences(got[name], want[name], known=KNOWN) == [], name
        _names_the_artists_file(got[name], want[name], copy)


def test_a_worker_cannot_name_a_file_outside_its_nodes_folder(tmp_path) -> None:
    """The names a worker gives File Output files are checked by the driver: a lying or broken
    worker writes nothing outside the node's folder (and inside the job's folder on a
    service, whatever the node's path climbs to)."""
    from concurrent.futures import ThreadPoolExecutor

    from renderfarm.assemble import Assembler
    from renderfarm.errors import MergeError
    from renderfarm.job import SceneInfo
    from renderfarm.planner import plan_job

    info = SceneInfo(scene="Scene", engine="CYCLES", resolution=(8, 8), percentage=100,
                     frame_start=1, frame_end=1, camera="Camera", file_outputs=["A", "B"],
                     file_output_dirs=["//passes/", "//../../up/"])
    spec = JobSpec(str(tmp_path / "p" / "s.blend"), frames="1")
    plan = plan_job(spec, info, "j", workers=1)

    def assembler(folder: Path | None) -> Assembler:
        return Assembler(job_id="j", output=str(tmp_path / "o_####.png"), plan=plan,
                         info=info, scratch=tmp_path, final_format="PNG",
                         executor=ThreadPoolExecutor(1), finish=lambda d, f: (d, {}),
                         on_merged=lambda f, p: None, on_error=lambda e: None,
                         ended=lambda: False, project=tmp_path / "p", folder=folder)

    local = assembler(None)
    assert local.extra_target("0/d_0001.exr") == tmp_path / "p" / "passes" / "d_0001.exr"
    assert local.extra_target("1/x.exr") == (tmp_path / "p" / "../../up/x.exr")
    for lie in ("0/../../etc/passwd", "2/x.exr", "0//etc/x", "x/y", "0/", "0/a/./b",
                "0\\..\\x"):
        with pytest.raises(MergeError, match="no File Output node"):
            local.extra_target(lie)
    with pytest.raises(MergeError):
        local.add_extras(1, {"0/ok.exr": b"1", "0/../../bad": b"2"})
    assert not list(tmp_path.glob("extra-*"))  # nothing kept of a refused call
    farm = assembler(tmp_path / "out")
    assert farm.extra_target("1/x.exr") == tmp_path / "out" / "up" / "x.exr"


def test_inspect_lists_views_and_file_output_nodes(make_scene) -> None:
    from tests.test_cli import run

    blend = make_scene(width=48, height=32, frames=3, samples=2, output="PNG,8,RGBA",
                       extra=["file-output"], set=["scene.render.use_multiview=True"])
    proc = run("inspect", str(blend))
    assert proc.returncode == 0, proc.stderr
    assert "views: left (_L), right (_R); written as a file per view" in proc.stdout
    assert "File Output node File Output: writes into //passes/" in proc.stdout
    scene = json.loads(run("inspect", "--json", str(blend)).stdout)["scenes"][0]
    assert scene["views"] == ["left", "right"] and scene["view_suffixes"] == ["_L", "_R"]


def _decoded(path: Path) -> tuple[list, object]:
    """A video's frames (RGB, 8-bit) and its audio samples, as a player decodes them."""
    import av
    import numpy as np

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        sound = [f.to_ndarray().ravel() for f in container.decode(audio=0)] \
            if container.streams.audio else []
    return frames, (np.concatenate(sound) if sound else None)


@pytest.fixture(scope="module")
def blender_video(make_scene, tmp_path_factory):
    """The video scene and the video plain Blender's Render Animation writes for it."""
    blend = make_scene(width=48, height=32, frames=4, samples=2, output="PNG,8,RGBA",
                       extra=["sound", "stamp"], set=VIDEO)
    copy = _copy(blend, tmp_path_factory.mktemp("blender-video") / "project")
    run_python(str(HERE / "blender_reference.py"), str(copy), "-", "1,4", "ANIMATION")
    want = _files(copy.parent)
    assert list(want) == ["render/shot_0001-0004.mp4"], want
    return blend, want["render/shot_0001-0004.mp4"]


@pytest.mark.parametrize("tiles", [(1, 1), (2, 2)], ids=["whole", "tiled"])
def test_a_video_scene_gets_blenders_video(farm, blender_video, tmp_path, tiles) -> None:
    """Frames rendered on the farm (tiles merged), encoded by one worker with Blender's FFmpeg
    writer: the decoded frames and the sound equal Blender's own video of the scene."""
    import numpy as np

    blend, want = blender_video
    copy = _copy(blend, tmp_path / "project")
    result = farm.render(JobSpec(str(copy), frames="1-4", tiles=tiles,
                                 keep_frames=tiles == (2, 2)))
    assert result.tiles == tiles, result.warnings
    video = tmp_path / "project" / "render" / "shot_0001-0004.mp4"
    kept = [f"render/shot_000{f}.exr" for f in range(1, 5)] if tiles == (2, 2) else []
    assert sorted(_files(tmp_path / "project")) == sorted(["render/shot_0001-0004.mp4", *kept])
    assert video in result.files
    assert any(t.kind == "encode" for t in result.tasks)
    got_frames, got_sound = _decoded(video)
    want_frames, want_sound = _decoded(want)
    assert len(got_frames) == len(want_frames) == 4
    for got, ref in zip(got_frames, want_frames, strict=True):  # measured: bit for bit
        assert np.array_equal(got, ref)
    assert want_sound is not None and np.abs(want_sound).max() > 0.1  # the tone is there
    assert np.array_equal(got_sound, want_sound)
    if kept:  # the frames: the composited image as float, what the video was made of
        assert facts(tmp_path / "project" / kept[0]).parts[0][2:4] == (
            ("R", "G", "B", "A"), "float")


def test_o_names_a_video_and_its_container(make_scene, tmp_path) -> None:
    """renderfarm render -o clip.mkv on a PNG scene: a Matroska video named as given, the
    frames gone, exit code 0 and a line naming the video."""
    import av

    from tests.test_cli import run

    blend = make_scene(width=48, height=32, frames=4, samples=2, output="PNG,8,RGBA")
    proc = run("render", str(blend), "--frames", "2-4x2", "-o", str(tmp_path / "clip.mkv"),
               "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "rendered 2 frame(s)" in proc.stdout and str(tmp_path / "clip.mkv") in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv"]
    with av.open(str(tmp_path / "clip.mkv")) as container:
        assert "matroska" in container.format.name
        assert sum(1 for _ in container.decode(video=0)) == 2  # frames 2 and 4


@pytest.mark.parametrize(("path", "extension"), [("//render/", True), ("//render/shot_", False)],
                         ids=["folder", "no extension"])
def test_a_video_is_named_as_blender_names_it(farm, make_scene, tmp_path, path,
                                              extension) -> None:
    blend = make_scene(width=48, height=32, frames=2, samples=2, output="PNG,8,RGBA",
                       set=[*VIDEO, f"scene.render.filepath={path!r}",
                            f"scene.render.use_file_extension={extension}"])
    want = _copy(blend, tmp_path / "blender")
    run_python(str(HERE / "blender_reference.py"), str(want), "-", "1,2", "ANIMATION")
    copy = _copy(blend, tmp_path / "farm")
    result = farm.render(JobSpec(str(copy), frames="1-2"))
    assert sorted(_files(copy.parent)) == sorted(_files(want.parent))
    assert [p.relative_to(copy.parent) for p in result.files] == \
        [Path(n) for n in _files(want.parent)]


@pytest.mark.parametrize(("options", "frames", "folder", "words"), [
    ({"extra": ["sound"], "set": VIDEO}, "1-2,4", False, "one range of frames"),
    ({"set": [*VIDEO, "scene.render.use_multiview=True"]}, "1", False, "Stereoscopy"),
    ({"set": ["scene.render.filepath='//render/{blend_name}_####'"]}, "1", False,
     "{blend_name}"),
    ({"set": ["scene.render.filepath='//render/{blend_name}_####'"]}, "1", True,
     "{blend_name}"),
], ids=["scattered video frames", "stereo video", "path template", "path template, -o DIR/"])
def test_what_the_farm_cannot_write_as_blender_does_is_refused_before_rendering(
        farm, make_scene, tmp_path, options, frames, folder, words) -> None:
    blend = make_scene(width=48, height=32, frames=4, samples=2, output="PNG,8,RGBA",
                       **options)
    copy = _copy(blend, tmp_path / "p")
    output = str(tmp_path / "out") + "/" if folder else None  # -o DIR/: the scene's names
    with pytest.raises(OutputError, match=re.escape(words)):
        farm.render(JobSpec(str(copy), frames=frames, output=output))
    assert sorted(p.name for p in copy.parent.rglob("*")) == ["scene.blend"]


def test_a_client_of_the_service_fetches_the_video_and_kept_frames(farm_server, blender_video,
                                                                   tmp_path) -> None:
    """Through the farm service (CLI submit --wait, which fetches): the video, equal to
    Blender's when decoded; the frames only with --keep-frames."""
    import numpy as np

    from tests.test_service import cli

    blend, want = blender_video
    copy = _copy(blend, tmp_path / "artist")
    for keep, folder in ((False, tmp_path / "a"), (True, tmp_path / "b")):
        proc = cli("submit", str(copy), *farm_server.cli_args(), "--frames", "1-4",
                   "--tiles", "2x1", "--wait", "--fetch-to", str(folder),
                   *(["--keep-frames"] if keep else []))
        assert proc.returncode == 0, proc.stderr
        sent, total = map(int, re.search(r"sent (\d+) of (\d+) file", proc.stderr).groups())
        assert ("the farm had the rest" in proc.stderr) == (sent < total), proc.stderr
        kept = [f"shot_000{f}.exr" for f in range(1, 5)] if keep else []
        assert sorted(_files(folder)) == sorted(["shot_0001-0004.mp4", *kept])
        got, got_sound = _decoded(folder / "shot_0001-0004.mp4")
        ref, ref_sound = _decoded(want)
        assert all(np.array_equal(a, b) for a, b in zip(got, ref, strict=True))
        assert np.array_equal(got_sound, ref_sound)
