"""Estimates before rendering (issue 13): a low-sample probe of a few frames predicts a job's
wall time on the current pool and its cost.

The probe renders the job's own tiles of a few sample frames (first, middle, last) at two low
sample counts; when those renders are too short to time (a light scene, a fast device: the
higher count took less than :data:`PROBE_MIN_SAMPLING` seconds per frame more than the lower),
once more at a count that is long enough, up to the job's own. A job that groups tiles, whose
calls are short, also has one frame rendered whole: Cycles costs each call something per
sample beyond its pixels, which a grouped call pays once (:func:`call_overhead`). Each tile's
time is then a line in the samples, ``busy = a + b * samples`` —
``a`` is what a call costs whatever the samples (sync, BVH, writing the piece), ``b`` the cost
of one sample of that tile — fitted per tile and frame, interpolated between sample frames.
The job's tasks, with those times (plus the checks ``--verify`` adds and finishing each merged
frame), are dealt to the pool's workers as the dispatcher deals them: each free worker takes
the next task. The predicted wall time is that schedule's length plus the time a job spends
before its first task and after its last (measured on the probe). Cycles' adaptive sampling
stops pixels early at high sample counts, so for scenes that use it the estimate leans high.

Everything here is pure; :class:`~renderfarm.jobrun.JobRun` runs the probe jobs.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from renderfarm.report import busy_seconds, device_count, device_units, price_of

#: sample frames a probe renders at most
PROBE_FRAMES = 3
#: seconds of sampling a probe wants to have timed per frame (its highest sample count over
#: its lowest) before it trusts its line: a render call's time wanders by some hundredths of
#: a second whatever its length, which is most of a tiny probe's difference, and the line
#: multiplies that difference by up to five to reach the job's samples
PROBE_MIN_SAMPLING = 1.0
#: a probe whose tiles render in less than this (seconds per call, median) also times one
#: frame whole, to learn what a call costs per sample beyond its pixels (what grouping tiles
#: saves); longer calls make that cost too small a part to be worth a frame's render
PROBE_SHORT_CALL = 2.0


def probe_frames(frames: Sequence[int], most: int = PROBE_FRAMES) -> list[int]:
    """The frames a probe renders: spread over the job's (first, middle, last)."""
    ordered = sorted(set(frames))
    if len(ordered) <= most:
        return ordered
    picks = {ordered[round(i * (len(ordered) - 1) / (most - 1))] for i in range(most)}
    return sorted(picks)


def probe_samples(samples: int | None) -> list[int]:
    """The sample counts a probe renders at: two low ones to fit a line (a sixteenth and a
    quarter of the job's), or the job's own when it is already low or not Cycles."""
    if samples is None or samples <= 4:
        return [samples or 0]
    low = max(1, round(samples / 16))
    high = min(samples, max(2 * low, round(samples / 4)))
    return [low, high]


def _tile_seconds(probes: Mapping[int, Sequence[Mapping[str, Any]]], overhead: float = 0.0
                  ) -> dict[int, dict[int, dict[int, float]]]:
    """``{frame: {samples: {tile: seconds}}}`` of the probes' render calls, each plus
    ``overhead`` (a tile rendered twice counts once, its quicker time)."""
    seen: dict[int, dict[int, dict[int, float]]] = {}
    for samples, tasks in probes.items():
        for task in tasks:
            if task.get("kind", "render") not in ("render", "probe") or not task.get("ok"):
                continue
            tiles = seen.setdefault(int(task["frame"]), {}).setdefault(samples, {})
            seconds = float(task.get("render_seconds") or 0.0) + overhead
            tile = int(task["tile"])
            tiles[tile] = min(seconds, tiles.get(tile, seconds))
    return seen


def frame_totals(probes: Mapping[int, Sequence[Mapping[str, Any]]]
                 ) -> dict[int, dict[int, float]]:
    """``{frame: {samples: seconds}}``: each probed frame's render calls summed per sample
    count (a tile rendered twice counts once, its quicker time)."""
    return {frame: {s: sum(t.values()) for s, t in by_samples.items()}
            for frame, by_samples in _tile_seconds(probes).items()}


