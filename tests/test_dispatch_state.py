"""Every dispatch decision, without Ray, threads or a clock: events go into the pure
:class:`~renderfarm.dispatch_state.DispatchState` and its instructions are read back. The jobs'
tasks come from the real :class:`~renderfarm.state.JobState`, as on the farm."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from renderfarm.dispatch_state import (
    CallDone,
    CallFailed,
    CallNotStarted,
    CancelCall,
    ClusterLost,
    Deliver,
    DispatchState,
    EndJob,
    FailTask,
    JobAdded,
    JobCancelled,
    JobFaulted,
    JobHeld,
    JobPaused,
    JobPriority,
    JobRemoved,
    JobResumed,
    ReleaseWorker,
    ReplaceWorker,
    Requeue,
    StartCall,
    Tick,
    WorkerDisabled,
    WorkerJoined,
    WorkerLoaded,
    WorkerLost,
    WorkerStarted,
    WorkerSuspect,
)
from renderfarm.errors import (
    CancelledError,
    ClusterLostError,
    TaskTimeoutError,
    WorkerDiedError,
)
from renderfarm.job import Rect, Task, Tile
from renderfarm.state import JobState, TaskStatus
from renderfarm.tags import WorkerTags, parse_requirements


class Job:
    """A job's answers to the dispatch state, from a real :class:`JobState` (as the farm's
    :class:`~renderfarm.jobrun.Entries` gives them)."""

    def __init__(self, name: str, tasks: int, retries: int = 2) -> None:
        rect = Rect(0, 0, 1, 1)
        self.name = name
        self.state = JobState([Task(name, i, i + 1, Tile(0, rect, rect), (1, 1))
                               for i in range(tasks)], retries=retries)
        self.broken: str | None = None  # the question that raises

    def _maybe_raise(self, question: str) -> None:
        if self.broken == question:
            raise RuntimeError(f"{self.name}: {question} is broken")

    def next_task(self, worker: str, live: frozenset[str], checks_only: bool) -> Task | None:
        self._maybe_raise("next_task")
        if checks_only:
            return None
        return self.state.next_for(worker, live)

    def pending(self) -> int:
        self._maybe_raise("pending")
        return self.state.count(TaskStatus.PENDING)

    def exclusive(self, worker: str, others: frozenset[str]) -> bool:
        self._maybe_raise("exclusive")
        return self.state.exclusive(worker, others)

    def may_backup(self, task: Task) -> bool:
        self._maybe_raise("may_backup")
        return self.state.backup(task.index)

    # what the dispatcher does with the instructions (as the farm's Entries would)
    def done(self, task: Task) -> None:
        if not self.state.all_done((task.index,)):
            self.state.succeeded(task.index)


def started_workers(state: DispatchState, *names: str, tags: dict[str, WorkerTags] | None = None
                    ) -> None:
    for name in names:
        state.handle(WorkerJoined(name), WorkerStarted(name, (tags or {}).get(name,
                                                                           WorkerTags())))


def starts(instructions: list[Any]) -> list[StartCall]:
    return [i for i in instructions if isinstance(i, StartCall)]


def of_kind(instructions: list[Any], kind: type) -> list[Any]:
    return [i for i in instructions if isinstance(i, kind)]


def finish(state: DispatchState, call: StartCall, now: float) -> list[Any]:
    """The call returns at ``now``; its job takes what is delivered."""
    out = state.handle(CallDone(call.call_id, now))
    for deliver in of_kind(out, Deliver):
        for task in deliver.tasks:
            deliver.work.done(task)
    return out


def test_runs_with_ray_not_importable() -> None:
    """The module and these tests need no Ray: they pass with ``import ray`` failing."""
    code = ("import sys; sys.modules['ray'] = None; import pytest; "
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', __file__, "
            "'-k', 'not not_importable']))")
    done = subprocess.run([sys.executable, "-c", code.replace("__file__", repr(__file__))],
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_each_worker_gets_depth_calls_and_no_more() -> None:
    state = DispatchState(depth=2)
    job = Job("a", 10)
    started_workers(state, "w1", "w2")
    out = state.handle(JobAdded("a", "file-a", job), Tick(0.0))
    calls = starts(out)
    # every worker gets its first call before any gets its second
    assert [c.worker_id for c in calls] == ["w1", "w2", "w1", "w2"]
    assert [c.tasks[0].index for c in calls] == [0, 1, 2, 3]
    assert starts(state.handle(Tick(0.1))) == []  # both full
    # a call ends: its worker gets one more, the one queued behind starts running
    out = finish(state, calls[0], 1.0) + state.handle(Tick(1.0))
    assert [(c.worker_id, c.tasks[0].index) for c in starts(out)] == [("w1", 4)]
    assert state.current("w1").call_id == calls[2].call_id
    assert state.calls[calls[2].call_id].started == 1.0  # it waited until now


def test_a_worker_dropped_while_the_workers_are_filled_gets_no_other_jobs_call() -> None:
    """A job's code fails while a worker is served (its worker w1, which ran that job's
    call, is dropped): filling the others' queues never comes back to w1 with another
    job's call (it would run on a killed worker and cost that job a retry)."""

    class BrokenOnW2(Job):
        def next_task(self, worker: str, live: frozenset[str], checks_only: bool) -> Any:
            if worker == "w2":
                raise RuntimeError("a bug in the job's code")
            return super().next_task(worker, live, checks_only)

    state = DispatchState(depth=2)
    started_workers(state, "w1", "w2")
    state.handle(JobAdded("x", "file-x", BrokenOnW2("x", 10), priority=1))
    out = state.handle(JobAdded("y", "file-y", Job("y", 10)), Tick(0.0))
    replaced = {i.worker_id for i in of_kind(out, ReplaceWorker)}
    assert replaced == {"w1"}
    assert [c.job_id for c in starts(out) if c.worker_id == "w1"] == ["x"]  # before the bug
    assert all(c.worker_id in state.workers for c in state.calls.values())


