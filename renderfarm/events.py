"""Progress events a job emits, for progress bars, programs and the farm service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: event kinds, in the order a job usually emits them
KINDS = (
    "job_queued", "job_started", "task_started", "task_done", "task_retry", "task_failed",
    "frame_merged", "warning", "job_done", "job_failed", "job_cancelled",
    "task_checking", "task_checked", "estimate", "info", "output_written",
)


@dataclass(frozen=True)
class Event:
    """Something that happened to a job.

    Attributes:
        kind: one of :data:`KINDS`.
        job_id: the job.
        frame: the frame concerned, if any.
        tile: the tile concerned, if any.
        tasks_done: tasks finished so far.
        tasks_total: tasks in the job.
        frames_done: frames merged so far.
        frames_total: frames in the job.
        message: a human-readable line (warnings, errors).
        data: extra facts (task timing, output path, ...).
    """

    kind: str
    job_id: str
    frame: int | None = None
    tile: int | None = None
    tasks_done: int = 0
    tasks_total: int = 0
    frames_done: int = 0
    frames_total: int = 0
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form of the event."""
        return {
            "kind": self.kind, "job_id": self.job_id, "frame": self.frame, "tile": self.tile,
            "tasks_done": self.tasks_done, "tasks_total": self.tasks_total,
            "frames_done": self.frames_done, "frames_total": self.frames_total,
            "message": self.message, "data": dict(self.data),
        }
