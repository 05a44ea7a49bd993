"""Real renders: real bpy workers on a real local Ray cluster, merged with OpenImageIO, compared
with plain single-process Blender renders of the same scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from renderfarm.job import JobSpec
from renderfarm.merge import read_layers
from tests.filecompare import unequal

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def assert_same_image(got: Path, want: Path) -> None:
    """Every channel of every part equal, bit for bit, with the same names."""
    a, b = read_layers(got), read_layers(want)
    assert list(a) == list(b), f"channels differ: {list(a)} != {list(b)}"
    for name in a:
        assert a[name].shape == b[name].shape, name
        diff = unequal(a[name], b[name])  # NaN equals NaN only at the same place
        assert not diff.any(), (
            f"{name}: {int(diff.sum())} pixels differ, max "
            f"{float(np.nan_to_num(np.abs(a[name] - b[name])[diff], nan=np.inf).max())}")


def parts(path: Path) -> list[tuple[str, tuple[str, ...], str]]:
    import OpenImageIO as oiio

    inp = oiio.ImageInput.open(str(path))
    found = []
    index = 0
    while inp.seek_subimage(index, 0):
        spec = inp.spec()
        found.append((spec.getattribute("name"), tuple(spec.channelnames), str(spec.format)))
        index += 1
    inp.close()
    return found


@pytest.mark.parametrize(("tiles", "group"), [((2, 2), True), ((3, 2), True), ((7, 5), True),
                                              ((7, 5), False)])
def test_tiled_render_equals_untiled_bit_for_bit(farm, make_scene, reference, tmp_path,
                                                 tiles, group) -> None:
    # odd size at a percentage, passes and two view layers, several frames
    blend = make_scene(width=67, height=45, percentage=75, frames=3, samples=4, passes=True)
    result = farm.render(JobSpec(str(blend), frames="1-3", tiles=tiles, group_tiles=group,
                                 output=str(tmp_path / "out_####.exr")))
    assert sorted(result.outputs) == [1, 2, 3]
    count = 3 * tiles[0] * tiles[1]
    rendered = sorted(i for t in result.renders if t.ok for i in t.members)
    assert rendered == list(range(count))  # every tile once, alone or in a group
    if group:
        # 2 workers, more tiles than they need: neighbours of a row share Blender calls
        assert len(result.renders) < count
    else:
        assert len(result.renders) == count and not any(t.covers for t in result.renders)
    refs = reference(blend, [1, 2, 3])
    for frame, path in result.outputs.items():
        assert path == tmp_path / f"out_{frame:04d}.exr"
        assert parts(path) == parts(refs[frame])
        assert_same_image(path, refs[frame])


def test_animation_writes_each_frame_to_its_file(farm, make_scene, reference, tmp_path) -> None:
    blend = make_scene(width=40, height=30, frames=4, samples=2)
    result = farm.render(JobSpec(str(blend), frames="2,4", output=str(tmp_path / "a_###.exr")))
    assert result.outputs == {2: tmp_path / "a_002.exr", 4: tmp_path / "a_004.exr"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_002.exr", "a_004.exr"]
    refs = reference(blend, [2, 4])
    assert_same_image(result.outputs[2], refs[2])
    assert_same_image(result.outputs[4], refs[4])
    # the objects move: frames must differ, so a swapped frame cannot pass
    a = read_layers(result.outputs[2])["ViewLayer.Combined.R"]
    b = read_layers(result.outputs[4])["ViewLayer.Combined.R"]
    assert (a != b).any()


def test_scene_range_is_the_default(farm, make_scene, tmp_path) -> None:
    blend = make_scene(width=32, height=32, frames=3, samples=1)
    result = farm.render(JobSpec(str(blend), output=str(tmp_path / "s_####.exr")))
    assert sorted(result.outputs) == [1, 2, 3]
    assert all(p.exists() for p in result.outputs.values())


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("TIFF", "tif")])
def test_tiled_8bit_output_equals_blenders_own_file(farm, make_scene, reference, tmp_path,
                                                    fmt, ext) -> None:
    import OpenImageIO as oiio

    blend = make_scene(width=61, height=37, frames=1, samples=4)
    result = farm.render(JobSpec(str(blend), frames="1", tiles=(3, 2),
                                 output=str(tmp_path / f"c_####.{ext}")))
    got = oiio.ImageBuf(str(result.outputs[1]))
    want = oiio.ImageBuf(str(reference(blend, [1], fmt)[1]))
    assert got.spec().format == want.spec().format
    assert got.spec().nchannels == want.spec().nchannels
    assert got.spec().width == 61 and got.spec().height == 37
    fmt_type = want.spec().format
    assert np.array_equal(got.get_pixels(fmt_type), want.get_pixels(fmt_type))


@pytest.mark.parametrize("crop", [True, False])
def test_user_border_is_respected(farm, make_scene, reference, tmp_path, crop) -> None:
    blend = make_scene(width=71, height=53, frames=1, samples=4,
                       border="0.13,0.21,0.77,0.9", no_crop=not crop)
    result = farm.render(JobSpec(str(blend), frames="1", tiles=(3, 3),
                                 output=str(tmp_path / "b_####.exr")))
    assert_same_image(result.outputs[1], reference(blend, [1])[1])


def test_adaptive_sampling_tiles_get_overscan(farm, make_scene, reference, tmp_path) -> None:
    blend = make_scene(width=96, height=64, frames=1, samples=16, adaptive=True)
    result = farm.render(JobSpec(str(blend), frames="1", tiles=(2, 2),
                                 output=str(tmp_path / "ad_####.exr")))
    got, want = read_layers(result.outputs[1]), read_layers(reference(blend, [1])[1])
    assert list(got) == list(want)
    for name in want:  # every channel of every pass: all but a few pixels bit for bit
        differ = unequal(got[name], want[name])
        assert differ.mean() < 0.001, f"{name}: {int(differ.sum())} pixels differ"
        if differ.any():  # and those by little: the overscan's edge, not a wrong tile
            scale = max(float(np.abs(want[name]).max()), 1.0)
            worst = float(np.abs(got[name] - want[name])[differ].max()) / scale
            assert worst < 0.05, f"{name}: off by up to {worst:.3g} of its range"


def test_render_time_denoise_renders_whole_frames(farm, make_scene, reference,
                                                  tmp_path) -> None:
    blend = make_scene(width=48, height=32, frames=1, samples=4, denoise=True)
    result = farm.render(JobSpec(str(blend), frames="1", tiles=(2, 2), denoise="render",
                                 output=str(tmp_path / "dn_####.exr")))
    assert any("render-time denoise" in w for w in result.warnings)
    assert len(result.renders) == 1
    assert_same_image(result.outputs[1], reference(blend, [1])[1])


def test_linked_libraries_and_geometry_nodes_render(farm, corpus, reference, tmp_path) -> None:
    blend = corpus / "geometry-nodes" / "file_to_pack.blend"
    result = farm.render(JobSpec(str(blend), frames="1", tiles=(2, 1), samples=2,
                                 percentage=5, output=str(tmp_path / "gn_####.exr")))
    layers = read_layers(result.outputs[1])
    depth = layers["View Layer.Depth.Z"]
    assert depth.shape == (858 * 5 // 100, 2048 * 5 // 100)
    # the linked geometry shows up: something is nearer than the background
    assert np.isfinite(depth).any() and depth.min() < 1e9
    assert_same_image(result.outputs[1], reference(blend, [1], "EXR", 2, 5)[1])


def test_idle_workers_do_not_burn_cpu(farm, make_scene, tmp_path) -> None:
    """One-thread workers (two on two cores) sit idle after a job at ~0 % CPU (Blender 5.0.1
    spins a thread at 100 % after rendering with persistent data and one thread)."""
    import os
    import time

    import ray

    blend = make_scene(width=48, height=32, samples=2, frames=2)
    farm.render(JobSpec(str(blend), frames="1-2", tiles=(2, 1),
                        output=str(tmp_path / "idle_####.exr")))
    pool = farm.runner("cpu").pool
    pids = [ray.get(w.actor.ping.remote())["pid"] for w in pool.workers.values()]

    def cpu_seconds(pid: int) -> float:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    time.sleep(1.0)
    before = {pid: cpu_seconds(pid) for pid in pids}
    time.sleep(3.0)
    busy = {pid: (cpu_seconds(pid) - before[pid]) / 3.0 for pid in pids}
    assert len(pids) == 2 and all(share < 0.2 for share in busy.values()), busy


@pytest.mark.parametrize("output,ext,tiles", [("PNG,8,RGBA", "png", (2, 2)),
                                              ("PNG,8,RGB", "png", (1, 1)),
                                              ("TIFF,8,RGB", "tif", (3, 1)),
                                              ("PNG,16,RGBA", "png", (2, 1))])
def test_the_scenes_own_depth_and_colour_mode_are_kept(farm, make_scene, reference, tmp_path,
                                                       output, ext, tiles) -> None:
    """A scene saved to write 8-bit PNG (Blender's default) gets 8-bit PNGs from the farm,
    tiled or whole, equal to the file Blender writes itself."""
    import OpenImageIO as oiio

    blend = make_scene(width=48, height=32, frames=1, samples=4, output=output)
    result = farm.render(JobSpec(str(blend), frames="1", tiles=tiles,
                                 output=str(tmp_path / f"o_####.{ext}")))
    got = oiio.ImageBuf(str(result.outputs[1]))
    want = oiio.ImageBuf(str(reference(blend, [1], "SCENE")[1]))
    assert got.spec().format == want.spec().format, (got.spec().format, want.spec().format)
    assert str(want.spec().format) == ("uint8" if ",8," in output else "uint16")
    assert got.spec().nchannels == want.spec().nchannels == (4 if "RGBA" in output else 3)
    assert np.array_equal(got.get_pixels(want.spec().format),
                          want.get_pixels(want.spec().format))


def test_tiled_files_carry_each_frames_own_metadata(farm, make_scene, reference,
                                                    tmp_path) -> None:
    """Frame, Scene and Camera in a tiled PNG are the frame's own, as Blender writes them
    (a helper scene's name or another frame's number would be a different file)."""
    import OpenImageIO as oiio

    blend = make_scene(width=48, height=32, frames=3, samples=2, output="PNG,8,RGBA")
    result = farm.render(JobSpec(str(blend), frames="1-3", tiles=(2, 1),
                                 output=str(tmp_path / "m_####.png")))
    want = reference(blend, [1, 2, 3], "SCENE")
    for frame in (1, 2, 3):
        got = oiio.ImageInput.open(str(result.outputs[frame])).spec()
        ref = oiio.ImageInput.open(str(want[frame])).spec()
        keys = [k for k in ("Frame", "Scene", "Camera") if ref.getattribute(k) is not None]
        assert "Frame" in keys and "Scene" in keys, [a.name for a in ref.extra_attribs]
        for key in keys:
            assert got.getattribute(key) == ref.getattribute(key), (frame, key)
        assert str(got.getattribute("Frame")).lstrip("0") == str(frame)
