"""Verification as job state (``--verify``): which pieces are checked, where checks run, how a
disagreement is settled and what a suspect worker costs the job; without Ray or Blender."""

from __future__ import annotations

from renderfarm.errors import VerificationError
from renderfarm.job import Task
from renderfarm.state import MAX_RENDERS, JobState, TaskStatus, Verdict
from tests.test_state import tasks

WORKERS = {"a", "b", "c"}


def finish(state: JobState, task: Task, worker: str) -> tuple[int | None, bool]:
    """What the driver does with an accepted piece: maybe check it, then record it."""
    assert state.on_result(task.members, worker) is Verdict.ACCEPT
    check = state.start_check(task, worker)
    return check, state.complete(task.members)


def test_a_checked_frame_waits_for_its_check_which_runs_on_another_worker() -> None:
    state = JobState(tasks(1, 2), retries=1, verify=1.0, seed=1)
    first = state.next_for("a", WORKERS)
    check, complete = finish(state, first, "a")
    assert check is not None and not complete
    # the check goes first, but never to the worker that rendered the piece
    second = state.next_for("a", WORKERS)
    assert second.index == 1
    check_task = state.next_for("b", WORKERS)
    assert check_task.index == check and check_task.tile == first.tile
    assert check_task.frame == first.frame and check_task.members == (check,)
    state.verify = 0.0
    assert finish(state, second, "a") == (None, False)  # the frame still waits for the check
    settled = state.settle(check, equal_to={first.index})
    assert settled.check.outcome == "agreed" and not settled.suspects
    assert settled.discard == [check]
    assert state.take_ready() == [1]
    assert state.finished and not state.failed


def test_a_third_worker_settles_a_disagreement_and_the_liar_is_suspect() -> None:
    state = JobState(tasks(2, 1), retries=1, verify=1.0, seed=1)
    frame1 = state.next_for("a", WORKERS)
    check, _ = finish(state, frame1, "a")
    state.verify = 0.0  # frame 2 is not checked: it is redone when "a" turns out suspect
    frame2 = state.next_for("a", WORKERS)
    assert frame2.index == 1  # the check is not for "a"
    _, complete2 = finish(state, frame2, "a")
    assert complete2  # merged before anyone knew
    checker = state.next_for("b", WORKERS)
    assert checker.index == check
    settled = state.settle(check, equal_to=set())
    assert settled.check.outcome is None and not settled.suspects
    arbiter = state.next_for("b", WORKERS)
    assert arbiter is None  # "b" rendered it already, and so did "a"
    arbiter = state.next_for("c", WORKERS)
    assert arbiter is not None and arbiter.tile == frame1.tile
    settled = state.settle(arbiter.index, equal_to={check})
    assert settled.check.outcome == "settled" and settled.suspects == ["a"]
    assert settled.check.suspects == ["a"]
    assert sorted(settled.redo) == [0, 1] and settled.reopened == [2]
    assert sorted(settled.discard) == sorted([check, arbiter.index])
    assert state.next_for("a", WORKERS) is None  # a suspect gets nothing more
    redo = [state.next_for("b", WORKERS), state.next_for("c", WORKERS)]
    assert sorted(t.index for t in redo) == [0, 1]
    assert state.complete((0,)) and state.complete((1,))
    assert state.finished and not state.failed


def test_when_the_third_worker_sides_with_the_original_the_checker_is_suspect() -> None:
    state = JobState(tasks(1, 1), retries=1, verify=1.0, seed=1)
    piece = state.next_for("a", WORKERS)
    check, _ = finish(state, piece, "a")
    state.next_for("b", WORKERS)
    state.settle(check, equal_to=set())
    arbiter = state.next_for("c", WORKERS)
    settled = state.settle(arbiter.index, equal_to={piece.index})
    assert settled.suspects == ["b"] and not settled.redo and settled.check.outcome == "settled"
    assert state.take_ready() == [1] and state.finished


