"""Seam-free frames: denoising after the merge, compared with Blender's own renders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from renderfarm.job import JobSpec
from renderfarm.merge import read_layers
from tests.filecompare import unequal
from tests.test_render import assert_same_image, parts

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def psnr(got: Path, want: Path, layer: str = "ViewLayer") -> float:
    """PSNR of the Combined RGB, clamped to [0, 1], peak 1."""
    a, b = read_layers(got), read_layers(want)
    rgb = [f"{layer}.Combined.{c}" for c in "RGB"]
    x = np.clip(np.stack([a[c] for c in rgb]), 0, 1)
    y = np.clip(np.stack([b[c] for c in rgb]), 0, 1)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def test_denoise_after_merge_is_independent_of_the_grid_and_close_to_blender(
        farm, make_scene, reference, tmp_path) -> None:
    # odd size, 3x3 tiles (grouped into rows on the two workers) against one whole frame
    blend = make_scene(width=101, height=67, frames=1, samples=64, denoise=True)
    tiled = farm.render(JobSpec(str(blend), frames="1", tiles=(3, 3),
                                output=str(tmp_path / "t_####.exr")))
    whole = farm.render(JobSpec(str(blend), frames="1", denoise="post",
                                output=str(tmp_path / "w_####.exr")))
    assert not tiled.warnings and not whole.warnings
    # the denoiser sees the merged frame, so the grid cannot change a single bit
    assert_same_image(tiled.outputs[1], whole.outputs[1])
    blender = reference(blend, [1])[1]
    # what Blender writes for a render-time denoised frame: same parts, channels and types
    assert parts(tiled.outputs[1]) == parts(blender)
    got = psnr(tiled.outputs[1], blender)
    assert got >= 44.0, f"PSNR {got:.1f} dB against Blender's render-time denoise"
    # the noisy image it keeps is Blender's noisy pass... up to the noise realization, which
    # Cycles draws differently while its denoiser is on (see the README)
    noisy = read_layers(tiled.outputs[1])["ViewLayer.Noisy Image.R"]
    assert noisy.shape == (67, 101) and np.isfinite(noisy).all()


def test_motion_blur_scenes_denoise_at_render_time_with_one_warning(
        farm, make_scene, reference, tmp_path) -> None:
    blend = make_scene(width=48, height=32, frames=1, samples=4, denoise=True,
                       motion_blur=True)
    result = farm.render(JobSpec(str(blend), frames="1", tiles=(2, 2),
                                 output=str(tmp_path / "mb_####.exr")))
    assert len(result.warnings) == 1 and "motion blur" in result.warnings[0]
    assert_same_image(result.outputs[1], reference(blend, [1])[1])


def seam_band(width: int, height: int, grid: tuple[int, int], reach: int = 2) -> np.ndarray:
    """A mask of the pixels within ``reach`` of an inner edge of the tile grid (top-left
    origin, as :func:`renderfarm.planner.plan_tiles` splits a frame)."""
    from renderfarm.planner import grid_edges

    band = np.zeros((height, width), bool)
    for x in grid_edges(0, width, grid[0])[1:-1]:
        band[:, max(0, x - reach):x + reach] = True
    for y in grid_edges(0, height, grid[1])[1:-1]:
        band[max(0, y - reach):y + reach, :] = True
    return band


def seam(got: np.ndarray, want: np.ndarray, band: np.ndarray) -> tuple[float, float, bool]:
    """How far the colour of ``got`` is from ``want`` (RGB, 0..1) along the tile edges
    ``band`` and elsewhere, in mean 8-bit levels, and whether that is a seam: the band off
    by more than half as much again as the rest of the frame, plus a quarter level."""
    levels = np.abs(got - want).mean(axis=2) * 255  # per pixel
    along, elsewhere = float(levels[band].mean()), float(levels[~band].mean())
    return along, elsewhere, along > 1.5 * elsewhere + 0.25


def test_denoised_tiles_written_as_png_look_like_blenders_png(farm, make_scene, reference,
                                                               tmp_path) -> None:
    """Noisy tiles denoised once after the merge: no seam. A seam shows as a band along the
    tile edges that differs from Blender's render-time denoise more than the rest of the
    frame does (measured on the colour channels in 8-bit levels; alpha is 1 everywhere and
    would dilute it)."""
    import OpenImageIO as oiio

    blend = make_scene(width=101, height=67, frames=1, samples=64, denoise=True)
    result = farm.render(JobSpec(str(blend), frames="1", tiles=(2, 2),
                                 output=str(tmp_path / "p_####.png")))
    got = oiio.ImageBuf(str(result.outputs[1]))
    want = oiio.ImageBuf(str(reference(blend, [1], fmt="PNG")[1]))
    assert got.spec().format == want.spec().format  # the scene's depth, as Blender writes it
    a, b = got.get_pixels(oiio.FLOAT), want.get_pixels(oiio.FLOAT)
    assert a.shape == b.shape == (67, 101, 4)
    assert np.array_equal(a[..., 3], b[..., 3])  # alpha: opaque, as Blender's
    along, elsewhere, seamed = seam(a[..., :3], b[..., :3], seam_band(101, 67, result.tiles))
    assert elsewhere < 2.0, f"{elsewhere:.2f} levels off Blender's away from the edges"
    assert not seamed, (f"a seam: {along:.2f} levels off Blender's along the tile edges, "
                        f"{elsewhere:.2f} elsewhere")


def test_the_seam_measure_sees_a_seam(tmp_path) -> None:
    """The measure above fails a frame whose tiles were denoised apart: a band shifted by a
    few levels along the edges."""
    height, width = 67, 101
    rng = np.random.default_rng(3)
    blender = rng.random((height, width, 3))
    farm = blender + rng.normal(0, 1.5 / 255, blender.shape)  # another noise realization
    band = seam_band(width, height, (2, 2))
    seamed = farm.copy()
    seamed[band] += 4 / 255
    for image, has_seam in ((farm, False), (seamed, True)):
        along, elsewhere, found = seam(image, blender, band)
        assert found is has_seam, (along, elsewhere)


@pytest.fixture(scope="module")
def all_passes(make_scene) -> Path:
    return make_scene(width=61, height=43, frames=1, samples=4, all_passes=True)


@pytest.mark.parametrize("tiles", [(3, 2), (5, 4)])
def test_every_pass_and_view_layer_is_bit_identical(farm, all_passes, reference, tmp_path,
                                                    tiles) -> None:
    """Data, light, volume and shadow catcher passes, Cryptomatte (object, material, asset),
    shader AOVs, light groups and a second view layer: 43 parts, every pixel the same."""
    result = farm.render(JobSpec(str(all_passes), frames="1", tiles=tiles,
                                 output=str(tmp_path / "ap_####.exr")))
    blender = reference(all_passes, [1])[1]
    got, want = parts(result.outputs[1]), parts(blender)
    assert got == want and len(got) == 43
    names = [name for name, _channels, _type in got]
    for expected in ("ViewLayer.Vector", "ViewLayer.CryptoAsset02", "ViewLayer.tint",
                     "ViewLayer.height", "ViewLayer.Combined_key", "Second.CryptoObject00"):
        assert expected in names
    assert_same_image(result.outputs[1], blender)


def test_denoised_frame_keeps_every_pass_blender_writes(farm, make_scene, reference,
                                                        tmp_path) -> None:
    blend = make_scene(width=61, height=43, frames=1, samples=4, all_passes=True,
                       denoise=True)
    result = farm.render(JobSpec(str(blend), frames="1", tiles=(2, 2),
                                 output=str(tmp_path / "apd_####.exr")))
    assert parts(result.outputs[1]) == parts(reference(blend, [1])[1])


def assert_same_cryptomatte(got: dict[str, np.ndarray], want: dict[str, np.ndarray],
                            group: str) -> None:
    """Each pixel's ID -> coverage the same (IDs of equal coverage may swap ranks)."""
    names = [n for n in want if n.startswith(group)]  # file order: r, g, b, a per rank
    a = np.stack([got[n] for n in names], axis=-1)
    b = np.stack([want[n] for n in names], axis=-1)

    def coverage(px: np.ndarray) -> dict[int, float]:
        ids, weights = px[0::2].view(np.uint32), px[1::2]
        return {int(i): float(w) for i, w in zip(ids, weights, strict=True) if w > 0}

    for y, x in np.argwhere((a.view(np.uint32) != b.view(np.uint32)).any(axis=-1)):
        ca, cb = coverage(a[y, x]), coverage(b[y, x])
        assert ca.keys() == cb.keys(), (group, y, x, ca, cb)
        assert all(abs(ca[k] - cb[k]) < 1e-6 for k in ca), (group, y, x, ca, cb)


