"""Which Blender saved a file, read from its header without Blender, and which Blender a job
asks for; a job whose file another Blender series saved is told so."""

from __future__ import annotations

from pathlib import Path

import pytest

from renderfarm.blenders import Blender, Version, choose, header_version, saved_with
from renderfarm.errors import InputError, ResourceError

HAVE = [Blender(Version(4, 2, 23), "bpy", "/v/4.2/python"),
        Blender(Version(4, 2, 9), "bpy", "/v/4.2.9/python"),
        Blender(Version(4, 5, 15), "bpy", "/v/4.5/python"),
        Blender(Version(5, 0, 1), "bpy", "/usr/bin/python3"),
        Blender(Version(4, 5, 3), "executable", "/opt/blender-4.5.3/blender")]


@pytest.mark.parametrize(("head", "version"), [
    (b"BLENDER-v402REND", Version(4, 2)), (b"BLENDER_v279REND", Version(2, 79)),
    (b"BLENDER-V405REND", Version(4, 5)), (b"BLENDER17-01v0500REND", Version(5, 0)),
    (b"BLENDER17-01v0503REND", Version(5, 3)), (b"NOTBLEND", None), (b"", None)])
def test_the_header_names_the_series(head: bytes, version: Version | None) -> None:
    assert header_version(head) == version


@pytest.mark.parametrize(("name", "version"), [
    ("basic_file.blend", "2.79"), ("basic_file_compressed.blend", "2.79"),  # gzip
    ("basic_file_compressed_zstd.blend", "3.0"), ("basic_file_zstandard.blend", "3.1"),
    ("geometry-nodes/file_to_pack.blend", "2.93")])
def test_files_written_by_others_plain_and_compressed(corpus: Path, name: str,
                                                     version: str) -> None:
    assert str(saved_with(str(corpus / name))) == version


def test_a_file_made_by_this_blender(make_scene) -> None:
    import subprocess
    import sys

    blend = make_scene(width=32, height=24, frames=1, samples=1)
    ours = subprocess.run([sys.executable, "-c", "import bpy; print(bpy.app.version_string)"],
                          capture_output=True, text=True, check=True).stdout.split()[0]
    saved = saved_with(str(blend))
    assert saved is not None and saved.series == Version.parse(ours).series


def test_auto_takes_the_newest_patch_of_the_files_series() -> None:
    assert choose("auto", Version(4, 2), HAVE).blender.version == Version(4, 2, 23)
    assert choose("auto", Version(4, 2), HAVE).warning is None
    assert choose("4.5", None, HAVE).blender.version == Version(4, 5, 15)
    assert choose("4.5.3", None, HAVE).blender.kind == "executable"
    assert choose("/opt/blender-4.5.3/blender", None, HAVE).blender.version == \
        Version(4, 5, 3)


def test_newest_says_when_the_file_was_saved_by_another_series() -> None:
    choice = choose("newest", Version(4, 2), HAVE)
    assert choice.blender.version == Version(5, 0, 1)
    assert "saved with Blender 4.2" in choice.warning and "5.0.1" in choice.warning
    assert choose("newest", Version(5, 0), HAVE).warning is None


def test_a_file_older_than_supported_renders_with_the_newest() -> None:
    """The same Blender on every farm that has it, whatever else was prepared there."""
    choice = choose("auto", Version(2, 79), HAVE)
    assert choice.blender.version == Version(5, 0, 1)
    assert "2.79" in choice.warning and "older than the oldest the farm supports (4.2)" in \
        choice.warning


def test_a_blender_the_farm_lacks_is_refused_naming_what_it_has() -> None:
    with pytest.raises(ResourceError) as caught:
        choose("auto", Version(5, 3), HAVE)
    message = str(caught.value)
    assert "no Blender 5.3" in message and "4.2.9, 4.2.23, 4.5.3, 4.5.15, 5.0.1" in message
    assert "renderfarm blenders add 5.3" in message
    with pytest.raises(ResourceError, match="no Blender of this farm is at that path"):
        choose("/opt/blender-9/blender", None, HAVE)
    with pytest.raises(ResourceError, match="no Blender to render with"):
        choose("auto", Version(4, 2), [])