def test_no_majority_after_the_last_render_fails_the_piece() -> None:
    workers = {f"w{i}" for i in range(MAX_RENDERS + 1)}
    state = JobState(tasks(1, 1), retries=1, verify=1.0, seed=1)
    piece = state.next_for("w0", workers)
    check, _ = finish(state, piece, "w0")
    settled = None
    for number in range(1, MAX_RENDERS):
        task = state.next_for(f"w{number}", workers)
        assert task is not None
        settled = state.settle(task.index, equal_to=set())
    assert settled is not None and settled.failed and "no two agree" in settled.failed
    assert settled.check.outcome == "unsettled"


def test_two_workers_that_disagree_with_nobody_to_settle_it_fail_the_piece() -> None:
    state = JobState(tasks(1, 1), retries=1, verify=1.0, seed=1)
    piece = state.next_for("a", {"a", "b"})
    check, _ = finish(state, piece, "a")
    state.next_for("b", {"a", "b"})
    state.settle(check, equal_to=set())
    assert state.next_for("a", {"a", "b"}) is None
    problems = state.take_problems()
    assert len(problems) == 1 and "a, b disagree on frame 1" in str(problems[0])
    assert "add a worker" in str(problems[0]) and isinstance(problems[0], VerificationError)
    assert state.finished and len(state.failed) == 1


def test_a_check_with_no_other_worker_leaves_the_piece_unchecked() -> None:
    state = JobState(tasks(1, 1), retries=1, verify=1.0, seed=1)
    piece = state.next_for("a", {"a"})
    check, complete = finish(state, piece, "a")
    assert not complete
    assert state.next_for("a", {"a"}) is None
    assert state.checks[0].outcome == "unchecked" and state.take_ready() == [1]
    assert state.finished and not state.failed and not state.take_problems()


def test_a_suspects_running_work_is_rejected_and_runs_elsewhere() -> None:
    state = JobState(tasks(3, 1), retries=1, verify=0.0, seed=1)
    state.suspects.add("a")
    running = state.entries[0]
    running.status, running.worker = TaskStatus.RUNNING, "a"
    state._counts[TaskStatus.PENDING] -= 1
    state._counts[TaskStatus.RUNNING] += 1
    assert state.on_result((0,), "a") is Verdict.REJECT
    state.reject((0,), "a")
    assert state.entries[0].status is TaskStatus.PENDING and "a" in state.entries[0].exclude
    assert state.next_for("b", WORKERS).index == 0


def test_the_asked_share_of_pieces_is_checked_and_which_differs_per_job() -> None:
    def checked(seed: int) -> list[int]:
        state = JobState(tasks(1000, 1), retries=1, verify=0.1, seed=seed)
        out = []
        for _ in range(1000):
            task = state.next_for("a", WORKERS)
            if state.start_check(task, "a") is not None:
                out.append(task.index)
            state.complete(task.members)
        return out

    one, two = checked(1), checked(2)
    assert len(one) == 100 and len(two) == 100  # exactly a tenth, one in each ten
    assert all(10 * b <= i < 10 * (b + 1) for b, i in enumerate(one))
    assert one != two  # and which one differs from job to job

    def share(rate: float, pieces: int) -> int:
        state = JobState(tasks(pieces, 1), retries=1, verify=rate, seed=5)
        count = 0
        for _ in range(pieces):
            task = state.next_for("a", WORKERS)
            count += state.start_check(task, "a") is not None
            state.complete(task.members)
        return count

    assert share(0.3, 100) == 30 and share(0.7, 10) == 7 and share(1.0, 5) == 5
    assert share(0.05, 64) in (3, 4)  # one of 0-19, 20-39, 40-59, and maybe of 60-63


def test_a_grouped_piece_is_checked_as_one_region() -> None:
    state = JobState(tasks(1, 4), retries=1, verify=1.0, seed=3)
    group = state.next_for("a", 1, group=True)
    assert len(group.members) == 4
    check, complete = finish(state, group, "a")
    assert not complete
    task = state.next_for("b", 2)
    assert task.index == check and task.tile.core == group.tile.core and task.covers == ()
    settled = state.settle(check, equal_to={group.members[0]})
    assert settled.check.outcome == "agreed" and settled.check.members == group.members
    assert state.take_ready() == [1]


