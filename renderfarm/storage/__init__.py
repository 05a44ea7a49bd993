"""Where the farm service keeps uploaded files and finished frames: a folder or S3.

``open_storage("/srv/farm")`` gives a :class:`~renderfarm.storage.local.LocalStorage`,
``open_storage("s3://bucket/prefix")`` an :class:`~renderfarm.storage.s3.S3Storage` (boto3,
imported only then; ``AWS_ENDPOINT_URL`` points it at another S3 server).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    """Files by key (``blobs/<sha256>.blend``, ``jobs/<id>/shot_0001.exr``)."""

    #: a short description for logs and ``hello``
    url: str

    def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key``."""

    def get_file(self, key: str, path: Path) -> None:
        """Copy what ``key`` holds to ``path``."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a file."""

    def size(self, key: str) -> int:
        """The size of ``key``'s file in bytes."""

    def read(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``key``'s file from ``offset``."""

    def local_path(self, key: str) -> Path | None:
        """Where ``key`` lies on this machine's disk, if storage is a folder."""


def open_storage(location: str) -> Storage:
    """The storage at ``location``: a folder path or ``s3://bucket[/prefix]``.

    Raises:
        InputError: the location is malformed or cannot be used.
    """
    if location.startswith("s3://"):
        from renderfarm.storage.s3 import S3Storage

        return S3Storage(location)
    from renderfarm.storage.local import LocalStorage

    return LocalStorage(Path(location))
