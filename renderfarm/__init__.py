"""renderfarm: render Blender scenes on a Ray cluster.

Frames and tiles run as tasks on long-lived Blender workers (Ray actors that keep the scene
loaded); tiles are merged with OpenImageIO into one image per frame, equal to what Blender
renders on one machine.

Quick use::

    import renderfarm
    result = renderfarm.render("shot.blend", frames="1-8", tiles=(2, 2),
                               output="out/shot_####.exr")
    result.outputs  # {1: Path("out/shot_0001.exr"), ...}

Importing this package does not import Ray, OpenImageIO or bpy; they load when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from renderfarm.errors import (
    BlendFileError,
    CancelledError,
    FrameRangeError,
    InputError,
    JobFailedError,
    MergeError,
    OutputError,
    RenderError,
    RenderFarmError,
    ResourceError,
    SceneError,
    TaskTimeoutError,
    UsageError,
    WorkerDiedError,
)
from renderfarm.frames import format_frames, parse_frames
from renderfarm.job import JobResult, JobSpec, SceneInfo, Task, TaskResult, Tile

if TYPE_CHECKING:
    from renderfarm.api import render
    from renderfarm.farm import Farm, FarmConfig
    from renderfarm.handle import JobHandle

__version__ = "0.1.0"

__all__ = [
    "BlendFileError", "CancelledError", "Farm", "FarmConfig", "FrameRangeError", "InputError",
    "JobFailedError", "JobHandle", "JobResult", "JobSpec", "MergeError", "OutputError",
    "RenderError", "RenderFarmError", "ResourceError", "SceneError", "SceneInfo", "Task",
    "TaskResult", "TaskTimeoutError", "Tile", "UsageError", "WorkerDiedError", "__version__",
    "format_frames", "parse_frames", "render",
]

_LAZY = {"render": "renderfarm.api", "Farm": "renderfarm.farm",
         "FarmConfig": "renderfarm.farm", "JobHandle": "renderfarm.handle"}


def __getattr__(name: str) -> Any:
    """Import the heavy parts (Ray, OpenImageIO) only when they are first used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'renderfarm' has no attribute {name!r}")
