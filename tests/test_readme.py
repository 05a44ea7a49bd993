"""The README works as written.

Every fenced block of README.md says what it is (```` ```sh ````: a shell block a user can run
on one machine; ```` ```text ````: a synopsis or output; ```` ```python ````), and every
```` ```sh ```` block runs here, in README order, exactly as written: its text is handed to
``bash -e`` unchanged, in a scratch copy of the repository's tracked files (``git ls-files``),
with ``HOME`` a scratch home (``~/.renderfarm`` lands there) and a venv of the test's own first
on ``PATH`` (``python -m venv --system-site-packages``: the dependencies are the ones the tests
run with, and the quick start's ``pip install -e`` lands in the venv, never in the Python the
tests run with). The blocks run as a user runs them in one terminal, one after another: the
variables one block sets (``JOB=...``, ``export RENDERFARM_ADDRESS=...``) are there in the next.
The ``renderfarm serve`` block runs in the background, as in a terminal of its own, from its
ready lines to the end, when it gets Ctrl-C (SIGINT to its process group).

After each block the test checks what the user would: its exit code, the files it made (real
PNGs of the demo's size and of the depth Blender gives them, read with OpenImageIO, with the
pixels of the quick start's frames when the farm rendered them; key files) and what it
printed. The one
block not run is the test command (it would run this suite inside itself): ``.ci/run`` runs it,
and the test checks that ``.ci/run`` holds that exact line.

Each ```` ```sh ```` block is matched to one :class:`Step` by a pattern; a block no step
matches fails the test (add a step with its checks), as does a step that matches no block.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CI_RUN = REPO / ".ci" / "run"
#: the info strings a fence may carry
KINDS = ("sh", "text", "python")
#: an opening or closing fence: its indentation and info string
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^`]*)$")
#: finds the README's test command (the sh block not run here: .ci/run runs it)
TEST_COMMAND = r"\bpytest\b"
#: a farm job's id, as ``renderfarm submit`` prints it
JOB_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
#: environment variables a user's fresh terminal would not have (the test run's own)
NOT_INHERITED = ("RENDERFARM_", "RAY_ADDRESS", "PYTHON", "VIRTUAL_ENV", "BASH_ENV", "XDG_",
                 "README_")
#: seconds a block may take; the serve block: until it says it serves
BLOCK_TIMEOUT = 300.0
SERVE_READY_TIMEOUT = 180.0

#: sourced (``$BASH_ENV``) by the ``bash -e`` running each block: the variables the blocks
#: before it left behind, and on exit the ones this block leaves, as one terminal keeps them
SESSION_RC = r"""
__readme_known=" $(compgen -v | tr '\n' ' ') "
if [ -f "$README_SESSION" ]; then . "$README_SESSION"; fi
__readme_save() {
    local __v
    {
        for __v in $(compgen -v); do
            case "$__readme_known" in *" $__v "*) continue ;; esac
            case "$__v" in __readme_*|_|BASH*|FUNCNAME|PIPESTATUS|COLUMNS|LINES) continue ;; esac
            declare -p "$__v"
        done
        printf 'cd %q\n' "$PWD"
    } > "$README_SESSION"
}
trap __readme_save EXIT
"""


# -- the README's blocks --------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """A fenced block of README.md.

    Attributes:
        line: the line of its opening fence (1-based).
        info: its info string (``sh``, ``text``, ``python``; empty when untagged).
        text: its content, without the fence's indentation.
    """

    line: int
    info: str
    text: str

    @property
    def name(self) -> str:
        """How a failure names it: ``README.md:228 (renderfarm keys keys --name server ...)``."""
        first = self.text.strip().splitlines()[0] if self.text.strip() else ""
        return f"README.md:{self.line} ```{self.info} block ({first[:70]} ...)"


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, in order (fences may be indented in lists).

    Raises:
        AssertionError: a fence is never closed.
    """
    blocks: list[Block] = []
    opened: tuple[int, str, str] | None = None  # line, indentation, info
    lines: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if opened is None:
            if fence:
                opened, lines = (number, fence["indent"], fence["info"].strip()), []
            continue
        if fence and not fence["info"].strip():
            blocks.append(Block(opened[0], opened[2], "".join(lines)))
            opened = None
            continue
        indent = opened[1]
        lines.append((line[len(indent):] if line.startswith(indent) else line.lstrip()) + "\n")
    assert opened is None, f"README.md:{opened[0]}: a ``` fence that is never closed"
    return blocks