def test_a_check_that_fails_everywhere_leaves_the_piece_unchecked() -> None:
    state = JobState(tasks(1, 1), retries=0, verify=1.0, seed=1)
    piece = state.next_for("a", WORKERS)
    check, _ = finish(state, piece, "a")
    state.next_for("b", WORKERS)
    from renderfarm.state import Failure

    assert state.on_failure((check,), "Blender crashed", retryable=True) is Failure.RETRY
    assert state.checks[0].outcome == "unchecked" and state.take_ready() == [1]
    assert state.finished and not state.failed


def test_checks_stay_within_the_pieces_device_class() -> None:
    devices = {"a": "OPTIX:NVIDIA A10", "b": "CUDA:NVIDIA L4", "c": "OPTIX:NVIDIA A10"}
    state = JobState(tasks(1, 1), retries=1, verify=1.0, seed=1)
    piece = state.next_for("a", WORKERS, devices=devices)
    check = state.start_check(piece, "a", devices["a"])
    state.complete(piece.members)
    assert state.next_for("b", WORKERS, devices=devices) is None  # another GPU model
    assert state.next_for("c", WORKERS, devices=devices).index == check
    # with no worker of its class left but the original's, the piece stays unchecked
    state = JobState(tasks(1, 1), retries=1, verify=1.0, seed=1)
    piece = state.next_for("a", {"a", "b"}, devices=devices)
    state.start_check(piece, "a", devices["a"])
    state.complete(piece.members)
    assert state.next_for("b", {"a", "b"}, devices=devices) is None
    assert state.checks[0].outcome == "unchecked" and state.take_ready() == [1]


def test_a_pending_tie_break_ends_when_the_checker_turns_out_suspect() -> None:
    """a's piece was disputed by b; before a third worker settled it, b was found suspect by
    another check: a's piece stands, nothing waits for a third opinion."""
    state = JobState(tasks(2, 1), retries=1, verify=1.0, seed=1)
    first = state.next_for("a", WORKERS)
    check_a, _ = finish(state, first, "a")
    assert state.next_for("b", WORKERS).index == check_a
    second = state.next_for("c", WORKERS)
    check_c, _ = finish(state, second, "c")
    state.settle(check_a, equal_to=set())  # b disagrees with a: a tie-break is pending
    assert state.next_for("b", WORKERS).index == check_c
    state.settle(check_c, equal_to=set())  # b disagrees with c too
    tie_break = state.next_for("a", WORKERS)  # a settles c's piece: b is the liar
    settled = state.settle(tie_break.index, equal_to={second.index})
    assert settled.suspects == ["b"]
    outcomes = {c.task.frame: (c.outcome, c.suspects) for c in state.checks}
    assert outcomes == {1: ("settled", ["b"]), 2: ("settled", ["b"])}
    assert sorted(state.take_ready()) == [1, 2] and state.finished and not state.failed
    assert not state.take_problems()


def test_a_slow_worker_is_told_when_a_task_waits_for_it_alone() -> None:
    state = JobState(tasks(1, 2), retries=1, verify=1.0, seed=1)
    piece = state.next_for("fast", {"fast", "slow"})
    finish(state, piece, "fast")
    # only "slow" may check the fast worker's piece: it must not leave it to "fast"
    assert state.exclusive("slow", {"fast"}) and not state.exclusive("fast", {"slow"})


def test_a_paused_job_starts_checks_of_rendered_pieces_and_no_render() -> None:
    """Pause stops rendering, not finishing: checks of pieces already in still start (their
    frames are written), the pending renders wait for the resume."""
    state = JobState(tasks(2, 2), retries=1, verify=1.0, seed=1)
    first = state.next_for("a", WORKERS)
    check, _ = finish(state, first, "a")
    assert state.next_for("a", WORKERS, checks_only=True) is None  # a's own piece: not a's
    check_task = state.next_for("b", WORKERS, checks_only=True)
    assert check_task is not None and check_task.index == check
    assert state.next_for("c", WORKERS, checks_only=True) is None  # no render while paused
    assert state.next_for("c", WORKERS).index == 1  # resumed: the next tile
