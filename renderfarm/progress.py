"""A tqdm progress bar fed by a job's events."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any, Protocol, TextIO

from renderfarm.events import Event


class JobHandle(Protocol):
    """What the bar reads of a job (:class:`renderfarm.farm.JobHandle` has it)."""

    job_id: str

    def events(self) -> Iterator[Event]:
        """The job's events until it ends."""

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
            # tiles finish steadily long before the first frame is merged: show both
            text = (f"frames merged {event.frames_done}/{event.frames_total}, "
                    f"tiles {event.tasks_done}/{event.tasks_total}")
            if text != postfix:
                postfix = text
                bar.set_postfix_str(text, refresh=False)
            if event.tasks_done > bar.n:
                bar.update(event.tasks_done - bar.n)
    finally:
        if bar is not None:
            bar.close()