def assert_same_to_float_precision(got: Path, want: Path) -> float:
    """Every channel equal up to float rounding; returns the largest relative error."""
    a, b = read_layers(got), read_layers(want)
    assert list(a) == list(b)
    worst, where = 0.0, ""
    for name in b:
        if ".Crypto" in name:
            continue
        x, y = a[name].astype(np.float64), b[name].astype(np.float64)
        # NaN or infinity where the other file has another value is a difference (a NaN
        # would make every relative error below NaN, and NaN < 1e-5 false only by chance)
        special = unequal(x, y, np.inf)
        assert not special.any(), (f"{name}: {int(special.sum())} values NaN or infinite "
                                   "in one file only")
        finite = np.isfinite(x) & np.isfinite(y)
        with np.errstate(invalid="ignore"):
            relative = (np.abs(x - y) / np.maximum(np.abs(y), 1.0))[finite]
        largest = float(relative.max(initial=0))
        if largest > worst:
            worst, where = largest, name
    for group in {n.rsplit(".", 1)[0][:-2] for n in b if ".Crypto" in n}:
        assert_same_cryptomatte(a, b, group)
    assert worst < 1e-5, f"largest relative error {worst:.3g} in {where}"
    return worst


def test_split_by_samples_adds_up_to_the_single_render(farm, all_passes, reference,
                                                       tmp_path) -> None:
    # 4 workers' worth of sample ranges on the two workers: 4 ranges of 1 sample each
    result = farm.render(JobSpec(str(all_passes), frames="1", chunks=4,
                                 output=str(tmp_path / "s_####.exr")))
    assert sorted(t.task_index for t in result.renders if t.ok) == [0, 1, 2, 3]
    blender = reference(all_passes, [1])[1]
    assert parts(result.outputs[1]) == parts(blender)
    assert_same_to_float_precision(result.outputs[1], blender)


