"""The local farm later commands reuse (renderfarm/local_farm.py): a second `render` takes
over the first one's Ray and worker (Blender started, the scene loaded), its files equal
plain Blender's, it stops when idle or told, a dead kept worker is replaced, another
version's farm is replaced, and a command while another holds it starts its own Ray."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.filecompare import differences

pytestmark = [pytest.mark.blender, pytest.mark.ray]


@pytest.fixture()
def home(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of commands that use a local farm of their own folder; stopped and
    checked gone afterwards."""
    folder = tmp_path / "lf"
    env = {**os.environ, "RENDERFARM_LOCAL_FARM": "on", "RENDERFARM_LOCAL_FARM_DIR":
           str(folder), "RENDERFARM_LOCAL_FARM_IDLE": "120"}
    env.pop("RAY_ADDRESS", None)
    yield env
    cli(env, "local-farm", "stop")
    assert not processes(folder), "the local farm left processes behind"


def cli(env: dict[str, str], *args: str, timeout: float = 300
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "renderfarm", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def processes(folder: Path) -> list[str]:
    """This local farm's processes still running (its keeper, Ray's processes)."""
    from renderfarm.local_farm import ray_folder

    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    marks = (str(folder), str(ray_folder(folder)))
    return [line for line in out.splitlines() if any(m in line for m in marks)
            and "ps -ww" not in line]


def keeper(env: dict[str, str]) -> int:
    info = json.loads((Path(env["RENDERFARM_LOCAL_FARM_DIR"]) / "farm.json").read_text())
    return int(info["pid"])


def render(env: dict[str, str], blend: Path, out: Path, frames: str = "1-2"
           ) -> tuple[subprocess.CompletedProcess[str], dict]:
    proc = cli(env, "render", str(blend), "--frames", frames, "-o", str(out / "f_####.exr"),
               "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(proc.stdout)


def workers(summary: dict) -> set[str]:
    return {t["worker"] for t in summary["tasks"] if t["kind"] == "render"}


@pytest.fixture(scope="module")
def scene(make_scene) -> Path:
    return make_scene(width=48, height=36, samples=4, frames=3)


def test_a_second_command_takes_over_the_first_ones_farm_and_worker(
        scene: Path, home: dict[str, str], tmp_path: Path, reference) -> None:
    first, one = render(home, scene, tmp_path / "one")
    assert "started a local farm" not in first.stderr  # --json: nothing but the summary
    pid = keeper(home)
    status = cli(home, "local-farm")
    assert status.returncode == 0 and "a local farm runs at" in status.stdout, status.stdout
    second, two = render(home, scene, tmp_path / "two", "1-3")
    assert keeper(home) == pid  # the same Ray
    assert workers(two) == workers(one)  # the same worker, Blender started, scene loaded
    want = reference(scene, [1, 2, 3])
    for frame in (1, 2, 3):
        assert differences(tmp_path / "two" / f"f_{frame:04d}.exr", want[frame]) == []
    for frame in (1, 2):
        assert differences(tmp_path / "one" / f"f_{frame:04d}.exr", want[frame]) == []
    with open(Path(home["RENDERFARM_LOCAL_FARM_DIR"]) / "busy", "a+") as busy:
        fcntl.flock(busy, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running command holds it
        refused = cli(home, "local-farm", "stop")
        assert refused.returncode == 3
        assert "a command is rendering on the local farm; it was not stopped" in refused.stderr
        assert "(a command uses it now)" in cli(home, "local-farm").stdout
    assert keeper(home) == pid
    stop = cli(home, "local-farm", "stop")
    assert stop.stdout.strip() == "stopped the local farm"
    assert "no local farm runs" in cli(home, "local-farm").stdout
    assert not processes(Path(home["RENDERFARM_LOCAL_FARM_DIR"]))


def test_the_first_command_says_a_farm_stays_and_an_idle_farm_stops_by_itself(
        scene: Path, home: dict[str, str], tmp_path: Path) -> None:
    # a fresh user's: no Ray token yet (the command makes one, private, for both ends)
    fresh = tmp_path / "home"
    fresh.mkdir()
    env = {**home, "RENDERFARM_LOCAL_FARM_IDLE": "3", "HOME": str(fresh)}
    proc = cli(env, "render", str(scene), "--frames", "1", "-o",
               str(tmp_path / "f_####.png"), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "started a local farm that your next commands reuse; it stops after 3 s unused" \
        in proc.stderr
    folder = Path(env["RENDERFARM_LOCAL_FARM_DIR"])
    deadline = time.monotonic() + 60
    while processes(folder) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not processes(folder), "the idle local farm did not stop"
    assert not (folder / "farm.json").exists()
    assert (tmp_path / "f_0001.png").stat().st_size > 0
    token = fresh / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o077 == 0


def test_a_dead_kept_worker_and_another_versions_farm_are_replaced(
        scene: Path, home: dict[str, str], tmp_path: Path, reference) -> None:
    _proc, one = render(home, scene, tmp_path / "one", "1")
    pid = keeper(home)
    # the kept worker dies between two commands (its machine ran out of memory, say)
    info = json.loads((Path(home["RENDERFARM_LOCAL_FARM_DIR"]) / "farm.json").read_text())
    code = ("import ray, sys; from ray.util import list_named_actors;"
            "ray.init(address=sys.argv[1], logging_level='ERROR');"
            "names = [a['name'] for a in list_named_actors(all_namespaces=True)"
            " if a['namespace'] == 'renderfarm-local'];"
            "[ray.kill(ray.get_actor(n, namespace='renderfarm-local')) for n in names];"
            "print(len(names))")
    killed = subprocess.run([sys.executable, "-c", code, info["address"]], capture_output=True,
                            text=True, env={**home, "RAY_AUTH_MODE": "token"}, timeout=120)
    assert killed.stdout.strip().splitlines()[-1] == "1", killed.stderr[-2000:]
    _proc, two = render(home, scene, tmp_path / "two", "1")
    assert keeper(home) == pid
    assert workers(two) and workers(two) != workers(one)  # a new worker in its place
    want = reference(scene, [1])
    assert differences(tmp_path / "two" / "f_0001.exr", want[1]) == []
    # a farm another renderfarm (or Python, or Ray) made is replaced, not joined
    farm_json = Path(home["RENDERFARM_LOCAL_FARM_DIR"]) / "farm.json"
    farm_json.write_text(json.dumps({**json.loads(farm_json.read_text()),
                                     "fingerprint": "another"}))
    _proc, three = render(home, scene, tmp_path / "three", "1")
    assert keeper(home) != pid
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.3)
    else:
        pytest.fail("the replaced local farm's keeper did not stop")
    assert differences(tmp_path / "three" / "f_0001.exr", want[1]) == []


def test_a_command_while_another_holds_the_farm_starts_its_own_ray(
        scene: Path, home: dict[str, str], tmp_path: Path, reference) -> None:
    folder = Path(home["RENDERFARM_LOCAL_FARM_DIR"])
    folder.mkdir(parents=True)
    with open(folder / "busy", "a+") as busy:
        fcntl.flock(busy, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running command holds it
        _proc, summary = render(home, scene, tmp_path / "own", "1")
    assert not (folder / "farm.json").exists()  # no local farm was started for it
    assert not processes(folder)
    want = reference(scene, [1])
    assert differences(tmp_path / "own" / "f_0001.exr", want[1]) == []
    assert workers(summary)
    # files read in place: a worker that kept the scene loaded would not read a texture
    # changed since, so such a job gets a Ray of its own too
    proc = cli(home, "render", str(scene), "--frames", "1", "--files", "shared", "-o",
               str(tmp_path / "shared" / "f_####.exr"), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (folder / "farm.json").exists() and not processes(folder)
    assert differences(tmp_path / "shared" / "f_0001.exr", want[1]) == []


def test_a_stale_farm_file_never_gets_another_process_signalled(
        home: dict[str, str], tmp_path: Path) -> None:
    """The keeper died without a trace (power cut, kill -9) and its pid now belongs to
    another program: stopping the local farm leaves that program alone."""
    folder = Path(home["RENDERFARM_LOCAL_FARM_DIR"])
    folder.mkdir(parents=True)
    other = subprocess.Popen(["sleep", "60"])
    try:
        (folder / "farm.json").write_text(json.dumps(
            {"address": "127.0.0.1:1", "pid": other.pid, "fingerprint": "x", "started": 0}))
        proc = cli(home, "local-farm", "stop")
        assert proc.returncode == 0 and proc.stdout.strip() == "no local farm runs"
        assert "no local farm runs" in cli(home, "local-farm").stdout
        assert other.poll() is None  # not signalled
    finally:
        other.kill()
        other.wait()


def test_off_means_a_ray_of_the_commands_own(scene: Path, home: dict[str, str],
                                              tmp_path: Path) -> None:
    env = {**home, "RENDERFARM_LOCAL_FARM": "off"}
    proc = cli(env, "render", str(scene), "--frames", "1", "-o", str(tmp_path / "f_####.png"),
               "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "local farm" not in proc.stderr
    assert not (Path(env["RENDERFARM_LOCAL_FARM_DIR"]) / "farm.json").exists()
    assert "RENDERFARM_LOCAL_FARM is off" in cli(env, "local-farm").stdout


def test_the_farm_a_command_reuses_has_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept workers inherit the environment of the command that started their farm: a
    command whose Blender-, colour- or renderfarm-related variables differ gets a new one;
    the local farm's own settings do not count."""
    from renderfarm.local_farm import fingerprint

    before = fingerprint()
    monkeypatch.setenv("RENDERFARM_LOCAL_FARM_IDLE", "7")
    assert fingerprint() == before
    monkeypatch.setenv("OCIO", "/studio/config.ocio")
    assert fingerprint() != before
    monkeypatch.delenv("OCIO")
    monkeypatch.setenv("RENDERFARM_BLENDERS", "/opt/blender-4.2/blender")
    assert fingerprint() != before
