"""Tile planning, without Blender or Ray: exact partitions and Blender's border arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from renderfarm.errors import FrameRangeError, InputError, SceneError
from renderfarm.job import AUTO_TILES, JobSpec, Rect, SceneInfo
from renderfarm.planner import (
    ADAPTIVE_OVERSCAN,
    added_colour_passes,
    auto_grid,
    blender_border_pixels,
    border_for,
    plan_job,
    plan_tiles,
    render_size,
    split_samples,
)


def scene(**kw: object) -> SceneInfo:
    base = dict(scene="Scene", engine="CYCLES", resolution=(333, 211), percentage=75,
                frame_start=1, frame_end=4, camera="Camera")
    base.update(kw)
    return SceneInfo(**base)  # type: ignore[arg-type]


def covered(tiles, region: Rect) -> None:
    """Every pixel of the region in exactly one core; render rects inside the region."""
    seen = [[0] * region.width for _ in range(region.height)]
    for tile in tiles:
        assert region.contains(tile.render) and tile.render.contains(tile.core)
        for y in range(tile.core.y0, tile.core.y1):
            for x in range(tile.core.x0, tile.core.x1):
                seen[y - region.y0][x - region.x0] += 1
    assert all(v == 1 for row in seen for v in row)


def test_render_size_truncates_like_blender() -> None:
    assert render_size((333, 211), 75) == (249, 158)
    assert render_size((1920, 1080), 100) == (1920, 1080)
    with pytest.raises(SceneError, match="smaller than one pixel"):
        render_size((10, 10), 1)


def test_the_issue_example_7x5_tiles_at_75_percent() -> None:
    plan = plan_job(JobSpec("a.blend", frames="1", tiles=(7, 5)), scene())
    assert plan.size == (249, 158)
    assert len(plan.tasks) == 35
    covered([t.tile for t in plan.tasks], plan.region)


@settings(max_examples=300, deadline=None)
@given(w=st.integers(1, 400), h=st.integers(1, 300), cols=st.integers(1, 40),
       rows=st.integers(1, 40), overscan=st.integers(0, 20))
def test_tiles_partition_the_frame(w: int, h: int, cols: int, rows: int, overscan: int) -> None:
    region = Rect(0, 0, w, h)
    if cols > w or rows > h:
        with pytest.raises(SceneError, match="more tiles than"):
            plan_tiles(region, cols, rows, overscan)
        return
    tiles = plan_tiles(region, cols, rows, overscan)
    assert len(tiles) == cols * rows
    covered(tiles, region)
    for tile in tiles:
        assert tile.render.x0 == max(0, tile.core.x0 - overscan)
        assert tile.render.y1 == min(h, tile.core.y1 + overscan)


@settings(max_examples=500, deadline=None)
@given(size=st.tuples(st.integers(1, 20000), st.integers(1, 20000)), data=st.data())
def test_border_values_land_on_the_exact_pixels(size: tuple[int, int], data) -> None:
    w, h = size
    x0 = data.draw(st.integers(0, w - 1))
    x1 = data.draw(st.integers(x0 + 1, w))
    y0 = data.draw(st.integers(0, h - 1))
    y1 = data.draw(st.integers(y0 + 1, h))
    rect = Rect(x0, y0, x1, y1)
    assert blender_border_pixels(border_for(rect, size), size) == rect


@pytest.mark.parametrize("width", [1, 2, 3, 7, 67, 249, 1000, 1919, 4096, 8191, 16384])
def test_every_boundary_of_a_width(width: int) -> None:
    """Each pixel boundary of the frame, as a tile edge, survives Blender's truncation."""
    for edge in range(width + 1):
        if edge > 0:
            rect = Rect(0, 0, edge, 1)
            assert blender_border_pixels(border_for(rect, (width, 1)), (width, 1)) == rect
        if edge < width:
            rect = Rect(edge, 0, width, 1)
            assert blender_border_pixels(border_for(rect, (width, 1)), (width, 1)) == rect


def test_plain_division_borders_would_lose_pixels() -> None:
    """The pitfall the half-pixel offset avoids: px / size truncates one short somewhere."""
    from renderfarm.planner import f32

    short = [px for px in range(1, 2000) if int(f32(f32(px / 1999) * 1999)) != px]
    assert short, "plain borders happened to work; the half-pixel test proves nothing"


def test_user_border_is_the_region_and_y_counts_from_the_bottom() -> None:
    info = scene(resolution=(100, 50), percentage=100, use_border=True,
                 border=(0.1, 0.2, 0.5, 0.9), crop_to_border=True)
    plan = plan_job(JobSpec("a.blend", frames="1", tiles=(2, 2)), info)
    # y: from the bottom 0.2*50=10 .. 0.9*50=45 -> from the top 5 .. 40
    assert plan.region == Rect(10, 5, 50, 40)
    assert plan.canvas == plan.region
    covered([t.tile for t in plan.tasks], plan.region)
    uncropped = plan_job(JobSpec("a.blend", frames="1", tiles=(2, 2)),
                         scene(resolution=(100, 50), percentage=100, use_border=True,
                               border=(0.1, 0.2, 0.5, 0.9), crop_to_border=False))
    assert uncropped.canvas == Rect(0, 0, 100, 50)


