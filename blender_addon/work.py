"""The add-on's background work: pack the saved copy's unsaved images, bundle it with every
file it depends on (Blender Asset Tracer), upload what the farm lacks, submit, follow the job.

Nothing here touches ``bpy``: it runs on a thread (or inline in a blocking ``execute``) and
reports through a queue of small messages that only the main thread applies (``live.py``).
Packing runs in a child Blender so the artist's session is never changed by it; libraries,
textures, caches, movie clips, fonts and sounds go through the bundle
(:func:`renderfarm.bundle.make_bundle`), not Blender's packing.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: the file, beside the saved copy, naming the pixels of images painted and never saved
UNSAVED_PIXELS = "unsaved-images.json"

_PACK_SCRIPT = r"""
import json, os, sys
import bpy
import numpy as np
source, target = sys.argv[-2], sys.argv[-1]
bpy.ops.wm.open_mainfile(filepath=source, load_ui=False, use_scripts=False)
notes, packed = [], []
listing = os.path.join(os.path.dirname(source), "unsaved-images.json")
unsaved = json.load(open(listing)) if os.path.exists(listing) else {}
for name, entry in unsaved.items():  # painted, never saved: only the artist's Blender had them
    image = bpy.data.images.get(name)
    if image is None:
        continue
    try:
        pixels = np.load(os.path.join(os.path.dirname(source), entry["file"]))
        if list(image.size) != entry["size"]:
            image.scale(*entry["size"])
        image.pixels.foreach_set(pixels)
        image.pack()
        packed.append(name)
    except (RuntimeError, ValueError, OSError) as exc:
        notes.append(f"{name}: {str(exc).strip()}")
bpy.ops.wm.save_as_mainfile(filepath=target, compress=True, copy=True)
print("RENDERFARM-PACK " + json.dumps({"notes": notes, "packed": packed}))
"""


@dataclass(frozen=True)
class Stage:
    """Where the submission is (``packing``, ``uploading``, ``submitted``, ...)."""

    stage: str
    text: str = ""
    fraction: float = 0.0


@dataclass(frozen=True)
class Submitted:
    """The farm queued the job."""

    job_id: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobUpdate:
    """A job event from the farm (progress, state)."""

    event: dict[str, Any]


@dataclass(frozen=True)
class TilePreview:
    """A finished tile's pixels (8-bit RGBA, top row first) and where they go."""

    frame: int
    x: int
    y: int
    width: int
    height: int
    frame_width: int
    frame_height: int
    rgba: bytes


@dataclass(frozen=True)
class Finished:
    """The job ended; ``outputs`` are the frames fetched to the output folder (each checked
    against the SHA-256 the farm recorded); ``summary`` is its report's summary (time,
    device-seconds, cost, verification)."""

    state: str
    outputs: dict[int, str] = field(default_factory=dict)
    message: str = ""
    summary: tuple[str, ...] = ()
    #: for a failed job, the last lines Blender printed in a failed task
    log: str = ""


@dataclass(frozen=True)
class Failed:
    """The submission or the job failed; ``reason`` says why, for a Blender report."""

    reason: str


@dataclass(frozen=True)
class Connection:
    """How to reach the farm (from the add-on's preferences)."""

    address: str
    server_key: str = ""
    client_public: str = ""
    client_secret: str = ""
    timeout: float = 15.0
    online_access: bool = True

    def check(self) -> None:
        """Refuse a farm Blender may not reach.

        Raises:
            ValueError: Blender's online access is off and the farm is not on this machine,
                or the keys are half given.
        """
        host = urlsplit(self.address).hostname or ""
        local = self.address.startswith("ipc://") or host in ("localhost", "::1") \
            or host.startswith("127.")
        if not self.online_access and not local:
            raise ValueError(f"Blender's online access is off, so the farm at {self.address} "
                             "cannot be reached: allow it in Preferences > System > Network "
                             "(farms on this machine work without it)")
        if bool(self.server_key) != bool(self.client_public and self.client_secret):
            raise ValueError("give both the farm's public key and this client's key pair in "
                             "the add-on's preferences (or neither, for a farm on this "
                             "machine without keys)")

    def client(self) -> Any:
        """A :class:`renderfarm.client.FarmClient` for this thread."""
        from renderfarm.client import FarmClient
        from renderfarm.server.transport import KeyPair

        keys = KeyPair(self.client_public, self.client_secret) if self.client_secret else None
        return FarmClient(self.address, server_key=self.server_key or None, client_key=keys,
                          timeout=self.timeout)


