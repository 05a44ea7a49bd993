"""The farm service's wire protocol: message schemas, validation and size limits.

Pure: no sockets here. A request is a ZeroMQ multipart message whose first frame is a JSON
object ``{"v": 1, "op": ..., "id": ..., <fields>}`` and whose further frames are raw bytes
(an upload's chunk). A reply is ``{"v": 1, "id": ..., "ok": true, <fields>}`` or
``{"v": 1, "id": ..., "ok": false, "error": {"type": ..., "message": ...}}`` plus, for a
fetch, one frame of bytes. Events go out on the PUB socket as ``[topic, json]`` (plus the
pixels for a preview); topics are ``job.<id>`` and ``preview.<id>``.

Every field of every request is checked against :data:`REQUESTS`; unknown operations,
unknown fields, wrong types and messages over the size limit get an error reply. What a client
needs (limits, framing, replies, topics, name rules) is in :mod:`renderfarm.server.wire`,
which needs only the standard library; its names are re-exported here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from renderfarm.errors import ProtocolError
from renderfarm.server.wire import (
    CHUNK,
    FINAL_STATES,
    JOB_ID,
    MAX_DEPTH,
    MAX_HASHES,
    MAX_HEADER,
    MAX_INT,
    MAX_MESSAGE,
    STATES,
    VERSION,
    check_relative_name,
    encode,
    event_topic,
    parse_reply,
    reply_error,
    reply_ok,
    request,
)

__all__ = [
    "CHUNK", "FINAL_STATES", "JOB_ID", "MAX_DEPTH", "MAX_HASHES", "MAX_HEADER", "MAX_INT",
    "MAX_MESSAGE", "REQUESTS", "STATES", "VERSION", "WITH_DATA", "Field", "Request",
    "check_relative_name", "encode", "event_topic", "parse_reply", "parse_request",
    "reply_error", "reply_ok", "request",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    return None if JOB_ID.match(value) else "is not a job id"


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


def _filename(value: str) -> str | None:
    if (not value or "/" in value or "\\" in value or value in (".", "..") or len(value) > 255
            or any(ord(c) < 32 or ord(c) == 127 for c in value)):
        return "must be a plain file name"
    return None


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
