"""The farm service's job state in SQLite: jobs, their finished pieces and merged frames.

What survives a restart of ``renderfarm serve``: the queue (state, priority, order), each
running job's plan (tile grid, sample ranges) and every piece and frame it finished, so the
job resumes without rendering them again. State changes go through :func:`transition`,
which is pure.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from renderfarm.errors import ServiceError
from renderfarm.server.protocol import FINAL_STATES

logger = logging.getLogger(__name__)

#: batched writes of one thread that go in one transaction at most
BATCH_LIMIT = 256
_WRITES = ("INSERT", "UPDATE", "DELETE")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    client TEXT,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    error TEXT,
    plan TEXT,
    tasks_done INTEGER NOT NULL DEFAULT 0,
    tasks_total INTEGER NOT NULL DEFAULT 0,
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER NOT NULL DEFAULT 0,
    warnings TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS pieces (
    job_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    frame INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    tiles TEXT NOT NULL,
    tile TEXT NOT NULL,
    path TEXT NOT NULL,
    worker TEXT,
    seconds REAL,
    PRIMARY KEY (job_id, task_id)
);
CREATE TABLE IF NOT EXISTS frames (
    job_id TEXT NOT NULL,
    frame INTEGER NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (job_id, frame)
);
CREATE TABLE IF NOT EXISTS extras (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    frame INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS uploads (
    client TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (client, sha256)
);
CREATE TABLE IF NOT EXISTS audit (
    at REAL NOT NULL,
    client TEXT NOT NULL,
    op TEXT NOT NULL,
    job_id TEXT,
    ok INTEGER NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS hashes (
    job_id TEXT NOT NULL,
    frame INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (job_id, frame)
);
CREATE TABLE IF NOT EXISTS accounts (
    job_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    at REAL NOT NULL,
    run TEXT NOT NULL,
    PRIMARY KEY (job_id, run_id)
);
CREATE TABLE IF NOT EXISTS logs (
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    frame INTEGER NOT NULL,
    tile INTEGER NOT NULL,
    kind TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker TEXT,
    ok INTEGER NOT NULL,
    error TEXT,
    log TEXT NOT NULL,
    tiles TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS logs_of_job ON logs (job_id, frame);
CREATE TABLE IF NOT EXISTS runs (
    job_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    frame INTEGER NOT NULL,
    tiles TEXT NOT NULL,
    worker TEXT,
    seconds REAL
);
CREATE INDEX IF NOT EXISTS runs_of_job ON runs (job_id, worker);
CREATE INDEX IF NOT EXISTS logs_by_time ON logs (job_id, at);
"""

#: columns added since the first schema: ``(table, column, type and default)``
_ADDED_COLUMNS = (("logs", "tiles", "TEXT NOT NULL DEFAULT '[]'"),
                  ("pieces", "sha256", "TEXT"))

#: what each action does to a job in each state (a missing pair is refused)
_TRANSITIONS: dict[tuple[str, str], str] = {
    ("queued", "start"): "running",
    ("queued", "pause"): "paused",
    ("queued", "cancel"): "cancelled",
    ("running", "pause"): "paused",
    ("running", "cancel"): "cancelled",
    ("running", "done"): "done",
    ("running", "fail"): "failed",
    ("running", "cancelled"): "cancelled",
    ("running", "requeue"): "queued",
    ("paused", "resume"): "queued",
    # a paused job whose run is still alive goes on (never back through the queue, where
    # the scheduler would start it a second time)
    ("paused", "continue"): "running",
    ("paused", "cancel"): "cancelled",
    ("paused", "done"): "done",
    ("paused", "fail"): "failed",
    ("paused", "cancelled"): "cancelled",
    # a job that ended renders (some of) its frames again (``renderfarm requeue``)
    ("done", "again"): "queued",
    ("failed", "again"): "queued",
    ("cancelled", "again"): "queued",
}


def transition(state: str, action: str) -> str:
    """The state a job in ``state`` moves to on ``action``.

    A paused job that had started goes back to ``queued`` on resume and is picked up again by
    the scheduler, in priority order.

    Raises:
        ServiceError: the action is not possible in that state (e.g. pausing a finished job).
    """
    new = _TRANSITIONS.get((state, action))
    if new is None:
        hint = " (it has ended)" if state in FINAL_STATES else ""
        raise ServiceError(f"cannot {action} a job that is {state}{hint}", kind="conflict")
    return new


