"""Logging refusals without flooding the log: a few lines per kind per interval (the
budget is :class:`~renderfarm.server.admission.LogBudget`'s), then one line saying how many
more there were. Used by the service, its web app and uvicorn's own log."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from renderfarm.server.admission import LogBudget


class QuietLog:
    """Logs to ``log`` within a :class:`LogBudget` per kind (any thread).

    Args:
        log: where the lines go.
    """

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._budget = LogBudget()
        self._lock = threading.Lock()

    def allow(self, kind: str) -> bool:
        """Whether one more line of ``kind`` may be logged now (saying first how many were
        left out in the interval that just ended)."""
        with self._lock:
            allowed, held = self._budget.allow(kind, time.monotonic())
        if held:
            self._log.info("%d more line(s) like %r were left out", held, kind)
        return allowed

    def note(self, kind: str, message: str, *args: Any) -> None:
        """Log ``message % args`` as a line of ``kind``, if the budget allows it."""
        if self.allow(kind):
            self._log.info(message, *args)


class QuietFilter(logging.Filter):
    """A log filter letting a few lines of each message through per interval (uvicorn logs
    every request it cannot read: a flood of bad connections must not flood the log)."""

    def __init__(self, quiet: QuietLog) -> None:
        super().__init__()
        self._quiet = quiet

    def filter(self, record: logging.LogRecord) -> bool:
        return self._quiet.allow(str(record.msg)[:80])
