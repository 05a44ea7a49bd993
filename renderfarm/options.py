"""The job options the CLI (``render``, ``submit``) and the Python API share: the tile grid,
sample ranges, and the :class:`~renderfarm.job.JobSpec` they make."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from renderfarm.errors import InputError
from renderfarm.job import AUTO_TILES, JobSpec


def parse_tiles(tiles: str | Sequence[int]) -> tuple[int, int]:
    """``"4x2"``, ``"3"`` or ``(4, 2)`` to ``(columns, rows)``; ``"auto"`` to
    :data:`~renderfarm.job.AUTO_TILES` (the farm picks the grid).

    Raises:
        InputError: the grid is malformed or not positive.
    """
    if isinstance(tiles, str) and tiles.lower().strip() == "auto":
        return AUTO_TILES
    if isinstance(tiles, str):
        text = tiles.lower().strip()
        try:
            parts = [int(p) for p in text.split("x")] if "x" in text else [int(text)] * 2
        except ValueError:
            parts = []
        if len(parts) != 2:
            raise InputError(f"cannot read tiles {tiles!r}; write columns x rows, like '4x2'")
        tiles = parts
    grid = tuple(int(v) for v in tiles)
    if grid == AUTO_TILES:
        return AUTO_TILES
    if len(grid) != 2 or min(grid) < 1:
        raise InputError(f"tiles must be at least 1x1 (columns x rows), not {tiles!r}")
    return grid[0], grid[1]


def chunks_for(split: str, chunks: int | None) -> int:
    """The number of sample ranges ``split`` and ``chunks`` ask for (0: one per worker).

    Raises:
        InputError: ``split`` is neither ``tiles`` nor ``samples``.
    """
    if split not in ("tiles", "samples"):
        raise InputError(f"split must be 'tiles' or 'samples', not {split!r}")
    if chunks is not None:
        return chunks
    return 0 if split == "samples" else 1


def job_spec(args: argparse.Namespace, output: str | None) -> JobSpec:
    """The :class:`~renderfarm.job.JobSpec` the job options (``render``, ``submit``) ask for.

    Raises:
        InputError: an option's value is invalid (tiles, frames, ...).
    """
    return JobSpec(blend_file=args.blend, frames=args.frames, tiles=parse_tiles(args.tiles),
                   samples=args.samples, percentage=args.percentage, device=args.device,
                   output=output, retries=args.retries, task_timeout=args.timeout,
                   allow_scripts=args.allow_scripts, overscan=args.overscan, scene=args.scene,
                   group_tiles=not args.one_call_per_tile, denoise=args.denoise,
                   chunks=chunks_for(args.split, args.chunks or None),
                   files=args.files, allow_missing=args.allow_missing, project=args.project,
                   verify=getattr(args, "verify", None),
                   estimate=getattr(args, "estimate", None),
                   budget=getattr(args, "budget", None),
                   notify=getattr(args, "notify", None),
                   require=getattr(args, "require", None),
                   blender=getattr(args, "blender", None) or "auto",
                   keep_frames=bool(getattr(args, "keep_frames", False)))
