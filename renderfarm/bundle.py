"""Bundles: a ``.blend`` and every file it depends on, content-addressed.

A job names content hashes, never the artist's paths. :func:`make_bundle` walks a ``.blend``
with Blender Asset Tracer (no Blender needed): linked libraries and their own dependencies,
images, UDIM sets, image sequences, movie clips, fonts, sounds, point caches and
VDB/Alembic/USD caches. ``.blend`` files whose paths must change are rewritten (relative
paths, files outside the project under ``_outside_project/``), so the bundle renders wherever
it is unpacked. The result is a :class:`Manifest`: each file's place in the bundle, SHA-256
and size, plus what the scene needs and could not be found.

Files travel by hash: :func:`publish` stores the ones the farm's storage lacks under
``files/<sha256>``; a worker node keeps them in a :class:`NodeCache` (size-limited, LRU,
verified on arrival, shared by the node's workers) and :func:`materialise` lays a bundle out
from it. Nothing in a bundle may land outside its folder.

Blender Asset Tracer is imported inside the functions that use it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from renderfarm.errors import BlendFileError, BundleError, IntegrityError
from renderfarm.locks import file_lock

logger = logging.getLogger(__name__)

#: default limit of one bundle's total size
MAX_BUNDLE_BYTES = 64 * 1024**3
#: default size of a node's file cache
NODE_CACHE_BYTES = 32 * 1024**3
#: the most files one bundle may hold
MAX_BUNDLE_FILES = 200_000
_BAT_INFO = "pack-info.txt"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def storage_key(sha256: str) -> str:
    """The storage key of a file's content."""
    return f"files/{sha256}"


def safe_relpath(path: str) -> str:
    """``path`` as a plain relative POSIX path inside a bundle.

    Raises:
        BundleError: the path is absolute, empty, has ``..``, a drive, a backslash or a NUL.
    """
    if not isinstance(path, str) or not path or len(path) > 4096:
        raise BundleError(f"bundle path {path!r} is empty or too long")
    if "\\" in path or "\0" in path or path.startswith("/") or ":" in path.split("/")[0]:
        raise BundleError(f"bundle path {path!r} is absolute or not a POSIX path; a bundle "
                          "holds only paths relative to its folder")
    parts = PurePosixPath(path).parts
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise BundleError(f"bundle path {path[:80]!r}... has a name longer than 255 bytes")
    if any(p in ("..", ".", "") for p in path.split("/")) or not parts:
        raise BundleError(f"bundle path {path!r} leaves the bundle (or has '.' or empty "
                          "parts); a bundle holds only paths inside its folder")
    return "/".join(parts)