def test_a_job_of_fewer_tasks_than_queue_places_runs_on_every_worker_at_once() -> None:
    """Six tasks on four workers: each worker runs one now (none waits behind another's
    queue while a worker idles), two are queued."""
    state = DispatchState(depth=2)
    started_workers(state, "w1", "w2", "w3", "w4")
    calls = starts(state.handle(JobAdded("a", "file-a", Job("a", 6)), Tick(0.0)))
    assert sorted(c.worker_id for c in calls[:4]) == ["w1", "w2", "w3", "w4"]
    assert all(state.calls[c.call_id].started == 0.0 for c in calls[:4])
    assert [state.calls[c.call_id].started for c in calls[4:]] == [None, None]


def test_higher_priority_first_then_loaded_file_among_equals() -> None:
    state = DispatchState(depth=1)
    low, high, other = Job("low", 4), Job("high", 4), Job("other", 4)
    started_workers(state, "w1")
    out = state.handle(JobAdded("low", "file-low", low, priority=0),
                       JobAdded("high", "file-high", high, priority=5), Tick(0.0))
    assert [c.job_id for c in starts(out)] == ["high"]
    # a second job of the same top priority: the worker keeps the file it has loaded
    state.handle(JobAdded("other", "file-other", other, priority=5))
    first = starts(out)[0]
    out = finish(state, first, 1.0) + state.handle(Tick(1.0))
    assert [c.job_id for c in starts(out)] == ["high"]
    # a new priority is followed for tasks not started yet
    state.handle(JobPriority("low", 10))
    out = finish(state, starts(out)[0], 2.0) + state.handle(Tick(2.0))
    assert [c.job_id for c in starts(out)] == ["low"]


@pytest.mark.parametrize("opened_b", [False, True])
def test_a_worker_with_another_file_loaded_prefers_the_job_of_its_file(opened_b: bool) -> None:
    state = DispatchState(depth=1)
    a, b = Job("a", 4), Job("b", 4)
    started_workers(state, "w1", "w2")
    out = state.handle(JobAdded("a", "file-a", a), Tick(0.0))
    assert {c.worker_id for c in starts(out)} == {"w1", "w2"}
    call_w1 = next(c for c in starts(out) if c.worker_id == "w1")
    call_w2 = next(c for c in starts(out) if c.worker_id == "w2")
    state.handle(JobAdded("b", "file-b", b), WorkerLoaded("w1", "file-b"))
    assert state.workers["w1"].loaded == "file-a"  # its queued call loads a's file again
    finish(state, call_w2, 1.0)
    if opened_b:  # it opened b's file meanwhile (to read b's scene)
        state.handle(WorkerLoaded("w2", "file-b"))
    out = state.handle(Tick(1.0))
    assert [(c.worker_id, c.job_id) for c in starts(out)] == [("w2", "b" if opened_b else "a")]
    assert call_w1.call_id in state.calls


def test_no_calls_for_starting_suspect_or_disabled_workers() -> None:
    state = DispatchState(depth=1)
    job = Job("a", 10)
    state.handle(WorkerJoined("starting"))
    started_workers(state, "suspect", "disabled", "good")
    state.handle(WorkerSuspect("suspect", "its pixels disagree"),
                 WorkerDisabled("disabled", "maintenance"))
    out = state.handle(JobAdded("a", "f", job), Tick(0.0))
    assert [c.worker_id for c in starts(out)] == ["good"]
    # enabled again (which also clears a suspicion): it takes work on the next tick
    out = state.handle(WorkerDisabled("suspect", None), WorkerDisabled("disabled", None),
                       WorkerStarted("starting"), Tick(1.0))
    assert sorted(c.worker_id for c in starts(out)) == ["disabled", "starting", "suspect"]


