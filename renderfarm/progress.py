"""A tqdm progress bar fed by a job's events."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from renderfarm.farm import JobHandle

_SAY = {"info": "renderfarm", "warning": "warning", "task_retry": "retrying",
        "task_failed": "failed"}


def show_progress(handle: JobHandle, stream: TextIO | None = None) -> None:
    """Show tasks done, frames merged and the ETA until the job ends."""
    from tqdm import tqdm

    out = stream or sys.stderr
    bar: Any = None
    postfix = ""
    try:
        for event in handle.events():
            if bar is None and event.tasks_total:
                bar = tqdm(total=event.tasks_total, unit="task", desc=handle.job_id, file=out,
                           dynamic_ncols=True, leave=True)
            if event.kind in _SAY:
                line = f"{_SAY[event.kind]}: {event.message}"
                (bar.write(line, file=out) if bar is not None else print(line, file=out))
            if bar is None:
                continue
            text = f"frames {event.frames_done}/{event.frames_total}"
            if text != postfix:
                postfix = text
                bar.set_postfix_str(text, refresh=False)
            if event.tasks_done > bar.n:
                bar.update(event.tasks_done - bar.n)
    finally:
        if bar is not None:
            bar.close()
