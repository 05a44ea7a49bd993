"""Planning: scene facts and a job spec in, tasks out. Pure: no Blender, no Ray, no I/O.

Coordinates are pixels of the full frame at the job's resolution percentage, origin at the
top-left, ends exclusive (:class:`renderfarm.job.Rect`). Blender's border counts ``y`` from the
bottom and turns a border into pixels by truncating ``border * size`` in single precision; the
helpers here model that exactly so tiles cover the frame with no gap and no overlap.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from renderfarm.errors import FrameRangeError, LimitError, SceneError
from renderfarm.frames import parse_frames, scene_frames
from renderfarm.job import AUTO_TILES, JobSpec, Rect, SceneInfo, Task, Tile

#: overscan (pixels) added around tiles when Cycles' adaptive sampling is on: its convergence
#: test looks at neighbouring pixels, so tiles need a margin to match the full frame.
ADAPTIVE_OVERSCAN = 16


def f32(value: float) -> float:
    """Round a float to single precision, as Blender stores border values."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


def render_size(resolution: tuple[int, int], percentage: int) -> tuple[int, int]:
    """The frame size Blender renders for a resolution and percentage (integer division)."""
    width = resolution[0] * percentage // 100
    height = resolution[1] * percentage // 100
    if width < 1 or height < 1:
        raise SceneError(
            f"resolution {resolution[0]}x{resolution[1]} at {percentage}% is smaller than one "
            "pixel; raise the resolution percentage"
        )
    return width, height


def blender_border_pixels(
    border: tuple[float, float, float, float], size: tuple[int, int]
) -> Rect:
    """The pixels Blender renders for a border, in top-left coordinates.

    Blender computes ``int(border.xmin * width)`` etc. in single precision, with ``y`` from the
    bottom; this reproduces it.

    Raises:
        SceneError: the border covers no pixel.
    """
    width, height = size
    min_x, min_y, max_x, max_y = (f32(v) for v in border)
    x0 = int(f32(min_x * width))
    x1 = int(f32(max_x * width))
    bottom0 = int(f32(min_y * height))
    bottom1 = int(f32(max_y * height))
    if x1 <= x0 or bottom1 <= bottom0:
        raise SceneError(
            f"the scene's render border {border} covers no pixel at {width}x{height}; "
            "widen the border or turn it off"
        )
    return Rect(x0, height - bottom1, x1, height - bottom0)


