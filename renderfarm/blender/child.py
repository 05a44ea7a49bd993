"""Blender's own process under a worker: ``python -m renderfarm.blender.child FD [GPU,...]``
(a Python with ``bpy``), or ``blender -b --factory-startup --python child.py -- FD [GPU,...]``
(a Blender executable, whose Python finds renderfarm through ``$RENDERFARM_CHILD_PATH``).
Its code, and the renderfarm modules it imports, import only the standard library and ``bpy``
(``tests/test_architecture.py`` checks it), so it runs in any Blender's Python; what needs
OpenImageIO runs in the actor (:mod:`renderfarm.finishing`).

The worker's Ray actor starts it (:class:`renderfarm.worker_process.BlenderProcess`) and
drives it over the connection on file descriptor ``FD``: each message is ``(method, args)``
for its :class:`~renderfarm.blender.session.BlenderSession`, each answer ``("ok", value,
state)`` or ``("error", exception, state)``, where ``state`` is what the actor shows of the
session (the file it has loaded, the device it renders on). The scene stays loaded between
calls. When Blender crashes, only this process dies: the actor reports the call as failed
(retried elsewhere) and starts another. It dies with its actor (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import pickle
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

#: the session's methods the actor may call
METHODS = ("info", "prepare", "render", "take_extras", "finish_plan", "denoise", "composite",
           "convert", "encode", "remove_files")


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the worker that started it dies."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the closed connection ends it when it next listens
        pass


def _answerable(exc: BaseException) -> BaseException:
    """``exc`` if it crosses a pipe intact, else a RenderError that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        from renderfarm.errors import RenderError

        return RenderError(f"{type(exc).__name__}: {exc}")


def serve(connection: Connection, gpus: list[int] | None) -> None:
    """Answer the actor's calls until it closes the connection."""
    from renderfarm import faults
    from renderfarm.blender.session import BlenderSession

    session = BlenderSession(gpus)
    while True:
        try:
            method, args = connection.recv()
        except (EOFError, OSError):
            return
        try:
            if method not in METHODS:
                raise ValueError(f"no session method {method!r}")
            if method == "render":  # a crash inside Blender, for tests and drills
                task = args[0]
                faults.fire("blender.render", job_id=task.job_id, frame=task.frame,
                            tile=task.tile.index)
            answer: tuple[str, Any] = ("ok", getattr(session, method)(*args))
        except Exception as exc:  # the actor reports it as the call's failure
            answer = ("error", _answerable(exc))
        state = {"loaded": session.loaded_hash, "device": session.device_label}
        connection.send((*answer, state))


def main(argv: list[str]) -> int:
    """Serve the connection on ``argv[0]``'s descriptor; ``argv[1]``: assigned GPU ids."""
    _die_with_parent()
    connection = Connection(int(argv[0]))
    gpus = [int(g) for g in argv[1].split(",") if g] if len(argv) > 1 and argv[1] != "-" \
        else None
    serve(connection, gpus)
    return 0


def _find_renderfarm() -> None:
    """In a Blender executable's Python (which ignores ``$PYTHONPATH``): renderfarm's folder
    (``$RENDERFARM_CHILD_PATH``) first."""
    import os

    folder = os.environ.get("RENDERFARM_CHILD_PATH", "")
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)


if __name__ == "__main__":
    if "--" in sys.argv:  # run by a Blender executable: its own arguments come first
        _find_renderfarm()
        sys.exit(main(sys.argv[sys.argv.index("--") + 1:]))
    sys.exit(main(sys.argv[1:]))
