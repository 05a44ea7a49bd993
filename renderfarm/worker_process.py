"""Blender in a child process of a worker (:mod:`renderfarm.blender.child`), as the worker's
actor drives it: the same calls as :class:`~renderfarm.blender.session.BlenderSession`, each
sent over a pipe to the child, which keeps the scene loaded between them.

A crash inside Blender (a segfault, an abort, the out-of-memory killer) ends the child only:
the call fails with a retryable :class:`~renderfarm.errors.WorkerDiedError` that says so, and the
next call starts a new child. Blender's output goes to the worker's log file (truncated by
the actor before each task), so a failed task reports what Blender printed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from renderfarm.errors import WorkerDiedError

logger = logging.getLogger(__name__)

#: seconds a child gets to end after its connection closes, before it is killed
STOP_SECONDS = 5.0


def _signal_name(code: int | None) -> str:
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def child_path() -> str:
    """A folder that holds renderfarm only (a link to the package this process imports), for
    a Blender process's ``sys.path``: its code imports only the standard library and ``bpy``,
    so it must not see this Python's other packages, built for this Python."""
    import hashlib
    import tempfile

    import renderfarm

    package = os.path.dirname(os.path.abspath(renderfarm.__file__))
    mine = os.path.join(tempfile.gettempdir(), f"renderfarm-child-{os.getuid()}")
    os.makedirs(mine, mode=0o700, exist_ok=True)
    facts = os.lstat(mine)  # another user's folder (or a link) would let them swap the code
    if facts.st_uid != os.getuid() or not stat.S_ISDIR(facts.st_mode):
        raise WorkerDiedError(f"{mine} is not a folder of this user's; remove it (the worker "
                              "links the code Blender's process runs there)", retryable=False)
    if facts.st_mode & 0o077:
        os.chmod(mine, 0o700)  # ours, made open by an older version: private from now on
    folder = os.path.join(mine, hashlib.sha256(package.encode()).hexdigest()[:16])
    link = os.path.join(folder, "renderfarm")
    if os.path.realpath(link) != os.path.realpath(package):
        os.makedirs(folder, exist_ok=True)
        spare = f"{link}.{os.getpid()}"
        if os.path.lexists(spare):
            os.remove(spare)
        os.symlink(package, spare)
        os.replace(spare, link)  # atomic: workers of one machine may do it at once
    return folder


class BlenderProcess:
    """The worker's Blender, in a child process started on first use.

    Args:
        gpus: the GPU ids Ray assigned to the worker (None: none).
        log: the file Blender's output goes to.
        python: the Python that runs the child (default: this one, whose ``bpy`` it imports).
        executable: a Blender executable that runs the child instead (``blender -b``).
    """

    def __init__(self, gpus: Sequence[int] | None, log: str,
                 python: str | None = None, executable: str | None = None) -> None:
        self.gpus = list(gpus) if gpus is not None else None
        self.log = log
        self.python = python or sys.executable
        self.executable = executable
        #: the hash of the file the child has loaded (None: none, or no child)
        self.loaded_hash: str | None = None
        #: the device the child rendered its last task on
        self.device_label = ""
        #: children started so far (a crash starts another)
        self.starts = 0
        self._child: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id, or None while there is none."""
        return self._child.pid if self._child is not None else None

    def start(self) -> None:
        """Start the child now (it imports Blender while nothing waits for it)."""
        if self._connection is None:
            self._start()

    def _start(self) -> Connection:
        ours, theirs = socket.socketpair()
        gpus = ",".join(map(str, self.gpus)) if self.gpus is not None else "-"
        ours_args = [str(theirs.fileno()), gpus]
        if self.executable:
            from renderfarm.blender import child

            command = [self.executable, "-b", "--factory-startup", "--python-exit-code", "1",
                       "--python", child.__file__, "--", *ours_args]
        else:
            command = [self.python, "-m", "renderfarm.blender.child", *ours_args]
        with open(self.log, "ab") as output:
            self._child = subprocess.Popen(
                command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=output,
                stderr=output, env=self._environment())
        theirs.close()
        self._connection = Connection(ours.detach())
        self.starts += 1
        return self._connection

    def _environment(self) -> dict[str, str]:
        """The child's environment: this one, with renderfarm importable and nothing else of
        this Python's (the child's Python may be another: Blender 5.1's is 3.13)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = env["RENDERFARM_CHILD_PATH"] = child_path()
        return env

    def call(self, method: str, *args: Any) -> Any:
        """Run one session method in the child.

        Raises:
            WorkerDiedError: Blender's process died during the call (retryable).
            Exception: what the method raised in the child.
        """
        connection = self._connection or self._start()
        try:
            connection.send((method, args))
            status, value, state = connection.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            code = self._reap()
            raise WorkerDiedError(
                f"Blender's process died during {method} ({_signal_name(code)}): Blender "
                "crashed or ran out of memory; the task is retried (its worker starts a new "
                "Blender)", retryable=True) from exc
        self.loaded_hash = state.get("loaded")
        self.device_label = state.get("device") or self.device_label
        if status == "error":
            raise value
        return value

    def _reap(self) -> int | None:
        """Forget a dead child; its exit status (negative: the signal that ended it)."""
        child, self._child = self._child, None
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self.loaded_hash = None
        if child is None:
            return None
        try:
            return child.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            return child.wait()

    def stop(self) -> None:
        """End the child (it finishes nothing: its connection closes)."""
        if self._child is not None:
            logger.debug("stopping Blender's process %d", self._child.pid)
            deadline = time.monotonic() + STOP_SECONDS
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            while self._child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            self._reap()

    # -- the session's calls ---------------------------------------------------------------
    def info(self, *args: Any) -> Any:
        """:meth:`BlenderSession.info` in the child."""
        return self.call("info", *args)

    def prepare(self, *args: Any) -> float:
        """:meth:`BlenderSession.prepare` in the child."""
        return float(self.call("prepare", *args))

    def render(self, task: Any, path: str) -> Any:
        """:meth:`BlenderSession.render` in the child; a stereo or multiview piece's view
        files are packed here into ``path``, one piece."""
        stats = self.call("render", task, path)
        if stats.views:
            from renderfarm.finishing import pack_piece_views

            pack_piece_views(stats.views, path)
        return stats

    def take_extras(self) -> dict[str, bytes]:
        """:meth:`BlenderSession.take_extras` in the child (nothing when there is none)."""
        if self._child is None:
            return {}
        return dict(self.call("take_extras"))

    def finish(self, merged: str, target: str, file_format: str,
               frame: int | None = None) -> None:
        """Finish a merged frame of the prepared job (:func:`renderfarm.finishing.finish`):
        OpenImageIO's steps here, Blender's in the child."""
        from renderfarm.finishing import finish

        finish(self.call, merged, target, file_format, frame)

    def encode(self, *args: Any) -> str:
        """:meth:`BlenderSession.encode` in the child."""
        return str(self.call("encode", *args))

    def remove_files(self) -> None:
        """:meth:`BlenderSession.remove_files` in the child, then end it."""
        if self._child is not None:
            try:
                self.call("remove_files")
            except Exception:  # it is going anyway
                logger.debug("Blender's process did not remove its files", exc_info=True)
        self.stop()
