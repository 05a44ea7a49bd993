"""Job state transitions, without Ray."""

from __future__ import annotations

from renderfarm.errors import JobFailedError
from renderfarm.job import Rect, Task, Tile
from renderfarm.state import Failure, JobState, TaskStatus, Verdict


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


def grid(columns: int, rows: int, frames: int = 1) -> list[Task]:
    out = []
    for f in range(frames):
        for r in range(rows):
            for c in range(columns):
                core = Rect(c * 10, r * 10, c * 10 + 10, r * 10 + 10)
                render = Rect(max(0, core.x0 - 2), core.y0, core.x1 + 2, core.y1)
                index = f * columns * rows + r * columns + c
                out.append(Task("j", index, f + 1, Tile(r * columns + c, core, render),
                                (columns * 10, rows * 10), True))
    return out


def test_grouping_takes_neighbours_while_workers_stay_busy() -> None:
    # a lone worker has nobody to share with: the whole frame in one call
    alone = JobState(grid(4, 3), retries=1)
    assert alone.group_size(1) == 12
    whole = alone.next_for("w1", 1, group=True)
    assert whole.covers == tuple(range(12))
    assert whole.tile.core == Rect(0, 0, 40, 30)
    assert whole.tile.render == Rect(0, 0, 42, 30)  # the union keeps the outer overscan
    # two workers on 2x8 tiles: 16 // (2 * 2) = 4 tiles a call, i.e. two whole rows
    state = JobState(grid(2, 8), retries=1)
    assert state.group_size(2) == 4
    first = state.next_for("w1", 2, group=True)
    assert first.covers == (0, 1, 2, 3) and first.tile.core == Rect(0, 0, 20, 20)
    assert state.count(TaskStatus.RUNNING) == 4
    # many workers: no grouping, one tile per call
    assert state.group_size(8) == 1
    single = state.next_for("w2", 8, group=True)
    assert single.covers == () and single.members == (4,)
    # every member finishes on its own; the frame completes with the last
    done = [state.succeeded(i) for i in (*first.members, *single.members)]
    assert done == [False] * 5
    rest = []
    while (task := state.next_for("w1", 2, group=True)) is not None:
        rest.append(task)
    assert sorted(i for t in rest for i in t.members) == list(range(5, 16))
    # a group that starts in the middle of a row never goes down a row (no L shapes)
    assert rest[0].members == (5,)
    assert [any([state.succeeded(i) for i in t.members]) for t in rest][-1] is True
    assert state.finished and not state.failed


def test_grouping_skips_running_and_failed_neighbours_and_failures_hit_every_member() -> None:
    state = JobState(grid(4, 1, frames=2), retries=1)
    a = state.next_for("w1", 1)  # tile 0 alone
    b = state.next_for("w2", 1, group=True)
    assert b.members == (1, 2, 3)  # stops at the row's end, not in the next frame
    for index in b.members:
        assert state.failed_attempt(index, "boom") is True
    # w2 failed them: with two live workers it does not take them back as a group
    c = state.next_for("w2", 2, group=True)
    assert 1 not in c.members
    again = state.next_for("w1", 1, group=True)
    assert again.members[0] == 1 and state.entries[1].attempts == 2
    assert a.members == (0,)
    with_flag_off = JobState(grid(4, 1), retries=1).next_for("w1", 1, group=False)
    assert with_flag_off.members == (0,)


def test_a_straggler_gets_one_backup_and_counts_once() -> None:
    state = JobState(tasks(1, 2), retries=0)
    slow = state.next_for("slow")
    assert state.backup(slow.index) is True
    assert state.backup(slow.index) is False  # one backup at most
    assert state.succeeded(slow.index) is False  # the backup finished first
    assert state.succeeded(slow.index) is False  # the slow copy later: not counted again
    assert state.count(TaskStatus.DONE) == 1
    assert state.backup(slow.index) is False  # done: nothing to back up


def test_a_failing_copy_leaves_the_other_running() -> None:
    state = JobState(tasks(1, 1), retries=0)
    task = state.next_for("w1")
    assert state.backup(task.index)
    # one copy fails: the other still runs, so the task is neither failed nor requeued
    assert state.failed_attempt(task.index, "boom") is True
    assert state.entries[task.index].status is TaskStatus.RUNNING
    assert not state.has_pending()
    # the other copy fails too: now it is the task's (only) attempt that failed
    assert state.failed_attempt(task.index, "boom again") is False
    assert state.entries[task.index].status is TaskStatus.FAILED


def test_a_loser_failing_after_the_winner_changes_nothing() -> None:
    state = JobState(tasks(1, 1), retries=0)
    task = state.next_for("w1")
    assert state.backup(task.index)
    state.succeeded(task.index)
    assert state.failed_attempt(task.index, "late") is True
    assert state.entries[task.index].status is TaskStatus.DONE and state.finished


