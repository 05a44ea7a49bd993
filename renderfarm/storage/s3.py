"""Storage in an S3 bucket (AWS or any S3-speaking server), through boto3."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from renderfarm.errors import InputError

logger = logging.getLogger(__name__)


class S3Storage:
    """Files by key under ``s3://bucket/prefix``.

    boto3 finds credentials and the region the usual way (environment, config files);
    ``AWS_ENDPOINT_URL`` (or ``endpoint_url``) selects another S3 server.

    Raises:
        InputError: boto3 is not installed, or the bucket cannot be reached.
    """

    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        try:
            import boto3
        except ImportError:
            raise InputError("S3 storage needs boto3: pip install 'renderfarm[s3]'") from None
        rest = url[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise InputError(f"{url!r} names no bucket; use s3://BUCKET[/PREFIX]")
        self.url = url
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        kwargs: dict[str, Any] = {"endpoint_url": endpoint_url} if endpoint_url else {}
        self.client = boto3.client("s3", **kwargs)
        try:
            self.client.head_bucket(Bucket=bucket)
        except Exception as exc:
            raise InputError(f"cannot use S3 bucket {bucket!r} ({exc}); check the bucket, "
                             "credentials and AWS_ENDPOINT_URL") from exc

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path) -> None:
        """Upload ``path`` as ``key``."""
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def get_file(self, key: str, path: Path) -> None:
        """Download ``key`` to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, self._key(key), str(path))

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists in the bucket."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError:
            return False
        return True

    def size(self, key: str) -> int:
        """The size of ``key``."""
        return int(self.client.head_object(Bucket=self.bucket,
                                           Key=self._key(key))["ContentLength"])

    def read(self, key: str, offset: int, length: int) -> bytes:
        """A byte range of ``key``."""
        if length == 0:
            return b""
        reply = self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                       Range=f"bytes={offset}-{offset + length - 1}")
        return reply["Body"].read()

    def local_path(self, key: str) -> Path | None:
        """None: S3 objects are not on this disk."""
        return None