@pytest.mark.parametrize("want", ["latest", "4", "4.x", "4.5.3.1", ""])
def test_a_choice_that_is_no_version_is_refused(want: str) -> None:
    with pytest.raises(InputError):
        choose(want, Version(4, 2), HAVE)


@pytest.mark.blender
@pytest.mark.ray
def test_a_job_saved_by_an_unsupported_blender_is_told_what_renders_it(
        farm, corpus: Path, make_scene, tmp_path: Path) -> None:
    from renderfarm.job import JobSpec

    old = corpus / "geometry-nodes" / "file_to_pack.blend"  # saved by Blender 2.93
    result = farm.render(JobSpec(str(old), frames="1", samples=1, percentage=2,
                                 output=str(tmp_path / "old_####.png")))
    ours = result.scene.blender  # the result names the Blender that rendered it
    assert ours.startswith("5.")  # the farm's newest
    warned = [w for w in result.warnings if "saved with Blender 2.93" in w]
    assert warned and f"renders with Blender {ours}" in warned[0], result.warnings
    fresh = make_scene(width=32, height=24, frames=1, samples=1)
    result = farm.render(JobSpec(str(fresh), frames="1", output=str(tmp_path / "n_####.png")))
    assert not [w for w in result.warnings if "saved with Blender" in w], result.warnings
    assert result.scene.blender.startswith("5.")


@pytest.mark.blender
@pytest.mark.ray
@pytest.mark.parametrize(("want", "says"), [
    ("4.1", "no Blender 4.1"), ("4.5.99", "no bpy 4.5.99"), ("/opt/nowhere/blender",
                                                              "no Blender of this farm"),
    ("5.1", "built for Python 3.13 only")])
def test_a_blender_the_farm_cannot_have_is_refused_before_rendering(
        farm, make_scene, tmp_path: Path, want: str, says: str) -> None:
    from renderfarm.blender_envs import find_python
    from renderfarm.job import JobSpec

    if want == "5.1" and find_python((3, 13)) is not None:
        pytest.skip("this machine has Python 3.13: Blender 5.1 can be had here")
    blend = make_scene(width=32, height=24, frames=1, samples=1)
    with pytest.raises(ResourceError) as caught:
        farm.render(JobSpec(str(blend), frames="1", blender=want,
                            output=str(tmp_path / "x_####.png")))
    assert says in str(caught.value), caught.value
    assert not list(tmp_path.glob("x_*"))


def test_the_cli_lists_this_machines_blenders() -> None:
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "renderfarm.cli", "blenders", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert listed[0]["kind"] == "bpy" and listed[0]["path"] == sys.executable
    assert listed[0]["version"].startswith("5.")


@pytest.mark.parametrize(("require", "meets"), [
    ("blender=4.2", True), ("blender=4.5", False), ("blender>=4.5", True),
    ("blender=5.0.1", True), ("blender<4.2", False), ("blender>5.0.1", False)])
def test_workers_carry_their_blenders_for_require(require: str, meets: bool) -> None:
    from renderfarm.tags import WorkerTags, parse_requirements, satisfies, with_blenders

    worker = with_blenders(WorkerTags(frozenset({"fx"})), ["5.0.1", "4.2.23"])
    assert worker.props["blender"] == "5.0.1,4.2.23" and worker.tags == {"fx"}
    assert satisfies(worker, parse_requirements(require)) is meets


def test_blender_5_1_and_later_need_python_3_13() -> None:
    from renderfarm.blenders import python_for

    assert python_for(Version(4, 2, 23)) == (3, 11)
    assert python_for(Version(5, 0)) == (3, 11)
    assert python_for(Version(5, 1)) == (3, 13) and python_for(Version(5, 3, 0)) == (3, 13)


