"""The farm service's wire protocol: message schemas, validation and size limits.

Pure: no sockets here. A request is a ZeroMQ multipart message whose first frame is a JSON
object ``{"v": 1, "op": ..., "id": ..., <fields>}`` and whose further frames are raw bytes
(an upload's chunk). A reply is ``{"v": 1, "id": ..., "ok": true, <fields>}`` or
``{"v": 1, "id": ..., "ok": false, "error": {"type": ..., "message": ...}}`` plus, for a
fetch, one frame of bytes. Events go out on the PUB socket as ``[topic, json]`` (plus the
pixels for a preview); topics are ``job.<id>`` and ``preview.<id>``.

Every field of every request is checked against :data:`REQUESTS`; unknown operations,
unknown fields, wrong types and messages over the size limit get an error reply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from renderfarm.errors import ProtocolError

#: the protocol version this code speaks
VERSION = 1
#: default limit of a whole request (all frames), in bytes
MAX_MESSAGE = 16 * 1024 * 1024
#: the largest JSON header of a request (bytes travel in a data frame after it)
MAX_HEADER = 8 * 1024 * 1024
#: upload chunk size clients use (well under :data:`MAX_MESSAGE`)
CHUNK = 4 * 1024 * 1024
#: job states
STATES = ("queued", "running", "paused", "done", "failed", "cancelled")
#: states a job ends in (it leaves one only when requeued)
FINAL_STATES = ("done", "failed", "cancelled")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # never "." or ".."
#: a job id, as the service makes them and accepts them
JOB_ID = _JOB_ID


@dataclass(frozen=True)
class Field:
    """One field of a request.

    Attributes:
        kind: the Python type(s) the JSON value must have.
        required: whether the field must be there.
        check: an extra check returning an error text, or None when the value is fine.
    """

    kind: type | tuple[type, ...]
    required: bool = True
    check: Any = None


def _sha(value: str) -> str | None:
    return None if _SHA256.match(value) else "must be 64 lowercase hex digits (SHA-256)"


def _job(value: str) -> str | None:
    return None if _JOB_ID.match(value) else "is not a job id"


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _priority(value: int) -> str | None:
    return None if -1000 <= value <= 1000 else "must be between -1000 and 1000"


def _states(value: list[Any]) -> str | None:
    bad = [v for v in value if v not in STATES]
    if not bad:
        return None
    shown = ", ".join(repr(v)[:40] for v in bad[:3]) + (f" and {len(bad) - 3} more"
                                                        if len(bad) > 3 else "")
    return f"has unknown states ({shown}); known: {', '.join(STATES)}"


def check_relative_name(value: str) -> str | None:
    """Why ``value`` is not a relative path inside a job's output folder (None: it is)."""
    parts = value.split("/")
    if (not value or len(value) > 1024 or value.startswith("/") or "\\" in value
            or any(p in ("", ".", "..") for p in parts)
            or any(ord(c) < 32 for c in value)):
        return "must be a relative path inside the job's output folder"
    return None


def _filename(value: str) -> str | None:
    if (not value or "/" in value or "\\" in value or value in (".", "..") or len(value) > 255
            or any(ord(c) < 32 or ord(c) == 127 for c in value)):
        return "must be a plain file name"
    return None


#: the most hashes one ``have`` request may ask about
MAX_HASHES = 10_000


def _hashes(value: list[Any]) -> str | None:
    if len(value) > MAX_HASHES:
        return f"asks about more than {MAX_HASHES} files"
    if not all(isinstance(v, str) and _SHA256.match(v) for v in value):
        return "must be a list of SHA-256 hashes (64 lowercase hex digits)"
    return None


_JOB_FIELD = Field(str, check=_job)

