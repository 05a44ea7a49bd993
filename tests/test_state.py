"""Job state transitions, without Ray."""

from __future__ import annotations

from renderfarm.job import Rect, Task, Tile
from renderfarm.state import JobState, TaskStatus


def tasks(frames: int, tiles: int) -> list[Task]:
    out = []
    for f in range(frames):
        for t in range(tiles):
            r = Rect(t, 0, t + 1, 1)
            out.append(Task("j", f * tiles + t, f + 1, Tile(t, r, r), (tiles, 1), tiles > 1))
    return out


def test_tasks_go_in_order_and_frames_complete() -> None:
    state = JobState(tasks(2, 2), retries=1)
    a = state.next_for("w1")
    b = state.next_for("w2")
    assert (a.index, b.index) == (0, 1)
    assert state.count(TaskStatus.RUNNING) == 2
    assert state.succeeded(0) is False
    assert state.succeeded(1) is True  # frame 1 has all its pieces
    assert state.succeeded(1) is False  # a duplicate report changes nothing
    c, d = state.next_for("w1"), state.next_for("w1")
    assert (c.frame, d.frame) == (2, 2)
    assert state.next_for("w1") is None
    state.succeeded(c.index)
    assert not state.finished
    state.succeeded(d.index)
    assert state.finished and not state.failed


def test_retry_avoids_the_worker_that_failed() -> None:
    state = JobState(tasks(1, 2), retries=2)
    first = state.next_for("w1")
    assert state.failed_attempt(first.index, "boom") is True
    # w1 failed task 0: with another live worker it gets task 1 instead
    other = state.next_for("w1", live_workers=2)
    assert other.index == 1
    again = state.next_for("w2", live_workers=2)
    assert again.index == 0 and state.entries[0].attempts == 2
    # a lone worker takes its own failed task rather than stalling
    state.failed_attempt(0, "boom again")
    assert state.next_for("w1", live_workers=1).index == 0


def test_retries_run_out_and_non_retryable_errors_fail_at_once() -> None:
    state = JobState(tasks(1, 2), retries=1)
    t = state.next_for("w")
    assert state.failed_attempt(t.index, "x") is True
    t = state.next_for("w")
    assert state.failed_attempt(t.index, "x") is False
    assert state.entries[t.index].status is TaskStatus.FAILED
    u = state.next_for("w")
    assert state.failed_attempt(u.index, "corrupt", retryable=False) is False
    assert state.finished and len(state.failed) == 2


def test_requeue_does_not_count_an_attempt_and_cancel_empties_the_queue() -> None:
    state = JobState(tasks(1, 3), retries=0)
    t = state.next_for("w")
    state.requeue(t.index)
    assert state.entries[t.index].attempts == 0
    assert state.next_for("w").index == t.index
    state.cancel_pending("stopped")
    assert state.count(TaskStatus.PENDING) == 0
    assert state.next_for("w") is None
