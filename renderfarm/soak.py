"""A soak run: many small jobs on one farm while random faults fire, and what it proves.

Each round submits a few jobs at once and arms faults at random (seeded): a worker's render
raises, its Blender aborts or lags (a straggler), the driver's handling of a piece or a merge
raises for one job; on a multi-node cluster (``ray.cluster_utils.Cluster``) a node joins and
the oldest worker node is removed mid-round (a spot instance replaced). Every job must end:
done with every frame written (pieces lost: 0), or failed with the injected reason when a
fault hit its own driver code; no piece may count twice in a job's results (rendered twice)
or be merged twice. Used by ``tests/test_soak.py`` (short) and ``benchmarks/run.py --soak
MINUTES [--soak-nodes N]`` (long).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from renderfarm import faults

logger = logging.getLogger(__name__)

#: (where, what, how often it is armed) of the faults a soak round may arm
WORKER_FAULTS = (("worker.render", "raise"), ("worker.render", "abort"),
                 ("worker.render", "sleep"))
DRIVER_FAULTS = (("driver.done", "raise"), ("driver.merge", "raise"))


@dataclass
class SoakReport:
    """What a soak run saw.

    Attributes:
        seconds: how long it ran.
        faults_armed: faults armed, by ``point:action``.
        jobs: jobs submitted.
        done: jobs that ended done.
        failed_as_injected: jobs that failed with a fault injected into their own code.
        failed_otherwise: jobs that failed for another reason (must be 0).
        pieces_lost: frames of done jobs that are missing or empty (must be 0).
        rendered_twice: pieces counted twice in a job's results (must be 0).
        merged_twice: frames merged twice (must be 0).
        dropped: results dropped because another copy or the job's end came first.
        nodes_added: nodes that joined mid-round (multi-node runs).
        nodes_removed: worker nodes removed mid-round, with whatever ran on them.
        errors: the reasons of jobs that failed otherwise.
    """

    seconds: float = 0.0
    faults_armed: Counter[str] = field(default_factory=Counter)
    jobs: int = 0
    done: int = 0
    failed_as_injected: int = 0
    failed_otherwise: int = 0
    pieces_lost: int = 0
    rendered_twice: int = 0
    merged_twice: int = 0
    dropped: int = 0
    nodes_added: int = 0
    nodes_removed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every job ended as it must."""
        return not (self.failed_otherwise or self.pieces_lost or self.rendered_twice
                    or self.merged_twice)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-friendly data."""
        return {"seconds": self.seconds, "faults_armed": dict(self.faults_armed),
                "jobs": self.jobs, "done": self.done,
                "failed_as_injected": self.failed_as_injected,
                "failed_otherwise": self.failed_otherwise, "pieces_lost": self.pieces_lost,
                "rendered_twice": self.rendered_twice, "merged_twice": self.merged_twice,
                "dropped": self.dropped, "nodes_added": self.nodes_added,
                "nodes_removed": self.nodes_removed, "errors": self.errors, "ok": self.ok}


def soak(farm: Any, blend: str, folder: Path, seconds: float, seed: int = 0,
         jobs_per_round: int = 3, cluster: Any = None, node_cpus: float = 1) -> SoakReport:
    """Run jobs of ``blend`` on ``farm`` for about ``seconds`` while faults fire.

    Workers must read the fault file named by ``$RENDERFARM_FAULTS`` (set before Ray
    started them).

    Args:
        cluster: a ``ray.cluster_utils.Cluster`` the farm runs on: then, in about half the
            rounds, a node of ``node_cpus`` CPUs joins and the oldest worker node is removed
            while the round's jobs run.
    """
    from renderfarm.errors import RenderFarmError
    from renderfarm.job import JobSpec

    fault_file = os.environ.get(faults.FAULTS_ENV)
    if not fault_file:
        raise RuntimeError(f"set ${faults.FAULTS_ENV} before Ray starts, so workers read it")
    rng = random.Random(seed)
    report = SoakReport()
    started = time.monotonic()
    round_number = 0
    try:
        while time.monotonic() - started < seconds:
            round_number += 1
            handles, injected = [], set()
            worker_faults = []
            for index in range(jobs_per_round):
                job_id = f"soak-{seed}-{round_number}-{index}"
                if rng.random() < 0.5:
                    point, action = rng.choice(WORKER_FAULTS)
                    worker_faults.append(faults.Fault(
                        point, action, times=1, seconds=2.0, match={"job_id": job_id}))
                    report.faults_armed[f"{point}:{action}"] += 1
                if rng.random() < 0.2:
                    point, action = rng.choice(DRIVER_FAULTS)
                    faults.arm(point, action, times=1, job_id=job_id)
                    injected.add(job_id)
                    report.faults_armed[f"{point}:{action}"] += 1
            faults.arm_workers(fault_file, worker_faults)
            for index in range(jobs_per_round):
                job_id = f"soak-{seed}-{round_number}-{index}"
                spec = JobSpec(blend, frames="1-3", tiles=(2, 1), retries=3,
                               group_tiles=False,
                               output=str(folder / job_id / "s_####.exr"))
                handles.append(farm.submit(spec, job_id=job_id))
                report.jobs += 1
            if cluster is not None and rng.random() < 0.5:
                _replace_a_node(cluster, handles, rng, report, node_cpus)
            for handle in handles:
                _account(report, handle, handle.job_id in injected, RenderFarmError)
            faults.disarm()
    finally:
        faults.disarm()
        Path(fault_file).unlink(missing_ok=True)
    report.seconds = time.monotonic() - started
    return report


def _replace_a_node(cluster: Any, handles: list[Any], rng: random.Random,
                    report: SoakReport, node_cpus: float) -> None:
    """Once the round's jobs have started rendering (or after a random moment), add a node
    and remove the oldest worker node, as when a spot instance is replaced."""
    deadline = time.monotonic() + rng.uniform(0.5, 4.0)
    while time.monotonic() < deadline and not all(h.done() for h in handles):
        time.sleep(0.05)
    cluster.add_node(num_cpus=node_cpus)
    report.nodes_added += 1
    workers = [n for n in cluster.list_all_nodes() if n is not cluster.head_node]
    if len(workers) > 1:
        cluster.remove_node(workers[0])
        report.nodes_removed += 1


def _account(report: SoakReport, handle: Any, injected: bool, error_type: type) -> None:
    try:
        result = handle.result(timeout=600)
    except error_type as exc:
        if injected and "injected fault" in str(exc):
            report.failed_as_injected += 1
        else:
            report.failed_otherwise += 1
            report.errors.append(f"{handle.job_id}: {exc}")
        return
    finally:
        report.dropped += handle.late_results + handle.duplicates
        report.merged_twice += handle.merged_twice
    report.done += 1
    counts = Counter(i for t in result.tasks if t.ok for i in (t.covers or (t.task_index,)))
    report.rendered_twice += sum(1 for c in counts.values() if c > 1)
    for frame in result.frames:
        path = result.outputs.get(frame)
        if path is None or not Path(path).is_file() or Path(path).stat().st_size == 0:
            report.pieces_lost += 1
