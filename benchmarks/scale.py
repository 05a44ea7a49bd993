"""The head's cost at a farm's scale: the real path of a job through the farm service
(upload, queue, dispatch, pieces, merge, outputs, SQLite, events, previews, the web app)
driven by simulated GPUs that return real pieces (made once with Blender, then replayed) at
the pace of N GPUs with T seconds per piece (:mod:`renderfarm.synthetic`).

Run by ``benchmarks/run.py`` (``--scale`` for the full sweep, a short variant in
``--quick``). Everything the head does runs in this process; the simulated GPUs live in a
few Ray actors of their own (asleep while they "render"), so the head's CPU is this
process's, less the threads that only measure it (the status and web-page pollers).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _io() -> int:
    """Bytes this process read and wrote through system calls (files, sockets, pipes:
    ``/proc/self/io`` rchar + wchar; what it maps from Ray's object store is not counted)."""
    try:
        fields = dict(line.split(": ") for line in
                      Path("/proc/self/io").read_text().splitlines())
    except OSError:
        return 0
    return int(fields["rchar"]) + int(fields["wchar"])


def scene_info(blend: Path) -> dict[str, Any]:
    """What a worker's inspection says of ``blend`` (Blender, in a process of its own)."""
    code = ("import sys, json, bpy; bpy.ops.wm.open_mainfile(filepath=sys.argv[1]);"
            "from renderfarm.blender.inspect import scene_info;"
            "print('INFO=' + json.dumps(scene_info(bpy.context.scene).to_dict()))")
    out = subprocess.run([sys.executable, "-c", code, str(blend)], capture_output=True,
                         text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("INFO="))
    return dict(json.loads(line[len("INFO="):]))


def record_pieces(farm: Any, blend: Path, out: Path, tiles: tuple[int, int]
                  ) -> tuple[dict[int, bytes], bytes]:
    """Render frame 1 of ``blend`` once as ``tiles`` on a real worker: each tile's piece,
    and the frame's file the farm wrote."""
    from renderfarm.job import JobSpec

    pieces: dict[int, bytes] = {}

    def keep(task: Any, path: Path) -> None:
        pieces[task.tile.index] = path.read_bytes()

    handle = farm.submit(JobSpec(str(blend), frames="1", tiles=tiles, group_tiles=False,
                                 output=str(out / "rec_####.exr")), on_piece=keep)
    result = handle.result()
    return pieces, result.outputs[1].read_bytes()


def merge_seconds(pieces: dict[int, bytes], info: dict[str, Any], workdir: Path,
                  tiles: tuple[int, int] = (2, 2)) -> float:
    """Seconds this machine takes to do a render node's part of a frame (what
    :func:`renderfarm.pieces.assemble_here` does): write the fetched pieces to its disk,
    merge them, write the frame in the scene's encoding and hash it; the median of three.
    Moving pieces between nodes is not in it."""
    import hashlib
    import statistics

    from renderfarm.job import Rect, SceneInfo
    from renderfarm.merge import Piece, exr_encoding, merge_pieces, recode_exr
    from renderfarm.planner import plan_tiles, render_size

    scene = SceneInfo.from_dict(info)
    canvas = Rect(0, 0, *render_size(scene.resolution, scene.percentage))
    folder = workdir / f"merge-cost-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    times = []
    try:
        for _ in range(3):
            start = time.perf_counter()
            found = []
            for tile in plan_tiles(canvas, *tiles):
                path = folder / f"piece-{tile.index}.exr"
                path.write_bytes(pieces[tile.index])
                found.append(Piece(tile, path))
            merge_pieces(found, canvas, folder / "merged.exr")
            recode_exr(folder / "merged.exr", folder / "frame.exr",
                       exr_encoding(scene.multilayer_settings()))
            hashlib.sha256((folder / "frame.exr").read_bytes()).hexdigest()
            times.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return statistics.median(times)


@dataclass
class ScaleRun:
    """What one run of the head under ``gpus`` simulated GPUs measured."""

    gpus: int
    seconds: float
    frames: int
    pieces: int
    #: seconds from the first piece's start to the last frame written
    makespan: float
    #: the simulated GPUs' own makespan (rounds of ``seconds``)
    ideal: float
    head_cpu: float
    wall: float
    bytes_in: int
    bytes_out: int
    #: where the pieces were kept (``head`` or ``nodes``)
    pieces_on: str = "head"
    #: bytes the head process read and wrote meanwhile (:func:`_io`)
    head_io: int = 0
    status_ms: list[float] = field(default_factory=list)
    page_ms: list[float] = field(default_factory=list)
    #: ``(gpu, started, finished)`` of every piece the simulated GPUs rendered
    trace: list[tuple[str, float, float]] = field(default_factory=list)

    def waits(self) -> dict[str, float]:
        """What the GPUs waited for: ``between``, the share of a GPU's time from its first
        piece's start to its last's end spent waiting for its next task (on the head);
        ``pieces_min``/``pieces_max``: pieces a GPU rendered, least and most."""
        by_gpu: dict[str, list[tuple[float, float]]] = {}
        for gpu, started, finished in self.trace:
            by_gpu.setdefault(gpu, []).append((started, finished))
        waited = spanned = 0.0
        for spans in by_gpu.values():
            spans.sort()
            spanned += spans[-1][1] - spans[0][0]
            waited += sum(max(0.0, b[0] - a[1])
                          for a, b in zip(spans, spans[1:], strict=False))
        counts = [len(s) for s in by_gpu.values()] or [0]
        return {"between": waited / spanned if spanned else 0.0,
                "pieces_min": min(counts), "pieces_max": max(counts)}

    @property
    def efficiency(self) -> float:
        """Frames per second against the simulated GPUs' own rate: the share of the GPUs'
        time (every one of the run's ``gpus``, from the first piece's start to the last
        frame written) they spent rendering. What is lost: GPUs waiting for a task, GPUs
        given fewer pieces than others, the last frames' merge. A GPU's rendering time is
        as it took it (its modelled seconds, their jitter, and its host's lateness when
        this machine's cores are busy)."""
        return self.busy() / (self.gpus * self.makespan) if self.makespan else 0.0

    def busy(self) -> float:
        """The seconds the GPUs spent rendering, all of them together."""
        return sum(finished - started for _gpu, started, finished in self.trace)

    def own_rate(self) -> float:
        """The GPUs' own frames per second: had none ever waited (their rendering time,
        shared over all of them)."""
        busy = self.busy()
        return self.frames * self.gpus / busy if busy else 0.0

    @property
    def efficiency_modelled(self) -> float:
        """Frames per second against the modelled rate (rounds of ``seconds`` a piece)."""
        return self.ideal / self.makespan if self.makespan else 0.0

    @property
    def cores(self) -> float:
        """The head's CPU, in cores, on average over the job."""
        return self.head_cpu / self.wall if self.wall else 0.0

    def to_dict(self) -> dict[str, Any]:
        waits = self.waits()
        return {"gpus": self.gpus, "seconds_per_piece": self.seconds, "frames": self.frames,
                "pieces": self.pieces, "makespan": round(self.makespan, 2),
                "ideal": round(self.ideal, 2),
                "efficiency": round(self.efficiency, 3),
                "efficiency_modelled": round(self.efficiency_modelled, 3),
                "frames_per_second": round(self.frames / self.makespan, 3),
                "pieces_per_second": round(self.pieces / self.makespan, 2),
                "head_cores": round(self.cores, 3),
                "head_cpu_s_per_frame": round(self.head_cpu / self.frames, 4),
                "head_bytes_in_per_frame": self.bytes_in // max(1, self.frames),
                "head_bytes_out_per_frame": self.bytes_out // max(1, self.frames),
                "pieces_on": self.pieces_on,
                "head_io_per_frame": self.head_io // max(1, self.frames),
                "head_io_share": round(self.head_io / max(1, self.bytes_in), 4),
                "status_p99_ms": round(p99(self.status_ms), 1),
                "page_p99_ms": round(p99(self.page_ms), 1),
                "gpu_wait_share": round(waits["between"], 4),
                "gpu_pieces_min_max": [waits["pieces_min"], waits["pieces_max"]]}


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank), 0 without values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