def test_frames_and_tasks() -> None:
    plan = plan_job(JobSpec("a.blend", frames="2-3", tiles=(2, 1)), scene())
    assert plan.frames == (2, 3)
    assert [(t.frame, t.tile.index) for t in plan.tasks] == [(2, 0), (2, 1), (3, 0), (3, 1)]
    assert [t.index for t in plan.tasks] == [0, 1, 2, 3]
    assert all(t.tiled for t in plan.tasks)
    whole = plan_job(JobSpec("a.blend"), scene(frame_start=1, frame_end=9, frame_step=4))
    assert whole.frames == (1, 5, 9) and not whole.tiled


def test_adaptive_sampling_adds_overscan_unless_overridden() -> None:
    plan = plan_job(JobSpec("a.blend", frames="1", tiles=(2, 2)), scene(adaptive_sampling=True))
    assert plan.overscan == ADAPTIVE_OVERSCAN
    assert plan.tasks[0].tile.render.x1 == plan.tasks[0].tile.core.x1 + ADAPTIVE_OVERSCAN
    plan = plan_job(JobSpec("a.blend", frames="1", tiles=(2, 2), overscan=3),
                    scene(adaptive_sampling=True))
    assert plan.overscan == 3
    assert plan_job(JobSpec("a.blend", frames="1"), scene(adaptive_sampling=True)).overscan == 0


@pytest.mark.parametrize("facts,word", [
    ({"denoising": True, "motion_blur": True}, "motion blur"),
    ({"compositing": True, "compositor_blocker": "its Cryptomatte node reads the render result"},
     "Cryptomatte node"),
    ({"compositing": True, "sequencer": True}, "sequencer"),
    ({"engine": "BLENDER_EEVEE"}, "BLENDER_EEVEE"),
])
def test_tiles_fall_back_to_whole_frames_with_a_warning(facts, word) -> None:
    plan = plan_job(JobSpec("a.blend", frames="1-2", tiles=(3, 3)), scene(**facts))
    assert plan.tiles == (1, 1) and len(plan.tasks) == 2
    assert len(plan.warnings) == 1 and word in plan.warnings[0]


def test_a_stamp_burnt_into_multilayer_exr_renders_whole_frames() -> None:
    """Blender burns the stamp into multilayer EXRs too, and the merged EXR is not rendered
    again: tiles and sample ranges fall back, other formats are stamped when finished."""
    stamped = scene(stamp=True)
    exr = plan_job(JobSpec("a.blend", frames="1", tiles=(2, 2), chunks=2), stamped,
                   final_format="OPEN_EXR_MULTILAYER")
    assert exr.tiles == (1, 1) and exr.chunks == 1 and len(exr.tasks) == 1
    assert all("stamp" in w for w in exr.warnings) and len(exr.warnings) == 2
    png = plan_job(JobSpec("a.blend", frames="1", tiles=(2, 2)), stamped, final_format="PNG")
    assert png.tiles == (2, 2) and not png.warnings


def test_denoising_scenes_denoise_once_after_the_merge() -> None:
    tiled = plan_job(JobSpec("a.blend", frames="1", tiles=(3, 3)), scene(denoising=True))
    assert tiled.tiles == (3, 3) and tiled.post_denoise and not tiled.warnings
    # whole frames keep Blender's render-time denoise unless the job asks otherwise
    whole = plan_job(JobSpec("a.blend", frames="1"), scene(denoising=True))
    assert not whole.post_denoise
    post = plan_job(JobSpec("a.blend", frames="1", denoise="post"), scene(denoising=True))
    assert post.post_denoise and post.tiles == (1, 1)
    kept = plan_job(JobSpec("a.blend", frames="1", tiles=(2, 2), denoise="render"),
                    scene(denoising=True))
    assert kept.tiles == (1, 1) and not kept.post_denoise
    assert "render-time denoise" in kept.warnings[0]
    blurred = plan_job(JobSpec("a.blend", frames="1", denoise="post"),
                       scene(denoising=True, motion_blur=True))
    assert not blurred.post_denoise and "Vector pass" in blurred.warnings[0]
    # scenes that do not denoise are not touched
    assert not plan_job(JobSpec("a.blend", frames="1", tiles=(2, 2), denoise="post"),
                        scene()).post_denoise
    with pytest.raises(InputError, match="denoise must be one of"):
        JobSpec("a.blend", denoise="later")


def test_compositing_runs_once_on_the_merged_frame() -> None:
    tiled = plan_job(JobSpec("a.blend", frames="1", tiles=(2, 2)), scene(compositing=True))
    assert tiled.tiles == (2, 2) and tiled.post_composite and not tiled.compositing
    assert not tiled.warnings
    whole = plan_job(JobSpec("a.blend", frames="1"), scene(compositing=True))
    assert whole.compositing and not whole.post_composite  # Blender composites as usual
    chunks = plan_job(JobSpec("a.blend", frames="1", chunks=2),
                      scene(compositing=True, samples=8))
    assert chunks.chunks == 2 and chunks.post_composite