def test_require_keeps_a_job_on_the_workers_that_meet_it() -> None:
    state = DispatchState(depth=1)
    job = Job("a", 6)
    started_workers(state, "small", "big", tags={
        "small": WorkerTags(props={"vram": "8"}), "big": WorkerTags(props={"vram": "24"})})
    out = state.handle(JobAdded("a", "f", job, require=parse_requirements("vram>=16")),
                       Tick(0.0))
    assert [c.worker_id for c in starts(out)] == ["big"]


def test_a_worker_that_offers_more_since_it_started_gets_the_job() -> None:
    """A Blender registered on a worker's machine after it started (posted again with what
    it offers now) makes it fit a job that renders with that Blender."""
    from renderfarm.tags import executable_requirement, with_blenders

    state = DispatchState(depth=1)
    started_workers(state, "w1")
    out = state.handle(JobAdded("a", "f", Job("a", 2),
                                require=executable_requirement("/usr/bin/blender")), Tick(0.0))
    assert starts(out) == []  # nothing on this machine offers it yet
    now = with_blenders(WorkerTags(), ["5.0.1", "3.4.1"], ["/usr/bin/blender"])
    out = state.handle(WorkerStarted("w1", now), Tick(1.0))
    assert [c.worker_id for c in starts(out)] == ["w1"]


def test_a_straggler_gets_a_backup_and_the_first_result_wins() -> None:
    state = DispatchState(depth=1)
    job = Job("a", 6)
    started_workers(state, "fast", "slow")
    out = state.handle(JobAdded("a", "f", job), Tick(0.0))
    calls = {c.worker_id: c for c in starts(out)}
    now = 0.0
    # the fast worker finishes three tasks of 1 s while the slow one's first call runs
    for _ in range(3):
        now += 1.0
        out = finish(state, calls["fast"], now) + state.handle(Tick(now))
        new = starts(out)
        if new:
            calls["fast"] = new[0]
    slow_call = calls["slow"]
    # nothing is left to start: the idle fast worker copies the lagging call
    while job.state.count(TaskStatus.PENDING):
        now += 1.0
        out = finish(state, calls["fast"], now) + state.handle(Tick(now))
        calls["fast"] = starts(out)[0]
    now += 1.0
    out = finish(state, calls["fast"], now) + state.handle(Tick(now))
    backup = [c for c in starts(out) if c.backup_of == slow_call.call_id]
    assert backup and backup[0].worker_id == "fast", out
    assert backup[0].tasks == slow_call.tasks
    # the copy ends first: it is delivered, the slow original is cancelled
    out = finish(state, backup[0], now + 1.0)
    assert of_kind(out, CancelCall) == [CancelCall(slow_call.call_id)]
    assert [d.call_id for d in of_kind(out, Deliver)] == [backup[0].call_id]
    # the original's late end is nobody's business: no delivery, its worker is free again
    out = state.handle(CallDone(slow_call.call_id, now + 5.0), Tick(now + 5.0))
    assert of_kind(out, Deliver) == [] and job.state.finished


def test_a_call_over_its_timeout_fails_and_its_worker_is_replaced() -> None:
    state = DispatchState(depth=2)
    job = Job("a", 4)
    started_workers(state, "w1")
    out = state.handle(JobAdded("a", "f", job, timeout=10.0), Tick(0.0))
    running, queued = starts(out)
    assert state.handle(Tick(9.0)) == []
    out = state.handle(Tick(10.5))
    failed = of_kind(out, FailTask)
    assert [(f.call_id, type(f.error)) for f in failed] == [(running.call_id, TaskTimeoutError)]
    assert failed[0].started == 0.0 and failed[0].ended == 10.5
    assert of_kind(out, ReplaceWorker) == [ReplaceWorker("w1", "a call ran over its 10 s "
                                                         "timeout")]
    # the call queued behind it never started: it goes back, no attempt counted
    assert [r.call_id for r in of_kind(out, Requeue)] == [queued.call_id]
    assert "w1" not in state.workers and not state.calls


def test_cancel_stops_running_calls_and_cancels_queued_ones() -> None:
    state = DispatchState(depth=2)
    a, b = Job("a", 4), Job("b", 4)
    started_workers(state, "w1", "w2")
    out = state.handle(JobAdded("a", "fa", a), Tick(0.0))
    a_calls = starts(out)
    state.handle(JobAdded("b", "fb", b))
    out = state.handle(JobCancelled("a", 3.0))
    assert of_kind(out, Requeue) == []  # nothing goes back to the cancelled job
    failed = of_kind(out, FailTask)
    assert {f.call_id for f in failed} == {c.call_id for c in a_calls[:2]}  # the running
    assert all(isinstance(f.error, CancelledError) and f.ended == 3.0 for f in failed)
    assert {r.worker_id for r in of_kind(out, ReplaceWorker)} == {"w1", "w2"}
    # the cancelled job gets nothing more; the other job gets the new workers
    out = state.handle(WorkerJoined("w3"), WorkerStarted("w3"), Tick(4.0))
    assert {c.job_id for c in starts(out)} == {"b"}