def read_blocks() -> list[Block]:
    """README.md's fenced blocks."""
    return readme_blocks(README.read_text(encoding="utf-8"))


def test_every_fence_says_what_it_is() -> None:
    """An untagged fence (or one tagged otherwise, ``bash``, ``console``) would escape the
    test below: every block is ``sh`` (run), ``text`` or ``python``."""
    blocks = read_blocks()
    wrong = [f"{block.name}: tag it ```sh (a user can run it here: the test runs it), ```text "
             "(not runnable here; say why in the prose) or ```python"
             for block in blocks if block.info not in KINDS]
    assert not wrong, "\n".join(wrong)
    assert sum(block.info == "sh" for block in blocks) >= 8, "the README lost its sh blocks"


def test_the_test_command_is_what_ci_runs() -> None:
    """The README's test command is not run here (it would run this suite inside itself):
    ``.ci/run`` runs it, letter for letter."""
    commands = [block for block in read_blocks() if block.info == "sh" and is_test_command(block)]
    assert len(commands) == 1, f"one sh block runs pytest, not {len(commands)}"
    command = commands[0].text.strip()
    assert "\n" not in command, f"{commands[0].name}: one line, as .ci/run runs it"
    ci_lines = [line.strip() for line in CI_RUN.read_text().splitlines()]
    assert command in ci_lines, (f"{commands[0].name}: .ci/run does not run it as written "
                                 f"({command!r}); its lines: {ci_lines}")


def is_test_command(block: Block) -> bool:
    """Whether ``block`` runs the test suite (the one sh block the test leaves to .ci/run)."""
    return re.search(TEST_COMMAND, block.text) is not None


# -- a user's terminal in a scratch copy ------------------------------------------------------
@dataclass(frozen=True)
class Result:
    """What a block did: its exit code and output."""

    returncode: int
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        """Its stdout's lines."""
        return self.stdout.splitlines()


