"""How a job's files reach its workers: a bundle in the farm's storage, a shared path, or,
for workers that reach neither, bytes through Ray's object store.

:class:`JobFiles` checks the job's files before anything renders (every file of its bundle
stored, nothing missing unless the job allows it, each missing file one warning) and holds
the Ray reference workers get the files' description by.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from renderfarm.bundle import Manifest, storage_key, trace_missing
from renderfarm.bundle import file_sha256 as file_hash
from renderfarm.errors import BlendFileError, BundleError, OutputError, missing_error
from renderfarm.job import JobSpec

logger = logging.getLogger(__name__)

#: missing files named one warning each; the rest are counted in one more
MAX_MISSING_WARNINGS = 50


class JobFiles:
    """A job's files as its workers get them.

    Args:
        spec: the job.
        storage: the farm's storage (called when first needed).
        max_bundle_bytes: the largest bundle the farm accepts.
        scratch: where files fetched from storage for Ray's object store are kept.
        warn: tells the job of a warning (it reports and keeps it).
        info: tells the job of a note for its events (``info(message, data)``).
    """

    def __init__(self, spec: JobSpec, storage: Callable[[], Any], max_bundle_bytes: int,
                 scratch: Path, warn: Callable[[str, dict[str, Any] | None], None],
                 info: Callable[[str, dict[str, Any]], None]) -> None:
        self.spec = spec
        self._storage = storage
        self._max_bundle_bytes = max_bundle_bytes
        self._scratch = scratch
        self._warn = warn
        self._info = info
        self._lock = threading.Lock()
        self.files: dict[str, Any] = {}
        #: the Ray reference of :attr:`files`, passed to every worker call
        self.ref: Any = None
        self.manifest: Manifest | None = None
        #: what the client's side found missing (warned about once, not again per worker)
        self.known_missing: tuple[str, ...] = ()

    def prepare(self, transfer: dict[str, int]) -> str:
        """Make the job's files reachable by workers; returns the key workers load it by
        (the bundle's digest, or the shared file's hash).

        Args:
            transfer: what bundling stored for the job (reported), or empty.

        Raises:
            MissingFilesError: the scene needs files that cannot be found (unless the job
                allows it: then each is a warning).
            BundleError: the bundle cannot be made, is too large, or lacks stored files.
        """
        import ray

        spec = self.spec
        if spec.files == "shared":
            try:
                key = file_hash(spec.blend_file)
            except OSError as exc:
                raise BlendFileError(f"the file cannot be read ({exc.strerror}); with --files "
                                     "shared it must stay in place until the job ends",
                                     path=spec.blend_file) from exc
            self.known_missing = tuple(trace_missing(spec.blend_file))
            self.check_missing(self.known_missing)
            self.files = {"mode": "shared", "blob": []}
        else:
            storage = self._storage()
            assert spec.bundle is not None  # Farm.submit bundled it, or the client did
            manifest = Manifest.from_dict(spec.bundle, self._max_bundle_bytes)
            absent = [h for h in manifest.hashes() if not storage.exists(storage_key(h))]
            if absent:
                raise BundleError(
                    f"{len(absent)} file(s) of the job's bundle are not in the farm's "
                    "storage (the upload did not finish); submit the job again",
                    path=spec.blend_file)
            if transfer:
                self._info(f"bundle: {transfer['bundle_files']} file(s), "
                           f"{transfer['bundle_bytes']} bytes; sent {transfer['sent_files']} "
                           f"new file(s), {transfer['sent_bytes']} bytes", transfer)
            self.known_missing = manifest.missing
            self.check_missing(manifest.missing)
            self.manifest = manifest
            key = manifest.digest
            self.files = {"mode": "bundle", "manifest": manifest.to_dict(),
                          "storage": storage.url, "refs": None}
        self.ref = ray.put(self.files)
        return key

    def head(self, size: int) -> bytes:
        """The first ``size`` bytes of the job's ``.blend`` (from the farm's storage for a
        bundle: the client's file may be gone)."""
        if self.manifest is not None:
            root = next(f for f in self.manifest.files if f.path == self.manifest.root)
            key = storage_key(root.sha256)
            storage = self._storage()
            return bytes(storage.read(key, 0, min(size, storage.size(key))))
        with open(self.spec.blend_file, "rb") as handle:
            return handle.read(size)

    def check_missing(self, missing: Any, seen: Any = ()) -> None:
        """Fail the job naming each missing file, or warn per file when it allows them
        (files in ``seen`` were warned about already)."""
        missing = sorted(set(missing))
        if not missing:
            return
        if not self.spec.allow_missing:
            raise missing_error(missing, self.spec.blend_file)
        known = {os.path.basename(p) for p in seen}
        new = [p for p in missing if os.path.basename(p) not in known]
        for path in new[:MAX_MISSING_WARNINGS]:
            self._warn(f"missing file, rendered without it (--allow-missing): {path}",
                       {"missing": path})
        if len(new) > MAX_MISSING_WARNINGS:
            self._warn(f"and {len(new) - MAX_MISSING_WARNINGS} more missing file(s), rendered "
                       "without them (--allow-missing)", None)

    def send_bytes(self) -> None:
        """Send the job's files through Ray's object store, for workers that can reach
        neither the driver's paths nor the farm's storage (once per job)."""
        import ray

        with self._lock:
            if self.files.get("mode") == "shared" and not self.files.get("blob"):
                with open(self.spec.blend_file, "rb") as handle:
                    self.files["blob"] = [ray.put(handle.read())]
            elif self.files.get("mode") == "bundle" and not self.files.get("refs"):
                assert self.manifest is not None
                storage = self._storage()
                refs = {}
                for sha in self.manifest.hashes():
                    local = storage.local_path(storage_key(sha))
                    if local is None:
                        local = self._scratch / f"fetch-{sha}"
                        storage.get_file(storage_key(sha), local)
                    refs[sha] = ray.put(Path(local).read_bytes())
                self.files["refs"] = refs
            else:
                return
            self.ref = ray.put(self.files)


def check_output_folder(folder: Path) -> None:
    """Create ``folder`` if needed and make sure files can be written in it.

    Raises:
        OutputError: the folder cannot be created or written.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder ({exc.strerror}); choose another "
                          "--output", path=str(folder)) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError("the output folder is not writable; choose another --output",
                          path=str(folder))
