"""Every file exactly as Blender writes it: scenes set up the way artists set them up, rendered
by plain Blender ("Render Animation" with the scene's own output settings and path) and by the
farm with the scene's own output (no ``-o``), whole frames and 2x2 tiles, compared file by
file: names, format, bit depth, channels, compression, metadata and pixels."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from renderfarm.errors import OutputError
from renderfarm.frames import parse_frames
from renderfarm.job import JobSpec
from tests.conftest import HERE, run_python
from tests.filecompare import differences, facts

pytestmark = [pytest.mark.blender, pytest.mark.ray]

#: File names the worker's copy of the .blend (Blender writes bpy.data.filepath, which a
#: worker cannot set to the artist's path): the farm's stated difference
KNOWN = ("File",)
#: a frame finished on a worker (tiles converted to PNG, TIFF, ...) carries no Cycles render
#: statistics (``cycles.<layer>.render_time``, ...): nothing rendered in that Blender call
KNOWN_CONVERTED = (*KNOWN, "cycles.")

#: OpenImageIO writes the DWA level into the header when it is not OpenEXR's default (45,
#: Blender's quality 90); Blender writes the same pixels without it
KNOWN_DWA_LEVEL = ("openexr:dwaCompressionLevel",)

#: setup -> (scene options, frames, whether tiled frames are finished by Blender on a worker)
SETUPS: dict[str, tuple[dict[str, object], str, bool]] = {
    "png 8-bit RGBA (Blender's default)": ({"output": "PNG,8,RGBA"}, "1-2", True),
    "png 16-bit RGB, compression 90": (
        {"output": "PNG,16,RGB", "set": ["scene.render.image_settings.compression=90"]},
        "1-2", True),
    "tiff 8-bit RGB, LZW": (
        {"output": "TIFF,8,RGB", "set": ["scene.render.image_settings.tiff_codec='LZW'"]},
        "1-2", True),
    "jpeg quality 70": (
        {"output": "JPEG,8,RGB", "set": ["scene.render.image_settings.quality=70"]},
        "1-2", True),
    "webp": ({"output": "WEBP,8,RGBA"}, "1-2", True),
    "exr single layer half DWAA": (
        {"output": "OPEN_EXR,16,RGBA", "set": ["scene.render.image_settings.exr_codec='DWAA'"]},
        "1-2", True),
    "exr single layer float RGB PIZ": (
        {"output": "OPEN_EXR,32,RGB", "set": ["scene.render.image_settings.exr_codec='PIZ'"]},
        "1-2", True),
    "multilayer exr half DWAA quality 60": (
        {"output": "OPEN_EXR_MULTILAYER,16",
         "set": ["scene.render.image_settings.exr_codec='DWAA'",
                 "scene.render.image_settings.quality=60"]}, "1-2", False),
    "multilayer exr half PIZ, passes": (
        {"output": "OPEN_EXR_MULTILAYER,16", "passes": True,
         "set": ["scene.render.image_settings.exr_codec='PIZ'"]}, "1-2", False),
    "working space ACEScg, png": (
        {"output": "PNG,8,RGBA", "set": ["data.colorspace.working_space=ACEScg"]}, "1-2", True),
    "working space ACEScg, exr": (
        {"output": "OPEN_EXR_MULTILAYER,32",
         "set": ["data.colorspace.working_space=ACEScg"]}, "1-2", False),
    "burn-in stamp, png": ({"output": "PNG,8,RGBA", "extra": ["stamp"]}, "1-2", True),
    "burn-in stamp, multilayer exr": (
        {"output": "OPEN_EXR_MULTILAYER,32", "extra": ["stamp"]}, "1-2", False),
    "compositor reads the frame (Scene Time)": (
        {"output": "PNG,16,RGBA", "extra": ["scene-time"]}, "1-3", True),
    "negative frames, name without #": (
        {"output": "PNG,8,RGBA", "set": ["scene.render.filepath='//render/f'"]}, "-2-0", True),
    "folder path, no extension": (
        {"output": "PNG,8,RGB", "set": ["scene.render.filepath='//out/'",
                                        "scene.render.use_file_extension=False"]}, "1-2", True),
}


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
            options, frames, _ = SETUPS[setup]
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
    _options, frames, converted = SETUPS[setup]
    copy = _copy(blend, tmp_path / "project")
    result = farm.render(JobSpec(str(copy), frames=frames, tiles=tiles))  # no -o
    got = _files(tmp_path / "project")
    assert sorted(got) == sorted(want), "the farm's files are named otherwise"
    assert sorted(str(p.relative_to(tmp_path / "project"))
                  for p in result.outputs.values()) == sorted(want)
    known = KNOWN_CONVERTED if converted and tiles != (1, 1) else KNOWN
    if "quality" in setup and "exr" in setup and tiles != (1, 1):
        known = (*known, *KNOWN_DWA_LEVEL)
    for name in want:
        assert differences(got[name], want[name], known=known) == [], name


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


@pytest.mark.parametrize(("options", "words"), [
    ({"set": ["scene.render.use_multiview=True"]}, ("2 views", "Stereoscopy")),
    ({"set": ["scene.render.image_settings.media_type='VIDEO'",
              "scene.render.image_settings.file_format='FFMPEG'"]}, ("video", "FFMPEG", "-o")),
], ids=["stereo", "video"])
def test_what_the_farm_cannot_write_as_blender_does_fails_before_rendering(
        farm, make_scene, tmp_path, options, words) -> None:
    blend = make_scene(width=48, height=32, frames=3, samples=2, output="PNG,8,RGBA", **options)
    copy = _copy(blend, tmp_path / "p")
    with pytest.raises(OutputError) as caught:
        farm.render(JobSpec(str(copy), frames="1"))
    for word in words:
        assert word in str(caught.value)
    assert sorted(p.name for p in copy.parent.rglob("*")) == ["scene.blend"]


def test_file_output_nodes_are_named_in_a_warning_and_write_nothing_on_workers(
        farm, make_scene, tmp_path) -> None:
    blend = make_scene(width=48, height=32, frames=3, samples=2, output="PNG,8,RGBA",
                       extra=["file-output"],
                       set=["scene.render.filepath='//render/shot_####'"])
    copy = _copy(blend, tmp_path / "p")
    result = farm.render(JobSpec(str(copy), frames="1-2", tiles=(2, 1)))
    assert any("File Output" in w for w in result.warnings), result.warnings
    assert sorted(_files(copy.parent)) == ["render/shot_0001.png", "render/shot_0002.png"]
