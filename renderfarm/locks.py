"""A lock between the processes of one machine: an exclusive ``flock`` on a file (the
file cache's entries, prepared Blender environments, armed faults). Standard library only:
Blender's process imports it too."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (made, with its folder, when missing) for the
    ``with`` block; other processes of the machine that take it wait. POSIX only: workers
    run on Linux."""
    import fcntl

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
