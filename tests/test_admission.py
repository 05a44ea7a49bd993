"""Who the web app serves, as pure bookkeeping (no server, no clock): shares per client, the
unauthenticated budget, event streams, sessions and the log's budget."""

from __future__ import annotations

from renderfarm.server.admission import (
    ANONYMOUS,
    MAX_REQUESTS,
    MAX_STREAMS,
    PER_ADDRESS,
    PER_CLIENT,
    STREAMS_PER_CLIENT,
    Admission,
    LogBudget,
    Sessions,
)


def test_a_client_takes_its_share_and_no_more() -> None:
    admission = Admission()
    assert all(admission.enter("alice", "10.0.0.1") is None for _ in range(PER_CLIENT))
    refused = admission.enter("alice", "10.0.0.1")
    assert refused is not None and "alice" in refused and str(PER_CLIENT) in refused
    assert admission.enter("bob", "10.0.0.1") is None  # another client is let in
    admission.leave("alice", "10.0.0.1")
    assert admission.enter("alice", "10.0.0.1") is None  # one answered: one more may come


def test_requests_without_a_login_never_take_what_logged_in_clients_need() -> None:
    admission = Admission()
    addresses = [f"10.0.0.{i}" for i in range(ANONYMOUS)]
    for address in addresses:
        assert admission.enter(None, address) is None
    assert "without a login" in (admission.enter(None, "10.9.9.9") or "")
    # every logged-in client still gets its whole share
    for client in range((MAX_REQUESTS - ANONYMOUS) // PER_CLIENT):
        for _ in range(PER_CLIENT):
            assert admission.enter(f"c{client}", "10.1.1.1") is None
    assert "busy" in (admission.enter("late", "10.1.1.1") or "")
    # one address alone takes at most its part of the anonymous budget
    fresh = Admission()
    for _ in range(PER_ADDRESS):
        assert fresh.enter(None, "10.0.0.1") is None
    assert "this address" in (fresh.enter(None, "10.0.0.1") or "")
    assert fresh.enter(None, "10.0.0.2") is None
    for _ in range(PER_ADDRESS):
        fresh.leave(None, "10.0.0.1")
    fresh.leave(None, "10.0.0.2")
    assert fresh.in_progress == 0 and not fresh.anonymous


def test_event_streams_are_shared_per_client() -> None:
    admission = Admission()
    for _ in range(STREAMS_PER_CLIENT):
        assert admission.open_stream("alice") is None
    assert "alice" in (admission.open_stream("alice") or "")
    opened = STREAMS_PER_CLIENT
    client = 0
    while opened < MAX_STREAMS:
        if admission.open_stream(f"c{client}") is None:
            opened += 1
        else:
            client += 1
    assert "too many" in (admission.open_stream("late") or "")
    admission.close_stream("alice")
    assert admission.open_stream("late") is None


def test_sessions_expire_end_and_follow_the_keys() -> None:
    sessions = Sessions(limit=3, age=100.0)
    first = sessions.start("alice", "KEY-A", now=0.0)
    assert first != "KEY-A" and len(first) >= 40
    assert sessions.get(first, now=99.0).name == "alice"
    assert sessions.get(first, now=100.0) is None  # expired
    alice = sessions.start("alice", "KEY-A", now=0.0)
    bob = sessions.start("bob", "KEY-B", now=0.0)
    assert sessions.end(alice) and sessions.get(alice, now=1.0) is None  # logged out
    assert not sessions.end(alice)
    assert sessions.end_unless({"KEY-A"}) == 1 and sessions.get(bob, now=1.0) is None
    ids = [sessions.start("c", "K", now=0.0) for _ in range(4)]
    assert sessions.get(ids[0], now=1.0) is None and len(sessions) == 3  # oldest gone
    assert sessions.get("x" * 65, now=1.0) is None and sessions.get(None, now=1.0) is None


def test_the_log_budget_lets_a_few_lines_through_and_counts_the_rest() -> None:
    budget = LogBudget(lines=2, interval=10.0)
    assert [budget.allow("bad", t)[0] for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, False,
                                                                         False]
    assert budget.allow("other", 3.0) == (True, 0)  # another kind has its own
    assert budget.allow("bad", 10.5) == (True, 2)  # a new interval says what was held back


def test_a_jobs_task_events_are_thinned_and_its_own_events_always_go() -> None:
    """Thousands of workers send a job hundreds of task events a second: a subscriber gets
    at most its rate of them (their counts ride on every event that goes), every job and
    frame event, and each job has its own bucket."""
    from renderfarm.server.rates import Thinning

    thinning = Thinning(10.0)
    sent = [thinning.allow("a", "task_done", 100.0 + i / 1000) for i in range(1000)]  # 1 s
    assert 10 <= sum(sent) <= 21  # a burst of 10, then 10 a second
    assert sent[:10] == [True] * 10 and not any(sent[12:100])
    assert all(thinning.allow("a", kind, 101.0) for kind in
               ("frame_merged", "warning", "info", "task_failed"))
    assert thinning.allow("b", "task_started", 101.0)  # another job: its own bucket
    assert thinning.allow("a", "task_done", 103.0)  # a quiet while: it flows again
    assert thinning.allow("a", "job_done", 103.0) and "a" not in thinning.buckets
