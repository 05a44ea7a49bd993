"""Fixtures: generated scenes, reference renders, a real local Ray cluster and a farm."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CORPUS = (HERE.parent.parent / "shared" / "corpus" / "blendfiles").resolve()


def run_python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` and fail the test with its output when it fails."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scenes")


@pytest.fixture(scope="session")
def make_scene(scene_dir: Path) -> Callable[..., Path]:
    """``make_scene(width=67, height=45, ...)`` -> a generated ``.blend`` (cached by options).

    Options are those of ``python -m renderfarm.blender.scenes``.
    """

    def make(**options: object) -> Path:
        args: list[str] = []
        for key, value in sorted(options.items()):
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value not in (False, None):
                args += [flag, str(value)]
        digest = hashlib.sha1(" ".join(args).encode()).hexdigest()[:10]
        path = scene_dir / f"scene-{digest}.blend"
        if not path.exists():
            run_python("-m", "renderfarm.blender.scenes", str(path), *args)
        return path

    return make


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[int, Path]]:
    """``reference(blend, frames, fmt="EXR", samples=None, percentage=None)`` -> {frame: file}
    rendered untiled by plain bpy, with the given overrides."""
    folder = tmp_path_factory.mktemp("reference")

    def render(blend: Path, frames: list[int], fmt: str = "EXR", samples: int | None = None,
               percentage: int | None = None) -> dict[int, Path]:
        ext = {"EXR": "exr", "PNG": "png", "JPEG": "jpg", "TIFF": "tif"}[fmt]
        pattern = str(folder / f"{blend.stem}-{fmt}-{samples}-{percentage}-{{frame}}.{ext}")
        todo = [f for f in frames if not Path(pattern.format(frame=f)).exists()]
        extra = [str(samples), str(percentage)] if samples and percentage else []
        if todo:
            run_python(str(HERE / "blender_reference.py"), str(blend), pattern,
                       ",".join(map(str, todo)), fmt, *extra)
        return {f: Path(pattern.format(frame=f)) for f in frames}

    return render


def start_local_ray() -> None:
    """Start (or keep) a real Ray cluster on this machine with 2 CPUs."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A real Ray cluster on this machine (2 CPUs); kept across modules that use it."""
    start_local_ray()
    yield


@pytest.fixture(scope="module")
def farm(ray_local: None) -> Iterator[object]:
    """A farm of two CPU workers (1 CPU each) on the local Ray cluster."""
    from renderfarm.farm import Farm

    with Farm(workers=2) as the_farm:
        yield the_farm


@pytest.fixture()
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.fail(f"the shared corpus is not at {CORPUS}; clone beside ../shared")
    return CORPUS


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def pytest_unconfigure(config: pytest.Config) -> None:
    import sys as _sys

    if "ray" in _sys.modules:
        import ray

        ray.shutdown()