def test_cancel_of_a_job_only_queued_behind_another_keeps_the_worker() -> None:
    state = DispatchState(depth=2)
    a, b = Job("a", 1), Job("b", 4)
    started_workers(state, "w1")
    out = state.handle(JobAdded("a", "fa", a), Tick(0.0))
    state.handle(JobAdded("b", "fb", b))
    out = state.handle(Tick(0.5))
    queued = starts(out)[0]
    assert queued.job_id == "b" and state.calls[queued.call_id].started is None
    out = state.handle(JobCancelled("b", 1.0))
    assert out == [CancelCall(queued.call_id)]  # a's running call on w1 goes on
    assert "w1" in state.workers


def test_pause_starts_no_render_and_no_backup_until_resumed() -> None:
    state = DispatchState(depth=1)
    job = Job("a", 4)
    started_workers(state, "w1")
    state.handle(JobAdded("a", "f", job), JobPaused("a"))
    assert starts(state.handle(Tick(0.0))) == []
    out = state.handle(JobResumed("a"), Tick(1.0))
    assert len(starts(out)) == 1


def test_pause_while_a_call_runs_lets_it_finish() -> None:
    state = DispatchState(depth=1)
    job = Job("a", 4)
    started_workers(state, "w1")
    call = starts(state.handle(JobAdded("a", "f", job), Tick(0.0)))[0]
    state.handle(JobPaused("a"))
    out = finish(state, call, 1.0) + state.handle(Tick(1.0))
    assert of_kind(out, Deliver) and not starts(out)


def test_a_dead_worker_fails_its_running_call_and_requeues_its_queued_one() -> None:
    state = DispatchState(depth=2)
    job = Job("a", 4)
    started_workers(state, "w1", "w2")
    calls = starts(state.handle(JobAdded("a", "f", job), Tick(0.0)))
    running, queued = [c for c in calls if c.worker_id == "w1"]
    died = WorkerDiedError("worker w1 died")
    out = state.handle(CallFailed(running.call_id, 2.0, died))
    assert [(f.call_id, f.error) for f in of_kind(out, FailTask)] == [(running.call_id, died)]
    assert [r.call_id for r in of_kind(out, Requeue)] == [queued.call_id]
    assert [r.worker_id for r in of_kind(out, ReplaceWorker)] == ["w1"]


def test_a_worker_gone_without_a_word_gives_its_calls_back() -> None:
    state = DispatchState(depth=2)
    job = Job("a", 4)
    started_workers(state, "w1")
    running, queued = starts(state.handle(JobAdded("a", "f", job), Tick(0.0)))
    lost = WorkerDiedError("worker w1 went away")
    out = state.handle(WorkerLost("w1", lost, 3.0))
    assert [f.call_id for f in of_kind(out, FailTask)] == [running.call_id]
    assert [r.call_id for r in of_kind(out, Requeue)] == [queued.call_id]
    assert of_kind(out, ReplaceWorker) == []  # it is gone already
    # its result arriving anyway changes nothing
    assert state.handle(CallDone(running.call_id, 5.0)) == []


def test_a_lost_cluster_ends_every_job() -> None:
    state = DispatchState()
    a, b = Job("a", 2), Job("b", 2)
    started_workers(state, "w1")
    state.handle(JobAdded("a", "fa", a), JobAdded("b", "fb", b), Tick(0.0))
    lost = ClusterLostError("the Ray cluster failed")
    out = state.handle(ClusterLost(lost))
    assert sorted(e.job_id for e in of_kind(out, EndJob)) == ["a", "b"]
    assert all(e.error is lost for e in of_kind(out, EndJob))
    assert state.handle(Tick(1.0)) == [] and not state.calls
    # a job added after that ends at once
    assert of_kind(state.handle(JobAdded("c", "fc", Job("c", 1))), EndJob)


def test_a_job_whose_code_fails_ends_alone() -> None:
    state = DispatchState(depth=1)
    good, bad = Job("good", 4), Job("bad", 4)
    bad.broken = "next_task"
    started_workers(state, "w1", "w2")
    out = state.handle(JobAdded("bad", "fb", bad, priority=1), JobAdded("good", "fg", good),
                       Tick(0.0))
    ended = of_kind(out, EndJob)
    assert [e.job_id for e in ended] == ["bad"] and "next_task is broken" in str(ended[0].error)
    assert {c.job_id for c in starts(out)} == {"good"} and len(starts(out)) == 2


def test_a_job_faulted_by_its_own_thread_stops_its_calls_without_failing_them() -> None:
    state = DispatchState(depth=1)
    job = Job("a", 4)
    started_workers(state, "w1")
    call = starts(state.handle(JobAdded("a", "f", job), Tick(0.0)))[0]
    error = OSError("disk full")
    out = state.handle(JobFaulted("a", error, 1.0))
    assert of_kind(out, EndJob) == [EndJob("a", job, error)]
    assert of_kind(out, FailTask) == [] and of_kind(out, ReplaceWorker)
    assert state.handle(CallDone(call.call_id, 2.0)) == []


