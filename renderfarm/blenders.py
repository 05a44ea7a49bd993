"""Which Blender a job renders with: the version a ``.blend`` was saved with (read from its
header, no Blender needed), the Blenders a farm has, and the choice between them. Pure except
:func:`saved_with`, which reads a file's first bytes.

A job asks for ``auto`` (the Blender its file was saved with: the newest patch release of
that major.minor the farm has), ``newest`` (the farm's newest, with a warning when the file
was saved with another), a version (``4.5``, ``4.5.3``) or an executable's path.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from renderfarm.errors import InputError, ResourceError

#: the oldest Blender the farm renders with (4.2 LTS)
OLDEST_SUPPORTED = (4, 2)
#: how a job names its Blender
CHOICES = ("auto", "newest")

_OLD_HEADER = re.compile(rb"^BLENDER[_-][vV](\d)(\d\d)")
_NEW_HEADER = re.compile(rb"^BLENDER\d\d-\d\d[vV](\d\d)(\d\d)")
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")


@dataclass(frozen=True, order=True)
class Version:
    """A Blender version; ``patch`` is None when only major.minor is known (a file's
    header says no more)."""

    major: int
    minor: int
    patch: int | None = None

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}" + (f".{self.patch}" if self.patch is not None
                                               else "")

    @property
    def series(self) -> tuple[int, int]:
        """``(major, minor)``."""
        return (self.major, self.minor)

    @classmethod
    def parse(cls, text: str) -> Version:
        """``4.5`` or ``4.5.3`` (``4.5.3 LTS`` too: what ``bpy.app.version_string`` says).

        Raises:
            InputError: it is not a version.
        """
        match = _VERSION.match(text.strip().split()[0] if text.strip() else "")
        if match is None:
            raise InputError(f"{text!r} is not a Blender version; give one like 4.5 or 4.5.3")
        major, minor, patch = match.groups()
        return cls(int(major), int(minor), int(patch) if patch is not None else None)


def header_version(head: bytes) -> Version | None:
    """The major.minor a ``.blend`` header names (``BLENDER-v405``, or Blender 5's
    ``BLENDER17-01v0500``), or None when ``head`` is not a ``.blend`` header."""
    match = _NEW_HEADER.match(head) or _OLD_HEADER.match(head)
    if match is None:
        return None
    return Version(int(match.group(1)), int(match.group(2)))


#: bytes of a file's start read to tell its version (enough for a compressed header)
HEAD_BYTES = 4 * 1024 * 1024


def version_of(start: bytes) -> Version | None:
    """The Blender major.minor a ``.blend`` that begins with ``start`` names (plain, gzip or
    zstd compressed; the start may be cut anywhere after the header), or None."""
    head = start[:64]
    try:
        if start[:2] == b"\x1f\x8b":
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(start, 64)
        elif start[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard

            head = zstandard.ZstdDecompressor().decompressobj().decompress(start)[:64]
    except Exception:  # a damaged file: Blender's own check says so later
        return None
    return header_version(head)


def saved_with(path: str) -> Version | None:
    """The Blender major.minor that saved ``path`` (plain, gzip or zstd compressed), or None
    when it cannot be told."""
    with open(path, "rb") as handle:
        return version_of(handle.read(HEAD_BYTES))


@dataclass(frozen=True)
class Blender:
    """A Blender a farm can render with.

    Attributes:
        version: its full version.
        kind: ``bpy`` (the ``bpy`` module of a Python), ``executable`` (``blender -b``).
        path: the Python that imports that ``bpy``, or the executable.
    """

    version: Version
    kind: str
    path: str

    def describe(self) -> str:
        """``4.5.3 (bpy, /path/python)``."""
        return f"{self.version} ({self.kind}, {self.path})"


@dataclass(frozen=True)
class Choice:
    """The Blender a job renders with, and what to tell its owner about it."""

    blender: Blender
    warning: str | None = None


def python_for(version: Version) -> tuple[int, int]:
    """The Python whose ``bpy`` wheels carry Blender ``version`` on the package index:
    3.11 for Blender 4.2 to 5.0, 3.13 for 5.1 and later."""
    return (3, 13) if version.series >= (5, 1) else (3, 11)


def _have(blenders: Sequence[Blender]) -> str:
    return ", ".join(sorted({str(b.version) for b in blenders},
                            key=lambda v: tuple(int(p) for p in v.split(".")))) or "none"


def choose(want: str, saved: Version | None, blenders: Sequence[Blender]) -> Choice:
    """The Blender a job asking for ``want`` renders with, its file saved by ``saved``.

    Args:
        want: ``auto``, ``newest``, a version (``4.5``, ``4.5.3``) or an executable's path.
        saved: the major.minor that saved the job's file (None: unknown).
        blenders: what the farm has.

    Raises:
        ResourceError: the farm has no such Blender (the message names what it has and how to
            get one).
        InputError: ``want`` is none of the above.
    """
    if not blenders:
        raise ResourceError("this farm has no Blender to render with; install bpy, or add "
                            "one: renderfarm blenders add 4.5")
    newest = max(blenders, key=lambda b: (b.version.series, b.version.patch or 0))
    if want == "newest":
        warning = None
        if saved is not None and saved.series != newest.version.series:
            warning = (f"the file was saved with Blender {saved}; it renders with Blender "
                       f"{newest.version} (--blender newest), whose results may differ from "
                       f"Blender {saved}'s")
        return Choice(newest, warning)
    if want == "auto":
        if saved is None:
            return Choice(newest, "the Blender that saved the file cannot be told from its "
                          f"header; it renders with the farm's newest, {newest.version}")
        if saved.series < OLDEST_SUPPORTED:  # the newest: the same on every farm
            return Choice(newest, f"the file was saved with Blender {saved}, older than the "
                          f"oldest the farm supports ({OLDEST_SUPPORTED[0]}."
                          f"{OLDEST_SUPPORTED[1]}); it renders with Blender {newest.version}, "
                          "the farm's newest, which opens it as Blender does an old file")
        return Choice(_newest_of(saved, blenders, f"--blender auto (the file was saved with "
                                                  f"Blender {saved})"))
    if "/" in want or "\\" in want:
        for blender in blenders:
            if blender.path == want:
                return Choice(blender)
        raise ResourceError(f"--blender {want}: no Blender of this farm is at that path (it "
                            f"has {_have(blenders)}); add it: renderfarm blenders add {want}")
    if want.lower() not in CHOICES and not _VERSION.match(want):
        raise InputError(f"--blender {want!r} is not auto, newest, a version (4.5, 4.5.3) or "
                         "the path of a Blender executable")
    return Choice(_newest_of(Version.parse(want), blenders, f"--blender {want}"))


def _newest_of(version: Version, blenders: Sequence[Blender], asked: str) -> Blender:
    matching = [b for b in blenders if b.version.series == version.series
                and (version.patch is None or b.version.patch == version.patch)]
    if not matching:
        raise ResourceError(
            f"{asked}: this farm has no Blender {version} (it has {_have(blenders)}); add "
            f"it (renderfarm blenders add {version}), or render with one it has (--blender "
            "newest)")
    return max(matching, key=lambda b: b.version.patch or 0)
