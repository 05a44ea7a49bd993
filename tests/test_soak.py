"""A short soak: jobs run while random faults fire (a worker's render raises, its Blender
aborts or lags; a job's own piece handling or merge raises). Every job ends as it must: done
with every frame, or failed with its injected fault; no piece is lost, rendered twice or
merged twice, and no other job is taken down (`benchmarks/run.py --soak MINUTES` runs it
long)."""

from __future__ import annotations

from pathlib import Path

import pytest

from renderfarm.soak import soak

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def test_jobs_finish_exactly_while_faults_fire(farm, make_scene, tmp_path: Path) -> None:
    blend = make_scene(width=32, height=24, frames=3, samples=1)
    report = soak(farm, str(blend), tmp_path, seconds=40, seed=7)
    summary = report.to_dict()
    assert report.jobs >= 6 and sum(report.faults_armed.values()) >= 3, summary
    assert report.done + report.failed_as_injected == report.jobs, summary
    assert report.ok, summary
    assert all(runner.error is None for runner in farm._runners.values())
    assert not farm._jobs  # finished jobs are not kept by the farm (their plans go with them)

