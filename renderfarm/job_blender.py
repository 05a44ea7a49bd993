"""Which Blender a job renders with, as its run decides it on the farm: what the file was
saved with, what the workers' machines have, preparing a version on a worker when the farm
lacks it, and the warnings the job gets (:mod:`renderfarm.blenders` holds the pure choice)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from renderfarm.errors import RenderFarmError, ResourceError
from renderfarm.job import JobSpec, SceneInfo

if TYPE_CHECKING:
    from renderfarm.executor import WorkerPool
    from renderfarm.jobfiles import JobFiles
    from renderfarm.worker_calls import WorkerCalls

logger = logging.getLogger(__name__)


def choose_blender(spec: JobSpec, saved: Any, pool: WorkerPool, calls: WorkerCalls | None,
               emit: Callable[..., None], warn: Callable[..., None], job_id: str
               ) -> tuple[str, bool]:
    """The Blender the job renders with (its version; empty: the workers' own ``bpy``),
    prepared on a worker's machine when the farm does not have it yet, and whether the
    job was warned about the choice.

    Raises:
        ResourceError: the farm cannot have the Blender the job asks for.
    """
    from renderfarm.blenders import OLDEST_SUPPORTED, Blender, Version, choose

    fresh: list[dict[str, Any]] = []
    if calls is not None and any(h.blenders for h in pool.ready):
        try:  # what a machine has now (registered or prepared since its workers started)
            fresh = calls.blenders()
        except Exception as exc:  # a worker that went away: what the workers said
            logger.info("job %s: asking a worker for its Blenders failed: %s",
                        job_id, exc)
    offers = {(b["version"], b["kind"], b["path"]): None
              for b in [*fresh, *(b for h in pool.ready for b in h.blenders)]}
    have = [Blender(Version.parse(v), k, p) for v, k, p in offers]
    own = {Version.parse(b["version"]) for h in pool.ready for b in h.blenders[:1]
           if b["path"] and b["kind"] == "bpy"}
    if not have:  # workers that do not say (synthetic ones): their own Blender
        return "", False
    try:
        choice = choose(spec.blender, saved, have)
    except ResourceError:
        if spec.blender == "auto":
            wanted = saved
        elif spec.blender == "newest" or spec.blender.startswith("/"):
            wanted = None
        else:
            wanted = Version.parse(spec.blender)
        if wanted is None or wanted.series < OLDEST_SUPPORTED:
            raise
        emit("info", message=f"preparing Blender {wanted} on a worker (once per "
                  "machine: its bpy comes from the package index, about 400 MB)")
        made = calls.prepare_blender(str(wanted)) if calls else None
        if made is None:
            raise
        have.append(Blender(Version.parse(made["version"]), made["kind"], made["path"]))
        choice = choose(spec.blender, saved, have)
    if choice.warning:
        warn(choice.warning)
    chosen = choice.blender.version
    emit("info", message=f"renders with Blender {chosen}"
              + (f" (the file was saved with {saved})" if saved is not None else ""))
    if choice.blender.kind == "executable":  # workers run it by its path
        return choice.blender.path, choice.warning is not None
    return ("" if chosen in own else str(chosen)), choice.warning is not None

def saved_with(files: JobFiles | None) -> Any:
    """The Blender major.minor that saved the job's file (None: it cannot be told)."""
    from renderfarm.blenders import HEAD_BYTES, version_of

    try:
        return version_of(files.head(HEAD_BYTES)) if files else None
    except (OSError, RenderFarmError, StopIteration):
        return None

def check_blender(saved: Any, info: SceneInfo, warn: Callable[..., None]) -> None:
    """Warn when the job's file was saved by another Blender series than the farm's:
    its frames may differ from what the artist's Blender writes."""
    from renderfarm.blenders import Version

    try:
        ours = Version.parse(info.blender) if info.blender else None
    except RenderFarmError:
        return
    if saved is not None and ours is not None and saved.series != ours.series:
        newer = saved.series > ours.series
        warn(f"the file was saved with Blender {saved}; this farm renders it with "
                  f"Blender {ours}, whose frames may differ from Blender {saved}'s"
                  + (" (a file from a newer Blender may use what this one does not know)"
                     if newer else ""), data={"saved_with": str(saved),
                                              "blender": str(ours)})
