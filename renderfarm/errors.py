"""Errors raised by renderfarm.

Every error carries the context a user needs to act on it (the file, frame or tile it concerns,
the tail of a log) and says whether retrying the same work can help. The CLI prints
:meth:`RenderFarmError.one_line` and exits with :attr:`RenderFarmError.exit_code`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class RenderFarmError(Exception):
    """Base class of every error renderfarm raises on purpose.

    Args:
        message: what went wrong and what to do about it, in one sentence.
        path: the file the error concerns, if any.
        frame: the frame the error concerns, if any.
        tile: the tile index the error concerns, if any.
        log_tail: the last lines a worker logged before the error, if any.
        retryable: whether running the same work again may succeed.
    """

    #: exit code of the CLI for this kind of error.
    exit_code: int = 4
    #: default for ``retryable`` when the constructor does not say.
    default_retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        frame: int | None = None,
        tile: int | None = None,
        log_tail: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.frame = frame
        self.tile = tile
        self.log_tail = log_tail
        self.retryable = self.default_retryable if retryable is None else retryable

    def one_line(self) -> str:
        """The error as the single line the CLI prints."""
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.frame is not None:
            where.append(f"frame {self.frame}")
        if self.tile is not None:
            where.append(f"tile {self.tile}")
        prefix = f"{', '.join(where)}: " if where else ""
        return prefix + " ".join(self.message.split())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form of the error (used in task results and ``--json``)."""
        return {
            "type": type(self).__name__,
            "message": self.message,
            "path": self.path,
            "frame": self.frame,
            "tile": self.tile,
            "log_tail": self.log_tail,
            "retryable": self.retryable,
        }

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments do not survive pickling by default; Ray pickles errors.
        return (_rebuild, (type(self), self.to_dict()))


def _rebuild(cls: type[RenderFarmError], data: dict[str, Any]) -> RenderFarmError:
    return cls(
        data["message"],
        path=data["path"],
        frame=data["frame"],
        tile=data["tile"],
        log_tail=data["log_tail"],
        retryable=data["retryable"],
    )


class UsageError(RenderFarmError):
    """The command or call itself is malformed (CLI exit code 2)."""

    exit_code = 2


class InputError(RenderFarmError):
    """The input is wrong: a missing or corrupt file, a bad frame range, an impossible tile grid."""

    exit_code = 3


class FrameRangeError(InputError):
    """A frame-range string cannot be parsed or selects no frame."""


class BlendFileError(InputError):
    """A ``.blend`` file is missing, is not a ``.blend`` file, or cannot be opened."""


class SceneError(InputError):
    """The scene cannot be rendered as asked (no camera, tiles larger than the image, ...)."""


class OutputError(InputError):
    """The output pattern is unusable: unknown extension or a folder that cannot be written."""


class ResourceError(InputError):
    """The job asks for resources the cluster does not have (e.g. GPUs on a CPU-only cluster)."""


class BundleError(InputError):
    """A job's files cannot be bundled or unpacked safely (a path that leaves the bundle, a
    bundle over the farm's size limit, a malformed manifest)."""


class LimitError(InputError):
    """A job or a request is over one of the farm's limits (tasks, frames, samples, size,
    storage, rate).

    Args:
        message: what is over which limit, and how to stay within it.
        limit: the limit's name (``tasks_per_job``, ``samples``, ...).
    """

    def __init__(self, message: str, *, limit: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.limit = limit


class MissingFilesError(InputError):
    """The scene needs files that cannot be found (textures, libraries, caches).

    Args:
        message: what is missing and what to do.
        missing: every missing file, as the scene names it.
    """

    def __init__(self, message: str, *, missing: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.missing = tuple(missing)


def missing_error(manifest_missing: Iterable[str], blend: str) -> MissingFilesError:
    """The error of a job whose scene needs files that cannot be found."""
    missing = tuple(sorted(set(manifest_missing)))
    shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20
                                       else "")
    return MissingFilesError(
        f"the scene needs {len(missing)} file(s) that cannot be found: {shown}; put them "
        "back, fix the paths in Blender (File > External Data > Find Missing Files), or "
        "render anyway with --allow-missing", path=blend, missing=missing)


class RenderError(RenderFarmError):
    """A task failed while rendering (CLI exit code 4)."""

    default_retryable = True


class IntegrityError(RenderError):
    """A file a worker fetched does not have the content (SHA-256) the job names; fetching it
    again may help."""


class WorkerDiedError(RenderError):
    """A worker process died (Blender crashed, the node went away) while it held a task."""


class TaskTimeoutError(RenderError):
    """A task ran longer than the job's per-task timeout."""


class VerificationError(RenderFarmError):
    """Workers disagree on a piece's pixels and the farm cannot tell which is right (no two
    of them agree, or no other worker is alive to settle it)."""


class OutputMismatchError(RenderFarmError):
    """A delivered output file's content (SHA-256) is not what the job's report says: it was
    changed or damaged after the farm wrote it."""


class MergeError(RenderFarmError):
    """Pieces of a frame could not be merged or the output could not be written."""


class JobFailedError(RenderFarmError):
    """A job ended with tasks that failed after all retries."""


class ClusterLostError(RenderFarmError):
    """The Ray cluster under the farm failed (its raylet or GCS died): the job stops without
    failing; the farm service restarts or reconnects its Ray and resumes the job, keeping
    every finished piece."""

    default_retryable = True


class CancelledError(RenderFarmError):
    """The job was cancelled by the user (CLI exit code 130)."""

    exit_code = 130


class ProtocolError(InputError):
    """A message to or from the farm service breaks the protocol (schema, version, size).

    Args:
        message: what is wrong with the message.
        kind: a short type sent back in the error reply (``bad_request``, ``too_big``,
            ``version``).
        request_id: the id of the request, when it could be read.
    """

    def __init__(self, message: str, *, kind: str = "bad_request", request_id: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.kind = kind
        self.request_id = request_id


class ServiceError(RenderFarmError):
    """The farm service refused a request, or cannot be reached.

    Args:
        message: the service's reason, or why it cannot be reached.
        kind: the error type the service replied (``not_found``, ``refused``, ...) or
            ``unreachable``.
    """

    def __init__(self, message: str, *, kind: str = "refused", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.kind = kind
        # the request was wrong (exit 3), or the farm could not do it (exit 4)
        self.exit_code = 4 if kind in ("unreachable", "internal", "failed") else 3


#: every error type by name, to rebuild an error a worker reported (``to_dict``'s ``type``)
ERRORS: dict[str, type[RenderFarmError]] = {
    cls.__name__: cls for cls in (
        RenderFarmError, UsageError, InputError, FrameRangeError, BlendFileError, SceneError,
        OutputError, ResourceError, BundleError, LimitError, MissingFilesError, RenderError,
        IntegrityError, WorkerDiedError, TaskTimeoutError, MergeError, JobFailedError,
        VerificationError, OutputMismatchError,
        ClusterLostError, CancelledError, ProtocolError, ServiceError)}


def error_from(data: dict[str, Any]) -> RenderFarmError:
    """The error a worker's reply carries (:meth:`RenderFarmError.to_dict`), as its class."""
    cls = ERRORS.get(str(data.get("type", "")), RenderError)
    return cls(str(data.get("message", "unknown error")), path=data.get("path"),
               frame=data.get("frame"), tile=data.get("tile"), log_tail=data.get("log_tail"),
               retryable=data.get("retryable"))