@dataclass(frozen=True)
class JobRow:
    """A job as stored.

    Attributes mirror the ``jobs`` table; ``spec`` and ``plan`` are decoded JSON.
    """

    id: str
    seq: int
    name: str
    spec: dict[str, Any]
    priority: int
    state: str
    client: str | None
    created: float
    started: float | None
    ended: float | None
    error: str | None
    plan: dict[str, Any] | None
    tasks_done: int
    tasks_total: int
    frames_done: int
    frames_total: int
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The job as the protocol sends it (status, list)."""
        now = time.time()
        elapsed = None
        if self.started is not None:
            elapsed = (self.ended or now) - self.started
        return {
            "job_id": self.id, "name": self.name, "state": self.state,
            "priority": self.priority, "created": self.created, "started": self.started,
            "ended": self.ended, "elapsed": elapsed, "error": self.error,
            "tasks_done": self.tasks_done, "tasks_total": self.tasks_total,
            "frames_done": self.frames_done, "frames_total": self.frames_total,
            "warnings": list(self.warnings), "plan": self.plan,
            "frames": self.spec.get("frames"), "output": Path(self.spec["output"]).name,
            "owner": self.client,
        }


class Store:
    """Job state in one SQLite file; safe to use from several threads.

    Args:
        path: the database file (created with its folder).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        #: each thread's batched writes (see :meth:`batch`)
        self._local = threading.local()
        #: transactions written (each autocommitted write, each batch)
        self.commits = 0
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._add_columns()

    def _add_columns(self) -> None:
        """Bring a database written by an earlier version up to this schema (its rows keep
        their values; new columns take their defaults)."""
        for table, column, kind in _ADDED_COLUMNS:
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Within it, this thread's writes wait and go in one transaction: at its end, when
        :data:`BATCH_LIMIT` wait, or before this thread reads (it reads what it wrote).
        Other threads are not held meanwhile. A statement that fails is logged, the others
        are kept."""
        outer = getattr(self._local, "queue", None)
        if outer is not None:  # already batching
            yield
            return
        self._local.queue = []
        try:
            yield
        finally:
            queue, self._local.queue = self._local.queue, None
            with self._lock:
                self._flush(queue)

    def _flush(self, queue: list[tuple[str, tuple[Any, ...]]] | None) -> None:
        """Write ``queue`` in one transaction (the lock held)."""
        if not queue:
            return
        try:
            self._db.execute("BEGIN")
            for sql, args in queue:
                try:
                    self._db.execute(sql, args)
                except sqlite3.Error:  # this write only (one that ends the transaction
                    logger.exception("a batched write failed: %s", sql.split("(")[0])
            self._db.execute("COMMIT")  # fails below: rolled back, raised)
            self.commits += 1
        except sqlite3.Error:  # the connection never stays inside a transaction
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        finally:
            queue.clear()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The lock, with this thread's batched writes written first."""
        with self._lock:
            self._flush(getattr(self._local, "queue", None))
            yield

    def _run(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        queue = getattr(self._local, "queue", None)
        if queue is not None and sql.startswith(_WRITES):
            queue.append((sql, tuple(args)))
            if len(queue) >= BATCH_LIMIT:
                with self._locked():
                    self._flush(queue)
            return []
        with self._locked():
            rows = self._db.execute(sql, tuple(args)).fetchall()
            if sql.startswith(_WRITES):
                self.commits += 1
            return rows

    # -- jobs --------------------------------------------------------------------------------
    def add_job(self, job_id: str, name: str, spec: dict[str, Any], priority: int,
                client: str | None) -> JobRow:
        """Queue a new job."""
        with self._locked():
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute(
                "INSERT INTO jobs (id, seq, name, spec, priority, state, client, created) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                (job_id, seq, name, json.dumps(spec), priority, client, time.time()))
        return self.job(job_id)

    def job(self, job_id: str) -> JobRow:
        """One job.

        Raises:
            ServiceError: no job has that id.
        """
        rows = self._run("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise ServiceError(f"no job {job_id!r} on this farm; `renderfarm list` shows "
                               "the jobs", kind="not_found")
        return _row(rows[0])

    def jobs(self, states: Iterable[str] | None = None) -> list[JobRow]:
        """Jobs in queue order: priority (higher first), then first come."""
        rows = self._run("SELECT * FROM jobs ORDER BY priority DESC, seq ASC")
        wanted = set(states) if states else None
        return [job for job in map(_row, rows) if wanted is None or job.state in wanted]

    def act(self, job_id: str, action: str, error: str | None = None) -> JobRow:
        """Apply ``action`` to a job (see :func:`transition`) and return the new row."""
        with self._locked():
            row = self._db.execute("SELECT state, started FROM jobs WHERE id = ?",
                                   (job_id,)).fetchone()
            if row is None:
                raise ServiceError(f"no job {job_id!r} on this farm", kind="not_found")
            new = transition(row[0], action)
            now = time.time()
            started = row[1] if row[1] is not None or new != "running" else now
            ended = now if new in FINAL_STATES else None
            if action == "again":  # a fresh run: no error, its clock starts again
                started = None
                self._db.execute("UPDATE jobs SET error = NULL WHERE id = ?", (job_id,))
            self._db.execute("UPDATE jobs SET state = ?, started = ?, ended = ?, "
                             "error = COALESCE(?, error) WHERE id = ?",
                             (new, started, ended, error, job_id))
        return self.job(job_id)

    def set_priority(self, job_id: str, priority: int) -> JobRow:
        """Change a job's priority."""
        self.job(job_id)
        self._run("UPDATE jobs SET priority = ? WHERE id = ?", (priority, job_id))
        return self.job(job_id)

    def set_plan(self, job_id: str, plan: dict[str, Any]) -> None:
        """Record how a job was planned (so a resumed run plans it the same way)."""
        self._run("UPDATE jobs SET plan = ? WHERE id = ?", (json.dumps(plan), job_id))

    def set_progress(self, job_id: str, tasks_done: int, tasks_total: int, frames_done: int,
                     frames_total: int) -> None:
        """Record a job's progress counters."""
        self._run("UPDATE jobs SET tasks_done = ?, tasks_total = ?, frames_done = ?, "
                  "frames_total = ? WHERE id = ?",
                  (tasks_done, tasks_total, frames_done, frames_total, job_id))

    def add_upload(self, client: str, sha256: str, size: int) -> None:
        """Record a file a client stored (it counts against the client's quota)."""
        with self._locked():
            self._db.execute("INSERT OR IGNORE INTO uploads (client, sha256, size, at) "
                             "VALUES (?, ?, ?, ?)", (client, sha256, size, time.time()))

    def owns(self, client: str, sha256: str) -> bool:
        """Whether ``client`` sent the file ``sha256`` once (it may use it in jobs)."""
        return bool(self._run("SELECT 1 FROM uploads WHERE client = ? AND sha256 = ?",
                              (client, sha256)))

    def stored_bytes(self, client: str) -> int:
        """Bytes of new files a client has stored."""
        rows = self._run("SELECT COALESCE(SUM(size), 0) FROM uploads WHERE client = ?",
                         (client,))
        return int(rows[0][0])

    def audit(self, client: str, op: str, job_id: str | None, ok: bool,
              detail: str | None = None) -> None:
        """Record a state-changing request: who, what, on which job, whether it was done
        (and why not)."""
        with self._locked():
            self._db.execute("INSERT INTO audit (at, client, op, job_id, ok, detail) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (time.time(), client, op, job_id, int(ok), detail))

    def add_warning(self, job_id: str, warning: str) -> None:
        """Record a warning of a job."""
        with self._locked():
            row = self._db.execute("SELECT warnings FROM jobs WHERE id = ?",
                                   (job_id,)).fetchone()
            if row is None:
                return
            warnings = json.loads(row[0])
            if warning not in warnings:
                warnings.append(warning)
            self._db.execute("UPDATE jobs SET warnings = ? WHERE id = ?",
                             (json.dumps(warnings), job_id))

    # -- pieces and frames -------------------------------------------------------------------
    def add_piece(self, job_id: str, task_id: str, frame: int, chunk: int, tiles: list[int],
                  tile: dict[str, Any], path: str, worker: str | None,
                  seconds: float | None, sha256: str | None = None) -> None:
        """Record a finished piece (kept until its frame is merged; ``sha256``: what its
        worker said of a piece its node stored, checked before a restart uses it)."""
        self._run("INSERT OR REPLACE INTO pieces (job_id, task_id, frame, chunk, tiles, tile, "
                  "path, worker, seconds, sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (job_id, task_id, frame, chunk, json.dumps(tiles), json.dumps(tile), path,
                   worker, seconds, sha256))
        self.add_run(job_id, task_id, frame, tiles, worker, seconds)

    def add_run(self, job_id: str, task_id: str, frame: int, tiles: list[int],
                worker: str | None, seconds: float | None) -> None:
        """Record a finished task for the job's page (a piece kept on its node is not
        recorded for a restart, its task is)."""
        self._run("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                  (job_id, task_id, frame, json.dumps(tiles), worker, seconds))

    def add_frame(self, job_id: str, frame: int, path: str) -> None:
        """Record a merged frame; its pieces are no longer needed."""
        with self._locked():
            self._db.execute("INSERT OR REPLACE INTO frames VALUES (?, ?, ?)",
                             (job_id, frame, path))
            self._db.execute("DELETE FROM pieces WHERE job_id = ? AND frame = ?",
                             (job_id, frame))

    def forget_frames(self, job_id: str, frames: Iterable[int]) -> None:
        """Forget written frames of a job (it renders them again)."""
        chosen = json.dumps(sorted({int(f) for f in frames}))
        with self._locked():  # one statement per table, whatever the number of frames
            for table in ("frames", "hashes", "extras"):
                self._db.execute(f"DELETE FROM {table} WHERE job_id = ? AND frame IN "
                                 "(SELECT value FROM json_each(?))", (job_id, chosen))

    def drop_worker(self, job_id: str, worker: str, frames: Iterable[int]) -> None:
        """A worker of a job was found suspect: forget the pieces it rendered and
        ``frames``, written with its pieces (a restarted service renders them again)."""
        with self._locked():
            self._db.execute("DELETE FROM pieces WHERE job_id = ? AND worker = ?",
                             (job_id, worker))
        self.forget_frames(job_id, frames)

    def add_extra(self, job_id: str, frame: int, name: str, sha256: str) -> None:
        """Record a file a File Output node wrote for a frame (``name``: its path in the
        job's output folder)."""
        self._run("INSERT OR REPLACE INTO extras VALUES (?, ?, ?, ?)",
                  (job_id, name, frame, sha256))

    def extras(self, job_id: str) -> dict[str, tuple[int, str]]:
        """``{name: (frame, SHA-256)}`` of the files a job's File Output nodes wrote."""
        return {r[0]: (r[1], r[2]) for r in self._run(
            "SELECT name, frame, sha256 FROM extras WHERE job_id = ? ORDER BY frame, name",
            (job_id,))}

    def set_hash(self, job_id: str, frame: int, sha256: str) -> None:
        """Record the SHA-256 of a merged frame's output file as the farm wrote it."""
        self._run("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?)", (job_id, frame, sha256))

    def hashes(self, job_id: str) -> dict[int, str]:
        """``{frame: SHA-256}`` of a job's outputs."""
        return dict(self._run("SELECT frame, sha256 FROM hashes WHERE job_id = ? "
                              "ORDER BY frame", (job_id,)))

    def add_log(self, job_id: str, call: dict[str, Any]) -> None:
        """Keep what Blender printed during one worker call of a job (a task's tail, a
        failed task's whole output)."""
        error = call.get("error") or {}
        self._run("INSERT INTO logs (job_id, at, frame, tile, kind, attempt, worker, ok, "
                  "error, log, tiles) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (job_id, float(call.get("finished") or time.time()),
                   int(call.get("frame") or 0), int(call.get("tile", -1)),
                   str(call.get("kind") or "render"), int(call.get("attempt") or 1),
                   call.get("worker"), 1 if call.get("ok") else 0,
                   error.get("message") if error else None, str(call.get("log") or ""),
                   json.dumps([int(t) for t in call.get("tiles") or []])))

    def logs(self, job_id: str, frame: int | None = None,
             failed: bool = False) -> list[dict[str, Any]]:
        """A job's task logs, oldest first (of one frame, or of failed calls only); a call
        that rendered several tiles lists them (``tiles``)."""
        sql = ("SELECT at, frame, tile, kind, attempt, worker, ok, error, log, tiles FROM logs "
               "WHERE job_id = ?")
        args: list[Any] = [job_id]
        if frame is not None:
            sql += " AND frame = ?"
            args.append(frame)
        if failed:
            sql += " AND ok = 0"
        rows = self._run(sql + " ORDER BY at", args)
        return [{"at": r[0], "frame": r[1], "tile": r[2], "kind": r[3], "attempt": r[4],
                 "worker": r[5], "ok": bool(r[6]), "error": r[7], "log": r[8],
                 "tiles": json.loads(r[9] or "[]")} for r in rows]

    def set_account(self, job_id: str, run_id: str, run: dict[str, Any]) -> None:
        """Keep what one run of a job recorded so far (its calls' timing, checks, suspects)
        for the job's report; a job resumed after a restart has several runs."""
        with self._locked():
            first = self._db.execute("SELECT at FROM accounts WHERE job_id = ? AND run_id = ?",
                                     (job_id, run_id)).fetchone()
            self._db.execute("INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?)",
                             (job_id, run_id, first[0] if first else time.time(),
                              json.dumps(run)))

    def accounts(self, job_id: str) -> list[dict[str, Any]]:
        """The runs of a job, oldest first."""
        return [json.loads(r[0]) for r in self._run(
            "SELECT run FROM accounts WHERE job_id = ? ORDER BY at", (job_id,))]

    def pieces(self, job_id: str) -> list[dict[str, Any]]:
        """The pieces of a job waiting for their frame's merge."""
        rows = self._run("SELECT frame, chunk, tiles, tile, path, sha256 FROM pieces "
                         "WHERE job_id = ?", (job_id,))
        return [{"frame": r[0], "chunk": r[1], "tiles": json.loads(r[2]),
                 "tile": json.loads(r[3]), "path": r[4], "sha256": r[5] or ""} for r in rows]

    def frames(self, job_id: str) -> dict[int, str]:
        """The merged frames of a job and their files."""
        return dict(self._run("SELECT frame, path FROM frames WHERE job_id = ? ORDER BY frame",
                              (job_id,)))

    def frames_page(self, job_id: str, offset: int, limit: int) -> tuple[dict[int, str], int]:
        """A page of a job's merged frames (``{frame: file}``, from the ``offset``-th, at
        most ``limit``) and how many it has in all (a job page reads one page, whatever the
        job's length)."""
        with self._locked():
            rows = self._db.execute("SELECT frame, path FROM frames WHERE job_id = ? ORDER BY "
                                    "frame LIMIT ? OFFSET ?", (job_id, limit, offset)
                                    ).fetchall()
            total = self._db.execute("SELECT COUNT(*) FROM frames WHERE job_id = ?",
                                     (job_id,)).fetchone()[0]
        return dict(rows), int(total)

    def hashes_of(self, job_id: str, frames: Iterable[int]) -> dict[int, str]:
        """``{frame: SHA-256}`` of some of a job's outputs."""
        chosen = json.dumps(sorted({int(f) for f in frames}))
        return dict(self._run("SELECT frame, sha256 FROM hashes WHERE job_id = ? AND frame IN "
                              "(SELECT value FROM json_each(?))", (job_id, chosen)))

    def worker_totals(self, job_id: str) -> list[tuple[str, int, int, float]]:
        """``(worker, calls, tiles, seconds)`` of a job's finished tasks per worker, summed
        by the database."""
        return [(r[0] or "?", int(r[1]), int(r[2] or 0), float(r[3] or 0.0)) for r in self._run(
            "SELECT worker, COUNT(*), SUM(json_array_length(tiles)), SUM(seconds) FROM runs "
            "WHERE job_id = ? GROUP BY worker ORDER BY worker", (job_id,))]

    def latest_logs(self, job_id: str, count: int) -> list[dict[str, Any]]:
        """A job's ``count`` latest calls, newest first (without their logs)."""
        rows = self._run("SELECT at, frame, tile, kind, attempt, worker, ok, error, tiles FROM "
                         "logs WHERE job_id = ? ORDER BY at DESC LIMIT ?", (job_id, count))
        return [{"at": r[0], "frame": r[1], "tile": r[2], "kind": r[3], "attempt": r[4],
                 "worker": r[5], "ok": bool(r[6]), "error": r[7], "log": "",
                 "tiles": json.loads(r[8] or "[]")} for r in rows]

    def runs(self, job_id: str) -> list[dict[str, Any]]:
        """Every finished task of a job: worker, seconds, tiles (for the status page)."""
        rows = self._run("SELECT task_id, frame, tiles, worker, seconds FROM runs "
                         "WHERE job_id = ?", (job_id,))
        return [{"task_id": r[0], "frame": r[1], "tiles": json.loads(r[2]), "worker": r[3],
                 "seconds": r[4]} for r in rows]


def _row(row: tuple[Any, ...]) -> JobRow:
    (job_id, seq, name, spec, priority, state, client, created, started, ended, error, plan,
     tasks_done, tasks_total, frames_done, frames_total, warnings) = row
    return JobRow(id=job_id, seq=seq, name=name, spec=json.loads(spec), priority=priority,
                  state=state, client=client, created=created, started=started, ended=ended,
                  error=error, plan=json.loads(plan) if plan else None, tasks_done=tasks_done,
                  tasks_total=tasks_total, frames_done=frames_done, frames_total=frames_total,
                  warnings=json.loads(warnings))