def test_results_after_the_end_are_late_and_a_second_copy_is_a_duplicate() -> None:
    state = JobState(tasks(2, 1), retries=1)
    first, second = state.next_for("w1"), state.next_for("w2")
    assert state.on_result(first.members) is Verdict.ACCEPT
    assert state.complete(first.members) is True  # frame 1 is whole: merge it
    assert state.on_result(first.members) is Verdict.DUPLICATE
    state.end("cancelled by a client")
    assert state.on_result(second.members) is Verdict.LATE
    assert state.on_failure(second.members, "boom", True) is Failure.IGNORED
    assert state.may_backup(second.members) is False
    assert state.ended == "cancelled by a client" and not state.has_pending()


def test_a_failure_retries_then_fails_and_one_no_worker_can_pass_stops_the_job() -> None:
    state = JobState(tasks(3, 1), retries=1)
    task = state.next_for("w1")
    assert state.on_failure(task.members, "crash", True) is Failure.RETRY
    task = state.next_for("w2")
    assert state.on_failure(task.members, "crash", True) is Failure.FAILED
    assert state.count(TaskStatus.PENDING) == 2  # the job goes on with its other tasks
    task = state.next_for("w1")
    assert state.on_failure(task.members, "bad file", False) is Failure.STOP
    assert state.count(TaskStatus.PENDING) == 0 and state.finished
    # a cancelled attempt fails the task without stopping the others
    state = JobState(tasks(2, 1), retries=0)
    task = state.next_for("w1")
    assert state.on_failure(task.members, "cancelled", False, cancelled=True) is Failure.FAILED
    assert state.count(TaskStatus.PENDING) == 1


def test_a_lagging_task_gets_one_backup_and_not_after_the_end() -> None:
    state = JobState(tasks(2, 1), retries=1)
    task = state.next_for("w1")
    assert state.may_backup(task.members) is True
    assert state.may_backup(task.members) is False  # one backup per task
    other = state.next_for("w2")
    state.end("a merge failed")
    assert state.may_backup(other.members) is False


def test_the_eta_follows_the_jobs_own_pace() -> None:
    from renderfarm.progress import eta_seconds

    # 4 tasks done in the 8 s since the first started: 2 s each; 6 left
    assert eta_seconds([2.0, 4.0, 6.0, 8.0], 0.0, 6, 8.0) == 12.0
    assert eta_seconds([], 0.0, 6, 8.0) is None and eta_seconds([1.0], 0.0, 0, 2.0) == 0.0
    # a job that sped up: only its last 20 tasks count
    finished = [10.0 * i for i in range(1, 11)] + [100.0 + i for i in range(1, 21)]
    assert eta_seconds(finished, 0.0, 10, 120.0) == 10 * 20 / 20


def test_a_worker_that_fails_three_tasks_in_a_row_is_kept_off_the_job() -> None:
    from renderfarm.state import BLOCK_AFTER

    state = JobState(tasks(8, 1), retries=5)
    live = {"w1", "w2"}
    for _ in range(BLOCK_AFTER - 1):
        task = state.next_for("w1", live)
        assert state.on_failure(task.members, "boom", True) is Failure.RETRY
    task = state.next_for("w1", live)  # one success breaks the streak
    state.complete(task.members)
    for _ in range(BLOCK_AFTER):
        task = state.next_for("w1", live)
        state.on_failure(task.members, "boom", True)
    assert state.take_blocked() == ["w1"] and state.next_for("w1", live) is None
    assert state.next_for("w2", live) is not None  # the others go on
    # when every worker is blocked the job stops, saying why
    for _ in range(BLOCK_AFTER):
        task = state.next_for("w2", live) or task
        state.on_failure(task.members, "boom", True)
    assert state.next_for("w2", live) is None
    problems = state.take_problems()
    assert problems and "every worker failed 3 tasks of this job in a row" in str(problems[0])
    assert isinstance(problems[0], JobFailedError)
    assert not state.has_pending()


def test_pieces_lost_with_their_node_render_again_without_costing_a_retry() -> None:
    """A frame's pieces lost with the node that kept them: their tasks are pending again
    (not an attempt of theirs), the frame waits for them, and a copy that had lost a race
    to them no longer counts."""
    state = JobState(tasks(2, 2), retries=0)
    first = [state.next_for("w1"), state.next_for("w2")]
    assert state.backup(first[0].index)  # a straggler's copy, which the first one beat
    assert state.complete([first[0].index]) is False
    assert state.complete([first[1].index]) is True  # frame 1 complete: it merges
    assert state.redo([first[0].index, first[0].index]) == [1]  # named twice: once
    entry = state.entries[first[0].index]
    assert entry.status is TaskStatus.PENDING and entry.attempts == 0 and entry.backups == 0
    again = state.next_for("w2")
    assert again.index == first[0].index  # pending first, before frame 2's
    # its new render fails once: with no retries left it fails, not "another copy goes on"
    assert state.failed_attempt(again.index, "boom") is False
    assert state.redo([first[1].index]) == []  # frame 1 was reopened already
    assert state.redo([again.index]) == []  # not done: nothing to render again
