"""A Blender executable registered on a machine after its workers started (a fresh machine:
``renderfarm blenders add`` while the farm runs) is offered from the next job on: the job
renders instead of waiting for a worker that offers it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from renderfarm.job import JobSpec
from tests.test_blender_versions import EXECUTABLE, MAKE_34, blender_b

pytestmark = [pytest.mark.ray, pytest.mark.blender]


def test_a_blender_registered_after_the_workers_started_renders(ray_local, tmp_path: Path,
                                                                  ) -> None:
    from renderfarm.blender_envs import _registry
    from renderfarm.farm import Farm
    from renderfarm.locks import file_lock

    script = tmp_path / "make.py"
    script.write_text(MAKE_34)
    blend = tmp_path / "made-by-3.4.blend"
    blender_b("--factory-startup", "--python", str(script), "--", str(blend))
    registry = _registry()
    with file_lock(registry.with_suffix(".lock")):  # as on a machine that never had it
        try:
            entries = json.loads(registry.read_text())
        except (OSError, ValueError):
            entries = []
        registry.parent.mkdir(parents=True, exist_ok=True)
        registry.write_text(json.dumps([e for e in entries if e.get("path") != EXECUTABLE]))
    try:
        with Farm(workers=1) as farm:
            pool = farm.runner("cpu").pool
            deadline = time.monotonic() + 120
            while not pool.ready and time.monotonic() < deadline:
                time.sleep(0.2)
            (worker,) = pool.ready  # started: it said what its machine has, without 3.4
            assert not any(b.get("path") == EXECUTABLE for b in worker.blenders)
            added = subprocess.run([sys.executable, "-m", "renderfarm.cli", "blenders", "add",
                                    EXECUTABLE], capture_output=True, text=True, timeout=300)
            assert added.returncode == 0, added.stderr
            handle = farm.submit(JobSpec(str(blend), frames="1", blender=EXECUTABLE,
                                         output=str(tmp_path / "farm" / "f_####.png")))
            result = handle.result(240)  # it used to wait for such a worker forever
    finally:
        subprocess.run([sys.executable, "-m", "renderfarm.cli", "blenders", "add", EXECUTABLE],
                       capture_output=True, text=True, timeout=300, check=False)
    assert result.scene.blender == "3.4.1"
    blender_b(str(blend), "-o", str(tmp_path / "own" / "f_####"), "-f", "1")
    from tests.filecompare import differences

    assert differences(result.outputs[1], tmp_path / "own" / "f_0001.png") == []
