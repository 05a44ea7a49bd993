"""The Blenders of this machine: the ``bpy`` of the farm's own Python, and ``bpy`` of other
versions in virtual environments the farm prepares itself from the package index the machine
is set up with (``pip``'s own configuration), cached per machine and shared by its workers.
A version whose ``bpy`` is built for another Python (Blender 5.1 and later: 3.13) gets an
environment of that Python, found as ``python3.13`` on ``$PATH`` or named in
``$RENDERFARM_PYTHONS``; a machine without one says so.

An environment is a folder ``bpy-X.Y[.Z]`` of the cache (``$RENDERFARM_BLENDERS``, default
``~/.cache/renderfarm/blenders``) holding a virtual environment with ``bpy`` (and what it
needs; the worker's Blender process imports nothing else), and ``blender.json``
naming the version it imports, written once the environment works. Preparing one takes a
lock, so workers of one machine prepare it once; pip's progress is handed to a callback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from renderfarm.blenders import OLDEST_SUPPORTED, Blender, Version, python_for
from renderfarm.errors import ResourceError
from renderfarm.locks import file_lock

logger = logging.getLogger(__name__)

#: where prepared environments live (one folder per version asked for)
CACHE_ENV = "RENDERFARM_BLENDERS"
#: what an environment of Blender 4.2 to 5.0 installs beside ``bpy``: the numpy it was built
#: for (``bpy`` 4.2 asks for any numpy; 2.x breaks it)
COMPANIONS = ("numpy<2",)
#: Pythons of this machine besides ``python3.X`` on ``$PATH`` (``os.pathsep``-separated)
PYTHONS_ENV = "RENDERFARM_PYTHONS"
#: seconds pip may take to install one environment
INSTALL_SECONDS = 1800


def cache_root() -> Path:
    """The folder of this machine's prepared environments."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "renderfarm" / \
        "blenders"


def own_blender() -> Blender | None:
    """The ``bpy`` of this Python (the farm's own), without importing it."""
    from importlib import metadata

    try:
        return Blender(Version.parse(metadata.version("bpy")), "bpy", sys.executable)
    except (metadata.PackageNotFoundError, Exception):
        return None


def _python_of(folder: Path) -> Path:
    return folder / "bin" / "python"


def prepared() -> list[Blender]:
    """The environments prepared on this machine that work (their ``blender.json``)."""
    out = []
    root = cache_root()
    if not root.is_dir():
        return out
    for folder in sorted(root.glob("bpy-*")):
        try:
            facts = json.loads((folder / "blender.json").read_text())
            out.append(Blender(Version.parse(facts["version"]), "bpy",
                               str(_python_of(folder))))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being prepared, or broken: not offered
    return out


#: Blender executables of this machine besides the registered ones (``os.pathsep``-separated)
EXECUTABLES_ENV = "RENDERFARM_BLENDER_EXECUTABLES"


def _registry() -> Path:
    return cache_root() / "executables.json"


#: versions of executables already asked, by (path, modification time)
_VERSIONS: dict[tuple[str, int], Version] = {}


