"""Notifications (``--notify URL``): a webhook gets a job's summary when it ends.

The summary is JSON, POSTed with ``Content-Type: application/json``: the job's id, name,
owner, state, error, frames, outputs with their SHA-256, elapsed seconds and its report's
totals (device-seconds, cost, verification). A webhook that fails (an error status, no answer
in 10 s) is tried again twice, a few seconds apart, and then left with a warning: a
notification never holds a job or the farm up. Only ``http`` and ``https`` URLs are taken.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from renderfarm.errors import InputError

logger = logging.getLogger(__name__)

#: seconds a webhook may take to answer
TIMEOUT = 10.0
#: tries of one notification, and the pause before each retry
TRIES = 3
PAUSE = 2.0


def check_url(url: Any, allowed: Sequence[str] | None = None) -> str:
    """Check a webhook URL (and, with ``allowed``, that it starts with one of them).

    Raises:
        InputError: it is not an http(s) URL with a host, or not allowed on this farm.
    """
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
            or len(url) > 2048 or any(ord(c) < 33 for c in url):
        raise InputError(f"--notify must be an http:// or https:// URL, not {str(url)[:80]!r}")
    if allowed is not None and not any(url.startswith(prefix) for prefix in allowed):
        raise InputError(f"this farm does not send notifications to {url[:80]!r}: its "
                         "administrator allows webhooks under the prefixes given to serve "
                         "--notify-allow" + (f" ({', '.join(allowed)})" if allowed else
                                             " (none yet)"))
    return url


def summary(job: Mapping[str, Any], report: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a webhook receives about a job that ended."""
    data: dict[str, Any] = {
        "event": f"job_{job.get('state')}", "job_id": job.get("job_id"),
        "name": job.get("name"), "owner": job.get("owner"), "state": job.get("state"),
        "error": job.get("error"), "frames_done": job.get("frames_done"),
        "frames_total": job.get("frames_total"), "elapsed": job.get("elapsed"),
        "warnings": list(job.get("warnings") or [])}
    if report:
        data.update(outputs=report.get("outputs"), total=report.get("total"),
                    verification={k: report["verification"][k] for k in
                                  ("share", "checks", "outcomes", "suspects")},
                    estimate=report.get("estimate"))
    return data


def send(url: str, payload: Mapping[str, Any], tries: int = TRIES,
         pause: float = PAUSE) -> bool:
    """POST ``payload`` as JSON to ``url``; True once the webhook answered 2xx."""
    body = json.dumps(payload).encode()
    for attempt in range(1, tries + 1):
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "renderfarm-notify"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310
                if 200 <= answer.status < 300:
                    return True
                problem = f"status {answer.status}"
        except urllib.error.HTTPError as exc:
            problem = f"status {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            problem = str(getattr(exc, "reason", exc))
        logger.warning("notification of job %s to %s failed (%s), try %d of %d",
                       payload.get("job_id"), url, problem, attempt, tries)
        if attempt < tries:
            time.sleep(pause * attempt)
    return False


def send_later(url: str, payload: Mapping[str, Any]) -> threading.Thread:
    """:func:`send` on a thread of its own (a slow webhook holds nothing up)."""
    thread = threading.Thread(target=send, args=(url, dict(payload)),
                              name="renderfarm-notify", daemon=True)
    thread.start()
    return thread