def test_a_call_that_could_not_start_frees_its_slot() -> None:
    state = DispatchState(depth=1)
    started_workers(state, "w1")
    call = starts(state.handle(JobAdded("a", "f", Job("a", 4)), Tick(0.0)))[0]
    state.handle(CallNotStarted(call.call_id, 1.0))
    assert state.workers["w1"].queue == [] and not state.calls


def test_a_removed_job_gets_no_task_and_its_running_call_still_delivers() -> None:
    state = DispatchState(depth=1)
    job = Job("a", 4)
    started_workers(state, "w1")
    call = starts(state.handle(JobAdded("a", "f", job), Tick(0.0)))[0]
    state.handle(JobRemoved("a"))
    out = finish(state, call, 1.0) + state.handle(Tick(1.0))
    assert of_kind(out, Deliver) and not starts(out)
    assert "a" not in state.jobs  # forgotten once its last call ended


@pytest.mark.parametrize(("tasks", "slow_takes_one"), [(8, False), (30, True)])
def test_a_much_slower_worker_leaves_the_last_tasks_to_the_others(
        tasks: int, slow_takes_one: bool) -> None:
    """A worker measured 10x slower takes a task only while the others could not drain the
    rest before it ends one."""
    state = DispatchState(depth=1)
    job = Job("a", tasks)
    started_workers(state, "fast1", "fast2", "slow")
    state.handle(JobAdded("a", "f", job))
    slot = state.jobs["a"]
    slot.durations = [1.0] * 5
    slot.paces = {"fast1": [1.0, 1.0], "fast2": [1.0, 1.0], "slow": [10.0, 10.0]}
    out = state.handle(Tick(0.0))
    assert {c.worker_id for c in starts(out)} == ({"fast1", "fast2", "slow"} if slow_takes_one
                                                  else {"fast1", "fast2"})


def test_short_tasks_share_a_call_up_to_the_jobs_batch() -> None:
    state = DispatchState(depth=1)
    job = Job("a", 200)
    started_workers(state, "w1")
    state.handle(JobAdded("a", "f", job, batch=16))
    now = 0.0
    for _ in range(3):  # three calls of 1 ms each: the pace is known
        call = starts(state.handle(Tick(now)))[0]
        assert len(call.tasks) == 1
        now += 0.001
        finish(state, call, now)
    call = starts(state.handle(Tick(now)))[0]
    assert len(call.tasks) == 16
    out = finish(state, call, now + 0.016)
    assert [len(d.tasks) for d in of_kind(out, Deliver)] == [16]
    # a job whose worker code takes one task a call never batches
    other = DispatchState(depth=1)
    started_workers(other, "w1")
    other.handle(JobAdded("b", "f", Job("b", 50)))
    for step in range(6):
        call = starts(other.handle(Tick(step * 0.001)))[0]
        assert len(call.tasks) == 1
        finish(other, call, step * 0.001 + 0.0005)


def test_a_dead_worker_of_a_batch_fails_every_task_of_it() -> None:
    state = DispatchState(depth=1)
    job = Job("a", 100)
    started_workers(state, "w1")
    state.handle(JobAdded("a", "f", job, batch=8))
    now = 0.0
    for _ in range(3):
        call = starts(state.handle(Tick(now)))[0]
        now += 0.001
        finish(state, call, now)
    call = starts(state.handle(Tick(now)))[0]
    out = state.handle(CallFailed(call.call_id, now + 1, WorkerDiedError("died")))
    assert sorted(f.task.index for f in of_kind(out, FailTask)) == \
        sorted(t.index for t in call.tasks)


@pytest.mark.parametrize("question", ["pending", "exclusive"])
def test_a_straggler_question_that_raises_ends_only_its_job(question: str) -> None:
    state = DispatchState(depth=1)
    job, other = Job("a", 8), Job("b", 8)
    started_workers(state, "w1", "w2", "w3")
    state.handle(JobAdded("a", "f", job, priority=1), JobAdded("b", "g", other))
    slot = state.jobs["a"]  # paces known: w3 is ten times slower than the others
    slot.durations = [1.0] * 5
    slot.paces = {"w1": [1.0, 1.0], "w2": [1.0, 1.0], "w3": [10.0, 10.0]}
    job.broken = question
    out = state.handle(Tick(0.0))
    ended = of_kind(out, EndJob)
    assert [e.job_id for e in ended] == ["a"] and question in str(ended[0].error)
    assert {c.job_id for c in starts(out) if c.worker_id == "w3"} == {"b"}


