"""Fixtures: generated scenes, reference renders, a real local Ray cluster and a farm."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

HERE = Path(__file__).parent
#: the fault file workers read (renderfarm.faults); set before any Ray starts so its workers
#: inherit it; tests that arm worker faults write it and remove it afterwards
FAULT_FILE = Path(os.environ.setdefault("RENDERFARM_FAULTS", str(
    Path(tempfile.gettempdir()) / f"renderfarm-faults-{os.getpid()}.json")))
#: commands run here start a Ray of their own, as they did before the local farm
#: (tests/test_local_farm.py turns it on, with a folder of its own)
os.environ.setdefault("RENDERFARM_LOCAL_FARM", "off")
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
            elif isinstance(value, (list, tuple)):  # a repeatable option
                for item in value:
                    args += [flag, str(item)]
            elif value not in (False, None):
                args += [flag, str(value)]
        digest = hashlib.sha1(" ".join(args).encode()).hexdigest()[:10]
        path = scene_dir / f"scene-{digest}.blend"
        if not path.exists():
            run_python("-m", "renderfarm.blender.scenes", str(path), *args)
        return path

    return make


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine project folder (``shot.blend``, an image sequence in ``textures/seq/``,
    ``lib/props.blend`` linking its own ``lib/tex/props.png``); tests copy it, never change
    it."""
    folder = tmp_path_factory.mktemp("project") / "shot-project"
    run_python("-m", "renderfarm.blender.scenes", str(folder), "--kind", "project")
    return folder


def copy_project(source: Path, target: Path) -> Path:
    """A copy of a project folder (tests render and delete copies, never the original)."""
    import shutil

    shutil.copytree(source, target, symlinks=True)
    for path in target.rglob("*"):
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)
    return target


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with its SHA-256 (to prove a folder was not changed)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[int, Path]]:
    """``reference(blend, frames, fmt="EXR", samples=None, percentage=None)`` -> {frame: file}
    rendered untiled by plain bpy, with the given overrides (``fmt="SCENE"``: the scene's own
    output settings, untouched)."""
    folder = tmp_path_factory.mktemp("reference")

    def render(blend: Path, frames: list[int], fmt: str = "EXR", samples: int | None = None,
               percentage: int | None = None) -> dict[int, Path]:
        ext = {"EXR": "exr", "PNG": "png", "JPEG": "jpg", "TIFF": "tif", "SCENE": "img"}[fmt]
        where = hashlib.sha1(str(blend.resolve()).encode()).hexdigest()[:8]  # by path
        pattern = str(folder / f"{blend.stem}-{where}-{fmt}-{samples}-{percentage}"
                               f"-{{frame}}.{ext}")
        todo = [f for f in frames if not Path(pattern.format(frame=f)).exists()]
        extra = [str(samples), str(percentage)] if samples and percentage else []
        if todo:
            run_python(str(HERE / "blender_reference.py"), str(blend), pattern,
                       ",".join(map(str, todo)), fmt, *extra)
        return {f: Path(pattern.format(frame=f)) for f in frames}

    return render


def cpu_less_head_cluster(render_nodes: int) -> Iterator[object]:
    """A ``ray.cluster_utils.Cluster`` whose head (the driver's node) has no CPU, with
    ``render_nodes`` 1-CPU nodes (``cluster.render_nodes``), joined by this driver; shut
    down when the generator is (a module fixture's body: ``yield from``)."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    the_cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [the_cluster.add_node(num_cpus=1) for _ in range(render_nodes)]
    ray.init(address=the_cluster.address, log_to_driver=False, logging_level="ERROR")
    the_cluster.wait_for_nodes()
    the_cluster.render_nodes = nodes  # type: ignore[attr-defined]
    yield the_cluster
    ray.shutdown()
    the_cluster.shutdown()


def start_local_ray() -> None:
    """Start (or keep) a real Ray cluster on this machine with 2 CPUs."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")  # our own, even when another Ray runs here


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


@pytest.fixture(scope="session")
def _corpus_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not CORPUS.is_dir():
        pytest.fail(f"the shared corpus is not at {CORPUS}; clone beside ../shared")
    return copy_project(CORPUS, tmp_path_factory.mktemp("corpus") / "blendfiles")


@pytest.fixture()
def corpus(_corpus_copy: Path) -> Path:
    """A copy of the shared corpus (Blender writes next to some files it reads: fluid caches
    get ``config/*.uni``), made once per session."""
    return _corpus_copy


@pytest.fixture(scope="session", autouse=True)
def shared_corpus_untouched() -> Iterator[None]:
    """Nothing the tests run may change ``../shared``: checked at the end of the session."""
    before = tree_digest(CORPUS) if CORPUS.is_dir() else {}
    yield
    after = tree_digest(CORPUS) if CORPUS.is_dir() else {}
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, f"the tests changed the shared corpus: {changed[:10]}"


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def pytest_unconfigure(config: pytest.Config) -> None:
    import sys as _sys

    if _sys.modules.get("ray") is not None:  # None: a test ran with Ray not importable
        import ray

        ray.shutdown()


# -- the farm service ----------------------------------------------------------------------
def free_port_pair() -> int:
    """A port p with p and p + 1 free on loopback (requests and events)."""
    import random
    import socket

    for _ in range(200):
        port = random.randrange(20000, 40000, 2)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


