"""The service's pure decisions, without sockets, Ray or Blender: which queued jobs start,
why a job waits for others, how an interrupted job resumes, and each client's request rate."""

from __future__ import annotations

from typing import Any

from renderfarm.job import JobSpec
from renderfarm.server.rates import MAX_IN_FLIGHT, Rates
from renderfarm.server.scheduling import pick, resumed, waiting_reason
from renderfarm.server.store import JobRow


def row(job_id: str, **spec: Any) -> JobRow:
    return JobRow(id=job_id, seq=0, name=job_id, spec={"output": "x.png", **spec},
                  priority=0, state="queued", client="alice", created=0.0, started=None,
                  ended=None, error=None, plan=None, tasks_done=0, tasks_total=0,
                  frames_done=0, frames_total=0, warnings=[])


def test_a_job_waits_until_each_job_it_comes_after_is_done() -> None:
    assert waiting_reason([], False, {}) is None
    assert waiting_reason(["a"], False, {"a": "done"}) is None
    assert waiting_reason(["a"], False, {"a": "running"}) == "waiting for job a (running)"
    assert waiting_reason(["a"], True, {"a": "running"}) is None  # frame by frame
    assert waiting_reason(["a"], True, {"a": "queued"}) == "waiting for job a (queued)"
    held = waiting_reason(["a", "b"], False, {"a": "failed", "b": None})
    assert held == ("held: job a it comes after failed (requeue it, or cancel this one); "
                    "held: job b it comes after no longer exists")


def test_the_first_ready_jobs_start_up_to_the_limit() -> None:
    queued = [row("a"), row("b"), row("c"), row("d")]
    waiting = {"a": None, "b": "waiting for job z (queued)", "c": None, "d": None}
    assert [j.id for j in pick(queued, waiting, running=1, max_running=3)] == ["a", "c"]
    assert pick(queued, waiting, running=3, max_running=3) == []
    assert pick(queued, waiting, running=5, max_running=3) == []


def test_an_interrupted_job_is_planned_the_same_way_and_keeps_its_work() -> None:
    spec = JobSpec("scene.blend", frames="1-4", tiles=(1, 1))
    plan = {"tiles": [2, 2], "chunks": 3, "frames": [1, 2, 3, 4], "only": [2, 3]}
    pieces = [{"frame": 1, "chunk": 0, "tiles": [0, 1], "tile": {"index": 0},
               "path": "p.exr"}]
    again, resume = resumed(spec, plan, pieces, {1: "f1.exr"})
    assert again.tiles == (2, 2) and again.chunks == 3 and again.frames == "1-4"
    assert resume.pieces[0].tiles == (0, 1) and resume.pieces[0].path == "p.exr"
    assert resume.frames == {1: "f1.exr"} and resume.skip == frozenset({1, 4})
    assert resumed(spec, {**plan, "only": None}, [], {})[1].skip == frozenset()


def test_a_client_gets_its_rate_with_bursts_of_twice_as_many() -> None:
    rates = Rates(per_second=2.0)
    assert [rates.take("alice", 0.0) for _ in range(4)] == [None] * 4
    refused = rates.take("alice", 0.0)
    assert refused is not None and "too many requests from alice" in refused
    assert rates.take("bob", 0.0) is None  # each client has its own bucket
    assert rates.problem("alice", 0.5)[0] is None  # a token came back (nothing counted)
    assert rates.take("alice", 0.5) is None and rates.take("alice", 0.5) is not None
    assert Rates(per_second=0.0).take("alice", 0.0) is None  # no limit


def test_a_client_has_a_limited_number_of_requests_in_flight() -> None:
    rates = Rates(per_second=0.0)
    for _ in range(MAX_IN_FLIGHT):
        rates.enter("alice")
    assert "requests in flight already" in (rates.take("alice", 0.0) or "")
    rates.leave("alice")
    assert rates.take("alice", 0.0) is None


def test_live_previews_give_way_when_a_jobs_events_back_up() -> None:
    """A tile's preview is made while its job's events are recorded as they come; once the
    service falls behind (thousands of workers finishing tiles), tiles get none, so the
    records a restart needs and the job's end are not held back by pictures."""
    from renderfarm.events import Event
    from renderfarm.handle import JobHandle
    from renderfarm.server.recorder import PREVIEW_BACKLOG, previews_keep_up

    handle = JobHandle("job", JobSpec("scene.blend"))
    seen = []
    for index in range(PREVIEW_BACKLOG + 5):
        handle.emit(Event("task_done", "job", frame=1, tile=index))
    for event in handle.events():
        seen.append((event.tile, previews_keep_up(handle.backlog())))
        if len(seen) == PREVIEW_BACKLOG + 5:
            break
    # the first tiles are taken while more than PREVIEW_BACKLOG wait behind them
    assert [keep for _tile, keep in seen] == [False] * 4 + [True] * (PREVIEW_BACKLOG + 1)
