"""A tqdm progress bar fed by a job's events."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from renderfarm.farm import JobHandle

logger = logging.getLogger(__name__)


def show_progress(handle: JobHandle, stream: TextIO | None = None) -> None:
    """Show tasks done, frames merged and the ETA until the job ends."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="task", desc=handle.job_id, file=stream or sys.stderr,
               dynamic_ncols=True, leave=True)
    try:
        for event in handle.events():
            if event.tasks_total and bar.total != event.tasks_total:
                bar.total = event.tasks_total
                bar.refresh()
            if event.kind == "warning":
                bar.write(f"warning: {event.message}")
            elif event.kind == "task_retry":
                bar.write(f"retrying: {event.message}")
            elif event.kind == "task_failed":
                bar.write(f"failed: {event.message}")
            if event.tasks_done > bar.n:
                bar.update(event.tasks_done - bar.n)
            if event.frames_total:
                bar.set_postfix_str(f"frames {event.frames_done}/{event.frames_total}")
    finally:
        bar.close()
