"""Where the service keeps a job's files, and how clients see them: never the farm's own
paths (its state folder, its storage), only names in the job's output folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from renderfarm.storage import Storage


class FarmPaths:
    """A job's folders and storage keys, and text scrubbed of the farm's paths.

    Args:
        state_dir: the service's state folder (resolved).
        storage: where uploads and finished frames are kept.
    """

    def __init__(self, state_dir: Path, storage: Storage) -> None:
        self.state_dir = state_dir
        self.storage = storage
        local = storage.local_path("x")
        self._private_roots = sorted({str(state_dir), str(Path(local).parent)}
                                     if local is not None else {str(state_dir)},
                                     key=len, reverse=True)

    def job_dir(self, job_id: str) -> Path:
        """The job's folder in the state folder: its .blend, ``pieces/``, ``previews/``."""
        return self.state_dir / "jobs" / job_id

    def uploads_dir(self) -> Path:
        """The folder of unfinished uploads."""
        return self.state_dir / "uploads"

    @staticmethod
    def output_key(job_id: str, name: str) -> str:
        """The storage key of the job's output file ``name``."""
        return f"jobs/{job_id}/{name}"

    def output_dir(self, job_id: str) -> Path:
        """The folder the job's frames are written in."""
        local = self.storage.local_path(self.output_key(job_id, "x"))
        return local.parent if local is not None else self.state_dir / "outputs" / job_id

    def scrub(self, text: str) -> str:
        """``text`` without the farm's own paths (its state folder, its storage): clients
        see ``<farm>/jobs/...``, never where the service keeps things."""
        for root in self._private_roots:
            text = text.replace(root, "<farm>")
        return text

    def public(self, job: dict[str, Any]) -> dict[str, Any]:
        """A job's dict as clients see it (no server paths in its error and warnings)."""
        if job.get("error"):
            job["error"] = self.scrub(job["error"])
        job["warnings"] = [self.scrub(w) for w in job.get("warnings") or []]
        return job

    def job_relative(self, job_id: str, value: Any) -> Any:
        """``value`` (an event's data) with every path of the farm's disk replaced by its
        name in the job's output folder (``passes/depth_0001.exr``), or by its file name
        for a file elsewhere (a piece); other text is scrubbed of the farm's paths."""
        if isinstance(value, dict):
            return {k: self.job_relative(job_id, v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.job_relative(job_id, v) for v in value]
        if not isinstance(value, str) or not os.path.isabs(value):
            return self.scrub(value) if isinstance(value, str) else value
        try:
            return Path(value).relative_to(self.output_dir(job_id)).as_posix()
        except ValueError:
            return Path(value).name
