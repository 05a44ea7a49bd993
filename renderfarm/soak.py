"""A soak run: many small jobs on one farm while random faults fire, and what it proves.

Each round submits a few jobs at once and arms faults at random (seeded): a worker's render
raises, its Blender aborts or lags (a straggler), the driver's handling of a piece or a merge
raises for one job; on a multi-node cluster (``ray.cluster_utils.Cluster``) a node joins and
the oldest worker node is removed mid-round (a spot instance replaced). Every job must end:
done with every frame written (pieces lost: 0), or failed with the injected reason when a
fault hit its own driver code; no piece may count twice in a job's results (rendered twice)
or be merged twice. What it proves is read off the files, not the farm's own bookkeeping:
every frame of every done job is compared pixel for pixel with a reference rendered by plain
Blender (a frame merged with a blank or foreign tile is wrong, not "written"), a frame's
file written more than once is a frame merged twice (watched on disk while the jobs run),
and a fault counts when it fired (its count went down), not when it was armed. Used by
``tests/test_soak.py`` (short) and ``benchmarks/run.py --soak MINUTES [--soak-nodes N]``
(long).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
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
        faults_fired: faults that fired (their count went down), by ``point:action``.
        jobs: jobs submitted.
        done: jobs that ended done.
        failed_as_injected: jobs that failed with a fault injected into their own code
            that fired.
        failed_otherwise: jobs that failed for another reason (must be 0).
        pieces_lost: frames of done jobs that are missing or empty (must be 0).
        pixels_wrong: frames of done jobs whose pixels differ from the reference's (must
            be 0).
        frames_compared: frames compared with the reference.
        rendered_twice: pieces counted twice in a job's results (must be 0).
        merged_twice: frames whose file was written more than once, as seen on disk, or
            that the farm says it merged twice (must be 0).
        dropped: results dropped because another copy or the job's end came first.
        nodes_added: nodes that joined mid-round (multi-node runs).
        nodes_removed: worker nodes removed mid-round, with whatever ran on them.
        errors: the reasons of jobs that failed otherwise.
    """

    seconds: float = 0.0
    faults_armed: Counter[str] = field(default_factory=Counter)
    faults_fired: Counter[str] = field(default_factory=Counter)
    jobs: int = 0
    done: int = 0
    failed_as_injected: int = 0
    failed_otherwise: int = 0
    pieces_lost: int = 0
    pixels_wrong: int = 0
    frames_compared: int = 0
    rendered_twice: int = 0
    merged_twice: int = 0
    dropped: int = 0
    nodes_added: int = 0
    nodes_removed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every job ended as it must."""
        return not (self.failed_otherwise or self.pieces_lost or self.pixels_wrong
                    or self.rendered_twice or self.merged_twice)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-friendly data."""
        return {"seconds": self.seconds, "faults_armed": dict(self.faults_armed),
                "faults_fired": dict(self.faults_fired), "jobs": self.jobs, "done": self.done,
                "failed_as_injected": self.failed_as_injected,
                "failed_otherwise": self.failed_otherwise, "pieces_lost": self.pieces_lost,
                "pixels_wrong": self.pixels_wrong, "frames_compared": self.frames_compared,
                "rendered_twice": self.rendered_twice, "merged_twice": self.merged_twice,
                "dropped": self.dropped, "nodes_added": self.nodes_added,
                "nodes_removed": self.nodes_removed, "errors": self.errors, "ok": self.ok}


#: the frames each soak job renders
FRAMES = (1, 2, 3)


