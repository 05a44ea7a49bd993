"""The one-call Python API: :func:`render`."""

from __future__ import annotations

import os
from collections.abc import Sequence

from renderfarm.job import JobResult, JobSpec
from renderfarm.options import chunks_for, parse_tiles

__all__ = ["parse_tiles", "render"]


def render(
    blend_file: str | os.PathLike[str],
    frames: str | None = None,
    tiles: str | Sequence[int] = (1, 1),
    output: str | os.PathLike[str] = "render/####.exr",
    *,
    samples: int | None = None,
    percentage: int | None = None,
    device: str = "auto",
    retries: int = 2,
    task_timeout: float | None = None,
    allow_scripts: bool = False,
    overscan: int | None = None,
    scene: str | None = None,
    group_tiles: bool = True,
    denoise: str = "auto",
    split: str = "tiles",
    chunks: int | None = None,
    address: str | None = None,
    workers: int | None = None,
    permit_scripts: bool = False,
    progress: bool = False,
    files: str = "bundle",
    allow_missing: bool = False,
    project: str | os.PathLike[str] | None = None,
    storage: str | None = None,
    verify: float | None = None,
    keep_frames: bool = False,
) -> JobResult:
    """Render a ``.blend`` on a Ray cluster and wait for the result.

    Args:
        blend_file: the file to render.
        frames: frame range such as ``"1-8"``; None renders the scene's range.
        tiles: ``(columns, rows)`` or ``"4x2"`` each frame is split into, or ``"auto"``.
        output: output pattern; ``#`` runs become the frame, the extension picks the format.
        samples: render samples override.
        percentage: resolution percentage override.
        device: ``"auto"``, ``"cpu"`` or ``"gpu"``.
        retries: tries again for a failed task.
        task_timeout: seconds before a task is stopped and retried.
        allow_scripts: run Python embedded in the file (needs ``permit_scripts`` too).
        overscan: pixels rendered around tiles; None picks them from the scene.
        scene: the scene to render; None: the file's active scene.
        group_tiles: let a worker render neighbouring tiles of a row in one call when
            tiles outnumber what the workers need (same pixels, fewer Blender calls).
        denoise: ``"auto"``, ``"post"`` or ``"render"`` (see :attr:`JobSpec.denoise`).
        split: ``"samples"`` renders each frame (or tile) as sample ranges on several workers
            and combines them exactly; ``"tiles"`` (default) splits by ``tiles`` only.
        chunks: the number of sample ranges (default with ``split="samples"``: one per
            worker).
        address: Ray address (``auto``, ``ray://head:10001``); None starts Ray here.
        workers: number of workers (None: one per GPU, or one per node for CPU).
        permit_scripts: let this farm run jobs that allow scripts.
        progress: show a progress bar on standard error.
        files: ``"bundle"`` sends the file and every dependency to the workers (they need
            not see this disk); ``"shared"``: workers read the same paths.
        allow_missing: render although files the scene needs are missing (warnings).
        project: the folder the bundle keeps relative paths from (default: the file's).
        storage: where the farm keeps job files for the workers (a folder they see, or
            ``s3://bucket/prefix``); None: a temporary folder.
        verify: the share of pieces rendered again on another worker and compared (0.1: a
            tenth); a worker whose pixels disagree with the majority is suspect and its
            pieces are rendered again. None: none.
        keep_frames: a video output (``shot.mp4``) also keeps its frames as float EXRs.

    Returns:
        The job's result; ``result.outputs`` maps frames to files.

    Raises:
        RenderFarmError: bad input, a failed render or a failed merge.
    """
    from renderfarm.farm import Farm, FarmConfig, check_spec

    spec = JobSpec(
        blend_file=os.fspath(blend_file), frames=frames, tiles=parse_tiles(tiles),
        samples=samples, percentage=percentage, device=device, output=os.fspath(output),
        retries=retries, task_timeout=task_timeout, allow_scripts=allow_scripts,
        overscan=overscan, scene=scene, group_tiles=group_tiles,
        denoise=denoise, chunks=chunks_for(split, chunks), files=files,
        allow_missing=allow_missing, project=os.fspath(project) if project else None,
        verify=verify, keep_frames=keep_frames)
    check_spec(spec)
    with Farm(address=address, workers=workers, permit_scripts=permit_scripts,
              config=FarmConfig(storage=storage)) as farm:
        handle = farm.submit(spec)
        if progress:
            from renderfarm.progress import show_progress

            show_progress(handle)
        return handle.result()
