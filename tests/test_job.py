"""The job model: JSON round-trips, validation, output patterns."""

from __future__ import annotations

from pathlib import Path

import pytest

from renderfarm.errors import InputError, OutputError, UsageError
from renderfarm.job import (
    JobResult,
    JobSpec,
    Rect,
    SceneInfo,
    Task,
    TaskResult,
    Tile,
    output_format,
    output_path,
    resolve_output,
)


def test_spec_round_trip() -> None:
    spec = JobSpec("shot.blend", frames="1-8", tiles=(2, 2), samples=16, percentage=50,
                   device="gpu", output="out/shot_####.png", retries=3, task_timeout=60.0,
                   allow_scripts=True, overscan=8, scene="Main", name="shot")
    assert JobSpec.from_json(spec.to_json()) == spec
    assert JobSpec.from_dict({"blend_file": "a.blend"}) == JobSpec("a.blend")


def test_result_round_trip() -> None:
    spec = JobSpec("a.blend", frames="1-2")
    info = SceneInfo("Scene", "CYCLES", (64, 48), 100, 1, 2, camera="Camera",
                     view_layers={"ViewLayer": ["combined", "z"]})
    tile = Tile(0, Rect(0, 0, 64, 48), Rect(0, 0, 64, 48))
    task = Task("j", 0, 1, tile, (64, 48))
    assert Task.from_json(task.to_json()) == task
    result = JobResult("j", spec, info, (1, 2), {1: Path("o/1.exr"), 2: Path("o/2.exr")},
                       (TaskResult(0, 1, 0, True, render_seconds=1.5),), 3.0, "cpu", 2,
                       ("careful",))
    back = JobResult.from_json(result.to_json())
    assert back == result
    assert back.outputs[2] == Path("o/2.exr")
    assert back.render_seconds == 1.5


