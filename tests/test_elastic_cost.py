"""What elasticity cost a job, from the nodes' times as Ray reports them and the job's calls
(pure: no Ray)."""

from __future__ import annotations

import pytest

from renderfarm.elastic import NodeSpan, summary
from renderfarm.executor import autoscaled_shape


def test_node_seconds_are_counted_within_the_job_against_its_busy_seconds() -> None:
    spans = {"old": NodeSpan(0.0, None, True),  # up before the job
             "new": NodeSpan(110.0, 150.0, True),  # started for it, released before its end
             "other": NodeSpan(100.0, None, True)}  # served no call of this job
    calls = [{"node": "old", "started": 101.0, "finished": 131.0},
             {"node": "new", "started": 115.0, "finished": 145.0},
             {"node": "new", "started": 145.0, "finished": 148.0},
             {"node": "", "started": 100.0, "finished": 101.0}]  # a call with no node: left out
    cost = summary(spans, calls, started=100.0, ended=160.0)
    assert cost["node_seconds"] == pytest.approx(60.0 + 40.0)
    assert cost["busy_seconds"] == pytest.approx(30.0 + 30.0 + 3.0)
    assert cost["busy_share"] == pytest.approx(63.0 / 100.0)
    assert cost["nodes"] == 2 and cost["new_nodes"] == 1
    assert cost["first_task_on_new_node"] == pytest.approx(15.0)


def test_nothing_known_gives_no_share() -> None:
    cost = summary({}, [{"node": "n", "started": 1.0, "finished": 2.0}], 0.0, 10.0)
    assert cost["node_seconds"] == 0 and cost["busy_share"] is None
    assert cost["first_task_on_new_node"] is None


def test_the_shape_asked_of_the_autoscaler() -> None:
    cpu = autoscaled_shape("cpu", None)
    assert (cpu.num_cpus, cpu.num_gpus, cpu.threads, cpu.workers) == (1.0, 0.0, 1, 0)
    assert autoscaled_shape("cpu", 8).threads == 8
    gpu = autoscaled_shape("gpu", None)
    assert (gpu.num_cpus, gpu.num_gpus) == (1.0, 1.0)