def test_a_backup_question_that_raises_ends_only_its_job() -> None:
    state = DispatchState(depth=1)
    job = Job("a", 1)
    started_workers(state, "w1")
    call = starts(state.handle(JobAdded("a", "f", job), Tick(0.0)))[0]
    state.jobs["a"].durations = [1.0] * 5
    job.broken = "may_backup"
    out = state.handle(WorkerJoined("w2"), WorkerStarted("w2"), Tick(5.0))
    assert [e.job_id for e in of_kind(out, EndJob)] == ["a"]
    assert not starts(out) and call.call_id not in state.calls


def lagging_call(state: DispatchState, job: Job, **added: Any) -> StartCall:
    """Job ``a`` with its pace known (1 s a task) and one call on ``w1`` started at 0; the
    state then has an idle worker ``w2`` at the first tick after."""
    started_workers(state, "w1")
    call = starts(state.handle(JobAdded("a", "f", job, **added), Tick(0.0)))[0]
    state.jobs["a"].durations = [1.0] * 5
    return call


def test_a_backup_needs_an_active_unpaused_job_that_takes_backups_and_the_worker() -> None:
    cases = {"plain": ({}, None), "paused": ({}, JobPaused("a")),
             "no backups": ({"backups": False}, None),
             "require": ({"require": parse_requirements("tag=big")}, None)}
    for name, (added, event) in cases.items():
        state = DispatchState(depth=1)
        job = Job("a", 1)
        started_workers(state, "w1", tags={"w1": WorkerTags(frozenset({"big"}))})
        call = starts(state.handle(JobAdded("a", "f", job, **added), Tick(0.0)))[0]
        state.jobs["a"].durations = [1.0] * 5
        if event is not None:
            state.handle(event)
        out = state.handle(WorkerJoined("w2"), WorkerStarted("w2"), Tick(5.0))
        backups = [c for c in starts(out) if c.backup_of == call.call_id]
        assert bool(backups) is (name == "plain"), name
        if backups:
            assert state.workers["w2"].loaded == "f"


def test_a_call_not_lagging_long_enough_gets_no_backup() -> None:
    state = DispatchState(depth=1)
    job = Job("a", 1)
    call = lagging_call(state, job)
    state.jobs["a"].durations = [0.1] * 5  # 2x the median is 0.2 s, the floor is 1 s
    out = state.handle(WorkerJoined("w2"), WorkerStarted("w2"), Tick(0.5))
    assert [c for c in starts(out) if c.backup_of == call.call_id] == []
    out = state.handle(Tick(1.5))
    assert [c for c in starts(out) if c.backup_of == call.call_id]


def test_the_worker_of_a_losing_copy_that_died_is_replaced() -> None:
    state = DispatchState(depth=1)
    job = Job("a", 1)
    call = lagging_call(state, job)
    backup = [c for c in starts(state.handle(WorkerJoined("w2"), WorkerStarted("w2"),
                                             Tick(5.0))) if c.backup_of][0]
    finish(state, backup, 6.0)
    out = state.handle(CallFailed(call.call_id, 7.0, WorkerDiedError("w1 died")))
    assert [r.worker_id for r in of_kind(out, ReplaceWorker)] == ["w1"]
    assert of_kind(out, FailTask) == []  # nobody waited for that copy


def test_the_call_behind_a_cancelled_losing_copy_starts_and_can_time_out() -> None:
    state = DispatchState(depth=2)
    job, other = Job("a", 1), Job("b", 4)
    started_workers(state, "w1")
    call = starts(state.handle(JobAdded("a", "f", job, timeout=10.0), Tick(0.0)))[0]
    state.jobs["a"].durations = [1.0] * 5
    backup = [c for c in starts(state.handle(WorkerJoined("w2"), WorkerStarted("w2"),
                                             Tick(5.0))) if c.backup_of][0]
    state.handle(JobAdded("b", "g", other, timeout=10.0))
    queued = [c for c in starts(state.handle(Tick(5.5))) if c.worker_id == "w1"][0]
    finish(state, backup, 6.0)  # the copy wins; the original on w1 is cancelled
    from renderfarm.errors import RenderError

    state.handle(CallFailed(call.call_id, 6.1, RenderError("cancelled"), worker_died=False))
    assert state.calls[queued.call_id].started == 6.1
    out = state.handle(Tick(17.0))  # over its 10 s since it started at 6.1
    assert queued.call_id in [f.call_id for f in of_kind(out, FailTask)]


def test_a_timeout_counts_each_task_of_a_call() -> None:
    state = DispatchState(depth=1)
    job = Job("a", 100)
    started_workers(state, "w1")
    state.handle(JobAdded("a", "f", job, timeout=0.01, batch=16))
    now = 0.0
    for _ in range(3):
        call = starts(state.handle(Tick(now)))[0]
        now += 0.001
        finish(state, call, now)
    call = starts(state.handle(Tick(now)))[0]
    assert len(call.tasks) == 16
    assert of_kind(state.handle(Tick(now + 0.15)), FailTask) == []  # under 16 x 0.01 s
    assert len(of_kind(state.handle(Tick(now + 0.17)), FailTask)) == 16


