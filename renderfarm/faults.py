"""Fault injection for tests, soak runs and chaos drills: deterministic, switched on on purpose.

A *fault point* is a named place in the farm's code (``driver.done``, ``worker.render``, ...).
:func:`fire` is called there; it does nothing unless a fault is armed for that point. Faults
are armed in this process (:func:`arm`, for the driver's points) or in a JSON file named by
``$RENDERFARM_FAULTS`` (for workers, which are other processes: the file is read at each
point, and a fault's ``times`` is counted down in it under a lock, so "once" means once across
every worker of the machine).

A fault names what happens: ``raise`` (an exception in that code path), ``abort`` (the process
dies with SIGABRT, as Blender does on a fatal error), ``segv`` (SIGSEGV), ``sleep`` (the worker
lags ``seconds``), ``memory`` (``MemoryError``, as when a worker runs out of memory) or
``disk_full`` (``OSError(ENOSPC)``). A worker's finished piece can be spoiled at the point
``worker.piece``, as a broken GPU or a dishonest machine would: ``pixels`` (a few values off),
``blank`` (every value zero) or ``other_frame`` (the tile of the next frame); :func:`spoil`
takes those. ``match`` limits a fault to calls whose context has those values
(``{"frame": 3}``, ``{"job_id": "..."}``, ``{"worker": "cpu-2"}``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from renderfarm.locks import file_lock

logger = logging.getLogger(__name__)

#: the environment variable naming the fault file workers read
FAULTS_ENV = "RENDERFARM_FAULTS"
ACTIONS = ("raise", "abort", "segv", "sleep", "memory", "disk_full", "pixels", "blank",
           "other_frame")
#: actions that spoil a result instead of acting where they fire (see :func:`spoil`)
SPOILERS = ("pixels", "blank", "other_frame")


class InjectedFault(RuntimeError):
    """The exception a ``raise`` fault throws."""


@dataclass
class Fault:
    """One armed fault.

    Attributes:
        point: where it fires.
        action: what it does (one of :data:`ACTIONS`).
        times: how many more times it fires (-1: always).
        match: context values a call must have for it to fire.
        seconds: how long ``sleep`` lags.
        message: the text of the exception it raises.
    """

    point: str
    action: str = "raise"
    times: int = 1
    match: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    message: str = "injected fault"

    def applies(self, point: str, context: dict[str, Any]) -> bool:
        """Whether this fault fires at ``point`` for a call with ``context``."""
        return self.point == point and self.times != 0 and all(
            context.get(k) == v for k, v in self.match.items())

    def to_dict(self) -> dict[str, Any]:
        """The fault as JSON-friendly data."""
        return {"point": self.point, "action": self.action, "times": self.times,
                "match": self.match, "seconds": self.seconds, "message": self.message}


_lock = threading.Lock()
_armed: list[Fault] = []
#: how many faults fired in this process, by point (for soak reports)
fired: dict[str, int] = {}


def arm(point: str, action: str = "raise", *, times: int = 1, seconds: float = 0.0,
        message: str = "injected fault", **match: Any) -> Fault:
    """Arm a fault in this process (the driver's points); returns it."""
    if action not in ACTIONS:
        raise ValueError(f"unknown fault action {action!r}; known: {', '.join(ACTIONS)}")
    fault = Fault(point, action, times, dict(match), seconds, message)
    with _lock:
        _armed.append(fault)
    return fault


def armed_here() -> list[Fault]:
    """Copies of the faults armed in this process, ``times`` as counted down so far (a
    fault armed once whose ``times`` is 0 has fired)."""
    with _lock:
        return [Fault(**f.to_dict()) for f in _armed]


def read_worker_faults(path: str | os.PathLike[str]) -> list[Fault]:
    """The faults of the file workers read, ``times`` as they counted them down (empty when
    there is none)."""
    with file_lock(f"{path}.lock"):
        try:
            with open(path, encoding="utf-8") as handle:
                return [Fault(**f) for f in json.load(handle)]
        except (OSError, ValueError, TypeError):
            return []


def disarm() -> None:
    """Disarm every fault of this process."""
    with _lock:
        _armed.clear()


def arm_workers(path: str | os.PathLike[str], faults: list[Fault]) -> None:
    """Write the fault file workers read (``$RENDERFARM_FAULTS`` must name ``path`` in their
    environment)."""
    with file_lock(f"{path}.lock"):
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump([f.to_dict() for f in faults], handle)
        os.replace(tmp, path)


def _take_from_file(point: str, context: dict[str, Any]) -> Fault | None:
    path = os.environ.get(FAULTS_ENV)
    if not path or not os.path.exists(path):
        return None
    with file_lock(f"{path}.lock"):
        try:
            with open(path, encoding="utf-8") as handle:
                faults = [Fault(**f) for f in json.load(handle)]
        except (OSError, ValueError, TypeError):
            return None
        for fault in faults:
            if fault.applies(point, context):
                if fault.times > 0:
                    fault.times -= 1
                    tmp = f"{path}.tmp"
                    with open(tmp, "w", encoding="utf-8") as handle:
                        json.dump([f.to_dict() for f in faults], handle)
                    os.replace(tmp, path)
                return fault
    return None


def _take(point: str, context: dict[str, Any]) -> Fault | None:
    with _lock:
        for fault in _armed:
            if fault.applies(point, context):
                if fault.times > 0:
                    fault.times -= 1
                return fault
    return _take_from_file(point, context)


def spoil(point: str, **context: Any) -> str | None:
    """The spoiling action (one of :data:`SPOILERS`) armed for ``point`` and this call, or
    None; the caller spoils its result accordingly."""
    if not _armed and not os.environ.get(FAULTS_ENV):
        return None
    fault = _take(point, context)
    if fault is None or fault.action not in SPOILERS:
        return None
    fired[point] = fired.get(point, 0) + 1
    logger.warning("fault %s spoils the result at %s (%s)", fault.action, point, context)
    return fault.action


def fire(point: str, **context: Any) -> None:
    """Do what a fault armed for ``point`` says, if one is (else nothing, cheaply).

    Raises:
        InjectedFault: a ``raise`` fault.
        MemoryError: a ``memory`` fault.
        OSError: a ``disk_full`` fault (errno ENOSPC).
    """
    if not _armed and not os.environ.get(FAULTS_ENV):
        return
    fault = _take(point, context)
    if fault is None or fault.action in SPOILERS:
        return
    fired[point] = fired.get(point, 0) + 1
    logger.warning("fault %s fires at %s (%s)", fault.action, point, context)
    if fault.action == "raise":
        raise InjectedFault(f"{fault.message} at {point}")
    if fault.action == "memory":
        raise MemoryError(f"{fault.message} at {point}")
    if fault.action == "disk_full":
        raise OSError(errno.ENOSPC, f"No space left on device ({fault.message} at {point})")
    if fault.action == "sleep":
        time.sleep(fault.seconds)
        return
    os.kill(os.getpid(), signal.SIGABRT if fault.action == "abort" else signal.SIGSEGV)
