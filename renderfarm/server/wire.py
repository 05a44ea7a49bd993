"""The farm service's wire format as a client needs it: limits, framing of requests and
replies, event topics, and the rules for names. Pure and light: the standard library only
(the Blender add-on ships the client without the server's dependencies).

A request is a ZeroMQ multipart message whose first frame is a JSON object
``{"v": 1, "op": ..., "id": ..., <fields>}`` and whose further frames are raw bytes (an
upload's chunk). A reply is ``{"v": 1, "id": ..., "ok": true, <fields>}`` or
``{"v": 1, "id": ..., "ok": false, "error": {"type": ..., "message": ...}}`` plus, for a
fetch, one frame of bytes. Events go out on the PUB socket as ``[topic, json]`` (plus the
pixels for a preview); topics are ``job.<id>`` and ``preview.<id>``.

The requests' fields are declared in :mod:`renderfarm.server.protocol`, which re-exports
every name of this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
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
#: the most hashes one ``have`` request may ask about
MAX_HASHES = 10_000
#: how deep JSON values of a request may nest
MAX_DEPTH = 32
#: the largest integer a field takes (JSON's exact integers; SQLite's fit)
MAX_INT = 2**53 - 1


def whole(pattern: str) -> str:
    """``pattern`` anchored to match a whole string, as Python's ``re`` and JSON Schema's
    (ECMA-262) regular expressions both read it: Python's ``$`` also matches before a final
    newline, which ``(?!\\n)`` refuses (for ECMA-262 it changes nothing)."""
    return f"^(?:{pattern})$(?!\\n)"


#: a SHA-256 as the protocol writes it
SHA256_PATTERN = whole("[0-9a-f]{64}")
#: a job id, as the service makes them and accepts them (never "." or "..")
JOB_ID_PATTERN = whole("[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: a plain file name: no folder, not "." or "..", no control characters
FILE_NAME_PATTERN = whole(r"(?!\.\.?$)[^/\\\x00-\x1f\x7f]+")
_PART = r"(?!\.\.?(?:/|$))[^/\\\x00-\x1f]+"
#: a relative path inside a job's output folder: parts joined by "/", none empty, "." or ".."
RELATIVE_NAME_PATTERN = whole(f"{_PART}(?:/{_PART})*")
#: the longest relative name :data:`RELATIVE_NAME_PATTERN` may match
MAX_RELATIVE_NAME = 1024
#: a job id (see :data:`JOB_ID_PATTERN`)
JOB_ID = re.compile(JOB_ID_PATTERN)
_RELATIVE_NAME = re.compile(RELATIVE_NAME_PATTERN)
#: what a name :data:`RELATIVE_NAME_PATTERN` refuses is, in a refusal's words
RELATIVE_NAME_PROBLEM = "must be a relative path inside the job's output folder"


def check_relative_name(value: str) -> str | None:
    """Why ``value`` is not a relative path inside a job's output folder.

    Args:
        value: a name, e.g. a File Output node's file as the service reports it.

    Returns:
        None when it is one, else what is wrong, to follow the name of what was checked.
    """
    if len(value) > MAX_RELATIVE_NAME or not _RELATIVE_NAME.match(value):
        return RELATIVE_NAME_PROBLEM
    return None


def encode(message: dict[str, Any]) -> bytes:
    """A message as the bytes of one frame (the protocol's version added)."""
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