def test_a_faulted_jobs_queued_calls_are_cancelled_not_requeued() -> None:
    state = DispatchState(depth=2)
    job = Job("a", 4)
    started_workers(state, "w1")
    running, queued = starts(state.handle(JobAdded("a", "f", job), Tick(0.0)))
    out = state.handle(JobFaulted("a", RuntimeError("its disk"), 1.0))
    assert of_kind(out, Requeue) == [] and of_kind(out, FailTask) == []
    assert [r.worker_id for r in of_kind(out, ReplaceWorker)] == ["w1"]
    assert running.call_id not in state.calls and queued.call_id not in state.calls


def test_a_worker_measured_slow_still_takes_a_task_only_it_may_run() -> None:
    state = DispatchState(depth=1)
    job = Job("a", 8)
    job.exclusive = lambda worker, others: worker == "slow"  # type: ignore[method-assign]
    started_workers(state, "fast1", "fast2", "slow")
    state.handle(JobAdded("a", "f", job))
    slot = state.jobs["a"]
    slot.durations = [1.0] * 5
    slot.paces = {"fast1": [1.0, 1.0], "fast2": [1.0, 1.0], "slow": [10.0, 10.0]}
    out = state.handle(Tick(0.0))
    assert "slow" in {c.worker_id for c in starts(out)}


def test_a_job_paused_or_cancelled_before_dispatch_starts_nothing() -> None:
    for added in ({"paused": True}, {"cancelled": True}):
        state = DispatchState(depth=1)
        started_workers(state, "w1")
        out = state.handle(JobAdded("a", "f", Job("a", 4), **added), Tick(0.0))
        assert starts(out) == [], added
    out = state.handle(JobResumed("a"), Tick(1.0))
    assert starts(out) == []  # cancelled stays cancelled


def test_a_job_run_again_under_its_id_keeps_the_earlier_runs_calls_apart() -> None:
    state = DispatchState(depth=1)
    first, second = Job("a", 2), Job("a", 2)
    started_workers(state, "w1", "w2")
    calls = starts(state.handle(JobAdded("a", "f", first), Tick(0.0)))
    state.handle(JobRemoved("a"), JobAdded("a", "f", second))
    out = finish(state, calls[0], 1.0)
    assert [d.work for d in of_kind(out, Deliver)] == [first]
    out = state.handle(Tick(1.0))
    assert {c.work for c in starts(out)} == {second}


def test_a_lost_workers_running_call_is_billed_until_it_was_seen_gone() -> None:
    state = DispatchState(depth=1)
    started_workers(state, "w1")
    call = starts(state.handle(JobAdded("a", "f", Job("a", 2)), Tick(0.0)))[0]
    out = state.handle(WorkerLost("w1", WorkerDiedError("gone"), 490.0))
    (failed,) = of_kind(out, FailTask)
    assert (failed.call_id, failed.started, failed.ended) == (call.call_id, 0.0, 490.0)


# -- what the pool's work wants of Ray's autoscaler -------------------------------------------
def test_demand_is_what_the_queue_can_keep_busy_bounded_per_job() -> None:
    state = DispatchState(release_after=60.0)
    state.handle(JobAdded("a", "ka", Job("a", 10)), JobAdded("b", "kb", Job("b", 8),
                                                             max_workers=3),
                 JobAdded("held", "kh", Job("held", 5), paused=True), Tick(0.0))
    assert state.wanted == 10 + 3  # no worker yet: every waiting task could use one
    state.handle(JobCancelled("a", 1.0), Tick(1.0))
    assert state.wanted == 3
    state.handle(JobResumed("held"), Tick(2.0))
    assert state.wanted == 3 + 5
    state.handle(JobPaused("b"), Tick(3.0))
    assert state.wanted == 5


def test_demand_counts_the_workers_running_a_job_and_its_waiting_tasks() -> None:
    state = DispatchState(depth=2, release_after=60.0)
    job = Job("a", 5)
    started_workers(state, "w1", "w2")
    calls = starts(state.handle(JobAdded("a", "ka", job), Tick(0.0)))
    assert len(calls) == 4 and state.wanted == 2 + 1  # two busy workers, one task waits
    for call in calls:
        finish(state, call, 1.0)
    out = state.handle(Tick(1.0))
    assert state.wanted == 1 and len(starts(out)) == 1  # the last task, on one worker
    finish(state, starts(out)[0], 2.0)
    state.handle(Tick(2.0))
    assert state.wanted == 0


def test_a_job_whose_pending_raises_ends_and_asks_for_nothing() -> None:
    state = DispatchState(release_after=60.0)
    job = Job("a", 4)
    job.broken = "pending"
    out = state.handle(JobAdded("a", "ka", job), JobAdded("b", "kb", Job("b", 2)), Tick(0.0))
    assert [e.job_id for e in of_kind(out, EndJob)] == ["a"]
    assert state.wanted == 2


