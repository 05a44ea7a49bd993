"""Who gets served by the web app and the HTTP API, and for how long: pure bookkeeping, no
I/O and no clock of its own (the caller passes the time), used on the page's event loop.

- :class:`Admission`: requests in progress (body reading included) and event streams, per
  client. A logged-in client holds at most a share of them; requests without a valid login
  (a login form, the login page, a wrong token) have their own small budget, per address and
  in all, that can never take what logged-in clients need.
- :class:`Sessions`: the browser's login. A session is a random id (the cookie), not the
  token; it expires, logging out ends it, and it ends when its key is no longer allowed.
- :class:`LogBudget`: at most a few lines per kind of refusal per interval, then one line
  saying how many more there were.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

#: requests in progress at once, every client together (more get 503)
MAX_REQUESTS = 256
#: requests in progress at once of one logged-in client (more get 429)
PER_CLIENT = 8
#: requests in progress at once without a valid login, every address together
ANONYMOUS = 16
#: requests in progress at once without a valid login, from one address
PER_ADDRESS = 4
#: event streams open at once, every client together
MAX_STREAMS = 64
#: event streams open at once of one client
STREAMS_PER_CLIENT = 8
#: seconds a browser's login lasts
SESSION_AGE = 12 * 3600.0
#: sessions kept at once (the oldest goes when one more comes)
MAX_SESSIONS = 10_000


@dataclass
class Admission:
    """Requests in progress and event streams open, per principal (a client's name, or
    ``None`` with the address for a request without a valid login)."""

    requests: dict[str, int] = field(default_factory=dict)
    anonymous: dict[str, int] = field(default_factory=dict)
    streams: dict[str, int] = field(default_factory=dict)

    @property
    def in_progress(self) -> int:
        """Requests in progress, every principal together."""
        return sum(self.requests.values()) + sum(self.anonymous.values())

    def enter(self, client: str | None, address: str) -> str | None:
        """Let one request of ``client`` (None: no valid login, from ``address``) in; returns
        why not when it may not come in (it is then not counted)."""
        if client is None:
            if sum(self.anonymous.values()) >= ANONYMOUS:
                return ("too many requests without a login are in progress; log in, or try "
                        "again in a few seconds")
            if self.anonymous.get(address, 0) >= PER_ADDRESS:
                return (f"{PER_ADDRESS} requests without a login from this address are in "
                        "progress already; wait for their answers")
            self.anonymous[address] = self.anonymous.get(address, 0) + 1
            return None
        if self.requests.get(client, 0) >= PER_CLIENT:
            return (f"{client} has {PER_CLIENT} requests in progress on the page already; wait "
                    "for their answers")
        if sum(self.requests.values()) >= MAX_REQUESTS - ANONYMOUS:
            return "the farm's page is busy; try again in a few seconds"
        self.requests[client] = self.requests.get(client, 0) + 1
        return None

    def leave(self, client: str | None, address: str) -> None:
        """One request let in by :meth:`enter` has been answered."""
        counts, key = (self.anonymous, address) if client is None else (self.requests, client)
        left = counts.get(key, 0) - 1
        if left > 0:
            counts[key] = left
        else:
            counts.pop(key, None)

    def open_stream(self, client: str) -> str | None:
        """Let ``client`` open one more event stream; returns why not."""
        if self.streams.get(client, 0) >= STREAMS_PER_CLIENT:
            return (f"{client} has {STREAMS_PER_CLIENT} event streams open already; close some "
                    "of its pages")
        if sum(self.streams.values()) >= MAX_STREAMS:
            return "too many event streams are open on this page; try again later"
        self.streams[client] = self.streams.get(client, 0) + 1
        return None

    def close_stream(self, client: str) -> None:
        """An event stream of ``client`` has ended."""
        left = self.streams.get(client, 0) - 1
        if left > 0:
            self.streams[client] = left
        else:
            self.streams.pop(client, None)


@dataclass(frozen=True)
class Session:
    """A browser's login: whose key, until when."""

    name: str
    key: str
    expires: float


class Sessions:
    """The browsers logged in now, by session id (the cookie's value)."""

    def __init__(self, limit: int = MAX_SESSIONS, age: float = SESSION_AGE) -> None:
        self.limit = limit
        self.age = age
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def start(self, name: str, key: str, now: float) -> str:
        """A new session of the client ``name`` (public key ``key``); returns its id."""
        session_id = secrets.token_urlsafe(32)
        self._by_id[session_id] = Session(name, key, now + self.age)
        while len(self._by_id) > self.limit:
            self._by_id.popitem(last=False)
        return session_id

    def get(self, session_id: str | None, now: float) -> Session | None:
        """The session with this id, or None (unknown, ended or expired)."""
        if not session_id or len(session_id) > 64:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires <= now:
            del self._by_id[session_id]
            return None
        return session

    def end(self, session_id: str | None) -> bool:
        """End a session (logging out); whether there was one."""
        return self._by_id.pop(session_id or "", None) is not None

    def end_unless(self, allowed_keys: set[str]) -> int:
        """End every session whose key is not allowed any more; how many ended."""
        gone = [sid for sid, s in self._by_id.items() if s.key not in allowed_keys]
        for session_id in gone:
            del self._by_id[session_id]
        return len(gone)

    def __len__(self) -> int:
        return len(self._by_id)


class LogBudget:
    """At most ``lines`` log lines per kind in each ``interval`` seconds."""

    def __init__(self, lines: int = 5, interval: float = 10.0) -> None:
        self.lines = lines
        self.interval = interval
        self._window: dict[str, tuple[float, int]] = {}

    def allow(self, kind: str, now: float) -> tuple[bool, int]:
        """Whether a line of ``kind`` may be logged now, and how many were held back in the
        interval that just ended (to say so once)."""
        start, count = self._window.get(kind, (now, 0))
        held = 0
        if now - start >= self.interval:
            held = max(0, count - self.lines)
            start, count = now, 0
        count += 1
        self._window[kind] = (start, count)
        return count <= self.lines, held

