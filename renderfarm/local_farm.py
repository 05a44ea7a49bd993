"""A local farm that later commands reuse: ``renderfarm render`` (and ``estimate``) on this
machine pays for Ray's start and a worker's start once, not per command.

The first command without ``--address`` starts a keeper process (``python -m
renderfarm.local_farm keep``), which runs a Ray head of the farm's own (``ray start --head
--block``, its own port and temporary folder, so no other program's ``ray.init()`` joins
it) and stops it once no command has used it for ``$RENDERFARM_LOCAL_FARM_IDLE`` seconds
(default 300). Each command connects to it, takes over the workers the previous command left
(Blender started, the last scene loaded: :class:`~renderfarm.executor.WorkerPool`'s
``keep_warm``) and leaves them for the next.

One command uses the local farm at a time; a second command meanwhile starts a Ray of its
own, as every command did before. A local farm made by another Python, another Ray or
another version of renderfarm is replaced. ``RENDERFARM_LOCAL_FARM=off`` turns it off;
``renderfarm local-farm stop`` stops it now.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from renderfarm.errors import RenderFarmError
from renderfarm.locks import file_lock

logger = logging.getLogger(__name__)

#: seconds the local farm stays up after its last command (``$RENDERFARM_LOCAL_FARM_IDLE``)
IDLE_SECONDS = 300.0
#: seconds a command waits for a new local farm's Ray to come up
START_SECONDS = 90.0


class LocalFarmError(RenderFarmError):
    """The local farm could not be started or reached."""


def enabled() -> bool:
    """Whether commands use the local farm (``$RENDERFARM_LOCAL_FARM``: ``off`` turns it
    off)."""
    return os.environ.get("RENDERFARM_LOCAL_FARM", "on").strip().lower() not in (
        "0", "off", "no", "false")


def folder() -> Path:
    """Where the local farm keeps its state (``$RENDERFARM_LOCAL_FARM_DIR``, default
    ``~/.cache/renderfarm/local-farm``), private to this user."""
    path = Path(os.environ.get("RENDERFARM_LOCAL_FARM_DIR")
                or Path.home() / ".cache" / "renderfarm" / "local-farm")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def idle_seconds() -> float:
    """Seconds the local farm stays up unused (``$RENDERFARM_LOCAL_FARM_IDLE``)."""
    try:
        return max(1.0, float(os.environ.get("RENDERFARM_LOCAL_FARM_IDLE", IDLE_SECONDS)))
    except ValueError:
        return IDLE_SECONDS


#: the environment the local farm's workers inherit from the command that started it: a
#: command whose differs gets a new farm (Blenders it may use, colour management, faults)
INHERITED = ("RENDERFARM_", "BLENDER_", "OCIO", "PATH", "PYTHONPATH", "LD_LIBRARY_PATH",
             "HOME", "TMPDIR", "RAY_", "CUDA_", "HIP_", "ROCR_", "ONEAPI_", "OMP_")


def fingerprint() -> str:
    """What the local farm's workers run: this Python, Ray, renderfarm's code and the
    environment they inherit (a farm made by others is replaced)."""
    from importlib import metadata

    import ray

    import renderfarm

    digest = hashlib.sha256(f"{sys.executable}\0{ray.__version__}\0".encode())
    for name in ("bpy", "OpenImageIO"):  # upgraded in place: a new farm
        try:
            digest.update(f"{name}={metadata.version(name)}\0".encode())
        except metadata.PackageNotFoundError:
            pass
    for key in sorted(os.environ):
        if key.startswith(INHERITED) and not key.startswith("RENDERFARM_LOCAL_FARM"):
            digest.update(f"{key}={os.environ[key]}\0".encode())
    package = Path(renderfarm.__file__).parent
    for path in sorted(package.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(package)}\0{stat.st_mtime_ns}\0{stat.st_size}\0"
                      .encode())
    return digest.hexdigest()[:24]


def _held(path: Path) -> bool:
    """Whether another process holds the lock on ``path`` now."""
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def _keeper_runs(home: Path) -> bool:
    """Whether a keeper of the local farm in ``home`` runs: it holds ``keeper.lock`` for
    its whole life (a pid in a file could be another process's by now)."""
    return _held(home / "keeper.lock")


def _keeper_pid(home: Path, info: dict[str, Any] | None) -> int | None:
    """The keeper's pid as ``farm.json`` has it, if that process is this folder's keeper
    (its command line says so) and it runs."""
    if info is None or not _keeper_runs(home):
        return None
    try:
        pid = int(info.get("pid", 0))
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if b"renderfarm.local_farm" in command and str(home).encode() in command:
        return pid
    return None


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def status() -> dict[str, Any] | None:
    """The running local farm (``address``, ``pid`` of its keeper, ``started``, ``idle``
    seconds it stays unused), or None."""
    home = folder()
    info = _read(home / "farm.json")
    if _keeper_pid(home, info) is None or not _answers(str(info.get("address", ""))):
        return None
    return info


def in_use() -> bool:
    """Whether a command uses the local farm now."""
    return _held(folder() / "busy")


def stop(wait: float = 30.0) -> bool:
    """Stop the local farm now (its workers end); whether one was running.

    Raises:
        LocalFarmError: it did not stop within ``wait`` seconds.
    """
    home = folder()
    pid = _keeper_pid(home, _read(home / "farm.json"))
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return False
    deadline = time.monotonic() + wait
    while _keeper_runs(home):
        if time.monotonic() > deadline:
            raise LocalFarmError(f"the local farm's keeper (pid {pid}) did not stop within "
                                 f"{wait:g} s; see {home / 'keeper.log'}")
        time.sleep(0.1)
    return True


def _ensure(cpus: int | None) -> tuple[str, bool]:
    """The local farm's Ray address, and whether it was started now (or replaced)."""
    home = folder()
    mark = fingerprint()
    with file_lock(home / "start.lock"):
        info = _read(home / "farm.json")
        if info is not None and info.get("fingerprint") == mark \
                and _keeper_pid(home, info) is not None and _answers(str(info["address"])):
            return str(info["address"]), False
        stop()  # another version's, or one that does not answer: replaced
        (home / "farm.json").unlink(missing_ok=True)
        args = [sys.executable, "-m", "renderfarm.local_farm", "keep", "--dir", str(home),
                "--fingerprint", mark, "--idle", str(idle_seconds())]
        if cpus:
            args += ["--cpus", str(cpus)]
        with open(home / "keeper.log", "ab") as log:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True, close_fds=True)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            info = _read(home / "farm.json")
            if info is not None and info.get("fingerprint") == mark:
                return str(info["address"]), True
            time.sleep(0.05)
        if process.poll() is None:  # given up on: it stops, with what it started
            process.terminate()
    raise LocalFarmError(f"the local farm did not start (see {home / 'keeper.log'}, or set "
                         "RENDERFARM_LOCAL_FARM=off)")


