"""The dispatcher on a real Ray cluster with synthetic workers (no Blender): pull-based work
distribution, throughput, and the benchmark tooling's bookkeeping."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from renderfarm.synthetic import run_synthetic, start_pool

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def pool(ray_local):
    the_pool = start_pool(4)
    yield the_pool
    the_pool.kill_all()


def test_every_task_runs_once_and_the_makespan_is_near_ideal(pool) -> None:
    run = run_synthetic(pool, [0.1] * 40)
    assert sorted(row[3] for row in run.timeline) == list(range(40))
    assert run.ideal == pytest.approx(1.0)
    assert run.makespan < run.ideal * 1.5


def test_fast_workers_do_more(pool) -> None:
    slow = next(iter(pool.workers))
    run = run_synthetic(pool, [0.1] * 40, slow={slow: 5.0})
    per_worker = Counter(row[0] for row in run.timeline)
    assert per_worker[slow] <= 4, per_worker
    assert min(n for w, n in per_worker.items() if w != slow) >= 10, per_worker


def test_zero_length_tasks_flow(pool) -> None:
    run = run_synthetic(pool, [0.0] * 500)
    assert run.tasks == 500 and len(run.timeline) == 500
    assert run.throughput > 50  # far below the benchmark's figure: a sanity floor only


def _bench_module():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
    spec = importlib.util.spec_from_file_location("bench_run", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_records_targets_margins_and_regressions(tmp_path: Path) -> None:
    bench = _bench_module()
    ok = bench.Record("a", "x", "s", [1.0, 2.0, 3.0], [1.0], ratio=1.12, target=1.10,
                      op="<=", margin=0.05)
    bad = bench.Record("b", "y", "s", [1.0], [1.0], ratio=1.6, target=1.8, op=">=",
                       margin=0.1)
    info = bench.Record("c", "z", "MB", [5.0], ratio=0.5)
    assert (ok.passed, bad.passed, info.passed) == (True, False, None)
    assert ok.to_dict()["median"] == 2.0
    text = bench.table([ok, bad, info])
    assert "FAIL" in text and "pass" in text and "report" in text
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"records": [
        {"name": "a", "ratio": 0.9}, {"name": "b", "ratio": 1.7}, {"name": "c", "ratio": 0.5}]}))
    assert bench.compare([ok, bad, info], old, 0.15) == ["a: ratio 0.900 -> 1.120"]


def test_a_worker_that_cannot_see_the_file_gets_it_through_the_object_store(
        ray_local, tmp_path: Path) -> None:
    import ray

    from renderfarm.bundle import file_sha256 as file_hash
    from renderfarm.executor import BlenderWorker

    source = tmp_path / "shot.blend"
    source.write_bytes(b"BLENDER-v300" + bytes(range(256)) * 10)
    digest = file_hash(str(source))
    worker = BlenderWorker("probe")
    shared: dict[str, object] = {"mode": "shared", "blob": []}
    # the driver's own path, seen from this node: used as it is
    assert worker._blend_path(str(source), digest, shared) == str(source)
    # a path this node does not have: None until the driver sends the bytes, then a copy
    elsewhere = str(tmp_path / "on-another-node" / "shot.blend")
    fresh = BlenderWorker("probe-2")
    assert fresh._blend_path(elsewhere, digest, shared) is None
    copy = fresh._blend_path(elsewhere, digest,
                             {"mode": "shared", "blob": [ray.put(source.read_bytes())]})
    assert copy != elsewhere and Path(copy).name == "shot.blend"
    assert file_hash(copy) == digest
    # a file at the same path but with other content is not taken for it
    other = tmp_path / "other.blend"
    other.write_bytes(b"BLENDER-v300 different")
    assert BlenderWorker("probe-3")._blend_path(str(other), digest, shared) is None
    # a bundle whose storage this node cannot reach: None until the driver puts its files in
    # the object store; then laid out from them, checked by hash
    from renderfarm.bundle import BundleFile, Manifest
    from renderfarm.errors import IntegrityError

    texture = os.urandom(64)
    texture_sha = hashlib.sha256(texture).hexdigest()
    manifest = Manifest("shot.blend", (BundleFile("shot.blend", digest, source.stat().st_size),
                                       BundleFile("tex/t.png", texture_sha, 64)))
    files = {"mode": "bundle", "manifest": manifest.to_dict(),
             "storage": str(tmp_path / "storage-on-another-machine"), "refs": None}
    bundled = BlenderWorker("probe-4")
    assert bundled._blend_path(elsewhere, manifest.digest, files) is None
    wrong = {**files, "refs": {digest: ray.put(source.read_bytes()),
                               texture_sha: ray.put(b"not the texture")}}
    with pytest.raises(IntegrityError, match="SHA-256"):
        bundled._blend_path(elsewhere, manifest.digest, wrong)
    good = {**files, "refs": {digest: ray.put(source.read_bytes()),
                              texture_sha: ray.put(texture)}}
    root = Path(bundled._blend_path(elsewhere, manifest.digest, good))
    assert root.name == "shot.blend" and file_hash(str(root)) == digest
    assert (root.parent / "tex" / "t.png").read_bytes() == texture
    bundled.shutdown()
    worker.shutdown()
    fresh.shutdown()
