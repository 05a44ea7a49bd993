"""A job's estimate: a probe of a few of its frames, rendered first as jobs of their own on
the same workers, and the prediction made from it (:mod:`renderfarm.estimate`)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderfarm.errors import CancelledError, LimitError
from renderfarm.executor import WorkerPool
from renderfarm.handle import JobHandle
from renderfarm.job import JobResult, JobSpec, SceneInfo, TaskResult
from renderfarm.planner import Plan

if TYPE_CHECKING:
    from renderfarm.estimate import Estimate


@dataclass
class Probe:
    """The estimate of one job (see :meth:`run`).

    Attributes:
        spec: the job's spec.
        plan: its plan.
        info: its scene.
        verify: the share of its pieces checked.
        job_id: the job's id (the probe's jobs are named after it).
        priority: the job's priority (its probe's jobs get it).
        scratch: the job's scratch folder (the probe writes under it).
        prices: the farm's prices per device-hour.
        submit: starts a job on the same farm.
        cancelled: whether the job was cancelled.
        emit: ``emit(kind, **fields)`` reports an event of the job.
        record: keeps a call for the job's report (the probe's calls are billed to it).
        results: the job's calls so far.
        keep: keeps the estimate with the job (before a budget refuses it).
    """

    spec: JobSpec
    plan: Plan
    info: SceneInfo
    verify: float
    job_id: str
    priority: int
    scratch: Path
    prices: dict[str, float]
    submit: Callable[[JobSpec, int], JobHandle]
    cancelled: Callable[[], bool]
    emit: Callable[..., None]
    record: Callable[[TaskResult], None]
    results: Callable[[], list[TaskResult]]
    keep: Callable[[dict[str, Any]], None]

    def run(self, pool: WorkerPool, device: str) -> Estimate:
        """Render the probe (a few frames, the job's tiles, two low sample counts) as jobs of
        their own on the same workers, predict this job from it, say so, and stop the job
        when it would cost more than its budget."""
        from renderfarm.estimate import (
            JobShape,
            next_probe_samples,
            predict,
            probe_frames,
            probe_samples,
            tile_costs,
        )
        from renderfarm.report import busy_seconds, device_count, money

        assert self.plan is not None and self.info is not None
        spec, plan, info = self.spec, self.plan, self.info
        samples = (spec.samples or info.samples) if info.engine == "CYCLES" else None
        frames = probe_frames(plan.frames)
        levels = probe_samples(samples)
        self.emit("info", message=f"estimate: probing frames {', '.join(map(str, frames))} "
                  f"at {' and '.join(str(s) for s in levels if s) or 'their own'} samples")
        started = time.monotonic()
        probes: dict[int, list[dict[str, Any]]] = {}
        last: JobResult | None = None
        for level in levels:
            last = self.probe(frames, level or None)
            probes[level] = [t.to_dict() for t in last.renders]
        more = next_probe_samples(levels, samples, probes)
        if more is not None:  # too little sampling timed to trust the line
            self.emit("info", message=f"estimate: the probe's renders were too short to time "
                      f"well; probing at {more} samples too")
            levels = [*levels, more]
            last = self.probe(frames, more)
            probes[more] = [t.to_dict() for t in last.renders]
        assert last is not None
        overhead = self.call_overhead(frames, levels, probes)
        renders = last.renders
        finishes = [busy_seconds(t.to_dict()) for t in last.tasks if t.kind == "finish"]
        finish = sum(finishes) / len(finishes) if finishes else 0.0
        first = min(t.started for t in renders)
        end = max(t.finished for t in renders)
        before = max(first - last.started_at, 0.0)
        after = max(last.started_at + last.wall_seconds - end - finish, 0.0)
        shape = JobShape(
            tasks=tuple((t.frame, t.tile.index, (t.samples[1] if t.samples else samples) or 0)
                        for t in plan.tasks),
            frames=plan.frames, workers=max(len(pool.trusted), 1),
            verify=self.verify, device=device,
            worker_cpus=pool.shape.num_cpus or 1.0,
            device_label=renders[0].device if renders else "CPU", group=spec.group_tiles,
            call_overhead=overhead)
        probe_tasks = [t for t in self.results() if t.kind == "probe"]
        units = device_count(shape.device_label, device, shape.worker_cpus)
        estimate = predict(shape, tile_costs(probes), finish_seconds=finish, before=before,
                           after=after, prices=self.prices, samples=samples,
                           probe={"samples": levels, "frames": frames,
                                  "seconds": time.monotonic() - started,
                                  "device_seconds": units * sum(busy_seconds(t.to_dict())
                                                                for t in probe_tasks)})
        kept = estimate.to_dict()
        kept["rendered"] = False  # set once the job goes on to render
        self.keep(kept)
        cost = money(estimate.cost)
        self.emit("estimate", message=f"estimate: {estimate.wall_seconds:.1f} s on "
                  f"{estimate.workers} worker(s), {estimate.device_seconds:.1f} device-s, "
                  f"cost {cost}", data=kept)
        budget = spec.budget
        if budget is not None and (estimate.cost is None or estimate.cost > budget):
            raise LimitError(
                f"the job is estimated to cost {cost} and its budget is {budget:g}: nothing "
                "was rendered beyond the probe; raise --budget, or render fewer frames or "
                "samples" + (" (set the farm's prices: serve --price)"
                             if estimate.cost is None else ""),
                limit="budget", path=spec.blend_file)
        kept["rendered"] = spec.estimate == "first"
        return estimate

    def call_overhead(self, frames: list[int], levels: list[int],
                       probes: dict[int, list[dict[str, Any]]]) -> float:
        """What a render call costs per sample beyond its pixels, when it matters: a job
        that groups tiles whose calls are short renders one probed frame whole at the
        probe's highest samples, to compare with its tiles; 0 otherwise."""
        from renderfarm.estimate import PROBE_SHORT_CALL, call_overhead, fit, frame_totals

        assert self.plan is not None
        tiles = self.plan.tiles[0] * self.plan.tiles[1]
        top = max(levels)
        calls = sorted(float(t.get("render_seconds") or 0.0) for t in probes.get(top, [])
                       if t.get("ok"))
        if (not self.spec.group_tiles or tiles < 2 or top <= 0 or not calls
                or calls[len(calls) // 2] >= PROBE_SHORT_CALL):
            return 0.0
        frame = frames[len(frames) // 2]
        totals = frame_totals(probes).get(frame, {})
        if top not in totals:
            return 0.0
        whole = self.probe([frame], top, tiles=(1, 1))
        seconds = sum(t.render_seconds for t in whole.renders)
        return call_overhead(fit(totals), tiles, totals[top], seconds, top)

    def probe(self, frames: list[int], samples: int | None,
               tiles: tuple[int, int] | None = None) -> JobResult:
        """One probe job: the job's tiles (or ``tiles``) of ``frames`` at ``samples``,
        written to a scratch folder; its calls are billed to this job."""
        assert self.plan is not None
        folder = Path(tempfile.mkdtemp(prefix="probe-", dir=self.scratch))
        spec = replace(self.spec, frames=",".join(map(str, frames)), samples=samples,
                       tiles=tiles or self.plan.tiles, chunks=1, group_tiles=False, verify=0.0,
                       estimate=None, budget=None, output=str(folder) + os.sep,
                       name=f"probe of {self.spec.name or self.job_id}")
        handle = self.submit(spec, self.priority)
        try:
            while not handle.wait(0.2):
                if self.cancelled():
                    handle.cancel()
                    handle.wait(60)
                    raise CancelledError("the job was cancelled while it was being estimated")
            result = handle.result()
        finally:
            for call in handle.snapshot().get("tasks", []):
                self.record(replace(TaskResult.from_dict(call), kind="probe"))
            shutil.rmtree(folder, ignore_errors=True)
        return result