def _is_sha(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(
        c in "0123456789abcdef" for c in value)


@dataclass(frozen=True)
class BundleFile:
    """One file of a bundle.

    Attributes:
        path: where it lies in the bundle (relative POSIX path).
        sha256: its content's hash.
        size: its size in bytes.
        source: where the client read it (not sent to the farm).
    """

    path: str
    sha256: str
    size: int
    source: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds.

    Attributes:
        root: the path of the ``.blend`` to open, inside the bundle.
        files: every file, the root included.
        missing: files the scene needs that could not be found, as the scene names them.
    """

    root: str
    files: tuple[BundleFile, ...]
    missing: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        """The bundle's size."""
        return sum(f.size for f in self.files)

    @property
    def digest(self) -> str:
        """A hash of the whole bundle (its layout and every file's content)."""
        text = json.dumps([self.root, sorted((f.path, f.sha256) for f in self.files)],
                          separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def hashes(self) -> list[str]:
        """The distinct content hashes of the bundle's files."""
        return sorted({f.sha256 for f in self.files})

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-friendly data (what a client sends the farm)."""
        return {"root": self.root, "missing": list(self.missing),
                "files": [{"path": f.path, "sha256": f.sha256, "size": f.size}
                          for f in self.files]}

    @classmethod
    def from_dict(cls, data: Any, max_bytes: int | None = None,
                  max_files: int = MAX_BUNDLE_FILES) -> Manifest:
        """A manifest from (untrusted) data, checked.

        Raises:
            BundleError: the data is malformed, a path leaves the bundle, the root is not a
                ``.blend`` of the bundle, or the bundle is over ``max_bytes``.
        """
        if not isinstance(data, dict) or not isinstance(data.get("files"), list):
            raise BundleError("a bundle manifest must be an object with a list of files")
        entries = data["files"]
        if len(entries) > max_files:
            raise BundleError(f"the bundle has {len(entries)} files, more than the "
                              f"{max_files} a bundle may hold")
        files = []
        seen: set[str] = set()
        for entry in entries:
            if not isinstance(entry, dict) or set(entry) - {"path", "sha256", "size"}:
                raise BundleError(f"bundle entry {entry!r} is not {{path, sha256, size}}")
            path = safe_relpath(entry.get("path"))
            size = entry.get("size")
            if not _is_sha(entry.get("sha256")) or isinstance(size, bool) or \
                    not isinstance(size, int) or size < 0:
                raise BundleError(f"bundle entry {path!r} needs a SHA-256 and a size")
            if path.lower() in seen:
                raise BundleError(f"bundle path {path!r} appears twice")
            seen.add(path.lower())
            files.append(BundleFile(path, entry["sha256"], size))
        missing = data.get("missing", [])
        if not isinstance(missing, list) or not all(isinstance(m, str) and len(m) < 4096
                                                    for m in missing) or len(missing) > 10_000:
            raise BundleError("a bundle's missing files must be a list of paths")
        root = safe_relpath(data.get("root"))
        if root not in {f.path for f in files} or not root.lower().endswith(".blend"):
            raise BundleError(f"the bundle's root {root!r} is not one of its .blend files")
        folders = {"/".join(f.path.split("/")[:i]).lower() for f in files
                   for i in range(1, f.path.count("/") + 1)}
        clash = sorted(seen & folders)
        if clash:
            raise BundleError(f"bundle path {clash[0]!r} is both a file and a folder")
        manifest = cls(root, tuple(files), tuple(missing))
        check_size(manifest, max_bytes)
        return manifest


def check_size(manifest: Manifest, max_bytes: int | None) -> None:
    """Refuse a bundle over ``max_bytes``.

    Raises:
        BundleError: the bundle is larger than the limit.
    """
    if max_bytes is not None and manifest.total_bytes > max_bytes:
        raise BundleError(
            f"the bundle is {manifest.total_bytes / 1e6:.1f} MB, over the farm's limit of "
            f"{max_bytes / 1e6:.1f} MB; render with --files shared from a file server, or "
            "ask the farm's administrator to raise the limit")


def frame_size(path: str, scene: str | None = None,
               percentage: int | None = None) -> tuple[int, int] | None:
    """The size of the frames a scene of a ``.blend`` renders (resolution times percentage,
    the render border ignored), read without Blender; None when it cannot be told (several
    scenes and none named, a file Blender Asset Tracer cannot read): Blender's inspection
    on the farm tells it then.

    Args:
        path: the ``.blend``.
        scene: the scene's name (default: the one the file was saved showing).
        percentage: the job's resolution percentage (default: the scene's).
    """
    try:
        from blender_asset_tracer import blendfile

        opened = blendfile.open_cached(Path(path))
        scenes = {b.id_name[2:].decode("utf-8", "replace"): b
                  for b in opened.find_blocks_from_code(b"SC")}
        if scene is None:  # the scene the file was saved showing (FileGlobal.curscene)
            shown = None
            for glob in opened.find_blocks_from_code(b"GLOB"):
                shown = glob.get_pointer(b"curscene")
                break
            block = shown if shown is not None else (
                next(iter(scenes.values())) if len(scenes) == 1 else None)
        else:
            block = scenes.get(scene)
        if block is None:
            return None
        x, y = int(block.get((b"r", b"xsch"))), int(block.get((b"r", b"ysch")))
        size = int(percentage if percentage is not None else block.get((b"r", b"size")))
    except Exception as exc:  # Blender reads it on the farm and says what is wrong
        logger.debug("cannot read the frame size of %s: %s", path, exc)
        return None
    return x * size // 100, y * size // 100


# ------------------------------------------------------------------------------------------
# making a bundle (client side, no Blender)
# ------------------------------------------------------------------------------------------
def _recorder_class() -> type:
    """A Blender Asset Tracer transferer that moves rewritten ``.blend`` files into the
    bundle folder and only records the other files (they are hashed and sent from where they
    are, never copied)."""
    from blender_asset_tracer.pack import transfer

    class Recorder(transfer.FileTransferer):  # type: ignore[misc]
        """Records what BAT would copy or move; :meth:`apply` moves the rewritten files
        afterwards (BAT still reads a file's size after queueing it)."""

        def __init__(self) -> None:
            super().__init__()
            self.daemon = True
            self.recorded: list[tuple[Path, Path, bool]] = []

        def run(self) -> None:
            import queue as queue_module

            while True:
                try:
                    src, dst, action = self.queue.get(timeout=0.01)
                except queue_module.Empty:
                    if self.done.is_set() or self._abort.is_set():
                        return
                    continue
                self.recorded.append((Path(src), Path(dst), action == transfer.Action.MOVE))

        def join(self, timeout: float | None = None) -> None:
            # BAT's join polls its progress queue for 0.5 s at a time; nothing reports here
            threading.Thread.join(self, timeout)
            self.progress_cb.flush()

        def apply(self) -> list[tuple[Path, Path]]:
            """Move the rewritten files into place; (where to read it, its place)."""
            files = []
            for src, dst, move in self.recorded:
                if move:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(src), str(dst))
                    files.append((dst, dst))
                else:
                    files.append((src, dst))
            return files

    return Recorder


_BAT_PATCHED = False


def _patch_bat() -> None:
    """Mend Blender Asset Tracer 1.23 for Blender 5.0 files.

    For files of Blender 5.0 (subversion 4 and later) BAT looks for a node tree in the
    ``compositing_node_group`` field of *every* ID, where only scenes have it; materials,
    worlds, lights and textures keep theirs in ``nodetree``. Their images were then never
    traced when the ID came from a linked library (a library's own textures were left out
    of bundles). Read the field each ID's DNA has.

    BAT also names a sound strip's file from the strip's own folder and name, although
    Blender reads it through the strip's sound, which BAT traces on its own and skips when
    it is packed: a packed sound was reported missing. Sound strips' files are left to
    their sounds.
    """
    global _BAT_PATCHED
    if _BAT_PATCHED:
        return
    from blender_asset_tracer import cdefs
    from blender_asset_tracer.blendfile import iterators
    from blender_asset_tracer.trace import blocks2assets, expanders

    scene_assets = blocks2assets._funcs_for_code[b"SC"]  # noqa: SLF001
    sound_types = {cdefs.SEQ_TYPE_SOUND_RAM, cdefs.SEQ_TYPE_SOUND_HD}

    def scene_without_sound_strips(block: Any) -> Iterator[Any]:
        editor = block.get_pointer(b"ed")
        sounds = set()
        if editor is not None:
            for strip, kind in iterators.sequencer_strips(editor):
                data = strip.get_pointer(b"strip") if kind in sound_types else None
                if data is not None:
                    sounds.add(data.addr_old)
        for usage in scene_assets(block):
            if getattr(usage.block, "addr_old", None) not in sounds:
                yield usage

    blocks2assets._funcs_for_code[b"SC"] = scene_without_sound_strips  # noqa: SLF001

    def nodetree_id(block: Any) -> Iterator[Any]:
        for name in (b"nodetree", b"compositing_node_group"):
            if block.dna_type.has_field(name):
                tree = block.get_pointer(name, None)
                if tree is not None:
                    yield from expanders._expand_generic_nodetree(tree)  # noqa: SLF001

    expanders._expand_generic_nodetree_id = nodetree_id  # noqa: SLF001
    _BAT_PATCHED = True


def make_bundle(blend: str | os.PathLike[str], folder: str | os.PathLike[str],
                project: str | os.PathLike[str] | None = None,
                max_bytes: int | None = None) -> Manifest:
    """Bundle ``blend`` and every file it depends on.

    Rewritten ``.blend`` files are written into ``folder``; other files stay where they are
    (``BundleFile.source``) until :func:`publish` sends them.

    Args:
        blend: the ``.blend`` to render.
        folder: an empty folder for the bundle's rewritten files.
        project: the project folder the bundle keeps paths relative to (default: the
            ``.blend``'s folder); files outside it go under ``_outside_project/``.
        max_bytes: refuse bundles larger than this.

    Raises:
        BundleError: Blender Asset Tracer cannot read a file, or the bundle is too large.
    """
    from blender_asset_tracer.pack import Packer

    _patch_bat()
    blend_path = Path(os.path.abspath(blend))
    project_path = Path(os.path.abspath(project)) if project else blend_path.parent
    target = Path(os.path.abspath(folder))
    target.mkdir(parents=True, exist_ok=True)
    recorder_class = _recorder_class()
    recorder = recorder_class()
    try:
        with Packer(blend_path, project_path, str(target)) as packer:
            packer._create_file_transferer = lambda: recorder  # noqa: SLF001 - BAT's hook
            try:
                packer.strategise()
                packer.execute()
            finally:
                recorder.abort()
            placed = recorder.apply()  # before BAT removes its folder of rewritten files
            root = Path(packer.output_path)
            missing = sorted(str(p) for p in packer.missing_files)
    except BundleError:
        raise
    except Exception as exc:
        raise _bat_error(exc, blend_path) from exc
    (target / _BAT_INFO).unlink(missing_ok=True)
    files: dict[str, BundleFile] = {}
    for source, dst in placed:
        if not source.is_file():
            continue
        try:
            rel = safe_relpath(dst.relative_to(target).as_posix())
        except ValueError as exc:
            raise BundleError(f"a dependency would land outside the bundle: {dst}",
                              path=str(source)) from exc
        files[rel] = BundleFile(rel, file_sha256(source), source.stat().st_size, str(source))
    missing = sorted(set(missing) | set(_trace(blend_path)[1]))
    root_rel = safe_relpath(root.relative_to(target).as_posix())
    if root_rel not in files:  # nothing of it needed rewriting: BAT copied it
        files[root_rel] = BundleFile(root_rel, file_sha256(blend_path),
                                     blend_path.stat().st_size, str(blend_path))
    manifest = Manifest(root_rel, tuple(sorted(files.values(), key=lambda f: f.path)),
                        tuple(missing))
    check_size(manifest, max_bytes)
    return manifest


class BundleCache:
    """Manifests made before, reused while none of their files changed (size and mtime of
    each file, and no missing file has appeared): a farm that renders the same shot again
    does not walk and hash it again.

    Args:
        size: how many manifests it keeps (the oldest goes first).
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._entries: dict[tuple[str, str], tuple[Manifest, dict[str, tuple[int, int]],
                                                   Path]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _stats(manifest: Manifest) -> dict[str, tuple[int, int]] | None:
        stats = {}
        for entry in manifest.files:
            try:
                stat = os.stat(entry.source or "")
            except OSError:
                return None
            stats[str(entry.source)] = (stat.st_size, stat.st_mtime_ns)
        return stats

    def make(self, blend: str | os.PathLike[str],
             project: str | os.PathLike[str] | None = None,
             max_bytes: int | None = None) -> Manifest:
        """:func:`make_bundle`, or the manifest made before when nothing changed (its
        rewritten ``.blend`` files are kept in a folder of the cache's own)."""
        key = (os.path.abspath(blend), os.path.abspath(project) if project else "")
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None:
            manifest, stats, _folder = cached
            if self._stats(manifest) == stats and not any(
                    os.path.exists(m) for m in manifest.missing):
                check_size(manifest, max_bytes)
                return manifest
        folder = Path(tempfile.mkdtemp(prefix="renderfarm-bundle-"))
        try:
            manifest = make_bundle(blend, folder, project, max_bytes)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        stats = self._stats(manifest)
        with self._lock:
            old = self._entries.pop(key, None)
            if stats is not None:
                self._entries[key] = (manifest, stats, folder)
            if len(self._entries) > self.size:
                old = self._entries.pop(next(iter(self._entries)))
        if old is not None:
            shutil.rmtree(old[2], ignore_errors=True)
        # (a file that vanished while it was bundled leaves the manifest uncached; its
        # rewritten files stay in the temp folder for the caller's upload)
        return manifest

    def clear(self) -> None:
        """Forget every manifest and remove the rewritten files kept for them."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for _manifest, _stats, folder in entries:
            shutil.rmtree(folder, ignore_errors=True)


_NUMBERED = re.compile(r"^(.*?)(\d+)(\.[^./]+)$")


def _bat_error(exc: BaseException, blend: Path) -> BundleError | BlendFileError:
    """The error to raise when Blender Asset Tracer cannot read a file."""
    from blender_asset_tracer.blendfile import exceptions as bat_errors

    if isinstance(exc, (bat_errors.BlendFileError, bat_errors.NoReaderImplemented,
                        bat_errors.SegmentationFault, EOFError)):
        damaged = getattr(exc, "filepath", None)
        return BlendFileError(
            f"the file is damaged or is not a .blend Blender can read ({exc}); open and "
            "save it again in Blender", path=str(damaged or blend), retryable=False)
    return BundleError(f"cannot bundle the file's dependencies ({type(exc).__name__}: "
                       f"{exc}); open and save it in Blender, or render with --files "
                       "shared", path=str(blend))


def _sequence_gaps(usage: Any) -> list[str]:
    """Frames missing inside the image sequence ``usage`` (a BAT block usage) names.

    Blender Asset Tracer bundles the frames of a sequence that exist; a frame deleted from
    the middle would render magenta with no word. A sequence numbered at a constant step
    (every frame, every 2nd, ...) that skips numbers names the skipped files. Only images
    and movie clips number their frames this way; UDIM tile sets are not sequences (their
    gaps are normal).
    """
    block = getattr(usage, "block", None)
    text = str(usage.asset_path)
    if getattr(block, "code", None) not in (b"IM", b"MC") or "<UDIM>" in text \
            or "<UVTILE>" in text:
        return []
    try:
        files = sorted(str(p) for p in usage.files())
    except Exception:  # the whole sequence is missing: that is reported as missing
        return []
    groups: dict[tuple[str, str, int], list[int]] = {}
    for name in files:
        match = _NUMBERED.match(name)
        if match:
            head, digits, tail = match.groups()
            groups.setdefault((head, tail, len(digits)), []).append(int(digits))
    gaps = []
    for (head, tail, width), found in groups.items():
        numbers = sorted(set(found))
        if len(numbers) < 3:
            continue
        steps = [b - a for a, b in zip(numbers, numbers[1:], strict=False)]
        step = min(steps)
        if step < 1 or all(d == step for d in steps):
            continue
        have = set(numbers)
        gaps += [f"{head}{number:0{width}d}{tail}"
                 for number in range(numbers[0], numbers[-1] + 1, step) if number not in have]
    return gaps


def _trace(blend: Path) -> tuple[list[str], list[str]]:
    """One walk of ``blend`` and its libraries: the files it needs that do not exist (as
    Blender Asset Tracer's packer counts them: a sequence with no frame at all), and the
    frames missing inside its image sequences."""
    from blender_asset_tracer import trace
    from blender_asset_tracer.trace import file_sequence

    missing: set[str] = set()
    gaps: set[str] = set()
    for usage in trace.deps(blend):
        path = usage.abspath
        if not usage.is_sequence:
            if not path.exists():
                missing.add(str(path))
            continue
        try:
            if not any(p.exists() for p in file_sequence.expand_sequence(path)):
                missing.add(str(path))
                continue
        except file_sequence.DoesNotExist:
            missing.add(str(path))
            continue
        gaps.update(_sequence_gaps(usage))
    return sorted(missing), sorted(gaps)


def trace_missing(blend: str | os.PathLike[str]) -> list[str]:
    """Files ``blend`` (and its libraries) need that do not exist, without Blender and
    without reading the files that do (``--files shared`` renders them in place).

    Raises:
        BlendFileError: the file is damaged.
        BundleError: Blender Asset Tracer cannot read a file.
    """
    _patch_bat()
    path = Path(os.path.abspath(blend))
    try:
        missing, gaps = _trace(path)
    except Exception as exc:
        raise _bat_error(exc, path) from exc
    return sorted(set(missing) | set(gaps))


def publish(manifest: Manifest, storage: Any) -> tuple[int, int]:
    """Store the bundle's files the storage lacks; returns (files sent, bytes sent).

    Raises:
        BundleError: a file changed since it was bundled.
    """
    sent = sent_bytes = 0
    done: set[str] = set()
    for entry in manifest.files:
        key = storage_key(entry.sha256)
        if entry.sha256 in done or storage.exists(key):
            continue
        if entry.source is None:
            raise BundleError(f"bundle file {entry.path!r} has no source to send")
        if file_sha256(entry.source) != entry.sha256:
            raise BundleError("the file changed while the job was being sent; send it again",
                              path=entry.source)
        storage.put_file(key, Path(entry.source))
        done.add(entry.sha256)
        sent += 1
        sent_bytes += entry.size
    return sent, sent_bytes


# ------------------------------------------------------------------------------------------
# unpacking a bundle (worker side)
# ------------------------------------------------------------------------------------------
class NodeCache:
    """Files by hash on one machine, shared by its workers (processes), size-limited (LRU).

    A file is fetched once per machine: workers wanting the same hash wait on a file lock while
    one of them downloads it; a download is verified against its hash before it is used.
    Every download is counted in ``downloads.log``.

    Args:
        root: the cache folder (one per machine).
        max_bytes: the cache's size; least recently used files are removed past it.
    """

    def __init__(self, root: str | os.PathLike[str], max_bytes: int = NODE_CACHE_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        """Where the file of ``sha256`` lies in the cache."""
        if not _is_sha(sha256):
            raise BundleError(f"{sha256!r} is not a SHA-256")
        return self.root / "files" / sha256[:2] / sha256

    def get(self, sha256: str, size: int, download: Callable[[Path], None]) -> Path:
        """The cached file of ``sha256``, downloaded with ``download(tmp_path)`` if needed.

        Raises:
            IntegrityError: the download's content does not match ``sha256``.
        """
        path = self.path(sha256)
        if path.is_file() and path.stat().st_size == size:
            os.utime(path)
            return path
        with self._lock, file_lock(self.root / "locks" / f"{sha256}.lock"):
            if path.is_file() and path.stat().st_size == size:
                os.utime(path)
                return path
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{sha256}.{os.getpid()}.part")
            try:
                download(tmp)
                got = file_sha256(tmp)
                if got != sha256:
                    raise IntegrityError(
                        f"a fetched file's SHA-256 is {got[:12]}…, not {sha256[:12]}…: the "
                        "copy in the farm's storage or the transfer is damaged; the task is "
                        "retried", retryable=True)
                self._make_room(size)
                os.chmod(tmp, 0o444)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            with open(self.root / "downloads.log", "a", encoding="ascii") as log:
                log.write(f"{sha256} {size} {time.time():.3f}\n")
        return path

    def _make_room(self, incoming: int) -> None:
        entries = []
        for path in (self.root / "files").glob("*/*"):
            if path.name.endswith(".part"):
                continue
            with contextlib.suppress(OSError):
                stat = path.stat()
                entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(e[1] for e in entries) + incoming
        for _mtime, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()  # bundles laid out from it keep their hard links
                total -= size

    def downloads(self) -> list[str]:
        """The hashes downloaded into this cache, one per download."""
        log = self.root / "downloads.log"
        if not log.is_file():
            return []
        return [line.split()[0] for line in log.read_text().splitlines() if line.strip()]


def _place(cached: Path, target: Path) -> None:
    try:
        os.link(cached, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(cached, target)


def materialise(manifest: Manifest, folder: str | os.PathLike[str],
                fetch: Callable[[BundleFile], Path]) -> Path:
    """Lay the bundle out in ``folder`` (files from ``fetch(entry)``, a cached copy) and
    return the path of its root ``.blend``.

    Raises:
        BundleError: a path would land outside ``folder`` (through ``..`` or a link).
    """
    base = Path(folder).resolve()
    marker = base / ".renderfarm-complete"
    if marker.is_file() and marker.read_text() == manifest.digest:
        return base / manifest.root
    base.mkdir(parents=True, exist_ok=True)
    for entry in manifest.files:
        target = base / safe_relpath(entry.path)
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        if base != parent.resolve() and base not in parent.resolve().parents:
            raise BundleError(f"bundle path {entry.path!r} leaves the bundle through a link")
        if target.is_symlink() or target.exists():
            target.unlink()
        _place(fetch(entry), target)
    marker.write_text(manifest.digest)
    return base / manifest.root


def default_cache_root() -> Path:
    """This machine's file cache: ``$RENDERFARM_CACHE_DIR``, or ``renderfarm-cache-<uid>`` in
    the temp folder. It belongs to the machine, not to a Ray node: Ray nodes restarted (or
    several on one machine) share it."""
    return Path(os.environ.get("RENDERFARM_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), f"renderfarm-cache-{os.getuid()}"))


def default_cache_bytes() -> int:
    """The node cache size: ``$RENDERFARM_CACHE_BYTES`` or :data:`NODE_CACHE_BYTES`."""
    text = os.environ.get("RENDERFARM_CACHE_BYTES")
    return int(text) if text and text.isdigit() else NODE_CACHE_BYTES


__all__ = ["BundleFile", "Manifest", "NodeCache", "make_bundle", "materialise",
           "publish", "safe_relpath", "storage_key", "trace_missing"]