@pytest.mark.parametrize("kwargs,fragment", [
    ({"tiles": (0, 2)}, "tile columns must be from 1|tile columns must be 1 or more"),
    ({"tiles": (2, -1)}, "tile rows"),
    ({"tiles": (2,)}, "columns, rows"),
    ({"samples": 0}, "samples"),
    ({"percentage": 0}, "percentage"),
    ({"device": "tpu"}, "device must be one of"),
    ({"output": "out/x.gif"}, "unknown output extension '.gif'"),
    ({"output": "out/x"}, "unknown output extension"),
    ({"retries": -1}, "retries"),
    ({"task_timeout": 0}, "task_timeout"),
    ({"frames": "3-1"}, "backwards"),
    ({"overscan": -2}, "overscan"),
])
def test_validation(kwargs: dict, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        JobSpec("a.blend", **kwargs)


def test_from_dict_refuses_unknown_fields_and_bad_json() -> None:
    with pytest.raises(UsageError, match="unknown fields for JobSpec: colour"):
        JobSpec.from_dict({"blend_file": "a.blend", "colour": "red"})
    with pytest.raises(UsageError, match="not valid JSON"):
        JobSpec.from_json("{")


def test_output_patterns() -> None:
    # each as Blender 5.0's scene.render.frame_path() names it (checked with bpy)
    assert output_path("out/shot_####.exr", 7) == Path("out/shot_0007.exr")
    assert output_path("out/shot_#.exr", 123) == Path("out/shot_123.exr")
    assert output_path("out/shot_##.png", 12345) == Path("out/shot_12345.png")  # not cut
    assert output_path("out/shot.png", 7) == Path("out/shot.png0007.png")  # no '#'
    assert output_path("out/shot.png", -2) == Path("out/shot.png-0002.png")
    assert output_path("out/a##b###c.png", 7) == Path("out/a##b007c.png")  # the last run
    assert output_path("out/a##b###c.png", -2) == Path("out/a##b-002c.png")
    assert output_path("out/shot_####.exr", -2) == Path("out/shot_-0002.exr")
    assert output_path("out/s_##.png", -2) == Path("out/s_-02.png")
    assert output_path("o/#/x_####.exr", 1) == Path("o/#/x_0001.exr")  # folders keep '#'
    assert output_format("a.EXR") == "OPEN_EXR_MULTILAYER"
    assert output_format("a.jpeg") == "JPEG"
    assert output_format("a.mp4") == output_format("b.MKV") == "FFMPEG"  # a video
    with pytest.raises(OutputError, match="unknown output extension '.gif'"):
        output_format("a.gif")
    # the extension picks the format; the scene's own wins where the extension is also its
    assert output_format("a.exr", "OPEN_EXR") == "OPEN_EXR"
    assert output_format("a.exr", "PNG") == "OPEN_EXR_MULTILAYER"
    assert output_format("a.tga", "TARGA_RAW") == "TARGA_RAW"
    assert output_format("a.webp", "PNG") == "WEBP"


def _scene(**fields: object) -> SceneInfo:
    return SceneInfo(scene="S", engine="CYCLES", resolution=(8, 8), percentage=100,
                     frame_start=1, frame_end=2, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("path", "fmt", "ext", "frame", "want"), [
    ("//render/shot_####", "PNG", True, 7, "/proj/render/shot_0007.png"),
    ("//render/shot_####", "JPEG", True, -2, "/proj/render/shot_-0002.jpg"),
    ("//render/shot_####.png", "PNG", True, 7, "/proj/render/shot_0007.png"),
    ("//render/shot_####.jpeg", "JPEG", True, 7, "/proj/render/shot_0007.jpeg"),
    ("//render/shot_####", "PNG", False, 7, "/proj/render/shot_0007"),
    ("//render/shot", "PNG", True, 7, "/proj/render/shot0007.png"),
    ("//render/", "OPEN_EXR", True, 12, "/proj/render/0012.exr"),
    ("//", "TIFF", True, 3, "/proj/0003.tif"),
    ("", "PNG", True, 3, "/proj/0003.png"),
    ("/abs/a_##_b", "OPEN_EXR_MULTILAYER", True, 3, "/abs/a_03_b.exr"),
    ("//r/v##/s_###", "PNG", True, 3, "/proj/r/v##/s_003.png"),
])
def test_the_scenes_own_output_path_is_named_as_blender_names_it(path, fmt, ext, frame,
                                                                 want) -> None:
    info = _scene(output_path=path, file_format=fmt, file_extension=ext)
    pattern, got_format = resolve_output(None, info, "/proj")
    assert got_format == fmt
    assert output_path(pattern, frame) == Path(want)


def test_an_output_folder_keeps_the_scenes_names_and_a_pattern_its_extensions_format() -> None:
    info = _scene(output_path="//render/shot_####", file_format="OPEN_EXR")
    pattern, fmt = resolve_output("out/", info, "/proj")
    assert (output_path(pattern, 1), fmt) == (Path("out/shot_0001.exr"), "OPEN_EXR")
    assert resolve_output("o/x_##.exr", info, "/proj") == ("o/x_##.exr", "OPEN_EXR")
    assert resolve_output("o/x_##.png", info, "/proj") == ("o/x_##.png", "PNG")


def test_a_scene_that_writes_video_keeps_its_path_for_the_encoder_to_name() -> None:
    info = _scene(output_path="//v_", file_format="FFMPEG")
    # Blender's FFmpeg writer adds the frame range and the container's extension itself
    assert resolve_output(None, info, "/proj") == ("/proj/v_", "FFMPEG")
    assert resolve_output("out/", info, "/proj") == ("out/v_", "FFMPEG")
    assert resolve_output("o/f_####.png", info, "/proj")[1] == "PNG"  # -o says what to write
    assert resolve_output("o/clip.mov", info, "/proj") == ("o/clip.mov", "FFMPEG")
    with pytest.raises(OutputError, match="cannot write"):
        resolve_output(None, _scene(output_path="//v_", file_format="IRIS"), "/proj")