def border_for(rect: Rect, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Border values (min_x, min_y, max_x, max_y) that make Blender render exactly ``rect``.

    Each inner edge sits half a pixel past the pixel boundary, so Blender's truncation lands on
    the boundary despite rounding; frame edges are exactly 0 and 1.
    """
    width, height = size

    def edge(pixel: int, extent: int) -> float:
        if pixel <= 0:
            return 0.0
        if pixel >= extent:
            return 1.0
        return (pixel + 0.5) / extent

    return (
        edge(rect.x0, width),
        edge(height - rect.y1, height),
        edge(rect.x1, width),
        edge(height - rect.y0, height),
    )


def grid_edges(start: int, length: int, parts: int) -> list[int]:
    """``parts + 1`` integer edges splitting ``[start, start + length)`` as evenly as possible."""
    return [start + (i * length) // parts for i in range(parts + 1)]


def check_grid(columns: int, rows: int, width: int, height: int,
               path: str | None = None) -> None:
    """Make sure a ``columns x rows`` grid fits a ``width x height`` region.

    Raises:
        SceneError: fewer than one tile, or more columns or rows than the region has pixels.
    """
    if columns < 1 or rows < 1:
        raise SceneError(f"a tile grid needs at least 1x1 tiles, not {columns}x{rows}",
                         path=path)
    if columns > width or rows > height:
        raise SceneError(
            f"{columns}x{rows} tiles is more tiles than the {width}x{height} "
            "pixels to render; use fewer tiles or a higher resolution", path=path)


def plan_tiles(region: Rect, columns: int, rows: int, overscan: int = 0) -> list[Tile]:
    """Split a region into a grid of tiles, row-major from the top-left.

    The cores partition the region exactly; each render rectangle is the core grown by
    ``overscan`` pixels and clipped to the region.

    Raises:
        SceneError: more columns or rows than the region has pixels.
    """
    check_grid(columns, rows, region.width, region.height)
    xs = grid_edges(region.x0, region.width, columns)
    ys = grid_edges(region.y0, region.height, rows)
    tiles = []
    for row in range(rows):
        for col in range(columns):
            core = Rect(xs[col], ys[row], xs[col + 1], ys[row + 1])
            grown = Rect(
                max(region.x0, core.x0 - overscan),
                max(region.y0, core.y0 - overscan),
                min(region.x1, core.x1 + overscan),
                min(region.y1, core.y1 + overscan),
            )
            tiles.append(Tile(index=row * columns + col, core=core, render=grown))
    return tiles


@dataclass(frozen=True)
class Plan:
    """The planner's answer for a job.

    Attributes:
        frames: the frames to render, sorted.
        size: full-frame size in pixels at the job's percentage.
        region: the pixels that render (the scene's border, or the whole frame).
        canvas: the pixels of the output image (the region when Blender crops to the border,
            else the whole frame).
        tiles: the grid actually used (``(1, 1)`` after a fallback to whole frames).
        overscan: margin in pixels around tiles.
        tasks: every task, frame by frame.
        compositing: whether pieces render with the compositor on.
        warnings: fallbacks the user should hear about.
        post_denoise: pieces render noisy and the merged frame is denoised once.
        post_composite: pieces render without the compositor; it runs once on the merged
            frame.
        notes: choices the planner made that the user should see (``--tiles auto``).
        sample_ranges: the ``(offset, length)`` sample range of each chunk, or ``(None,)``.
    """

    frames: tuple[int, ...]
    size: tuple[int, int]
    region: Rect
    canvas: Rect
    tiles: tuple[int, int]
    overscan: int
    tasks: tuple[Task, ...]
    compositing: bool
    warnings: tuple[str, ...] = ()
    post_denoise: bool = False
    post_composite: bool = False
    notes: tuple[str, ...] = ()
    sample_ranges: tuple[tuple[int, int] | None, ...] = (None,)

    @property
    def chunks(self) -> int:
        """Sample ranges each piece is split into (1: all samples at once)."""
        return len(self.sample_ranges)

    @property
    def tiled(self) -> bool:
        """Whether frames are split into tiles."""
        return self.tiles != (1, 1)

    def tasks_of(self, frame: int) -> list[Task]:
        """The tasks of one frame."""
        return [t for t in self.tasks if t.frame == frame]


def resolve_frames(spec: JobSpec, scene: SceneInfo) -> list[int]:
    """The frames a job renders: its own range, or the scene's range and step."""
    if spec.frames is not None:
        return parse_frames(spec.frames)
    return scene_frames(scene.frame_start, scene.frame_end, scene.frame_step)


def post_denoise_blocker(scene: SceneInfo) -> str | None:
    """Why a denoising scene cannot be denoised after the merge, or None when it can."""
    if scene.motion_blur:
        return ("the scene uses motion blur, which forbids the Vector pass Cycles' standalone "
                "denoiser needs")
    return None


def stamp_blocker(scene: SceneInfo, final_format: str | None) -> str | None:
    """Why a frame Blender must write whole cannot be split, or None: a stamp burnt into
    a multilayer EXR (the merged file is not rendered again, so nothing would burn it in),
    views written into one stereo 3D file (Blender combines them as it renders)."""
    if scene.views and scene.views_format != "INDIVIDUAL":
        return (f"the scene writes its {len(scene.views)} views into one file (Output "
                "properties > Views Format: stereo 3D, or every view in one multilayer EXR), "
                "which Blender makes from whole frames only")
    if scene.stamp and final_format == "OPEN_EXR_MULTILAYER":
        return ("the scene burns its stamp into the multilayer EXR, which Blender does on "
                "whole frames only")
    return None


def tiling_fallback(scene: SceneInfo, denoise: str = "auto",
                    final_format: str | None = None) -> str | None:
    """Why a scene must render whole frames instead of tiles, or None when tiles are exact."""
    stamp = stamp_blocker(scene, final_format)
    if stamp:
        return f"{stamp}; rendering whole frames"
    if scene.engine != "CYCLES":
        return (
            f"{scene.engine} is not split into tiles (its screen-space effects need the "
            "whole frame); rendering whole frames"
        )
    if scene.denoising and denoise == "render":
        return "the job keeps Blender's render-time denoise; rendering whole frames"
    denoise_blocker = post_denoise_blocker(scene) if scene.denoising else None
    if denoise_blocker:
        return (f"{denoise_blocker}, and denoising tiles separately shows seams; "
                "rendering whole frames")
    blocker = composite_blocker(scene)
    if blocker:
        return f"{blocker}; rendering whole frames"
    return None


def composite_blocker(scene: SceneInfo) -> str | None:
    """Why a compositing scene cannot be split (its compositor runs once on the merged frame
    otherwise), or None."""
    if scene.sequencer:
        return "the video sequencer makes the scene's image from whole frames"
    if scene.views and scene.compositing:
        return (f"the compositor runs on each of the scene's {len(scene.views)} views "
                "(Stereoscopy), which Blender does on whole frames")
    if scene.compositing and scene.compositor_blocker:
        return f"the scene's compositor cannot run on a merged frame: {scene.compositor_blocker}"
    return None


#: the smallest tile side ``--tiles auto`` makes: below it Blender's fixed cost per render
#: call (15-25 ms) outweighs what another worker adds
AUTO_MIN_TILE = 64


def auto_grid(width: int, height: int, frames: int, workers: int) -> tuple[int, int]:
    """The grid ``--tiles auto`` picks for a ``width`` x ``height`` region.

    With at least as many frames as workers, whole frames keep every worker busy. Otherwise
    each frame is split into about twice as many pieces as the workers it gets (so a slow
    piece does not leave the others idle), as close to square as the frame allows, and never
    into tiles smaller than :data:`AUTO_MIN_TILE` pixels a side.
    """
    if frames >= workers or workers <= 1:
        return (1, 1)
    pieces = math.ceil(2 * workers / max(1, frames))
    columns = max(1, round(math.sqrt(pieces * width / height)))
    rows = max(1, math.ceil(pieces / columns))
    columns = max(1, min(columns, width // AUTO_MIN_TILE))
    rows = max(1, min(rows, height // AUTO_MIN_TILE))
    return (columns, rows)


def split_samples(offset: int, count: int, chunks: int) -> list[tuple[int, int]]:
    """``count`` samples from ``offset`` in ``chunks`` contiguous ranges whose lengths differ
    by one at most (never more ranges than samples)."""
    chunks = max(1, min(chunks, count))
    base, extra = divmod(count, chunks)
    ranges = []
    start = offset
    for index in range(chunks):
        length = base + (1 if index < extra else 0)
        ranges.append((start, length))
        start += length
    return ranges


def missing_colour_passes(scene: SceneInfo) -> list[tuple[str, str]]:
    """``(view layer, kind)`` of each light pass kind (``diffuse``, ``glossy``,
    ``transmission``) the scene renders without its colour pass. Cycles stores light passes
    divided by their colour pass, so sample-range pieces render it too (to combine exactly)."""
    missing = []
    for layer, passes in scene.view_layers.items():
        for kind in ("diffuse", "glossy", "transmission"):
            light = f"{kind}_direct" in passes or f"{kind}_indirect" in passes
            if light and f"{kind}_color" not in passes:
                missing.append((layer, kind))
    return missing


def added_colour_passes(scene: SceneInfo) -> list[str]:
    """Parts that sample-range pieces render beyond the scene's own passes (see
    :func:`missing_colour_passes`), as part names."""
    return [f"{layer}.{kind.capitalize()} Color" for layer, kind in missing_colour_passes(scene)]


def chunk_blocker(scene: SceneInfo, final_format: str | None = None) -> str | None:
    """Why a scene cannot be split by samples, or None."""
    stamp = stamp_blocker(scene, final_format)
    if stamp:
        return stamp
    if scene.engine != "CYCLES":
        return f"{scene.engine} cannot render a subset of its samples"
    if not scene.sample_ranges:
        return (f"Blender {scene.blender or 'of this job'}'s Cycles cannot render a range of a "
                "frame's samples (Sample Subset came in Blender 4.5)")
    if scene.adaptive_sampling:
        return ("adaptive sampling stops each sample range on its own noise, so the ranges "
                "would not add up to the single render")
    return composite_blocker(scene)


def plan_job(spec: JobSpec, scene: SceneInfo, job_id: str = "job", workers: int = 1,
             max_tasks: int | None = None, final_format: str | None = None) -> Plan:
    """Turn a job spec and the scene's facts into tasks.

    ``workers`` is the number of workers the job will run on (for ``--tiles auto``);
    ``max_tasks`` the most tasks the job may have (checked before any is made);
    ``final_format`` the format of the job's files (some settings write only whole frames).

    Raises:
        LimitError: the job would have more than ``max_tasks`` tasks.
        SceneError: no camera, an empty border, or more tiles than pixels.
        FrameRangeError: the frames are malformed or empty.
    """
    if scene.camera is None and not scene.sequencer:
        raise SceneError(
            f"scene {scene.scene!r} has no active camera; set one in Blender "
            "(Scene properties > Camera) and save the file",
            path=spec.blend_file,
        )
    frames = resolve_frames(spec, scene)
    if not frames:
        raise FrameRangeError("the job selects no frame", path=spec.blend_file)
    percentage = spec.percentage if spec.percentage is not None else scene.percentage
    size = render_size(scene.resolution, percentage)
    full = Rect(0, 0, size[0], size[1])
    region = blender_border_pixels(scene.border, size) if scene.use_border else full
    canvas = region if scene.use_border and scene.crop_to_border else full

    warnings: list[str] = []
    notes: list[str] = []
    tiles = tuple(spec.tiles)
    if tiles == AUTO_TILES:
        reason = tiling_fallback(scene, spec.denoise, final_format)
        tiles = (1, 1) if reason else auto_grid(region.width, region.height, len(frames),
                                                workers)
        why = f"{len(frames)} frame(s), {workers} worker(s), {region.width}x{region.height} px"
        notes.append(f"--tiles auto chose {tiles[0]}x{tiles[1]} ({why})"
                     + (f"; {reason}" if reason else ""))
    elif tiles != (1, 1):
        # check the grid even when falling back, so a bad grid is an error, not a surprise.
        plan_tiles(region, tiles[0], tiles[1])
        reason = tiling_fallback(scene, spec.denoise, final_format)
        if reason:
            warnings.append(f"--tiles {tiles[0]}x{tiles[1]} ignored: {reason}")
            tiles = (1, 1)
    tiled = tiles != (1, 1)
    ranges: list[tuple[int, int] | None] = [None]
    chunks = spec.chunks or workers
    if chunks > 1:
        blocker = chunk_blocker(scene, final_format)
        if blocker:
            warnings.append(f"--chunks {chunks} ignored: {blocker}; rendering all "
                            "samples at once")
        else:
            count = spec.samples if spec.samples is not None else (scene.samples or 1)
            offset = 0
            if spec.samples is None and scene.sample_subset is not None:
                offset, count = scene.sample_subset
            ranges = list(split_samples(offset, count, chunks))
    split = tiled or len(ranges) > 1
    post_denoise = (scene.engine == "CYCLES" and scene.denoising
                    and (split or spec.denoise == "post"))
    blocker = post_denoise_blocker(scene) if post_denoise else None
    if blocker:
        warnings.append(f"--denoise post ignored: {blocker}; Blender denoises each frame at "
                        "render time")
        post_denoise = False
    if spec.overscan is not None:
        overscan = spec.overscan if tiled else 0
    else:
        overscan = ADAPTIVE_OVERSCAN if tiled and scene.adaptive_sampling else 0
    count = len(frames) * tiles[0] * tiles[1] * len(ranges)
    if max_tasks is not None and count > max_tasks:
        raise LimitError(f"the job plans {count} tasks ({len(frames)} frame(s) x "
                         f"{tiles[0]}x{tiles[1]} tiles x {len(ranges)} sample chunk(s)); the "
                         f"farm allows at most {max_tasks} per job", limit="tasks_per_job",
                         path=spec.blend_file)
    grid = plan_tiles(region, tiles[0], tiles[1], overscan)
    # frame by frame; within a frame, chunk by chunk, so neighbouring tiles of one chunk
    # have neighbouring indices (tile grouping relies on it)
    tasks = tuple(
        Task(job_id=job_id, index=(i * len(ranges) + c) * len(grid) + t.index, frame=frame,
             tile=t, size=size, tiled=tiled, samples=rng, chunk=c)
        for i, frame in enumerate(frames)
        for c, rng in enumerate(ranges)
        for t in grid
    )
    return Plan(
        frames=tuple(frames),
        size=size,
        region=region,
        canvas=canvas,
        tiles=tiles,
        overscan=overscan,
        tasks=tasks,
        compositing=scene.compositing and not split,
        post_composite=scene.compositing and split,
        warnings=tuple(warnings),
        post_denoise=post_denoise,
        notes=tuple(notes),
        sample_ranges=tuple(ranges),
    )
