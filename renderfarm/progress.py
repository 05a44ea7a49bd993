"""A job's progress: a tqdm progress bar fed by its events, and its ETA from its own pace."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, TextIO

from renderfarm.events import Event


class JobHandle(Protocol):
    """What the bar reads of a job (:class:`renderfarm.handle.JobHandle` has it)."""

    job_id: str

    def events(self) -> Iterator[Event]:
        """The job's events until it ends."""

_SAY = {"info": "renderfarm", "warning": "warning", "task_retry": "retrying",
        "task_failed": "failed"}


#: the finished tasks an ETA looks back on (the job's recent pace)
ETA_WINDOW = 20


def eta_seconds(finished: Sequence[float], first_start: float, remaining: int,
                now: float) -> float | None:
    """Seconds a job still needs, from the pace of its own tasks: the last
    :data:`ETA_WINDOW` tasks finished over the time they took (from the job's first task's
    start while it has fewer), the remaining tasks at that pace. Pure.

    Args:
        finished: when each finished task ended (seconds, ascending).
        first_start: when the job's first task started.
        remaining: tasks not finished yet.
        now: the time now, on the same clock.

    Returns:
        The seconds left (0 when nothing remains), or None before any task has finished.
    """
    if remaining <= 0:
        return 0.0
    if not finished:
        return None
    window = list(finished[-ETA_WINDOW:])
    start = first_start if len(finished) <= ETA_WINDOW else finished[-ETA_WINDOW - 1]
    span = max(now - start, 1e-6)
    return remaining * span / len(window)


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
            if event.tasks_total and event.tasks_total != bar.total:
                bar.total = event.tasks_total  # checks of --verify add tasks
                bar.refresh()
            if event.tasks_done > bar.n:
                bar.update(event.tasks_done - bar.n)
    finally:
        if bar is not None:
            bar.close()