def next_probe_samples(levels: Sequence[int], samples: int | None,
                       probes: Mapping[int, Sequence[Mapping[str, Any]]],
                       least: float = PROBE_MIN_SAMPLING) -> int | None:
    """The sample count a probe renders at next, or None when it has measured enough.

    A probe whose highest sample count took less than ``least`` seconds per frame more than
    its lowest (a light scene, a fast device) has timed mostly noise: it goes on at the
    sample count its line says would take ``least`` seconds (twice its highest at least),
    up to the job's own samples. A heavy scene never needs it; a light one pays a few more
    short renders for an estimate that is not a guess.
    """
    if samples is None or len(levels) < 2 or max(levels) >= samples:
        return None
    low, high = min(levels), max(levels)
    gains = sorted(by[high] - by[low] for by in frame_totals(probes).values()
                   if high in by and low in by)
    if not gains:
        return None
    gain = gains[len(gains) // 2]
    if gain >= least:
        return None
    per_sample = gain / (high - low)
    wanted = low + least / per_sample if per_sample > 0 else float(samples)
    return int(min(samples, max(2 * high, math.ceil(wanted))))


def call_overhead(frame_line: TileCost, tiles: int, tiles_seconds: float,
                  whole_seconds: float, samples: int) -> float:
    """Seconds per sample a render call costs beyond its pixels (Cycles' work per sample
    pass of a call: small tiles pay it once each, a grouped call once for all its tiles).

    Args:
        frame_line: the frame's line when its tiles are rendered one call each (the sum of
            its tiles' calls); its fixed part is shared by ``tiles`` calls.
        tiles: the frame's tiles.
        tiles_seconds: the frame's tiles at ``samples``, one call each, summed.
        whole_seconds: the same frame at ``samples`` in one call.
        samples: the sample count both were rendered at.

    Returns:
        The cost per sample of one more call, never negative and never more than a tile's
        own cost per sample (a noisy pair of renders cannot make grouping free).
    """
    if tiles < 2 or samples <= 0:
        return 0.0
    extra = (tiles_seconds - whole_seconds) / (tiles - 1) - frame_line.fixed / tiles
    return min(max(extra / samples, 0.0), frame_line.per_sample / tiles)


@dataclass(frozen=True)
class TileCost:
    """A tile's time as a line in the samples: ``busy = fixed + per_sample * samples``."""

    fixed: float
    per_sample: float

    def at(self, samples: float) -> float:
        """Seconds for ``samples`` samples (never below the fixed part)."""
        return max(self.fixed + self.per_sample * samples, self.fixed, 0.0)


def fit(times: Mapping[int, float]) -> TileCost:
    """The line through ``{samples: seconds}`` (least squares; one point: all fixed)."""
    points = sorted(times.items())
    if len(points) == 1:
        return TileCost(points[0][1], 0.0)
    n = len(points)
    mean_s = sum(s for s, _t in points) / n
    mean_t = sum(t for _s, t in points) / n
    spread = sum((s - mean_s) ** 2 for s, _t in points)
    slope = sum((s - mean_s) * (t - mean_t) for s, t in points) / spread if spread else 0.0
    slope = max(slope, 0.0)  # more samples never take less time (noise in tiny probes)
    return TileCost(max(mean_t - slope * mean_s, 0.0), slope)


def tile_costs(probes: Mapping[int, Sequence[Mapping[str, Any]]]
               ) -> dict[tuple[int, int], TileCost]:
    """``{(frame, tile): cost}`` from the probes' render calls (``{samples: [task dicts]}``).

    A call's time is its time inside Blender's render plus the typical time around it
    (writing the piece); what one call spent first opening the file or laying out the
    bundle is the probe's, not the job's, whose workers have the file open by then."""
    calls = [t for tasks in probes.values() for t in tasks
             if t.get("kind", "render") in ("render", "probe") and t.get("ok")]
    around = sorted(max(busy_seconds(t) - float(t.get("render_seconds") or 0.0)
                        - float(t.get("load_seconds") or 0.0), 0.0) for t in calls)
    overhead = around[len(around) // 2] if around else 0.0
    seen = _tile_seconds(probes, overhead)
    # a frame's tiles together make one line (single tiles of a small probe are noisy);
    # each tile gets its share of it, as it took at the probe's highest sample count
    costs: dict[tuple[int, int], TileCost] = {}
    for frame, by_samples in seen.items():
        common = set.intersection(*(set(t) for t in by_samples.values()))
        line = fit({s: sum(t[i] for i in common) for s, t in by_samples.items()})
        top = by_samples[max(by_samples)]
        total = sum(top[i] for i in common) or 1.0
        for tile in common:
            share = top[tile] / total
            costs[(frame, tile)] = TileCost(line.fixed * share, line.per_sample * share)
    return costs


def cost_of(costs: Mapping[tuple[int, int], TileCost], frame: int, tile: int) -> TileCost:
    """A tile's cost at ``frame``: interpolated between the sample frames around it."""
    frames = sorted({f for f, t in costs if t == tile}) or sorted({f for f, _t in costs})
    if not frames:
        return TileCost(0.0, 0.0)
    below = [f for f in frames if f <= frame]
    above = [f for f in frames if f >= frame]
    low = costs.get((below[-1] if below else frames[0], tile))
    high = costs.get((above[0] if above else frames[-1], tile))
    if low is None or high is None:
        found = low or high or next(iter(costs.values()))
        return found
    f0, f1 = (below[-1] if below else frames[0]), (above[0] if above else frames[-1])
    share = 0.0 if f1 == f0 else (frame - f0) / (f1 - f0)
    return TileCost(low.fixed + (high.fixed - low.fixed) * share,
                    low.per_sample + (high.per_sample - low.per_sample) * share)


def schedule(calls: Sequence[Sequence[tuple[float, float]]] | Sequence[float],
             workers: int, group: bool = False) -> tuple[float, float, int]:
    """Deal tasks in order to ``workers``, each free worker taking the next, as the
    dispatcher does.

    Args:
        calls: each task's ``(fixed, variable[, frame[, saving]])`` seconds (or plain
            seconds); tasks of one frame are consecutive. ``saving``: what the task costs
            less when it rides in another task's call.
        workers: the workers.
        group: let a worker take several tasks of a frame in one call while plenty are
            pending (as the dispatcher does with ``group_tiles``): the fixed part is paid
            once per call, and each task but the first saves its ``saving``.

    Returns:
        ``(makespan, busy seconds, calls)``.
    """
    items = [(0.0, float(c)) if isinstance(c, (int, float)) else (float(c[0]), float(c[1]))
             for c in calls]
    frames = [c[2] if not isinstance(c, (int, float)) and len(c) > 2 else 0 for c in calls]
    savings = [float(c[3]) if not isinstance(c, (int, float)) and len(c) > 3 else 0.0
               for c in calls]
    free = [0.0] * max(workers, 1)
    heapq.heapify(free)
    end = busy = 0.0
    index = count = 0
    while index < len(items):
        pending = len(items) - index
        size = 1
        if group:
            size = pending if workers <= 1 else max(1, pending // (2 * workers))
        members = [index]
        while (len(members) < size and index + len(members) < len(items)
               and frames[index + len(members)] == frames[index]):
            members.append(index + len(members))
        fixed = max(items[i][0] for i in members)
        seconds = max(fixed + sum(items[i][1] for i in members)
                      - sum(savings[i] for i in members[1:]), fixed)
        start = heapq.heappop(free)
        heapq.heappush(free, start + seconds)
        end, busy, count = max(end, start + seconds), busy + seconds, count + 1
        index += len(members)
    return end, busy, count


@dataclass
class Estimate:
    """A job's predicted time and cost on the current pool.

    Attributes:
        wall_seconds: predicted time from submission to the last frame written.
        device_seconds: predicted device-seconds (a CPU worker's cores count each).
        cost: predicted cost at the farm's prices, or None when a device has no price.
        workers: the workers the prediction deals tasks to.
        tasks: the tasks it counts (checks of ``--verify`` included).
        samples: the job's samples per pixel (None: not Cycles).
        probe_samples: the sample counts the probe rendered at.
        probe_frames: the frames it rendered.
        probe_seconds: the probe's own wall time.
        probe_device_seconds: the device-seconds the probe used (part of the job's bill).
        per_frame: predicted busy seconds of each frame.
        call_overhead: seconds per sample a render call costs beyond its pixels, as the
            probe measured it (0 when it did not).
    """

    wall_seconds: float
    device_seconds: float
    cost: float | None
    workers: int
    tasks: int
    samples: int | None
    probe_samples: list[int]
    probe_frames: list[int]
    probe_seconds: float
    probe_device_seconds: float
    per_frame: dict[int, float] = field(default_factory=dict)
    call_overhead: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The estimate as plain data."""
        return {"wall_seconds": self.wall_seconds, "device_seconds": self.device_seconds,
                "cost": self.cost, "workers": self.workers, "tasks": self.tasks,
                "samples": self.samples, "probe_samples": list(self.probe_samples),
                "probe_frames": list(self.probe_frames), "probe_seconds": self.probe_seconds,
                "probe_device_seconds": self.probe_device_seconds,
                "per_frame": {str(k): v for k, v in self.per_frame.items()},
                "call_overhead": self.call_overhead}


@dataclass(frozen=True)
class JobShape:
    """What the prediction needs to know of the job.

    Attributes:
        tasks: ``(frame, tile, samples)`` of every task, in the order they are dealt.
        frames: the job's frames.
        workers: the pool's workers.
        verify: the share of pieces checked again.
        device: ``cpu`` or ``gpu``.
        worker_cpus: CPUs per worker.
        device_label: Cycles' device label (GPU models, for prices).
        group: the job lets a worker render neighbouring tiles in one call.
        call_overhead: seconds per sample a render call costs beyond its pixels
            (:func:`call_overhead`): each tile rendered in another's call saves it.
    """

    tasks: tuple[tuple[int, int, int], ...]
    frames: tuple[int, ...]
    workers: int
    verify: float = 0.0
    device: str = "cpu"
    worker_cpus: float = 1.0
    device_label: str = "CPU"
    group: bool = True
    call_overhead: float = 0.0


def predict(shape: JobShape, costs: Mapping[tuple[int, int], TileCost], *,
            finish_seconds: float, before: float, after: float,
            prices: Mapping[str, float] | None, samples: int | None,
            probe: Mapping[str, Any]) -> Estimate:
    """Predict a job from its tiles' costs.

    Args:
        shape: the job.
        costs: each probed tile's cost (:func:`tile_costs`).
        finish_seconds: a worker's time to finish (denoise, convert) one merged frame; 0
            when frames need no finishing.
        before: seconds from submission to the first task (opening the file, planning).
        after: seconds from the last task to the job's end (the last merge).
        prices: price per device-hour.
        samples: the job's samples per pixel.
        probe: ``samples``, ``frames``, ``seconds`` and ``device_seconds`` of the probe.
    """
    calls: list[tuple[float, float, int, float]] = []
    per_frame: dict[int, float] = {}
    for frame, tile, task_samples in shape.tasks:
        cost = cost_of(costs, frame, tile)
        variable = cost.per_sample * task_samples
        saving = min(shape.call_overhead * task_samples, variable)
        calls.append((cost.fixed, variable, frame, saving))
        per_frame[frame] = per_frame.get(frame, 0.0) + cost.fixed + variable
    if shape.verify and calls:  # that share of pieces rendered again, alone, as checks are
        checked: list[tuple[float, float, int, float]] = []
        for i, call in enumerate(calls):
            checked.append(call)
            if int((i + 1) * shape.verify + 1e-9) > int(i * shape.verify + 1e-9):
                checked.append((call[0], call[1], -1 - i, 0.0))
        calls = checked
    if finish_seconds:  # each merged frame is finished on a worker once its pieces are in
        ordered: list[tuple[float, float, int, float]] = []
        for i, call in enumerate(calls):
            ordered.append(call)
            following = calls[i + 1][2] if i + 1 < len(calls) else None
            if call[2] >= 0 and following != call[2]:
                ordered.append((finish_seconds, 0.0, -10**9 - i, 0.0))
        calls = ordered
    makespan, work, _count = schedule(calls, shape.workers, group=shape.group)
    wall = before + makespan + after
    device_seconds = work * device_count(shape.device_label, shape.device, shape.worker_cpus)
    cost: float | None = 0.0
    for device, count in device_units(shape.device_label, shape.device, shape.worker_cpus):
        price = price_of(device, prices or {})
        if price is None:
            cost = None
            break
        cost += work * count * price / 3600.0
    return Estimate(wall_seconds=wall, device_seconds=device_seconds, cost=cost,
                    workers=shape.workers, tasks=len(shape.tasks), samples=samples,
                    probe_samples=list(probe.get("samples") or []),
                    probe_frames=list(probe.get("frames") or []),
                    probe_seconds=float(probe.get("seconds") or 0.0),
                    probe_device_seconds=float(probe.get("device_seconds") or 0.0),
                    per_frame=per_frame, call_overhead=shape.call_overhead)