#: every ``renderfarm serve`` the tests started (the autoscaler's tests stop them first)
LIVE_SERVERS: list[ServerProcess] = []


def stop_every_ray() -> None:
    """Before a test that runs ``ray stop --force`` (Ray's autoscaling cluster): stop every
    farm service the session started and this process's own Ray, so nothing of theirs dies
    under them."""
    import ray

    for server in LIVE_SERVERS:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
    ray.shutdown()


class ServerProcess:
    """A real ``renderfarm serve`` in a child process, on loopback.

    Args:
        state: its state folder.
        keys: the folder with ``server.key_secret`` and ``clients/``; None runs without keys
            (``--insecure-loopback``).
        extra: more command-line arguments.
        env: more environment variables.
    """

    def __init__(self, state: Path, keys: Path | None, *extra: str,
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.state = state
        self.keys = keys
        self.port = port or free_port_pair()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.extra = list(extra)
        self.env = {**os.environ, **(env or {})}
        self.log = state.parent / f"{state.name}-serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> ServerProcess:
        """Start it and wait until it answers."""
        import time

        LIVE_SERVERS.append(self)

        args = [sys.executable, "-m", "renderfarm", "serve", "-v", "--bind", self.address,
                "--state", str(self.state), *self.extra]
        if self.keys is None:
            args.append("--insecure-loopback")
        else:
            args += ["--server-key", str(self.keys / "server.key_secret"),
                     "--clients", str(self.keys / "clients")]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"renderfarm serve exited ({self.proc.returncode}):\n"
                            f"{self.log.read_text()[-3000:]}")
            try:
                with self.client(timeout=2) as client:
                    client.hello()
                return self
            except Exception:
                time.sleep(0.5)
        self.stop(9)  # not left running (with its Ray) behind the failed test
        pytest.fail(f"renderfarm serve did not answer in {timeout} s:\n"
                    f"{self.log.read_text()[-3000:]}")

    def client(self, timeout: float = 15, client_key: str | None = None) -> object:
        """A FarmClient with the allowed client key."""
        from renderfarm.client import FarmClient

        if self.keys is None:
            return FarmClient(self.address, timeout=timeout)
        return FarmClient(self.address, server_key=str(self.keys / "server.key"),
                          client_key=client_key or str(self.keys / "client.key_secret"),
                          timeout=timeout)

    def cli_args(self) -> list[str]:
        """``--farm`` and key arguments for the ``renderfarm`` client commands."""
        args = ["--farm", self.address]
        if self.keys is not None:
            args += ["--server-key", str(self.keys / "server.key"),
                     "--client-key", str(self.keys / "client.key_secret")]
        return args

    def stop(self, sig: int = 15, timeout: float = 60) -> int:
        """Stop it with ``sig``; returns its exit code. SIGKILL kills its whole process
        group (Ray's processes too), as when the machine running it goes down."""
        assert self.proc is not None
        if self.proc.poll() is None:
            if sig == 9:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def key_folder(folder: Path, clients: Sequence[str], admins: Sequence[str] = (),
               others: Sequence[str] = ()) -> Path:
    """Make ``folder`` a farm's keys: the server's, and a key pair per name, the public keys
    of ``clients`` in ``clients/`` and of ``admins`` in ``admins/`` (``others`` in neither)."""
    from renderfarm.server.transport import create_keys

    for name in ("server", *clients, *admins, *others):
        create_keys(folder, name)
    for role, names in (("clients", clients), ("admins", admins)):
        (folder / role).mkdir()
        for name in names:
            shutil.copy(folder / f"{name}.key", folder / role / f"{name}.key")
    return folder


@pytest.fixture(scope="session")
def farm_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys made by ``renderfarm keys``: the server's, an allowed client's (in ``clients/``)
    and a stranger's (not allowed)."""
    folder = tmp_path_factory.mktemp("keys")
    run_python("-m", "renderfarm", "keys", str(folder), "--name", "server")
    run_python("-m", "renderfarm", "keys", str(folder), "--name", "client")
    run_python("-m", "renderfarm", "keys", str(folder), "--name", "stranger")
    (folder / "clients").mkdir()
    (folder / "clients" / "client.key").write_bytes((folder / "client.key").read_bytes())
    return folder


@pytest.fixture(scope="session")
def farm_server(tmp_path_factory: pytest.TempPathFactory,
                farm_keys: Path) -> Iterator[ServerProcess]:
    """A real ``renderfarm serve`` with CURVE keys, two workers and the status page."""
    state = tmp_path_factory.mktemp("farm") / "state"
    http_port = free_port_pair()
    server = ServerProcess(state, farm_keys, "--workers", "2", "--http",
                           f"127.0.0.1:{http_port}")
    server.http = f"http://127.0.0.1:{http_port}"  # type: ignore[attr-defined]
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-speaking HTTP server (moto_server) on loopback; yields its URL."""
    import time
    import urllib.request

    port = free_port_pair()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moto_server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(10)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests of the farm service last but one: its server (with its own Ray
    cluster) lives from its first test to the end of the session and would load the machine
    under the timing-sensitive dispatch tests; then those of Ray's autoscaler, alone (they
    stop every Ray of the machine)."""
    items.sort(key=lambda item: ("autoscaler" in item.keywords,
                                 "farm_server" in getattr(item, "fixturenames", ())))