def _token_auth() -> None:
    """Both ends of the local farm use Ray's token (``~/.ray/auth_token``, made private
    to this user if missing): a Ray joined by its address does not turn it on by itself.

    Raises:
        LocalFarmError: ``$RAY_AUTH_MODE`` turns the token off (a farm any machine that
            reaches this one could use is not kept running).
    """
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode and mode != "token":
        raise LocalFarmError(f"RAY_AUTH_MODE={mode}: the local farm runs only with Ray's "
                             "token")
    from ray._private.authentication import authentication_token_setup as auth
    from ray._raylet import AuthenticationTokenLoader, Config

    token = Path.home() / ".ray" / "auth_token"
    if not (token.exists() or os.environ.get("RAY_AUTH_TOKEN")
            or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        mask = os.umask(0o077)
        try:
            auth.generate_and_save_token()
        finally:
            os.umask(mask)
    if not mode:  # this process (Ray's settings are read again) and the keeper it starts
        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def use(cpus: int | None = None,
        started: Callable[[float], None] | None = None) -> Iterator[str | None]:
    """Hold the local farm for one command.

    Args:
        cpus: the CPUs a new local farm offers (None: the machine's).
        started: told when this command started the local farm (with its idle seconds).

    Yields:
        Its Ray address (started now if none runs), or None when another command holds it
        or it cannot start (the caller then starts a Ray of its own).
    """
    home = folder()
    busy = open(home / "busy", "a+")  # noqa: SIM115 - held until the command ends
    try:
        for _ in range(20):  # the keeper takes it for a moment when it checks
            try:
                fcntl.flock(busy, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            yield None
            return
        (home / "used").touch()
        try:
            _token_auth()
            address, new = _ensure(cpus)
        except LocalFarmError as exc:
            logger.warning("%s; this command starts a Ray of its own", exc)
            yield None
            return
        if new and started is not None:
            started(idle_seconds())
        try:
            yield address
        finally:
            (home / "used").touch()
    finally:
        busy.close()


# ------------------------------------------------------------------------------------------
# the keeper (its own process)
# ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ray_folder(home: Path) -> Path:
    """The temporary folder of the Ray of the local farm kept in ``home``: Ray's sockets
    live there, and a socket's path has at most 107 bytes, so it is a short one in the
    system's temporary folder (private to this user)."""
    import tempfile

    return Path(tempfile.gettempdir()) / (
        f"renderfarm-{os.getuid()}-" + hashlib.sha256(str(home).encode()).hexdigest()[:8])


def _private_folder(path: Path) -> None:
    """Make ``path`` this user's alone, or refuse one another user made first."""
    path.mkdir(mode=0o700, exist_ok=True)
    stat = path.lstat()
    if path.is_symlink() or not path.is_dir() or stat.st_uid != os.getuid():
        raise LocalFarmError(f"{path} is not a folder of this user's; remove it (the local "
                             "farm's Ray keeps its sockets there)")
    if stat.st_mode & 0o077:
        path.chmod(0o700)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """The head gets SIGTERM when its keeper dies, however it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_head(head: subprocess.Popen[bytes]) -> None:
    """Stop Ray's head and everything it started (its process group)."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            pass
    try:  # whatever of it is left
        os.killpg(head.pid, signal.SIGKILL)
    except OSError:
        pass
    head.wait()


def keep(mark: str, idle: float, cpus: int | None) -> int:
    """Run the local farm's Ray head until it has been idle ``idle`` seconds (or this
    process is told to stop)."""
    home = folder()
    lock = open(home / "keeper.lock", "a+")  # noqa: SIM115 - held for this process's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        logger.error("another keeper runs the local farm in %s", home)
        return 1
    stopping = False

    def on_signal(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    port = _free_port()
    temp = ray_folder(home)
    _private_folder(temp)
    args = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
            "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    if cpus:
        args.append(f"--num-cpus={cpus}")
    # its workers hold nothing worth waiting for when it stops: they are idle, or rendering
    # for a command that stopped (Ray's own wait is 30 s)
    env = {**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "1"}
    head = subprocess.Popen(args, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                            preexec_fn=_die_with_parent)
    busy = open(home / "busy", "a+")  # noqa: SIM115
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + START_SECONDS
        while not _answers(address):
            if head.poll() is not None or time.monotonic() > deadline or stopping:
                return 1
            time.sleep(0.1)
        tmp = home / "farm.json.tmp"
        tmp.write_text(json.dumps({"address": address, "pid": os.getpid(),
                                   "fingerprint": mark, "started": time.time(),
                                   "idle": idle}))
        tmp.replace(home / "farm.json")
        (home / "used").touch()
        while not stopping and head.poll() is None:
            time.sleep(1.0)
            try:
                unused = time.time() - (home / "used").stat().st_mtime
            except OSError:
                unused = idle
            if unused < idle:
                continue
            try:  # no command holds the farm: it stops (a command now starts its own)
                fcntl.flock(busy, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            break
        return 0
    finally:
        info = _read(home / "farm.json")
        if info is not None and info.get("pid") == os.getpid():
            (home / "farm.json").unlink(missing_ok=True)
        _stop_head(head)
        busy.close()
        lock.close()


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - the keeper's process
    import argparse

    parser = argparse.ArgumentParser(prog="python -m renderfarm.local_farm")
    sub = parser.add_subparsers(dest="command", required=True)
    keeper = sub.add_parser("keep")
    keeper.add_argument("--dir", required=True, help="the local farm's folder")
    keeper.add_argument("--fingerprint", required=True)
    keeper.add_argument("--idle", type=float, default=IDLE_SECONDS)
    keeper.add_argument("--cpus", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    os.environ["RENDERFARM_LOCAL_FARM_DIR"] = args.dir
    return keep(args.fingerprint, args.idle, args.cpus)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