def executable_version(path: str) -> Version:
    """The version of the Blender executable at ``path`` (``blender --version``, asked once
    per build of it).

    Raises:
        ResourceError: it is not a Blender that runs here.
    """
    try:
        key = (path, os.stat(path).st_mtime_ns)
    except OSError as exc:
        raise ResourceError(f"{path} is not a program that runs here ({exc.strerror})") \
            from exc
    if key in _VERSIONS:
        return _VERSIONS[key]
    try:
        done = subprocess.run([path, "-b", "--factory-startup", "--version"],
                              capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise ResourceError(f"{path} is not a program that runs here ({exc.strerror})") \
            from exc
    found = re.search(r"^Blender (\d+\.\d+(?:\.\d+)?)", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise ResourceError(f"{path} does not say it is Blender (blender --version: "
                            f"{(done.stdout + done.stderr).strip()[:200]!r})")
    _VERSIONS[key] = Version.parse(found.group(1))
    return _VERSIONS[key]


def executables() -> list[Blender]:
    """The Blender executables this machine has: registered (``renderfarm blenders add
    PATH``) and named in ``$RENDERFARM_BLENDER_EXECUTABLES``."""
    found: dict[str, Blender] = {}
    try:
        for entry in json.loads(_registry().read_text()):
            found[entry["path"]] = Blender(Version.parse(entry["version"]), "executable",
                                           entry["path"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for path in os.environ.get(EXECUTABLES_ENV, "").split(os.pathsep):
        if path and path not in found:
            try:
                found[path] = Blender(executable_version(path), "executable", path)
            except ResourceError as exc:
                logger.warning("%s: %s", EXECUTABLES_ENV, exc.one_line())
    return [b for b in found.values() if os.access(b.path, os.X_OK)]


def register(path: str) -> Blender:
    """Add the Blender executable at ``path`` to this machine's Blenders.

    Raises:
        ResourceError: it is not a Blender that runs here.
    """
    path = os.path.abspath(path)
    blender = Blender(executable_version(path), "executable", path)
    with file_lock(_registry().with_suffix(".lock")):
        try:
            entries = json.loads(_registry().read_text())
        except (OSError, ValueError):
            entries = []
        entries = [e for e in entries if e.get("path") != path]
        entries.append({"path": path, "version": str(blender.version)})
        _registry().write_text(json.dumps(entries, indent=1))
    return blender


def local_blenders() -> list[Blender]:
    """Every Blender this machine has now: the farm's own ``bpy`` first."""
    own = own_blender()
    return ([own] if own is not None else []) + [b for b in prepared()
                                                  if own is None or b.path != own.path] \
        + executables()


def python_version(path: str) -> tuple[int, int] | None:
    """The major.minor of the Python at ``path``, or None when it is not one that runs."""
    try:
        done = subprocess.run([path, "-c", "import sys; print(*sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60)
        major, minor = done.stdout.split()
        return int(major), int(minor)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def find_python(want: tuple[int, int]) -> str | None:
    """A Python ``want`` (major, minor) of this machine: this one, one named in
    ``$RENDERFARM_PYTHONS``, or ``python3.X`` on ``$PATH``; None when it has none."""
    if sys.version_info[:2] == want:
        return sys.executable
    named = [p for p in os.environ.get(PYTHONS_ENV, "").split(os.pathsep) if p]
    on_path = shutil.which(f"python{want[0]}.{want[1]}")
    for path in [*named, *([on_path] if on_path else [])]:
        if python_version(path) == want:
            return path
    return None


def interpreter_for(version: Version) -> str:
    """The Python an environment of Blender ``version`` is made with.

    Raises:
        ResourceError: this machine has no Python that Blender's ``bpy`` is built for.
    """
    want = python_for(version)
    python = find_python(want)
    if python is None:
        have = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise ResourceError(
            f"Blender {version}'s bpy is built for Python {want[0]}.{want[1]} only, and this "
            f"machine has no Python {want[0]}.{want[1]} (the farm runs on {have}; none is "
            f"on $PATH as python{want[0]}.{want[1]} nor named in ${PYTHONS_ENV}): install "
            f"one, or add a Blender {version} executable (renderfarm blenders add "
            "/path/to/blender), or render with a Blender the farm has (--blender newest)")
    return python


def prepare(version: Version, progress: Callable[[str], None] | None = None) -> Blender:
    """This machine's environment with ``bpy`` of ``version`` (``4.5``: its newest patch
    release on the index), prepared now when it is not yet; ``progress`` gets pip's lines.

    Raises:
        ResourceError: the version is older than the farm supports, pip could not install
            it (the message says what pip said), or it needs another Python.
    """
    if version.series < OLDEST_SUPPORTED:
        raise ResourceError(f"Blender {version} is older than the oldest the farm renders "
                            f"with ({OLDEST_SUPPORTED[0]}.{OLDEST_SUPPORTED[1]})")
    for blender in local_blenders():
        if blender.version.series == version.series and version.patch in (
                None, blender.version.patch) and blender.path != sys.executable:
            return blender
    own = own_blender()
    if own is not None and own.version.series == version.series and version.patch in (
            None, own.version.patch):
        return own
    python = interpreter_for(version)  # before anything is made: a machine without says so
    folder = cache_root() / f"bpy-{version}"
    say = progress or (lambda line: logger.info("%s", line))
    with file_lock(folder.with_suffix(".lock")):
        facts = folder / "blender.json"
        if facts.is_file():  # another worker of this machine prepared it meanwhile
            return Blender(Version.parse(json.loads(facts.read_text())["version"]), "bpy",
                           str(_python_of(folder)))
        shutil.rmtree(folder, ignore_errors=True)  # a half-made one
        say(f"preparing Blender {version}: a Python environment in {folder}")
        subprocess.run([python, "-m", "venv", str(folder)], check=True, capture_output=True)
        wanted = f"bpy=={version}" if version.patch is not None else f"bpy=={version}.*"
        companions = COMPANIONS if python_for(version) == (3, 11) else ()
        _pip(folder, [wanted, *companions], say, version)
        found = subprocess.run([str(_python_of(folder)), "-c",
                                "import bpy; print(bpy.app.version_string)"],
                               capture_output=True, text=True, timeout=300)
        if found.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise ResourceError(f"Blender {version} was installed but does not start: "
                                + (found.stderr.strip().splitlines() or ["?"])[-1])
        exact = Version.parse(found.stdout.strip())
        facts.write_text(json.dumps({"version": str(exact)}))
        say(f"Blender {exact} is ready")
        return Blender(exact, "bpy", str(_python_of(folder)))


def _pip(folder: Path, packages: list[str], say: Callable[[str], None],
         version: Version) -> None:
    """Install ``packages`` into the environment, handing pip's lines to ``say``."""
    command = [str(_python_of(folder)), "-m", "pip", "install", "--progress-bar", "off",
               *packages]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as pip:
        assert pip.stdout is not None
        tail: list[str] = []
        for line in pip.stdout:
            line = line.rstrip()
            if line:
                tail = [*tail[-9:], line]
                if line.startswith(("Collecting", "Downloading", "Installing",
                                    "Successfully")):
                    say(line)
        code = pip.wait(INSTALL_SECONDS)
    if code != 0:
        shutil.rmtree(folder, ignore_errors=True)
        python = ".".join(map(str, python_for(version)))
        listed = re.search(r"\(from versions: ([^)]*)\)", " ".join(tail))
        if listed is not None:
            raise ResourceError(
                f"this machine's package index has no bpy {version} for Python {python} "
                f"(it has: {listed.group(1) or 'none'}): ask for a version it has")
        raise ResourceError(f"pip could not install Blender {version} from this machine's "
                            "package index: " + " | ".join(tail[-3:]))
