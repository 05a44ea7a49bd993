"""A short soak: jobs run while random faults fire (a worker's render raises, its Blender
aborts or lags; a job's own piece handling or merge raises). Every job ends as it must: done
with every frame equal to plain Blender's, or failed with its injected fault; no piece is
lost, rendered twice or merged twice (its file written twice), and no other job is taken
down (`benchmarks/run.py --soak MINUTES` runs it long)."""

from __future__ import annotations

from pathlib import Path

import pytest

from renderfarm.soak import soak

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def test_jobs_finish_exactly_while_faults_fire(farm, make_scene, reference,
                                               tmp_path: Path) -> None:
    blend = make_scene(width=32, height=24, frames=3, samples=1)
    want = reference(blend, [1, 2, 3])  # plain Blender's frames: every job's must equal them
    report = soak(farm, str(blend), tmp_path, seconds=40, seed=7, reference=want)
    summary = report.to_dict()
    assert report.jobs >= 6 and sum(report.faults_fired.values()) >= 3, summary
    assert report.done + report.failed_as_injected == report.jobs, summary
    assert report.frames_compared == 3 * report.done, summary
    assert report.ok, summary
    assert all(runner.error is None for runner in farm.runners())
    assert not farm._jobs  # finished jobs are not kept by the farm (their plans go with them)


def test_the_soak_fails_a_frame_whose_pixels_are_not_blenders(farm, make_scene, reference,
                                                              tmp_path: Path) -> None:
    """The check can fail: against frames in the wrong order (frame 1 holds frame 2's
    pixels, ...), every frame of every done job is counted wrong and the soak is not ok."""
    blend = make_scene(width=32, height=24, frames=3, samples=1)
    want = reference(blend, [1, 2, 3])
    shifted = {1: want[2], 2: want[3], 3: want[1]}
    report = soak(farm, str(blend), tmp_path, seconds=1, seed=7, reference=shifted)
    assert report.done >= 1 and report.pixels_wrong == 3 * report.done, report.to_dict()
    assert not report.ok


def test_file_writes_counts_each_write_of_a_file(tmp_path: Path) -> None:
    """A frame written twice (replaced atomically, as the farm writes frames) is seen
    twice; a frame written once, once."""
    import time

    from renderfarm.merge import write_atomically
    from renderfarm.soak import FileWrites

    once, twice = tmp_path / "job" / "s_0001.exr", tmp_path / "job" / "s_0002.exr"
    with FileWrites(tmp_path) as writes:
        write_atomically(once, lambda tmp: tmp.write_bytes(b"a"))
        write_atomically(twice, lambda tmp: tmp.write_bytes(b"a"))
        time.sleep(0.2)
        write_atomically(twice, lambda tmp: tmp.write_bytes(b"b"))
    assert (writes.writes(once), writes.writes(twice)) == (1, 2)
    assert writes.rewritten("s_*.exr") == 1
