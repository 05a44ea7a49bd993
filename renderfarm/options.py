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
                   max_workers=getattr(args, "job_workers", None),
                   keep_frames=bool(getattr(args, "keep_frames", False)))


def positive_int(text: str) -> int:
    """An option's whole number of 1 or more (for argparse's ``type``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def add_autoscale_options(parser: argparse.ArgumentParser) -> None:
    """The options of a farm that asks Ray's autoscaler for its workers (``render``,
    ``estimate``, ``serve``)."""
    group = parser.add_argument_group("an elastic cluster (Ray's autoscaler)")
    group.add_argument("--autoscale", action="store_true",
                       help="ask Ray's autoscaler for the workers the queue can keep busy, "
                       "and release those it no longer needs (their nodes go after the "
                       "autoscaler's idle timeout); the cluster may start with no render "
                       "node")
    group.add_argument("--max-workers", type=positive_int, metavar="N",
                       help="with --autoscale: the most workers asked for (default: no bound "
                       "but the autoscaler's)")
    group.add_argument("--wait-for-workers", type=_seconds, default=600.0, metavar="SECONDS",
                       help="with --autoscale: how long a job waits for its first worker "
                       "before it fails, naming what was asked for (default 600)")
    group.add_argument("--cpus-per-worker", type=_seconds, metavar="N",
                       help="CPUs each CPU worker asks for (default: a node's CPUs shared "
                       "out; with --autoscale 1: give a render node's CPUs for one worker "
                       "per node)")
    group.add_argument("--pieces", choices=("auto", "head", "nodes"), default="auto",
                       help="where finished tiles are kept, merged, checked and previewed: "
                       "on the nodes that rendered them (nodes: only sizes, hashes and "
                       "8-bit previews reach this machine; frames are written by a node that "
                       "sees the output folder), or here (head); auto: nodes on a cluster "
                       "of several nodes (default auto)")


def autoscale_settings(args: argparse.Namespace) -> dict[str, object]:
    """What :func:`add_autoscale_options` gave, as :class:`~renderfarm.farm.FarmConfig`
    fields."""
    return {"autoscale": args.autoscale, "max_workers": args.max_workers,
            "wait_for_workers": args.wait_for_workers, "cpus_per_worker": args.cpus_per_worker,
            "pieces": args.pieces}