def test_pythons_of_this_machine_are_told_by_their_version(tmp_path: Path) -> None:
    import sys

    from renderfarm.blender_envs import find_python, python_version

    assert python_version(sys.executable) == tuple(sys.version_info[:2])
    assert python_version(str(tmp_path / "no-python")) is None
    (tmp_path / "not-python").write_text("hello")
    assert python_version(str(tmp_path / "not-python")) is None
    assert find_python(tuple(sys.version_info[:2])) == sys.executable
    assert find_python((2, 1)) is None


def test_a_machine_without_python_3_13_says_so_when_asked_for_blender_5_1(
        tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from renderfarm.blender_envs import find_python

    if find_python((3, 13)) is not None:
        pytest.skip("this machine has Python 3.13")
    env = {**os.environ, "RENDERFARM_BLENDERS": str(tmp_path / "cache"),
           "RENDERFARM_PYTHONS": sys.executable}  # a Python, but not 3.13: not taken
    done = subprocess.run([sys.executable, "-m", "renderfarm.cli", "blenders", "add", "5.1"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0
    assert "Python 3.13" in done.stderr and "RENDERFARM_PYTHONS" in done.stderr, done.stderr
    assert "renderfarm blenders add /path/to/blender" in done.stderr
    assert not list((tmp_path / "cache").glob("bpy-*"))  # nothing half-made


def test_a_job_with_an_executable_goes_only_to_workers_whose_machine_has_it() -> None:
    from renderfarm.dispatch_state import (
        DispatchState,
        JobAdded,
        StartCall,
        Tick,
        WorkerJoined,
        WorkerStarted,
    )
    from renderfarm.tags import EXECUTABLE, Requirement, WorkerTags, satisfies, with_blenders

    has = with_blenders(WorkerTags(), ["5.0.1", "3.4.1"], ["/usr/bin/blender"])
    lacks = with_blenders(WorkerTags(), ["5.0.1"])
    wants = (Requirement(EXECUTABLE, "=", "/usr/bin/blender"),)
    assert satisfies(has, wants) and not satisfies(lacks, wants)
    assert not satisfies(has, (Requirement(EXECUTABLE, "=", "/opt/blender"),))

    class Tasks:
        def __init__(self) -> None:
            self.left = 4

        def next_task(self, worker: str, live: frozenset[str], checks_only: bool) -> object:
            if self.left == 0:
                return None
            self.left -= 1
            return object()

        def pending(self) -> int:
            return self.left

        def exclusive(self, worker: str, others: frozenset[str]) -> bool:
            return False

        def may_backup(self, task: object) -> bool:
            return False

    state = DispatchState()
    state.handle(WorkerJoined("w-lacks"), WorkerStarted("w-lacks", lacks),
                 WorkerJoined("w-has"), WorkerStarted("w-has", has))
    started = [i for i in state.handle(JobAdded("job", "key", Tasks(), require=wants), Tick(0.0))
               if isinstance(i, StartCall)]
    assert started and {i.worker_id for i in started} == {"w-has"}


def test_blenders_process_sees_renderfarm_from_a_private_folder(tmp_path: Path,
                                                                monkeypatch) -> None:
    import os
    import stat
    import tempfile

    import renderfarm
    from renderfarm.errors import WorkerDiedError
    from renderfarm.worker_process import child_path

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = Path(child_path())
    mine = folder.parent
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    assert os.listdir(folder) == ["renderfarm"]  # renderfarm only, none of this Python's
    assert (folder / "renderfarm").resolve() == Path(renderfarm.__file__).parent.resolve()
    mine.chmod(0o755)  # made open by an older version: made private again
    assert child_path() == str(folder) and stat.S_IMODE(mine.stat().st_mode) == 0o700
    mine.rename(tmp_path / "elsewhere")
    mine.symlink_to(tmp_path / "elsewhere")  # somebody's link in its place: refused
    with pytest.raises(WorkerDiedError, match="not a folder of this user's"):
        child_path()