class FileWrites:
    """Watches a folder on a thread and tells how many times each file in it was written
    (a file replaced atomically gets a new inode; one rewritten in place a new mtime)."""

    def __init__(self, folder: Path, poll: float = 0.02) -> None:
        self.folder = folder
        self.poll = poll
        self._seen: dict[Path, set[tuple[int, int, int]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="soak-file-writes",
                                        daemon=True)

    def __enter__(self) -> FileWrites:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._look()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            self._look()

    def _look(self) -> None:
        for path in self.folder.rglob("*.exr"):
            if path.name.startswith("."):  # a file being written (write_atomically)
                continue
            try:
                stat = path.stat()
            except OSError:  # replaced or removed meanwhile
                continue
            self._seen.setdefault(path, set()).add((stat.st_ino, stat.st_mtime_ns,
                                                    stat.st_size))

    def writes(self, path: Path) -> int:
        """How many times ``path`` was seen written."""
        return len(self._seen.get(path, ()))

    def rewritten(self, pattern: str = "*") -> int:
        """How many files whose name matches ``pattern`` were seen written more than once."""
        return sum(1 for path, seen in self._seen.items()
                   if len(seen) > 1 and fnmatch.fnmatch(path.name, pattern))


def soak(farm: Any, blend: str, folder: Path, seconds: float, seed: int = 0,
         jobs_per_round: int = 3, cluster: Any = None, node_cpus: float = 1,
         reference: Mapping[int, Path] | None = None) -> SoakReport:
    """Run jobs of ``blend`` (frames :data:`FRAMES`, as multilayer EXRs) on ``farm`` for
    about ``seconds`` while faults fire.

    Workers must read the fault file named by ``$RENDERFARM_FAULTS`` (set before Ray
    started them).

    Args:
        cluster: a ``ray.cluster_utils.Cluster`` the farm runs on: then, in about half the
            rounds, a node of ``node_cpus`` CPUs joins and the oldest worker node is removed
            while the round's jobs run.
        reference: ``{frame: file}`` plain Blender rendered of ``blend`` (a multilayer
            EXR per frame of :data:`FRAMES`): every frame every done job wrote must hold its
            pixels, bit for bit.
    """
    from renderfarm.errors import RenderFarmError
    from renderfarm.job import JobSpec

    fault_file = os.environ.get(faults.FAULTS_ENV)
    if not fault_file:
        raise RuntimeError(f"set ${faults.FAULTS_ENV} before Ray starts, so workers read it")
    if reference is not None and sorted(reference) != list(FRAMES):
        raise ValueError(f"the reference must hold frames {FRAMES}, not {sorted(reference)}")
    rng = random.Random(seed)
    report = SoakReport()
    started = time.monotonic()
    round_number = 0
    try:
        with FileWrites(folder) as writes:
            while time.monotonic() - started < seconds:
                round_number += 1
                handles, worker_faults = [], []
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
                        report.faults_armed[f"{point}:{action}"] += 1
                faults.arm_workers(fault_file, worker_faults)
                for index in range(jobs_per_round):
                    job_id = f"soak-{seed}-{round_number}-{index}"
                    spec = JobSpec(blend, frames=f"{FRAMES[0]}-{FRAMES[-1]}", tiles=(2, 1),
                                   retries=3, group_tiles=False,
                                   output=str(folder / job_id / "s_####.exr"))
                    handles.append(farm.submit(spec, job_id=job_id))
                    report.jobs += 1
                if cluster is not None and rng.random() < 0.5:
                    _replace_a_node(cluster, handles, rng, report, node_cpus)
                ended = [_ended(handle, RenderFarmError) for handle in handles]
                in_driver, in_workers = _fired(fault_file)
                report.faults_fired.update(f"{f.point}:{f.action}"
                                           for f in [*in_driver, *in_workers])
                hit = {f.match.get("job_id") for f in in_driver}  # the job's own code raised
                for handle, (result, error) in zip(handles, ended, strict=True):
                    _account(report, handle, result, error, handle.job_id in hit, reference)
                faults.disarm()
    finally:
        faults.disarm()
        Path(fault_file).unlink(missing_ok=True)
    report.merged_twice += writes.rewritten("s_*.exr")  # a frame's file seen written twice
    report.seconds = time.monotonic() - started
    return report


def _fired(fault_file: str) -> tuple[list[faults.Fault], list[faults.Fault]]:
    """The round's faults that fired, the driver's and the workers': armed once, counted
    down to 0 (in this process for the driver's, in the workers' file for theirs)."""
    return ([f for f in faults.armed_here() if f.times == 0],
            [f for f in faults.read_worker_faults(fault_file) if f.times == 0])


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


def _ended(handle: Any, error_type: type) -> tuple[Any, Exception | None]:
    try:
        return handle.result(timeout=600), None
    except error_type as exc:
        return None, exc


def _account(report: SoakReport, handle: Any, result: Any, error: Exception | None,
             injected: bool, reference: Mapping[int, Path] | None) -> None:
    from renderfarm.merge import compare_images

    report.dropped += handle.late_results + handle.duplicates
    report.merged_twice += handle.merged_twice
    if error is not None:
        if injected and "injected fault" in str(error):
            report.failed_as_injected += 1
        else:
            report.failed_otherwise += 1
            report.errors.append(f"{handle.job_id}: {error}")
        return
    report.done += 1
    counts = Counter(i for t in result.tasks if t.ok for i in (t.covers or (t.task_index,)))
    report.rendered_twice += sum(1 for c in counts.values() if c > 1)
    for frame in result.frames:
        path = result.outputs.get(frame)
        if path is None or not Path(path).is_file() or Path(path).stat().st_size == 0:
            report.pieces_lost += 1
            continue
        if reference is not None:
            report.frames_compared += 1
            same, why = compare_images(Path(path), reference[frame])
            if not same:
                report.pixels_wrong += 1
                report.errors.append(f"{handle.job_id} frame {frame}: {why}")