def pack_command(blender: str, source: Path, target: Path) -> list[str]:
    """The command that packs ``source`` into ``target`` in a child Blender.

    ``blender`` is Blender's executable, or empty when Blender runs as the ``bpy`` module of
    this Python (then the child is this Python importing ``bpy``).
    """
    if blender:
        return [blender, "--background", "--factory-startup", "--python-expr", _PACK_SCRIPT,
                "--", str(source), str(target)]
    return [sys.executable, "-c", _PACK_SCRIPT, str(source), str(target)]


class Submission:
    """One "Render on Network": pack, upload, submit, then follow the job.

    Args:
        connection: the farm.
        copy: the saved copy of the artist's scene (removed when done).
        blender: Blender's executable ('' when running as the bpy module).
        spec: job fields for :meth:`renderfarm.client.FarmClient.submit`.
        priority: the job's priority.
        filename: the name the farm shows.
        output_dir: where finished frames are fetched.
        project: the folder of the artist's ``.blend``: the files of the compositor's File
            Output nodes are fetched to their paths from it (``//passes/``), as Blender
            writes them; None: into ``output_dir``.
    """

    def __init__(self, connection: Connection, copy: Path, blender: str, spec: dict[str, Any],
                 priority: int, filename: str, output_dir: Path,
                 project: Path | None = None) -> None:
        self.connection = connection
        self.copy = copy
        self.blender = blender
        self.spec = spec
        self.priority = priority
        self.filename = filename
        self.output_dir = output_dir
        self.project = project
        self.messages: queue.Queue[Any] = queue.Queue()
        self.job_id: str | None = None
        self.cancel_requested = threading.Event()
        self.ended = threading.Event()
        self.thread: threading.Thread | None = None
        self._client: Any = None
        self.warnings: list[str] = []

    # -- steps -------------------------------------------------------------------------------
    def prepare(self) -> bool:
        """Pack, upload and submit; False (with a :class:`Failed` message) on failure."""
        try:
            self.connection.check()
            self.messages.put(Stage("packing", "packing unsaved images, bundling files"))
            packed = self._pack()
            self._client = self.connection.client()
            self._client.subscribe()  # before submitting, so no early event is missed
            self.messages.put(Stage("uploading", "uploading", 0.0))
            job_id = self._client.submit(
                packed, self.spec, priority=self.priority, filename=self.filename,
                progress=lambda done, total: self.messages.put(
                    Stage("uploading", f"uploading {done / 1e6:.1f} of {total / 1e6:.1f} MB",
                          done / max(total, 1))))
            self.job_id = job_id
            sent = self._client.last_transfer
            if sent:
                self.warnings.append(
                    f"sent {sent['sent_files']} of {sent['bundle_files']} file(s), "
                    f"{sent['sent_bytes'] / 1e6:.1f} of {sent['bundle_bytes'] / 1e6:.1f} MB")
            self.messages.put(Submitted(job_id, tuple(self.warnings)))
            return True
        except Exception as exc:  # every failure reaches the artist as a report
            self._fail(exc)
            if self._client is not None:
                self._client.close()
                self._client = None
            return False
        finally:
            self._remove_copy()

    def follow(self) -> None:
        """Forward the job's events and previews until it ends; then fetch its frames."""
        try:
            assert self._client is not None and self.job_id is not None
            client, job_id = self._client, self.job_id
            cancel_sent = False

            def send_cancel() -> None:
                nonlocal cancel_sent
                if self.cancel_requested.is_set() and not cancel_sent:
                    client.cancel(job_id)
                    cancel_sent = True

            for event in client.events(job_id, previews=True, on_idle=send_cancel):
                if event["kind"] == "preview":
                    self.messages.put(TilePreview(
                        event["frame"], event["x"], event["y"], event["width"],
                        event["height"], event["frame_width"], event["frame_height"],
                        event["rgba"]))
                else:
                    self.messages.put(JobUpdate(event))
            job = client.status(job_id)
            outputs = {int(k): str(v) for k, v in
                       client.fetch_outputs(job_id, self.output_dir,
                                            extras_folder=self.project).items()}
            log = self._failure_log(client, job_id) if job["state"] == "failed" else ""
            self.messages.put(Finished(job["state"], outputs, job.get("error") or "",
                                       self._summary(client, job_id), log))
        except Exception as exc:
            self._fail(exc)
        finally:
            if self._client is not None:
                self._client.close()
            self.ended.set()

    def start(self) -> None:
        """Run :meth:`prepare` and :meth:`follow` on a thread."""
        def run() -> None:
            if self.prepare():
                self.follow()
            else:
                self.ended.set()

        self.thread = threading.Thread(target=run, name="renderfarm-submit", daemon=True)
        self.thread.start()

    def cancel(self) -> None:
        """Ask the farm to cancel the job (sent from the submission's own thread)."""
        self.cancel_requested.set()

    # -- helpers -----------------------------------------------------------------------------
    def _pack(self) -> Path:
        target = self.copy.parent / "packed" / self.copy.name  # the farm shows its name
        target.parent.mkdir(exist_ok=True)
        proc = subprocess.run(pack_command(self.blender, self.copy, target),
                              capture_output=True, text=True, timeout=600, check=False)
        report = None
        for line in proc.stdout.splitlines():
            if line.startswith("RENDERFARM-PACK "):
                report = json.loads(line[len("RENDERFARM-PACK "):])
        if proc.returncode != 0 or report is None or not target.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError("packing the scene failed: " + (" / ".join(tail) or
                                                                f"exit {proc.returncode}"))
        self.warnings = [f"not packed: {note}" for note in report["notes"]]
        return target

    def _remove_copy(self) -> None:
        for path in (self.copy, self.copy.parent / "packed" / self.copy.name,
                     self.copy.parent / UNSAVED_PIXELS, *self.copy.parent.glob("unsaved-*.npy")):
            try:
                path.unlink()
            except OSError:
                pass
        for folder in (self.copy.parent / "packed", self.copy.parent):
            try:
                folder.rmdir()
            except OSError:
                pass

    @staticmethod
    def _summary(client: Any, job_id: str) -> tuple[str, ...]:
        """The job's report summary, or nothing when the farm cannot give one (an older
        farm): the frames matter more than the summary."""
        from renderfarm.errors import RenderFarmError
        from renderfarm.report import summary_lines

        try:
            return tuple(summary_lines(client.report(job_id)))
        except (RenderFarmError, KeyError, TypeError) as exc:
            return (f"no report: {exc}",)

    @staticmethod
    def _failure_log(client: Any, job_id: str, lines: int = 8) -> str:
        """The end of what Blender printed in the job's last failed task ('' if none)."""
        from renderfarm.errors import RenderFarmError

        try:
            failed = [e for e in client.log(job_id, failed=True) if e.get("log")]
        except (RenderFarmError, KeyError, TypeError):
            return ""
        if not failed:
            return ""
        last = failed[-1]
        tail = "\n".join(last["log"].splitlines()[-lines:])
        return f"frame {last['frame']} on {last['worker']}, Blender said:\n{tail}"

    def _fail(self, exc: BaseException) -> None:
        message = getattr(exc, "one_line", None)
        reason = message() if callable(message) else str(exc) or type(exc).__name__
        self.messages.put(Failed(reason))


def copy_folder() -> Path:
    """A fresh folder for the saved copy of the scene."""
    return Path(tempfile.mkdtemp(prefix="renderfarm-submit-"))
