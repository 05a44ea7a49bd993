"""Files clients send to the farm: uploads in chunks (resumable, by SHA-256, within each
client's quota), which ones the farm already holds for a client, and a job's bundle checked
against what was uploaded."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from renderfarm.bundle import BundleFile, Manifest, storage_key
from renderfarm.errors import LimitError, ProtocolError, RenderFarmError, ServiceError
from renderfarm.server import protocol
from renderfarm.server.config import ServiceConfig
from renderfarm.server.keyring import Caller
from renderfarm.server.store import Store
from renderfarm.storage import Storage

logger = logging.getLogger(__name__)

#: uploads one client may have in progress at once
MAX_PARTS = 8
#: seconds an unfinished upload is kept
PART_EXPIRY = 86400.0


class Uploads:
    """The ``upload`` and ``have`` operations, and the files a submitted job names.

    Args:
        config: how the service runs (its limits).
        folder: where unfinished uploads are kept (``<sha256>.<client>.part``).
        storage: where finished uploads go (``blobs/<sha256>...``).
        store: the service's database (who uploaded what, how much each client stored).
    """

    def __init__(self, config: ServiceConfig, folder: Path, storage: Storage,
                 store: Store) -> None:
        self._config = config
        self._folder = folder
        self._storage = storage
        self._store = store

    def _part(self, sha: str, caller: Caller) -> Path:
        # one part per client: another client sending the same content cannot reset it
        return self._folder / f"{sha}.{caller.name}.part"

    def upload(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        """The ``upload`` operation: one chunk of a file, stored once it is whole and its
        SHA-256 is right.

        Raises:
            LimitError: the file, the client's uploads in progress or its stored bytes
                are over the farm's limits.
            ServiceError: the chunk does not continue the upload (``conflict``), or the
                whole file is not what its SHA-256 says (``bad_upload``).
            ProtocolError: more bytes than announced.
        """
        from renderfarm.bundle import file_sha256 as file_hash

        sha, offset, total = (request.fields[k] for k in ("sha256", "offset", "total"))
        key = storage_key(sha)
        in_storage = self._storage.exists(key)
        if in_storage and self._store.owns(caller.name, sha):
            return {"received": total, "complete": True}
        # content the farm has from another client: this client sends it too (proof that
        # it has the file; a hash alone gives nobody another client's file), not stored twice
        if total > self._config.max_bundle_bytes:
            raise LimitError(f"upload of {sha[:12]}: {total} bytes is more than the farm's "
                             f"{self._config.max_bundle_bytes} (serve --max-bundle-gb)",
                             limit="upload_bytes")
        part = self._part(sha, caller)
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        # the quota counts what the client stored, its other uploads in progress, and all of
        # this one (announced), at every chunk
        others = [p for p in part.parent.glob(f"*.{caller.name}.part") if p != part]
        if offset == 0 and not part.exists() and len(others) >= MAX_PARTS:
            raise LimitError(f"{caller.name} has {len(others)} uploads in progress, the most "
                             "the farm allows; finish or abandon one (unfinished uploads "
                             "expire after a day)", limit="uploads_in_progress")
        used = self._store.stored_bytes(caller.name)
        pending = sum(p.stat().st_size for p in others)
        quota = self._config.max_stored_bytes_per_client
        if used + pending + total > quota:
            raise LimitError(f"{caller.name} has stored {used} bytes and has {pending} in "
                             f"unfinished uploads; {total} more is over the farm's {quota} "
                             "per client (serve --max-stored-gb-per-client)",
                             limit="stored_bytes")
        data = request.data or b""
        if offset != have:
            if offset != 0:
                raise ServiceError(f"upload of {sha[:12]} must continue at byte {have}, not "
                                   f"{offset}", kind="conflict")
            part.unlink(missing_ok=True)
        if offset + len(data) > total:
            raise ProtocolError(f"upload: {offset + len(data)} bytes is more than the "
                                f"announced total {total}", request_id=request.id)
        with open(part, "ab" if offset else "wb") as handle:
            handle.write(data)
        received = offset + len(data)
        if received < total:
            return {"received": received, "complete": False}
        digest = file_hash(str(part))
        if digest != sha:
            part.unlink()
            raise ServiceError(f"the uploaded file's SHA-256 is {digest[:12]}…, not "
                               f"{sha[:12]}…: it was damaged on the way; upload it again",
                               kind="bad_upload")
        if not in_storage:
            self._storage.put_file(key, part)
        part.unlink(missing_ok=True)
        self._store.add_upload(caller.name, sha, total)
        return {"received": received, "complete": True}

    def have(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        """The ``have`` operation: which of the hashes the farm lacks for this caller."""
        hashes = sorted(set(request.fields["hashes"]))
        return {"missing": [h for h in hashes if not self.has(caller, h)]}

    def has(self, caller: Caller, sha: str) -> bool:
        """Whether the farm holds ``sha`` for this caller: stored, and sent by it once."""
        return self._store.owns(caller.name, sha) and self._storage.exists(storage_key(sha))

    def manifest(self, request: protocol.Request, caller: Caller) -> Manifest:
        """A ``submit``'s bundle: the client's manifest, or the one uploaded ``.blend``
        alone, each file uploaded by this caller and of the size the manifest says.

        Raises:
            ProtocolError: neither or both of ``bundle`` and ``blob``.
            ServiceError: a file was not uploaded (``not_found``) or the manifest is wrong
                (``bad_bundle``).
        """
        fields = request.fields
        if ("blob" in fields) == ("bundle" in fields):
            raise ProtocolError("submit: give either 'bundle' (a manifest) or 'blob' (one "
                                "uploaded .blend)", request_id=request.id)
        if "blob" in fields:
            name = fields["filename"] if fields["filename"].endswith(".blend") else \
                fields["filename"] + ".blend"
            key = storage_key(fields["blob"])
            if not self.has(caller, fields["blob"]):
                raise ServiceError("the file was not uploaded (or the upload did not "
                                   "finish): upload it, then submit", kind="not_found")
            return Manifest(name, (BundleFile(name, fields["blob"],
                                              self._storage.size(key)),))
        try:
            manifest = Manifest.from_dict(fields["bundle"], self._config.max_bundle_bytes)
        except RenderFarmError as exc:
            raise ServiceError(f"submit: {exc.one_line()}", kind="bad_bundle") from exc
        absent = [h for h in manifest.hashes() if not self.has(caller, h)]
        if absent:
            raise ServiceError(f"{len(absent)} file(s) of the bundle were not uploaded (e.g. "
                               f"{absent[0][:12]}…): upload them, then submit",
                               kind="not_found")
        sizes: dict[str, int] = {}
        for entry in manifest.files:  # the limit counts what is stored, not what is claimed
            if entry.sha256 not in sizes:
                sizes[entry.sha256] = self._storage.size(storage_key(entry.sha256))
            if sizes[entry.sha256] != entry.size:
                raise ServiceError(f"bundle file {entry.path!r} is {sizes[entry.sha256]} "
                                   f"bytes on the farm, not the {entry.size} the manifest "
                                   "says", kind="bad_bundle")
        return manifest

    def expire(self) -> None:
        """Delete uploads left unfinished for :data:`PART_EXPIRY` seconds."""
        now = time.time()
        for stale in self._folder.glob("*.part"):
            try:
                if now - stale.stat().st_mtime > PART_EXPIRY:
                    stale.unlink(missing_ok=True)
                    logger.info("unfinished upload %s expired", stale.name)
            except OSError:
                continue
