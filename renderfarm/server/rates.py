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


#: the events of a job's tasks (their counts ride on every event: thinned, nothing is lost
#: of a job's progress); every other event (the job's, its frames', warnings) always goes
THINNED = frozenset({"task_started", "task_done", "task_checking", "task_checked",
                     "task_retry"})


@dataclass
class Thinning:
    """Thins each job's task events to at most ``per_second`` (bursts of as many) for one
    subscriber, or for everyone: at thousands of workers a job has hundreds of task events
    a second, which no page and no artist needs one by one. Pure: the caller passes the
    time and holds a lock if several threads share it.

    Attributes:
        per_second: task events of one job let through per second.
        buckets: each job's bucket: (tokens, when they were counted).
    """

    per_second: float
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def allow(self, job_id: str, kind: str, now: float) -> bool:
        """Whether an event ``kind`` of job ``job_id`` goes out at ``now`` (counted)."""
        if kind not in THINNED:
            if kind.startswith("job_"):  # its last event: the job's bucket goes
                self.buckets.pop(job_id, None)
            return True
        rate = self.per_second
        tokens, then = self.buckets.get(job_id, (rate, now))
        tokens = min(rate, tokens + (now - then) * rate)
        if tokens < 1.0:
            self.buckets[job_id] = (tokens, now)
            return False
        self.buckets[job_id] = (tokens - 1.0, now)
        return True
