"""Frame-range strings such as ``"1-10,15,20-30x2"`` to sorted unique frames, and back."""

from __future__ import annotations

import re
from collections.abc import Iterable

from renderfarm.errors import FrameRangeError

#: Blender's own limits for a frame number (MINAFRAME and MAXFRAME).
MIN_FRAME = -1048574
MAX_FRAME = 1048574
#: the most frames one range string may select when no smaller limit is given
MAX_COUNT = 1_000_000
#: the longest frame-range string read
MAX_TEXT = 10_000

#: a part of a frame range; numbers of ASCII digits, at most 15 (a longer one is no frame)
_PART = re.compile(r"^(-?[0-9]{1,15})(?:\s*(?:-|\.\.)\s*(-?[0-9]{1,15})"
                   r"(?:\s*[x:]\s*([0-9]{1,15}))?)?$")


def _short(text: str, most: int = 40) -> str:
    """``text`` quoted, cut to ``most`` characters (an error names it, never all of it)."""
    return repr(text) if len(text) <= most else repr(text[:most]) + "..."


def parse_frames(
    text: str,
    *,
    min_frame: int = MIN_FRAME,
    max_frame: int = MAX_FRAME,
    max_count: int | None = None,
) -> list[int]:
    """Parse a frame-range string into sorted, unique frame numbers.

    The syntax is a comma-separated list of parts: a frame (``15``, ``-3``), a range (``1-10``,
    ``-10--5``, ``1..10``) or a range with a step (``20-30x2``, also ``20-30:2``). Whitespace
    around parts is ignored. Duplicates are removed.

    Args:
        text: the frame-range string.
        min_frame: the smallest frame allowed.
        max_frame: the largest frame allowed.
        max_count: the largest number of frames allowed (default :data:`MAX_COUNT`).

    Returns:
        The frames, sorted ascending, each once.

    Raises:
        FrameRangeError: the string is empty or malformed, a range runs backwards, a step is not
            positive, or a frame lies outside ``[min_frame, max_frame]``.
    """
    if not isinstance(text, str) or not text.strip():
        raise FrameRangeError(
            "the frame range is empty; give frames like '1-10,15,20-30x2'"
        )
    if len(text) > MAX_TEXT:
        raise FrameRangeError(f"the frame range is {len(text)} characters long, more than "
                              f"{MAX_TEXT}; give fewer, wider ranges")
    frames: set[int] = set()
    listed = 0  # frames named so far, duplicates included: bounds the work, not the result
    for raw in text.split(","):
        part = raw.strip()
        match = _PART.match(part)
        if not match:
            raise FrameRangeError(
                f"cannot read {_short(part)} in frame range {_short(text)}; write frames like "
                "'7', '1-10' or '20-30x2', separated by commas"
            )
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) is not None else start
        step = int(match.group(3)) if match.group(3) is not None else 1
        if end < start:
            raise FrameRangeError(
                f"range {part!r} in {text!r} runs backwards; write it as '{end}-{start}'"
            )
        if step < 1:
            raise FrameRangeError(f"step in {part!r} must be 1 or more")
        for frame in (start, end):
            if not min_frame <= frame <= max_frame:
                raise FrameRangeError(
                    f"frame {frame} in {text!r} is outside the allowed frames "
                    f"{min_frame}..{max_frame}"
                )
        span = range(start, end + 1, step)
        cap = MAX_COUNT if max_count is None else max_count
        listed += len(span)
        if listed > 4 * cap and len(span) <= cap:
            raise FrameRangeError(f"frame range {text!r} names over {4 * cap} frames "
                                  "(duplicates included); write each range once")
        if len(span) <= cap:
            frames.update(span)
        if len(span) > cap or len(frames) > cap:
            raise FrameRangeError(
                f"frame range {text[:200]!r} selects more than {cap} frames, the most this "
                "farm accepts in one job; split the job"
            )
    return sorted(frames)


def scene_frames(start: int, end: int, step: int = 1) -> list[int]:
    """The frames Blender renders for a scene's range and step.

    Raises:
        FrameRangeError: the scene's range is empty.
    """
    if end < start:
        raise FrameRangeError(f"the scene's frame range {start}-{end} is empty")
    return list(range(start, end + 1, max(1, step)))


def format_frames(frames: Iterable[int]) -> str:
    """Write frames back as a compact range string (the inverse of :func:`parse_frames`).

    Runs of consecutive frames become ``a-b``; runs with a constant step of 2 or more and at
    least three frames become ``a-bxN``.
    """
    values = sorted(set(frames))
    parts: list[str] = []
    i = 0
    while i < len(values):
        start = values[i]
        if i + 1 < len(values):
            step = values[i + 1] - start
            j = i + 1
            while j + 1 < len(values) and values[j + 1] - values[j] == step:
                j += 1
            if step == 1 and j > i:
                parts.append(f"{start}-{values[j]}")
                i = j + 1
                continue
            if j - i >= 2:
                parts.append(f"{start}-{values[j]}x{step}")
                i = j + 1
                continue
        parts.append(str(start))
        i += 1
    return ",".join(parts)