def kill_group(pgid: int, sig: int = signal.SIGKILL, timeout: float = 15.0) -> None:
    """Send ``sig`` to the process group ``pgid`` and (for SIGKILL) wait until it is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while sig == signal.SIGKILL and time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


@dataclass
class Terminal:
    """A user's shell in ``folder``: ``bash -e`` per block, with the variables of the blocks
    before (see :data:`SESSION_RC`).

    Attributes:
        folder: the scratch copy of the repository (the blocks' working folder).
        env: the environment of a fresh terminal (scratch ``HOME``, the venv first on PATH).
    """

    folder: Path
    env: dict[str, str]
    session: Path = field(init=False)
    rc: Path = field(init=False)

    def __post_init__(self) -> None:
        self.session = self.folder.parent / "session.sh"
        self.rc = self.folder.parent / "session-rc.sh"
        self.rc.write_text(SESSION_RC)

    def run(self, block: Block, timeout: float = BLOCK_TIMEOUT) -> Result:
        """Run ``block`` to its end, as written, in this terminal.

        Args:
            block: the README block; its text is handed to ``bash -e`` unchanged.
            timeout: seconds it may take (then the test fails, naming it).

        Returns:
            Its exit code and output. Its process group is killed once it ends: nothing it
            started outlives it.
        """
        env = {**self.env, "BASH_ENV": str(self.rc), "README_SESSION": str(self.session)}
        proc = subprocess.Popen(["bash", "-e", "-c", block.text], cwd=self.folder, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            out, err = proc.communicate()
            pytest.fail(f"{block.name} did not end in {timeout:.0f} s\n{tails(out, err)}")
        finally:
            kill_group(proc.pid)  # nothing it started outlives it
        return Result(proc.returncode, out, err)

    def start(self, block: Block, log: Path) -> subprocess.Popen[bytes]:
        """Start ``block`` in the background, as in a terminal of its own.

        Args:
            block: the README block (``bash -e`` runs its text unchanged, in a fresh terminal:
                without the variables of the other blocks).
            log: where its stdout and stderr go.

        Returns:
            Its process (the leader of its own process group).
        """
        with open(log, "wb") as out:
            return subprocess.Popen(["bash", "-e", "-c", block.text], cwd=self.folder,
                                    env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def var(self, name: str) -> str:
        """A shell variable as the blocks left it ('' when unset)."""
        if not self.session.exists():
            return ""
        return subprocess.run(["bash", "-c", f'. "$1" >/dev/null; printf %s "${name}"', "-",
                               str(self.session)], capture_output=True, text=True,
                              check=True, cwd=self.folder, env=self.env).stdout


def tails(stdout: str, stderr: str, chars: int = 3000) -> str:
    """The ends of a block's output, for a failure message."""
    return f"--- stdout ---\n{stdout[-chars:]}\n--- stderr ---\n{stderr[-chars:]}"


def untracked() -> list[str]:
    """Files of the working tree git does not track (nor ignore): not in the scratch copy,
    as they would not be in a clone."""
    listed = subprocess.run(["git", "ls-files", "-z", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode()
    this = str(Path(__file__).resolve().relative_to(REPO))
    return sorted(name for name in listed.split("\0") if name and name != this)


def scratch_copy(target: Path) -> Path:
    """A copy of the repository's tracked files (as they are in the working tree)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree, not yet in git
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name, follow_symlinks=False)
    return target


def make_venv(venv: Path) -> Path:
    """``python -m venv --system-site-packages``: it sees the packages the tests run with
    (when they run in a venv of their own, through a ``.pth`` naming its site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, capture_output=True)
    if sys.prefix != sys.base_prefix:
        purelib = subprocess.run([str(venv / "bin" / "python"), "-c",
                                  "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        (Path(purelib) / "_outer_site.pth").write_text("\n".join(sorted(outer)) + "\n")
    return venv


def fresh_env(home: Path, venv: Path) -> dict[str, str]:
    """A fresh terminal's environment: this one's, without the test run's own variables,
    with ``HOME`` the scratch home and the venv activated."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(NOT_INHERITED)}
    env.update(HOME=str(home), VIRTUAL_ENV=str(venv),
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return env


def installed_renderfarm() -> dict[str, bytes]:
    """The files of the renderfarm installation the tests run with (its editable finder,
    its dist-info): the quick start must not change them."""
    site = Path(sysconfig.get_paths()["purelib"])
    return {str(p): p.read_bytes() for pattern in ("__editable__*renderfarm*",
                                                    "renderfarm-*.dist-info/*")
            for p in sorted(site.glob(pattern)) if p.is_file()}


def port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` on loopback (as servers do, with
    SO_REUSEADDR: connections of a previous run waiting out TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- what a user checks ---------------------------------------------------------------------
@dataclass(frozen=True)
class Picture:
    """What the demo's PNG frames are: their size and OpenImageIO's name of their pixel type.

    Blender gives a PNG the scene's colour depth where PNG has it, else 16 bits (README:
    "a 32-bit EXR scene's PNG 16-bit"): the demo writes 32-bit EXR, so its PNGs are 16-bit.
    """

    size: tuple[int, int]
    depth: str

    @classmethod
    def of(cls, scene: dict[str, object]) -> Picture:
        """The PNG frames of a scene as ``renderfarm inspect --json`` describes it."""
        width, height = scene["resolution"]  # type: ignore[misc]
        percentage = int(scene["percentage"])  # type: ignore[call-overload]
        depth = str(scene["output"]["color_depth"])  # type: ignore[index]
        return cls((width * percentage // 100, height * percentage // 100),
                   "uint8" if depth == "8" else "uint16")


@dataclass
class Walk:
    """The walk through the README: where it runs and what the blocks left."""

    terminal: Terminal
    venv: Path
    serve_log: Path
    demo: Picture | None = None
    serve: subprocess.Popen[bytes] | None = None
    serve_block: Block | None = None

    @property
    def folder(self) -> Path:
        """The scratch copy."""
        return self.terminal.folder


def assert_png(path: Path, picture: Picture):  # noqa: ANN201 (numpy array)
    """``path`` is a real PNG of ``picture``'s size and depth with an image in it; returns
    its pixels."""
    import OpenImageIO as oiio

    assert path.is_file(), f"{path.name} was not written"
    inp = oiio.ImageInput.open(str(path))
    assert inp is not None, f"{path} is not an image OpenImageIO reads: {oiio.geterror()}"
    try:
        assert inp.format_name() == "png", f"{path} is {inp.format_name()}, not PNG"
        spec = inp.spec()
        pixels = inp.read_image()  # as stored
    finally:
        inp.close()
    assert str(spec.format) == picture.depth, f"{path} is {spec.format}, not {picture.depth}"
    size = picture.size
    assert (spec.width, spec.height) == size, f"{path} is {spec.width}x{spec.height}, not " \
                                              f"{size[0]}x{size[1]}"
    assert spec.nchannels in (3, 4), f"{path} has {spec.nchannels} channels"
    assert pixels is not None and pixels.max() > pixels.min(), f"{path} is blank"
    return pixels


def assert_frames(folder: Path, names: list[str], picture: Picture | None,
                  same_as: Path | None = None) -> None:
    """Each of ``names`` in ``folder`` is a real PNG of ``picture`` (with the pixels of the file
    of its name in ``same_as``: the farm's frames are the quick start's, bit for bit)."""
    import numpy as np

    assert picture is not None, "the quick start did not run"
    for name in names:
        pixels = assert_png(folder / name, picture)
        if same_as is not None:
            reference = assert_png(same_as / name, picture)
            assert np.array_equal(pixels, reference), \
                f"{folder.name}/{name}'s pixels differ from {same_as.name}/{name}'s"


def demo_names(frames: range) -> list[str]:
    """``demo_0001.png`` ... for ``frames``."""
    return [f"demo_{frame:04d}.png" for frame in frames]


def check_quick_start(walk: Walk, result: Result) -> None:
    """Installed in the venv (the system's renderfarm untouched: checked at the end), then 8
    frames in ``out/``."""
    env = walk.terminal.env
    assert shutil.which("renderfarm", path=env["PATH"]) == str(walk.venv / "bin" / "renderfarm"), \
        "pip install -e did not put renderfarm in the venv"
    where = subprocess.run([str(walk.venv / "bin" / "python"), "-c",
                            "import renderfarm; print(renderfarm.__file__)"],
                           env=env, cwd=walk.venv, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()) == walk.folder / "renderfarm" / "__init__.py", \
        f"the venv imports renderfarm from {where.stdout.strip()}, not the scratch copy"
    inspected = subprocess.run([str(walk.venv / "bin" / "renderfarm"), "inspect",
                                "examples/demo.blend", "--json"], env=env, cwd=walk.folder,
                               capture_output=True, text=True, check=True)
    walk.demo = Picture.of(json.loads(inspected.stdout)["scenes"][0])
    assert re.search(r"(?m)^rendered 8 frame\(s\) in [\d.]+ s on \d+ cpu worker\(s\): "
                     r"out/demo_0001\.png \.\. out/demo_0008\.png$", result.stdout), \
        "no 'rendered 8 frame(s) ... out/demo_0001.png .. out/demo_0008.png' line"
    assert_frames(walk.folder / "out", demo_names(range(1, 9)), walk.demo)


def check_keys(walk: Walk, result: Result) -> None:
    """The service's key pair in ``keys/``, alice's and the wrangler's in ``~/.renderfarm``,
    their public keys in ``keys/clients`` and ``keys/admins``; secrets private."""
    from renderfarm.server.transport import read_key

    home = Path(walk.terminal.env["HOME"])
    keys = walk.folder / "keys"
    for secret in (keys / "server.key_secret", home / ".renderfarm" / "alice.key_secret",
                   home / ".renderfarm" / "wrangler.key_secret"):
        assert secret.is_file(), f"{secret} was not made"
        assert secret.stat().st_mode & 0o077 == 0, f"{secret} is readable by others"
        public = secret.with_suffix(".key")
        assert public.is_file(), f"{public} was not made"
        assert f"public key {read_key(str(public)).public} in " in result.stdout, \
            f"it did not print {public.name}'s key"
    for copy, original in ((keys / "clients" / "alice.key", home / ".renderfarm/alice.key"),
                           (keys / "admins" / "wrangler.key",
                            home / ".renderfarm/wrangler.key")):
        assert copy.is_file() and copy.read_bytes() == original.read_bytes(), \
            f"{copy} is not a copy of {original}"
    assert "public key " in result.stdout and "in keys/server.key" in result.stdout


def option(block: Block, name: str) -> str:
    """The value of ``--name VALUE`` in a block."""
    found = re.search(rf"{re.escape(name)}[ =](\S+)", block.text)
    assert found, f"{block.name} has no {name}"
    return found[1]


def start_serve(walk: Walk, block: Block) -> None:
    """Start the serve block in the background and wait for its ready lines; check them."""
    bind, http = option(block, "--bind"), option(block, "--http")
    port, http_port = int(bind.rsplit(":", 1)[1]), int(http.rsplit(":", 1)[1])
    for taken in (p for p in (port, port + 1, http_port) if not port_free(p)):
        pytest.fail(f"{block.name}: port {taken} is taken by another program on this "
                    "machine; the README's serve block needs it (and the next one)")
    walk.serve, walk.serve_block = walk.terminal.start(block, walk.serve_log), block
    deadline = time.monotonic() + SERVE_READY_TIMEOUT
    while "renderfarm serve: Ray: " not in (said := walk.serve_log.read_text()):
        if walk.serve.poll() is not None:
            pytest.fail(f"{block.name} exited ({walk.serve.returncode}) before it served:\n"
                        f"{said[-3000:]}{context(walk, serve_log=False)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{block.name} did not say it serves in {SERVE_READY_TIMEOUT:.0f} s:\n"
                        f"{said[-3000:]}")
        time.sleep(0.3)
    time.sleep(0.2)  # the rest of the line
    said = walk.serve_log.read_text()
    host = bind.rsplit(":", 1)[0]
    expected = [f"renderfarm serve: requests on {bind} (keyed: clients in "
                f"{option(block, '--clients')})",
                f"renderfarm serve: events on {host}:{port + 1}",
                f"renderfarm serve: web app and HTTP API on http://{http}/",
                "renderfarm serve: state (job database) in farm-state",
                f"renderfarm serve: storage {walk.folder / option(block, '--storage')}",
                "renderfarm serve: Ray: its own, started on this machine (GCS "]
    for line in expected:
        assert line in said, f"{block.name}: no line {line!r} in what it said:\n{said}"


def stop_serve(walk: Walk) -> None:
    """Ctrl-C the serve block's terminal (SIGINT to its process group): it says it stopped
    and exits 0."""
    assert walk.serve is not None and walk.serve_block is not None
    kill_group(walk.serve.pid, signal.SIGINT)
    try:
        code = walk.serve.wait(120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{walk.serve_block.name} did not stop within 120 s of Ctrl-C:\n"
                    f"{walk.serve_log.read_text()[-3000:]}")
    finally:
        kill_group(walk.serve.pid)
    said = walk.serve_log.read_text()
    assert "renderfarm serve: stopped; unfinished jobs resume at the next start" in said, \
        f"{walk.serve_block.name} did not say it stopped:\n{said[-3000:]}"
    assert code == 0, f"{walk.serve_block.name} exited {code} on Ctrl-C:\n{said[-3000:]}"


def context(walk: Walk, serve_log: bool = True) -> str:
    """For a failure message: the end of what the serve block said, if it ended, and the
    files the scratch copy lacks because git does not track them."""
    said = ""
    if serve_log and walk.serve is not None and walk.serve.poll() is not None:
        said = (f"\n--- the serve block exited ({walk.serve.returncode}); it said ---\n"
                f"{walk.serve_log.read_text()[-3000:]}")
    missing = untracked()
    if missing:
        said += ("\n--- not in git, so not in the scratch copy (a clone lacks them too): "
                 f"{', '.join(missing[:20])}")
    return said


def check_submit_wait(walk: Walk, result: Result) -> None:
    """Uploaded, followed, fetched: frames 1-4 in ``out/farm/``, the quick start's pixels."""
    assert re.search(r"(?m)^\d{8}-\d{6}-[0-9a-f]{6}: sent 1 of 1 file\(s\), \d+ of \d+ bytes$",
                     result.stderr), "no 'JOB: sent 1 of 1 file(s), ...' line"
    assert re.search(r"(?m) running tasks \d+/16 frames \d/4$", result.stderr), \
        "it did not follow the job"
    last = result.lines()[-1] if result.lines() else ""
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6} done in [\d.]+ s: 4 frame\(s\) in out/farm",
                        last), f"its last line is {last!r}, not 'JOB done in ... s: 4 frame(s) " \
                               "in out/farm'"
    assert_frames(walk.folder / "out" / "farm", demo_names(range(1, 5)), walk.demo,
                  same_as=walk.folder / "out")


def check_fetch(walk: Walk, result: Result) -> None:
    """``$JOB`` is the new job's id, nothing was sent again, and ``fetch`` delivered frames
    5-8 (the quick start's pixels) and listed them."""
    job = walk.terminal.var("JOB")
    assert JOB_ID.match(job), f"$JOB is {job!r}, not a job's id"
    assert re.search(rf"(?m)^{job}: sent 0 of 1 file\(s\), 0 of \d+ bytes \(the farm had the "
                     r"rest\)$", result.stderr), "the second submit sent files again"
    names = demo_names(range(5, 9))
    assert result.lines() == [f"delivered/{name}" for name in names], \
        f"fetch listed {result.lines()}"
    assert_frames(walk.folder / "delivered", names, walk.demo,
                  same_as=walk.folder / "out")


def check_report(walk: Walk, result: Result) -> None:
    """The summary with each delivered file's SHA-256, the HTML page, and ``--check``
    finding every file as the farm wrote it."""
    job = walk.terminal.var("JOB")
    assert f"job {job} done: 4 frame(s)" in result.stdout, "no summary of the job"
    for name in demo_names(range(5, 9)):
        digest = hashlib.sha256((walk.folder / "delivered" / name).read_bytes()).hexdigest()
        assert f"  {digest}  {name}" in result.lines(), f"no SHA-256 line for {name}"
        assert f"ok       {name}" in result.lines(), f"--check did not find {name} ok"
    page = walk.folder / "report.html"
    assert page.is_file() and "<html" in page.read_text().lower(), "no report.html"
    assert "report written to report.html" in result.stderr
    assert "4 of 4 file(s) as the farm wrote them" in result.stderr


def check_api(walk: Walk, result: Result) -> None:
    """The HTTP API answers the job's status as JSON."""
    try:
        reply = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"curl printed no JSON: {result.stdout[:500]!r}") from None
    assert reply.get("ok") is True, f"the API refused: {reply}"
    assert reply["job"]["job_id"] == walk.terminal.var("JOB"), reply
    assert reply["job"]["state"] == "done" and reply["job"]["frames_done"] == 4, reply


def check_web_token(walk: Walk, result: Result) -> None:
    """Asked of the farm and computed by the administrator: the same token, alice's."""
    tokens = result.lines()
    assert len(tokens) == 2 and tokens[0] == tokens[1] and re.fullmatch(r"\S{20,}", tokens[0]), \
        f"not one token twice: {tokens}"
    used = walk.terminal.var("TOKEN")
    assert used in ("", tokens[0]), f"not the token the curl block used ({used})"


@dataclass(frozen=True)
class Step:
    """What the test does with the sh block ``pattern`` finds (a multi-line regex).

    Attributes:
        what: the step's name in messages.
        pattern: finds its block (exactly one).
        check: run after the block ran (exit code 0 is checked first).
        how: ``run``; ``serve`` (started in the background, stopped at the end); ``ci``
            (not run: ``.ci/run`` runs it).
    """

    what: str
    pattern: str
    check: Callable[[Walk, Result], None] | None = None
    how: str = "run"


STEPS = (
    Step("quick start", r"^pip install -e '\.\[blender\]' && renderfarm render ",
         check_quick_start),
    Step("test command", TEST_COMMAND, how="ci"),
    Step("key set-up", r"^renderfarm keys ", check_keys),
    Step("serve", r"^renderfarm serve ", how="serve"),
    Step("submit --wait", r"^renderfarm submit .* --wait ", check_submit_wait),
    Step("submit, fetch", r"^renderfarm fetch ", check_fetch),
    Step("report", r"^renderfarm report ", check_report),
    Step("HTTP API", r"^curl ", check_api),
    Step("web-token", r"^renderfarm web-token --farm ", check_web_token),
)


def plan(blocks: list[Block]) -> list[tuple[Block, Step]]:
    """Each sh block with its step, in README order.

    Raises:
        AssertionError: a block no step (or two) matches, or a step no block matches.
    """
    pairs: list[tuple[Block, Step]] = []
    problems: list[str] = []
    for block in (b for b in blocks if b.info == "sh"):
        steps = [s for s in STEPS if re.search(s.pattern, block.text, re.MULTILINE)]
        if len(steps) != 1:
            problems.append(f"{block.name}: matches {[s.what for s in steps] or 'no step'} of "
                            "tests/test_readme.py's STEPS (one step, with its checks, each)")
        else:
            pairs.append((block, steps[0]))
    for step in STEPS:
        found = sum(s is step for _, s in pairs)
        if found != 1:
            problems.append(f"step {step.what!r} ({step.pattern}) matches {found} sh blocks")
    assert not problems, "\n".join(problems)
    return pairs


@pytest.fixture()
def walk(tmp_path: Path) -> Iterator[Walk]:
    """A scratch copy, a scratch home and a venv; the serve block stopped at the end."""
    for tool in ("bash", "git", "curl", "grep"):
        if shutil.which(tool) is None:
            pytest.fail(f"the README's blocks need {tool}, which this machine lacks")
    folder = scratch_copy(tmp_path / "renderfarm")
    home = tmp_path / "home"
    home.mkdir()
    venv = make_venv(tmp_path / "venv")
    the_walk = Walk(Terminal(folder, fresh_env(home, venv)), venv, tmp_path / "serve.log")
    try:
        yield the_walk
    finally:
        if the_walk.serve is not None and the_walk.serve.poll() is None:
            kill_group(the_walk.serve.pid, signal.SIGINT)
            try:
                the_walk.serve.wait(60)
            except subprocess.TimeoutExpired:
                pass
        if the_walk.serve is not None:
            kill_group(the_walk.serve.pid)
        # the quick start left the local farm its next commands would reuse: stopped
        subprocess.run([str(venv / "bin" / "python"), "-m", "renderfarm", "local-farm", "stop"],
                       env=the_walk.terminal.env, capture_output=True, timeout=120,
                       check=False)


@pytest.mark.blender
@pytest.mark.ray
def test_every_sh_block_runs_as_written(walk: Walk) -> None:
    """Every sh block of the README, in order, exactly as written, checked as a user would."""
    steps = plan(read_blocks())
    installed = installed_renderfarm()
    ran: list[str] = []
    for block, step in steps:
        if step.how == "ci":
            continue  # test_the_test_command_is_what_ci_runs
        if step.how == "serve":
            start_serve(walk, block)
            ran.append(f"{step.what}: started")
            continue
        started = time.monotonic()
        result = walk.terminal.run(block)
        if result.returncode != 0:
            pytest.fail(f"{block.name} ({step.what}) exited {result.returncode} "
                        f"(bash -e -c BLOCK in {walk.folder}):\n"
                        f"{tails(result.stdout, result.stderr)}{context(walk)}")
        try:
            if step.check is not None:
                step.check(walk, result)
        except AssertionError as exc:
            pytest.fail(f"{block.name} ({step.what}): {exc}\n"
                        f"{tails(result.stdout, result.stderr)}{context(walk)}")
        ran.append(f"{step.what}: {time.monotonic() - started:.1f} s")
    if walk.serve is not None:
        stop_serve(walk)
    assert installed_renderfarm() == installed, \
        "the quick start changed the renderfarm installation the tests run with"
    print("README blocks:", "; ".join(ran))
