"""How often each client may ask: a token bucket per client and its requests in flight.
Pure bookkeeping, no I/O and no clock of its own (the caller passes the time) and no lock
(the caller holds one)."""

from __future__ import annotations

from dataclasses import dataclass, field

#: requests of one client queued or being answered at once (more get ``rate_limited``)
MAX_IN_FLIGHT = 16


@dataclass
class Rates:
    """Each client's request bucket and its requests in flight.

    Attributes:
        per_second: requests a client may send per second (bursts of twice as many); 0 for
            no limit.
        in_flight: requests of each client queued or being answered.
        buckets: each client's bucket: (tokens, when they were counted).
    """

    per_second: float
    in_flight: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def problem(self, name: str, now: float) -> tuple[str | None, float | None]:
        """Why a request of client ``name`` may not come at ``now`` (None: it may), and the
        tokens of its bucket at ``now`` (None: no rate is set). Nothing is counted."""
        if self.in_flight.get(name, 0) >= MAX_IN_FLIGHT:
            return (f"{name} has {MAX_IN_FLIGHT} requests in flight already; wait for "
                    "their replies"), None
        rate = self.per_second
        if not rate:
            return None, None
        tokens, then = self.buckets.get(name, (2.0 * rate, now))
        tokens = min(2.0 * rate, tokens + (now - then) * rate)
        if tokens < 1.0:
            return (f"too many requests from {name}: the farm allows {rate:g} per second "
                    "per client (serve --requests-per-second); slow down and try again"), \
                tokens
        return None, tokens

    def take(self, name: str, now: float) -> str | None:
        """Count a request of client ``name`` at ``now`` against its rate, when it may come;
        returns why it may not (a refused request still leaves its bucket refilled to
        ``now``)."""
        problem, tokens = self.problem(name, now)
        if tokens is not None:
            self.buckets[name] = (tokens - (0.0 if problem else 1.0), now)
        return problem

    def enter(self, name: str) -> None:
        """One more request of client ``name`` is in flight."""
        self.in_flight[name] = self.in_flight.get(name, 0) + 1

    def leave(self, name: str) -> None:
        """A request of client ``name`` was answered."""
        self.in_flight[name] -= 1