#: request fields by operation
REQUESTS: dict[str, dict[str, Field]] = {
    "hello": {},
    "upload": {"sha256": Field(str, check=_sha), "offset": Field(int, check=_non_negative),
               "total": Field(int, check=_non_negative)},
    "have": {"hashes": Field(list, check=_hashes)},
    "submit": {"spec": Field(dict), "blob": Field(str, required=False, check=_sha),
               "bundle": Field(dict, required=False),
               "filename": Field(str, check=_filename),
               "priority": Field(int, required=False, check=_priority)},
    "status": {"job_id": _JOB_FIELD},
    "list": {"states": Field(list, required=False, check=_states)},
    "cancel": {"job_id": _JOB_FIELD},
    "pause": {"job_id": _JOB_FIELD},
    "resume": {"job_id": _JOB_FIELD},
    "priority": {"job_id": _JOB_FIELD, "priority": Field(int, check=_priority)},
    "fetch": {"job_id": _JOB_FIELD, "frame": Field(int),
              "offset": Field(int, check=_non_negative),
              "length": Field(int, check=_non_negative),
              # a file a File Output node wrote (its path in the job's output folder)
              "name": Field(str, required=False, check=check_relative_name)},
    # the caller's own token for the status page (``--http``) of a farm with keys
    "web_token": {},
    # a job's report (accounting, verification, outputs' SHA-256); with html, the page too
    "report": {"job_id": _JOB_FIELD, "html": Field(bool, required=False)},
    # what Blender printed for a job's tasks (of one frame; of failed tasks only)
    "log": {"job_id": _JOB_FIELD, "frame": Field(int, required=False),
            "failed": Field(bool, required=False)},
    # render frames of a job that ended again, into the same outputs
    "requeue": {"job_id": _JOB_FIELD, "frames": Field(str, required=False),
                "failed": Field(bool, required=False)},
    # the farm's workers; an admin takes one out or puts it back
    "workers": {},
    "worker": {"worker_id": Field(str, check=_job), "enabled": Field(bool),
               "reason": Field(str, required=False)},
}
#: operations that carry exactly one frame of bytes after the header
WITH_DATA = ("upload",)


@dataclass(frozen=True)
class Request:
    """A checked request.

    Attributes:
        op: the operation.
        id: the client's request id (echoed in the reply).
        fields: the operation's fields.
        data: the bytes frame (uploads), else None.
    """

    op: str
    id: Any
    fields: dict[str, Any]
    data: bytes | None = None


def encode(message: dict[str, Any]) -> bytes:
    """A message as the bytes of one frame."""
    return json.dumps({"v": VERSION, **message}, separators=(",", ":")).encode()


def request(op: str, request_id: Any = None, **fields: Any) -> bytes:
    """The header frame of a request (what a client sends)."""
    return encode({"op": op, "id": request_id, **fields})


def reply_ok(request_id: Any, **fields: Any) -> bytes:
    """A success reply."""
    return encode({"id": request_id, "ok": True, **fields})


def reply_error(request_id: Any, error: str, message: str) -> bytes:
    """An error reply: ``error`` is a short type (``bad_request``, ``not_found``, ...)."""
    return encode({"id": request_id, "ok": False,
                   "error": {"type": error, "message": message}})


#: how deep JSON values of a request may nest
MAX_DEPTH = 32
#: the largest integer a field takes (JSON's exact integers; SQLite's fit)
MAX_INT = 2**53 - 1