def test_idle_workers_beyond_the_demand_are_released_after_a_while_longest_idle_first() -> None:
    state = DispatchState(depth=1, release_after=5.0)
    started_workers(state, "w1", "w2", "w3")
    job = Job("a", 1)
    out = state.handle(JobAdded("a", "ka", job), Tick(0.0))
    busy = starts(out)[0].worker_id
    assert state.wanted == 1 and not of_kind(out, ReleaseWorker)
    assert not of_kind(state.handle(Tick(4.9)), ReleaseWorker)
    released = of_kind(state.handle(Tick(5.0)), ReleaseWorker)
    assert sorted(r.worker_id for r in released) == sorted({"w1", "w2", "w3"} - {busy})
    assert list(state.workers) == [busy]
    finish(state, starts(out)[0], 6.0)
    assert not of_kind(state.handle(Tick(6.0)), ReleaseWorker)  # idle from now on
    assert not of_kind(state.handle(Tick(10.9)), ReleaseWorker)
    assert [r.worker_id for r in of_kind(state.handle(Tick(11.0)), ReleaseWorker)] == [busy]
    assert state.wanted == 0 and not state.workers


def test_a_new_job_keeps_idle_workers_it_can_use() -> None:
    state = DispatchState(depth=1, release_after=5.0)
    started_workers(state, "w1", "w2")
    state.handle(Tick(0.0))  # both idle, nothing wanted
    out = state.handle(JobAdded("a", "ka", Job("a", 6)), Tick(4.0))
    assert len(starts(out)) == 2
    assert not of_kind(state.handle(Tick(9.0)), ReleaseWorker)  # both busy: kept
    assert state.wanted == 6


def test_fixed_pools_never_release_workers_nor_ask_for_any() -> None:
    state = DispatchState()
    started_workers(state, "w1", "w2")
    out = state.handle(JobAdded("a", "ka", Job("a", 1)), Tick(0.0), Tick(1e6))
    assert not of_kind(out, ReleaseWorker) and set(state.workers) == {"w1", "w2"}
    assert state.wanted == 0


def test_a_worker_counts_once_and_calls_queued_behind_it_want_no_other() -> None:
    state = DispatchState(depth=2, release_after=60.0)
    started_workers(state, "w1")
    out = state.handle(JobAdded("a", "ka", Job("a", 2)), Tick(0.0))
    assert len(starts(out)) == 2 and state.wanted == 1  # one running, one bound behind it
    state.handle(JobAdded("b", "kb", Job("b", 3)), Tick(1.0))
    assert state.wanted == 1 + 3


def test_a_job_held_for_its_own_calls_wants_a_worker_until_it_ends() -> None:
    state = DispatchState(release_after=5.0)
    state.handle(JobHeld("a", True), Tick(0.0))
    assert state.wanted == 1  # opening its file before its tasks exist
    started_workers(state, "w1")
    state.handle(JobAdded("a", "ka", Job("a", 0)), Tick(1.0))  # nothing to render (yet)
    assert state.wanted == 1
    assert not of_kind(state.handle(Tick(100.0)), ReleaseWorker)  # finishing its frames
    state.handle(JobRemoved("a"), Tick(101.0))
    assert state.wanted == 1
    out = state.handle(JobHeld("a", False), Tick(102.0))  # idle long enough already
    assert state.wanted == 0 and [r.worker_id for r in of_kind(out, ReleaseWorker)] == ["w1"]


def test_suspect_and_disabled_workers_are_kept_for_an_operator_and_want_nothing() -> None:
    state = DispatchState(release_after=5.0)
    started_workers(state, "w1", "w2", "w3")
    state.handle(WorkerSuspect("w1", "pixels differ"), WorkerDisabled("w2", "a look"),
                 Tick(0.0))
    released = of_kind(state.handle(Tick(10.0)), ReleaseWorker)
    assert [r.worker_id for r in released] == ["w3"]
    assert set(state.workers) == {"w1", "w2"} and state.wanted == 0


def test_demand_is_counted_by_the_kind_of_worker_each_job_requires() -> None:
    from renderfarm.tags import demand_of

    lighting = parse_requirements("tag=lighting")
    state = DispatchState(depth=1, release_after=60.0)
    started_workers(state, "w1", tags={"w1": WorkerTags(frozenset({"lighting"}))})
    state.handle(JobAdded("plain", "kp", Job("plain", 2)),
                 JobAdded("lit", "kl", Job("lit", 3), require=lighting), Tick(0.0))
    assert state.wanted == 5
    assert sum(state.wanted_kinds.values()) == 5 and state.wanted_kinds[lighting] >= 2
    assert demand_of(lighting) == ({"tag:lighting": 0.001}, {})
    assert demand_of(parse_requirements("gpu=A10G,vram>=16,zone=eu")) == (
        {"accelerator_type:A10G": 0.001}, {"zone": "eu"})
