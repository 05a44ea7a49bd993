"""Storage in a folder (local disk or a shared file system)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from renderfarm.errors import InputError


class LocalStorage:
    """Files by key under ``root``.

    Raises:
        InputError: ``root`` cannot be created or written.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the storage folder ({exc.strerror}); choose "
                             "another --storage", path=str(root)) from exc
        if not os.access(self.root, os.W_OK):
            raise InputError("the storage folder is not writable; choose another --storage",
                             path=str(root))
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise InputError(f"storage key {key!r} leaves the storage folder")
        return path

    def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key`` (atomically)."""
        target = self._path(key)
        if target == path.resolve():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)

    def get_file(self, key: str, path: Path) -> None:
        """Copy ``key``'s file to ``path``."""
        source = self._path(key)
        if source != path.resolve():
            shutil.copyfile(source, path)

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a file."""
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        """The size of ``key``'s file."""
        return self._path(key).stat().st_size

    def read(self, key: str, offset: int, length: int) -> bytes:
        """Bytes of ``key``'s file."""
        with open(self._path(key), "rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    def local_path(self, key: str) -> Path | None:
        """The file of ``key`` on this disk."""
        return self._path(key)
