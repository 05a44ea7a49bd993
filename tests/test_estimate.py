"""Estimates before rendering (issue 13): the probe's choice of frames and samples, the cost
model and the schedule (pure), then real probes on a real farm: ``renderfarm estimate``, a
budget that stops a job before it renders, and an estimate kept in the job's report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from renderfarm.estimate import (
    JobShape,
    TileCost,
    call_overhead,
    fit,
    next_probe_samples,
    predict,
    probe_frames,
    probe_samples,
    schedule,
    tile_costs,
)
from renderfarm.report import summary_lines


def test_the_probe_spreads_over_the_frames_at_two_low_sample_counts() -> None:
    assert probe_frames(range(1, 101)) == [1, 51, 100]
    assert probe_frames([3, 1, 2]) == [1, 2, 3]
    assert probe_frames([7]) == [7]
    assert probe_samples(256) == [16, 64]
    assert probe_samples(16) == [1, 4]
    assert probe_samples(3) == [3] and probe_samples(None) == [0]


def test_a_probe_too_short_to_time_goes_on_at_more_samples() -> None:
    def calls(frame_seconds: dict[int, float]) -> list[dict]:
        return [{"frame": f, "tile": t, "ok": True, "render_seconds": s / 2}
                for f, s in frame_seconds.items() for t in (0, 1)]

    # a heavy scene: 16 samples took 3 s more per frame than 4 did, the line is trusted
    heavy = {4: calls({1: 1.0, 5: 1.2, 9: 1.1}), 16: calls({1: 4.0, 5: 4.3, 9: 4.1})}
    assert next_probe_samples([4, 16], 64, heavy) is None
    # a light one: 0.06 s more (the median frame), mostly noise; a second of sampling needs
    # about 4 + 1 / (0.06 / 12) = 204 samples, so the job's own 64
    light = {4: calls({1: 0.04, 5: 0.05, 9: 0.05}), 16: calls({1: 0.09, 5: 0.11, 9: 0.2})}
    assert next_probe_samples([4, 16], 64, light) == 64
    assert next_probe_samples([4, 16], 512, light) == 204
    # at least twice the highest count; never past the job's; a flat line: the job's own
    assert next_probe_samples([4, 16], 1024, {4: calls({1: 0.1}), 16: calls({1: 0.55})}) == 32
    assert next_probe_samples([4, 16], 256, {4: calls({1: 0.1}), 16: calls({1: 0.1})}) == 256
    assert next_probe_samples([16, 64], 64, light) is None
    assert next_probe_samples([3], 3, light) is None and next_probe_samples([0], None, {}) is None


def test_a_line_through_the_probes_and_never_a_negative_slope() -> None:
    line = fit({4: 1.0, 16: 2.2})
    assert line.per_sample == pytest.approx(0.1) and line.fixed == pytest.approx(0.6)
    assert line.at(64) == pytest.approx(7.0)
    assert fit({4: 1.0, 16: 0.9}).per_sample == 0.0  # noise: more samples never cost less
    assert fit({8: 2.0}) == TileCost(2.0, 0.0)


def test_tiles_share_their_frames_line_by_what_they_took() -> None:
    def call(frame: int, tile: int, seconds: float) -> dict:
        return {"frame": frame, "tile": tile, "ok": True, "render_seconds": seconds,
                "started": 100.0, "finished": 100.0 + seconds}

    probes = {4: [call(1, 0, 0.1), call(1, 1, 0.3)], 16: [call(1, 0, 0.4), call(1, 1, 1.2)]}
    costs = tile_costs(probes)
    frame = fit({4: 0.4, 16: 1.6})
    assert costs[(1, 0)].at(64) == pytest.approx(frame.at(64) / 4)
    assert costs[(1, 1)].at(64) == pytest.approx(frame.at(64) * 3 / 4)


def test_the_schedule_deals_tasks_like_the_dispatcher() -> None:
    assert schedule([1.0] * 4, 2)[0] == pytest.approx(2.0)
    assert schedule([3.0, 1.0, 1.0, 1.0], 2)[0] == pytest.approx(3.0)
    # grouped: the fixed part is paid once per call
    calls = [(0.5, 1.0, 1)] * 4
    makespan, busy, count = schedule(calls, 1, group=True)
    assert count == 1 and busy == pytest.approx(4.5) and makespan == pytest.approx(4.5)
    assert schedule(calls, 1, group=False)[1] == pytest.approx(6.0)


def test_grouped_tiles_save_what_a_call_costs_per_sample_beyond_its_pixels() -> None:
    # 4 tiles: 0.02 s fixed and 0.001 s per sample per call, 0.004 s per sample of pixels
    # for the frame; at 32 samples one call each takes 4 * 0.052 + 0.128 = 0.336 s, the
    # frame whole 0.02 + 0.032 + 0.128 = 0.18 s
    line = fit({8: 4 * (0.02 + 0.008) + 0.032, 32: 0.336})
    assert call_overhead(line, 4, 0.336, 0.18, 32) == pytest.approx(0.001)
    assert call_overhead(line, 4, 0.336, 0.4, 32) == 0.0  # noise: whole took longer
    assert call_overhead(line, 4, 9.0, 0.18, 32) == pytest.approx(line.per_sample / 4)
    assert call_overhead(line, 1, 0.336, 0.18, 32) == 0.0
    # the schedule: a call of 4 tiles saves 3 tiles' overhead
    calls = [(0.005, 0.064, 1, 0.032)] * 4
    assert schedule(calls, 1, group=True)[1] == pytest.approx(0.005 + 4 * 0.064 - 3 * 0.032)
    assert schedule(calls, 1, group=False)[1] == pytest.approx(4 * 0.069)
    costs = {(1, t): TileCost(0.005, 0.002) for t in range(4)}
    shape = JobShape(tasks=tuple((1, t, 32) for t in range(4)), frames=(1,), workers=1,
                     call_overhead=0.001)
    kwargs = {"finish_seconds": 0.0, "before": 0.0, "after": 0.0, "prices": None,
              "samples": 32, "probe": {}}
    grouped = predict(shape, costs, **kwargs)
    assert grouped.wall_seconds == pytest.approx(0.005 + 4 * 0.064 - 3 * 0.032)
    assert grouped.to_dict()["call_overhead"] == 0.001
    from dataclasses import replace

    single = predict(replace(shape, group=False), costs, **kwargs)
    assert single.wall_seconds == pytest.approx(4 * 0.069)


def test_a_prediction_adds_checks_finishing_and_the_jobs_own_overheads() -> None:
    costs = {(1, 0): TileCost(0.0, 0.01), (3, 0): TileCost(0.0, 0.03)}
    shape = JobShape(tasks=tuple((f, 0, 100) for f in (1, 2, 3)), frames=(1, 2, 3),
                     workers=1, device="cpu", worker_cpus=2.0)
    estimate = predict(shape, costs, finish_seconds=0.5, before=1.0, after=0.25,
                       prices={"CPU": 36.0}, samples=100, probe={"samples": [6, 25]})
    # frames take 1, 2 (interpolated) and 3 s, each finished in 0.5 s
    assert estimate.per_frame == pytest.approx({1: 1.0, 2: 2.0, 3: 3.0})
    assert estimate.wall_seconds == pytest.approx(1.0 + 7.5 + 0.25)
    assert estimate.device_seconds == pytest.approx(7.5 * 2)
    assert estimate.cost == pytest.approx(7.5 * 2 * 36 / 3600)
    checked = predict(JobShape(shape.tasks, shape.frames, 1, verify=1.0), costs,
                      finish_seconds=0.0, before=0.0, after=0.0, prices=None, samples=100,
                      probe={})
    assert checked.wall_seconds == pytest.approx(12.0) and checked.cost is None


# -- on a real farm ---------------------------------------------------------------------------
def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "renderfarm", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.blender
@pytest.mark.ray
def test_estimate_predicts_without_rendering_the_job(make_scene, tmp_path: Path) -> None:
    blend = make_scene(width=64, height=48, samples=32, frames=6)
    out = tmp_path / "never"
    proc = cli("estimate", str(blend), "--tiles", "2x1", "--workers", "2", "--price",
               "CPU=36", "-o", str(out / "e_####.png"), "--json")
    assert proc.returncode == 0, proc.stderr
    estimate = json.loads(proc.stdout)
    # a 64x48 scene renders its tiles in hundredths of a second: too short to time at 2 and
    # 8 samples, so the probe goes on at more (up to the job's 32)
    assert estimate["probe_frames"] == [1, 3, 6]
    assert estimate["probe_samples"][:2] == [2, 8] and len(estimate["probe_samples"]) == 3
    assert 16 <= estimate["probe_samples"][2] <= 32
    assert estimate["tasks"] == 12 and estimate["workers"] == 2
    assert estimate["wall_seconds"] > 0 and estimate["device_seconds"] > 0
    assert estimate["cost"] == pytest.approx(estimate["device_seconds"] * 36 / 3600)
    assert not out.exists() or not any(out.iterdir())  # nothing of the job was written
    proc = cli("estimate", str(blend), "--frames", "1-2", "--workers", "2")
    assert proc.returncode == 0 and "no price set" in proc.stdout, proc.stdout
    # said once: the result line, not also the probe's event
    assert "device-s" in proc.stdout and "device-s" not in proc.stderr, proc.stderr


@pytest.mark.blender
@pytest.mark.ray
def test_a_budget_stops_the_job_before_it_renders_and_an_estimate_is_reported(
        farm, make_scene, tmp_path: Path) -> None:
    from dataclasses import replace

    from renderfarm.errors import LimitError
    from renderfarm.job import JobSpec

    blend = make_scene(width=64, height=48, samples=32, frames=4)
    spec = JobSpec(str(blend), tiles=(2, 1), output=str(tmp_path / "b_####.exr"),
                   budget=0.0)
    farm.config = replace(farm.config, prices={"CPU": 36.0})
    try:
        handle = farm.submit(spec)
        with pytest.raises(LimitError, match=r"estimated to cost 0\.\d+ and its budget is 0"):
            handle.result(timeout=300)
        assert not list(tmp_path.glob("b_*"))
        report = handle.report()
        assert report["by_kind"]["probe"] > 0  # the probe is billed to the job
        handle = farm.submit(replace(spec, budget=None, estimate="first"))
        result = handle.result(timeout=300)
    finally:
        farm.config = replace(farm.config, prices=None)
    assert sorted(result.outputs) == [1, 2, 3, 4] and result.estimate is not None
    report = handle.report(prices={"CPU": 36.0})
    assert report["estimate"]["tasks"] == 8 and "estimate_error" in report
    assert abs(report["estimate_error"]) < 3.0  # a tiny job: bounds only (see benchmarks)
    assert any(line.startswith("estimate ") for line in summary_lines(report))