def test_sequencer_scenes_need_no_camera() -> None:
    plan = plan_job(JobSpec("a.blend", frames="1", tiles=(2, 2)),
                    scene(camera=None, sequencer=True, compositing=True))
    assert plan.tiles == (1, 1) and plan.compositing and len(plan.tasks) == 1


def test_errors() -> None:
    with pytest.raises(SceneError, match="no active camera"):
        plan_job(JobSpec("a.blend"), scene(camera=None))
    with pytest.raises(SceneError, match="more tiles than"):
        plan_job(JobSpec("a.blend", tiles=(250, 1)), scene())
    with pytest.raises(SceneError, match="covers no pixel"):
        plan_job(JobSpec("a.blend"), scene(use_border=True, border=(0.5, 0.5, 0.5, 0.9)))
    with pytest.raises(FrameRangeError):
        plan_job(JobSpec("a.blend"), scene(frame_start=5, frame_end=1))


@pytest.mark.parametrize(("size", "frames", "workers", "grid"), [
    ((1920, 1080), 100, 8, (1, 1)),      # more frames than workers: whole frames
    ((1920, 1080), 8, 8, (1, 1)),
    ((7680, 4320), 1, 16, (8, 4)),       # one 8K still on 16 GPUs: 32 tiles, near square
    ((1920, 1080), 2, 8, (4, 2)),        # two frames on 8 workers: 8 pieces each
    ((320, 180), 1, 2, (3, 2)),
    ((100, 60), 1, 64, (1, 1)),          # never tiles under 64 px a side
    ((1080, 1920), 1, 4, (2, 4)),        # portrait frames get more rows
])
def test_auto_grid(size, frames, workers, grid) -> None:
    assert auto_grid(size[0], size[1], frames, workers) == grid


def test_tiles_auto_plans_and_says_what_it_chose() -> None:
    plan = plan_job(JobSpec("a.blend", frames="1", tiles=AUTO_TILES),
                    scene(resolution=(7680, 4320), percentage=100), workers=16)
    assert plan.tiles == (8, 4) and len(plan.tasks) == 32
    assert plan.notes == ("--tiles auto chose 8x4 (1 frame(s), 16 worker(s), 7680x4320 px)",)
    eevee = plan_job(JobSpec("a.blend", frames="1", tiles=AUTO_TILES),
                     scene(engine="BLENDER_EEVEE"), workers=16)
    assert eevee.tiles == (1, 1) and "BLENDER_EEVEE" in eevee.notes[0] and not eevee.warnings
    from renderfarm.api import parse_tiles

    assert parse_tiles("auto") == AUTO_TILES and parse_tiles("AUTO ") == AUTO_TILES
    with pytest.raises(InputError):
        parse_tiles((0, 3))


def test_split_by_samples_plans_ranges_per_piece() -> None:
    assert split_samples(0, 10, 4) == [(0, 3), (3, 3), (6, 2), (8, 2)]
    assert split_samples(5, 2, 8) == [(5, 1), (6, 1)]  # never more ranges than samples
    plan = plan_job(JobSpec("a.blend", frames="1-2", tiles=(2, 1), chunks=3, samples=9),
                    scene())
    assert plan.chunks == 3 and len(plan.tasks) == 2 * 3 * 2
    first = plan.tasks[:6]  # frame 1: range by range, tiles of a range together
    assert [(t.chunk, t.tile.index, t.samples) for t in first] == [
        (0, 0, (0, 3)), (0, 1, (0, 3)), (1, 0, (3, 3)), (1, 1, (3, 3)), (2, 0, (6, 3)),
        (2, 1, (6, 3))]
    # the file's own sample subset is what gets split
    subset = plan_job(JobSpec("a.blend", frames="1", chunks=2),
                      scene(samples=64, sample_subset=(16, 8)))
    assert subset.sample_ranges == ((16, 4), (20, 4))
    # one range per worker by default with --split samples
    assert plan_job(JobSpec("a.blend", frames="1", chunks=0), scene(samples=8),
                    workers=4).chunks == 4
    # denoising scenes denoise the combined frame
    assert plan_job(JobSpec("a.blend", frames="1", chunks=2),
                    scene(denoising=True, samples=8)).post_denoise


@pytest.mark.parametrize(("facts", "word"), [({"adaptive_sampling": True}, "adaptive"),
                                             ({"engine": "BLENDER_EEVEE"}, "subset"),
                                             ({"sample_ranges": False, "blender": "4.2.23"},
                                              "Blender 4.2.23's Cycles cannot render a range")])
def test_sample_split_falls_back_with_a_warning(facts, word) -> None:
    plan = plan_job(JobSpec("a.blend", frames="1", chunks=4), scene(**facts))
    assert plan.chunks == 1 and len(plan.tasks) == 1 and word in plan.warnings[0]


def test_colour_passes_added_for_exact_light_passes() -> None:
    info = scene(view_layers={"A": ["combined", "diffuse_direct", "glossy_indirect",
                                    "glossy_color"], "B": ["combined"]})
    assert added_colour_passes(info) == ["A.Diffuse Color"]
