"""Opening ``.blend`` files in this process's Blender."""

from __future__ import annotations

import time

from renderfarm.blendfile import check_blend_file
from renderfarm.errors import BlendFileError


def open_blend(path: str, allow_scripts: bool = False) -> float:
    """Open a ``.blend`` file in this process and return the seconds it took.

    Raises:
        BlendFileError: the file is missing, is not a ``.blend`` or Blender cannot read it.
    """
    import bpy

    check_blend_file(path)
    start = time.perf_counter()
    try:
        bpy.ops.wm.open_mainfile(filepath=path, load_ui=False, use_scripts=allow_scripts)
    except RuntimeError as exc:
        detail = str(exc).split("failed:", 1)[-1].strip().splitlines()[0]
        raise BlendFileError(
            f"Blender cannot open this file ({detail}); the file is damaged or was written "
            "by an incompatible Blender version: save it again from Blender",
            path=path, retryable=False,
        ) from exc
    return time.perf_counter() - start
