"""What can be told of a ``.blend`` file without Blender."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from renderfarm.errors import BlendFileError

logger = logging.getLogger(__name__)


def is_blend_file(path: str) -> bool:
    """Whether a file starts like a ``.blend`` (plain, gzip or zstd compressed)."""
    with open(path, "rb") as handle:
        head = handle.read(7)
    return head.startswith(b"BLENDER") or head[:2] == b"\x1f\x8b" or head[:4] == \
        b"\x28\xb5\x2f\xfd"


def check_blend_file(path: str) -> None:
    """Make sure ``path`` is an existing file that starts like a ``.blend`` (no Blender needed).

    Raises:
        BlendFileError: the file is missing, a folder, or not a ``.blend``.
    """
    if not os.path.exists(path):
        raise BlendFileError("file not found; check the path", path=path)
    if not os.path.isfile(path) or not is_blend_file(path):
        raise BlendFileError("not a .blend file; give the path of a file saved by Blender",
                             path=path)


def frame_size(path: str, scene: str | None = None,
               percentage: int | None = None) -> tuple[int, int] | None:
    """The size of the frames a scene of a ``.blend`` renders (resolution times percentage,
    the render border ignored), read without Blender; None when it cannot be told (several
    scenes and none named, a file Blender Asset Tracer cannot read): Blender's inspection
    on the farm tells it then.

    Args:
        path: the ``.blend``.
        scene: the scene's name (default: the one the file was saved showing).
        percentage: the job's resolution percentage (default: the scene's).
    """
    try:
        from blender_asset_tracer import blendfile

        opened = blendfile.open_cached(Path(path))
        scenes = {b.id_name[2:].decode("utf-8", "replace"): b
                  for b in opened.find_blocks_from_code(b"SC")}
        if scene is None:  # the scene the file was saved showing (FileGlobal.curscene)
            shown = None
            for glob in opened.find_blocks_from_code(b"GLOB"):
                shown = glob.get_pointer(b"curscene")
                break
            block = shown if shown is not None else (
                next(iter(scenes.values())) if len(scenes) == 1 else None)
        else:
            block = scenes.get(scene)
        if block is None:
            return None
        x, y = int(block.get((b"r", b"xsch"))), int(block.get((b"r", b"ysch")))
        size = int(percentage if percentage is not None else block.get((b"r", b"size")))
    except Exception as exc:  # Blender reads it on the farm and says what is wrong
        logger.debug("cannot read the frame size of %s: %s", path, exc)
        return None
    return x * size // 100, y * size // 100
