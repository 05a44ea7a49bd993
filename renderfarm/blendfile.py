"""What can be told of a ``.blend`` file without Blender, with the standard library only
(Blender's process imports it; :func:`renderfarm.bundle.frame_size` reads more, with Blender
Asset Tracer)."""

from __future__ import annotations

import logging
import os

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