def test_tiles_and_sample_chunks_combine(farm, make_scene, reference, tmp_path) -> None:
    blend = make_scene(width=67, height=45, percentage=75, frames=2, samples=8, passes=True)
    result = farm.render(JobSpec(str(blend), frames="1-2", tiles=(2, 2), chunks=3,
                                 output=str(tmp_path / "tc_####.exr")))
    rendered = sorted(i for t in result.renders if t.ok for i in t.members)
    assert rendered == list(range(2 * 4 * 3))  # frames x tiles x ranges (3, 3 and 2 samples)
    refs = reference(blend, [1, 2])
    for frame in (1, 2):
        assert_same_to_float_precision(result.outputs[frame], refs[frame])


@pytest.mark.parametrize(("fmt", "ext"), [("EXR", "exr"), ("PNG", "png")])
def test_compositor_runs_once_on_the_merged_frame(farm, make_scene, reference, tmp_path,
                                                  fmt, ext) -> None:
    """Glare, blur and lens distortion need neighbouring pixels, and the tree reads Depth:
    the tiled frame equals Blender's composited render bit for bit, Composite part included."""
    blend = make_scene(width=83, height=61, frames=1, samples=4, compositor=True)
    result = farm.render(JobSpec(str(blend), frames="1", tiles=(3, 2),
                                 output=str(tmp_path / f"comp_####.{ext}")))
    assert not result.warnings
    blender = reference(blend, [1], fmt)[1]
    if fmt == "EXR":
        assert parts(result.outputs[1])[0][0] == "Composite.Combined"
        assert parts(result.outputs[1]) == parts(blender)
    assert_same_image(result.outputs[1], blender)


BLOCKERS = """
import bpy
from renderfarm.blender.inspect import compositor_blocker
bpy.ops.wm.read_factory_settings(use_empty=False)
scene = bpy.context.scene
tree = bpy.data.node_groups.new("C", "CompositorNodeTree")
scene.compositing_node_group = tree
layers = tree.nodes.new("CompositorNodeRLayers")
print("plain:", compositor_blocker(scene))
crypto = tree.nodes.new("CompositorNodeCryptomatteV2")
print("crypto:", compositor_blocker(scene))
crypto.source = "IMAGE"
print("crypto image:", compositor_blocker(scene))
other = bpy.data.scenes.new("Other")
layers.scene = other
print("other:", compositor_blocker(scene))
"""


def test_compositors_that_cannot_run_on_a_merged_frame_are_named(tmp_path) -> None:
    from tests.conftest import run_python

    script = tmp_path / "blockers.py"
    script.write_text(BLOCKERS)
    out = run_python(str(script)).stdout
    assert "plain: None" in out
    assert "crypto: its Cryptomatte node reads the render result" in out
    assert "crypto image: None" in out
    assert "other: its compositor reads another scene ('Other')" in out


def test_sample_ranges_of_a_denoising_scene_are_denoised_once(farm, make_scene, reference,
                                                              tmp_path) -> None:
    blend = make_scene(width=101, height=67, frames=1, samples=64, denoise=True)
    result = farm.render(JobSpec(str(blend), frames="1", chunks=2, tiles=(2, 1),
                                 output=str(tmp_path / "sd_####.exr")))
    blender = reference(blend, [1])[1]
    assert parts(result.outputs[1]) == parts(blender)
    got = psnr(result.outputs[1], blender)
    assert got >= 44.0, f"PSNR {got:.1f} dB against Blender's render-time denoise"


@pytest.mark.parametrize("width", [0.01, 4.0, 10.0])
def test_tiles_need_no_overscan_for_wide_pixel_filters(farm, make_scene, reference, tmp_path,
                                                       width) -> None:
    """Cycles importance-samples its pixel filter: a sample only ever lands in its own pixel,
    so tiles stay exact at any filter width without a margin."""
    blend = make_scene(width=64, height=48, frames=1, samples=4, filter_width=width)
    result = farm.render(JobSpec(str(blend), frames="1", tiles=(3, 3),
                                 output=str(tmp_path / "fw_####.exr")))
    assert result.tiles == (3, 3)
    assert_same_image(result.outputs[1], reference(blend, [1])[1])