def _request_id(value: Any) -> Any:
    """The client's request id when it is a short string or a bounded int, else None (an id
    is echoed in the reply: a nested or huge one must never reach the encoder)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int) and -(2**53) < value < 2**53:
        return value
    if isinstance(value, str) and len(value) <= 64:
        return value
    return None


def _too_deep(value: Any) -> str | None:
    """Why a parsed message nests too deep, or None (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"the message nests deeper than {MAX_DEPTH} levels"
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return None


def parse_request(frames: Sequence[bytes], limit: int = MAX_MESSAGE) -> Request:
    """Check a request's frames against the schema.

    Raises:
        ProtocolError: the message is too big, not JSON, of another version, an unknown
            operation, or has a missing, unknown or wrongly typed field.
    """
    size = sum(len(f) for f in frames)
    if frames and len(frames[0]) > MAX_HEADER:
        raise ProtocolError(f"the request's header is {len(frames[0])} bytes, over the limit "
                            f"of {MAX_HEADER}; send bytes in a data frame, and ask about at "
                            f"most {MAX_HASHES} files at once", kind="too_big")
    if size > limit:
        raise ProtocolError(f"message of {size} bytes is over the limit of {limit} bytes; "
                            f"send files in chunks of at most {CHUNK} bytes", kind="too_big")
    if not frames:
        raise ProtocolError("empty message")
    try:
        header = json.loads(frames[0])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the first frame is not JSON ({exc})") from None
    except RecursionError:
        raise ProtocolError(f"the message nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise ProtocolError(f"the first frame is not usable JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ProtocolError("the first frame must be a JSON object")
    request_id = _request_id(header.get("id"))
    problem = _too_deep(header)
    if problem:
        raise ProtocolError(problem, request_id=request_id)
    version = header.get("v")
    if type(version) is not int or version != VERSION:
        raise ProtocolError(f"protocol version {header.get('v')!r} is not supported; this "
                            f"server speaks version {VERSION}: update the client",
                            kind="version", request_id=request_id)
    op = header.get("op")
    schema = REQUESTS.get(op) if isinstance(op, str) else None
    if schema is None:
        raise ProtocolError(f"unknown operation {op!r}; known: {', '.join(sorted(REQUESTS))}",
                            request_id=request_id)
    fields = {k: v for k, v in header.items() if k not in ("v", "op", "id")}
    unknown = sorted(set(fields) - set(schema))
    if unknown:
        raise ProtocolError(f"{op}: unknown field(s) {', '.join(unknown)}",
                            request_id=request_id)
    for name, spec in schema.items():
        if name not in fields:
            if spec.required:
                raise ProtocolError(f"{op}: field {name!r} is missing", request_id=request_id)
            continue
        value = fields[name]
        # a bool is an int to Python: only a field of kind bool takes one
        if (isinstance(value, bool) and spec.kind is not bool) or not isinstance(value,
                                                                                 spec.kind):
            kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
            raise ProtocolError(f"{op}: field {name!r} must be "
                                f"{' or '.join(k.__name__ for k in kinds)}, not "
                                f"{type(value).__name__}", request_id=request_id)
        if isinstance(value, int) and not isinstance(value, bool) and \
                not -MAX_INT <= value <= MAX_INT:
            raise ProtocolError(f"{op}: field {name!r} must be between {-MAX_INT} and "
                                f"{MAX_INT}", request_id=request_id)
        problem = spec.check(value) if spec.check else None
        if problem:
            raise ProtocolError(f"{op}: field {name!r} {problem}", request_id=request_id)
    data = None
    if op in WITH_DATA:
        if len(frames) != 2:
            raise ProtocolError(f"{op}: needs exactly one data frame after the header",
                                request_id=request_id)
        data = bytes(frames[1])
    elif len(frames) != 1:
        raise ProtocolError(f"{op}: takes no data frames", request_id=request_id)
    return Request(op=op, id=request_id, fields=fields, data=data)


def parse_reply(frames: Sequence[bytes]) -> tuple[dict[str, Any], bytes | None]:
    """A reply's fields and its data frame (if any).

    Raises:
        ProtocolError: the reply is not a JSON object of this protocol version.
    """
    try:
        header = json.loads(frames[0])
    except (IndexError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the server sent a malformed reply ({exc})") from None
    if not isinstance(header, dict) or header.get("v") != VERSION:
        raise ProtocolError(f"the server speaks another protocol version "
                            f"({header.get('v') if isinstance(header, dict) else '?'}, "
                            f"this client {VERSION}): update one of them", kind="version")
    return header, (bytes(frames[1]) if len(frames) > 1 else None)


def event_topic(kind: str, owner: str, job_id: str = "") -> bytes:
    """The PUB topic of a job's events (``job``) or previews (``preview``):
    ``KIND.OWNER.JOB_ID``; ``KIND.OWNER.`` (no job) covers every job of the owner. The
    service honours a subscription only to the caller's own topics (admins: any)."""
    return f"{kind}.{owner}.{job_id}".encode()