class _Poller(threading.Thread):
    """Times a request every ``every`` seconds until stopped (its own CPU is counted, to be
    taken out of the head's)."""

    def __init__(self, request: Any, every: float) -> None:
        super().__init__(daemon=True)
        self.request = request
        self.every = every
        self.stop = threading.Event()
        self.times: list[float] = []
        self.cpu = 0.0
        self.errors = 0

    def run(self) -> None:
        while not self.stop.wait(self.every):
            start = time.perf_counter()
            try:
                self.request()
            except Exception:
                self.errors += 1
                continue
            self.times.append((time.perf_counter() - start) * 1000)
        self.cpu = time.thread_time()


def run_scale(recording: Any, blend: Path, workdir: Path, gpus: int, seconds: float,
              rounds: int, tiles: int, pieces: str = "head") -> ScaleRun:
    """One job of ``rounds * gpus / tiles`` frames through a farm service whose pool is
    ``gpus`` simulated GPUs taking ``seconds`` per piece; ``pieces``: where the farm keeps
    them (``head``: every piece comes to the head; ``nodes``: they stay with the simulated
    GPUs' hosts, and frames merge there: on the hosts' node for real, or on modelled render
    nodes when the recording has ``gpus_per_node``)."""
    import dataclasses

    from renderfarm.client import FarmClient
    from renderfarm.farm import Farm, FarmConfig
    from renderfarm.server.service import FarmService, ServiceConfig
    from renderfarm.synthetic import SimulatedPool, start_hosts, stop_hosts

    frames = max(1, rounds * gpus // tiles)
    hosts = start_hosts(dataclasses.replace(recording, seconds=seconds),
                        max(1, math.ceil(gpus / 500)))
    state = workdir / f"scale-{gpus}-{os.getpid()}-{time.monotonic_ns()}"
    try:  # the hosts stop whatever fails
        storage = str(state / "storage")  # the service's: the farm reads its uploads there
        farm = Farm(config=FarmConfig(workers=gpus, storage=storage, pieces=pieces),
                    pool_class=partial(SimulatedPool, hosts=hosts))
        port, web = _port(), _port()
        service = FarmService(ServiceConfig(bind=f"tcp://127.0.0.1:{port}", storage=storage,
                                            publish=f"tcp://127.0.0.1:{port + 1}",
                                            http=f"127.0.0.1:{web}",
                                            insecure_loopback=True, state=state), farm=farm)
        ready = threading.Event()
        thread = threading.Thread(target=service.serve, args=(ready,), daemon=True)
        thread.start()
        ready.wait(60)
        try:
            farm.runner("cpu")  # the pool starts outside the measurement (as a farm's has)
            with FarmClient(f"tcp://127.0.0.1:{port}") as client, \
                    FarmClient(f"tcp://127.0.0.1:{port}") as watcher:
                cpu, wall, io = _cpu(), time.perf_counter(), _io()
                job_id = client.submit(blend, {"frames": f"1-{frames}", "tiles": [2, 2],
                                               "group_tiles": False, "output": "f_####.exr"})
                status = _Poller(lambda: watcher.status(job_id), 0.2)
                page = _Poller(lambda: urllib.request.urlopen(
                    f"http://127.0.0.1:{web}/job/{job_id}", timeout=30).read(), 1.0)
                status.start()
                page.start()
                reply = client.wait(job_id)
                wall = time.perf_counter() - wall
                head_cpu = _cpu() - cpu
                head_io = _io() - io
                for poller in (status, page):
                    poller.stop.set()
                    poller.join(30)
                    head_cpu -= poller.cpu
                if reply.get("state") != "done":
                    raise RuntimeError(f"the scale job ended {reply.get('state')}: "
                                       f"{reply.get('error')}")
            import ray

            served = ray.get([host.served.remote() for host in hosts])
            written = sorted(state.rglob("f_*.exr"), key=lambda p: p.stat().st_mtime)
            first = min(s["first"] for s in served if s.get("first"))
            last = written[-1].stat().st_mtime
            rounds_done = math.ceil(frames * tiles / gpus)
            return ScaleRun(gpus, seconds, len(written), sum(s["pieces"] for s in served),
                            last - first, rounds_done * seconds, head_cpu, wall,
                            sum(s["bytes"] for s in served),
                            sum(p.stat().st_size for p in written), pieces, head_io,
                            status.times, page.times,
                            [tuple(t) for s in served for t in s["trace"]])
        finally:
            service.stop()
            thread.join(60)
            farm.shutdown()
    finally:
        stop_hosts(hosts)
        shutil.rmtree(state, ignore_errors=True)  # its frames: gigabytes at full HD


def memory_per_task(frames: int = 10_000, tiles: tuple[int, int] = (2, 2)) -> float:
    """Bytes the head holds per queued task: a job's plan and its pure state (what a job
    waiting in the farm keeps in memory), measured with tracemalloc."""
    from renderfarm.job import Rect, Task, Tile
    from renderfarm.state import JobState

    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    width, height = 1920, 1080
    tasks = []
    for frame in range(1, frames + 1):
        for ty in range(tiles[1]):
            for tx in range(tiles[0]):
                rect = Rect(tx * width // tiles[0], ty * height // tiles[1],
                            (tx + 1) * width // tiles[0], (ty + 1) * height // tiles[1])
                index = len(tasks)
                tasks.append(Task("job", index, frame, Tile(ty * tiles[0] + tx, rect, rect),
                                  (1, 1)))
    state = JobState(tasks, retries=2)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    size = sum(s.size_diff for s in after.compare_to(before, "filename"))
    del state
    return size / len(tasks)
