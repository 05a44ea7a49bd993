"""Frame-range strings, without Blender or Ray."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from renderfarm.errors import FrameRangeError
from renderfarm.frames import MAX_FRAME, format_frames, parse_frames, scene_frames


@pytest.mark.parametrize("text,frames", [
    ("1-10,15,20-30x2", [*range(1, 11), 15, 20, 22, 24, 26, 28, 30]),
    ("7", [7]),
    ("-3", [-3]),
    ("-5--2", [-5, -4, -3, -2]),
    ("-2-2", [-2, -1, 0, 1, 2]),
    ("5,1-3,3,2", [1, 2, 3, 5]),
    (" 1 - 3 , 8 ", [1, 2, 3, 8]),
    ("1..4", [1, 2, 3, 4]),
    ("0-10:5", [0, 5, 10]),
    ("1-2x10", [1]),
])
def test_parse(text: str, frames: list[int]) -> None:
    assert parse_frames(text) == frames


@pytest.mark.parametrize("text,fragment", [
    ("", "empty"),
    ("   ", "empty"),
    ("1-", "cannot read '1-'"),
    ("a-b", "cannot read 'a-b'"),
    ("1,,2", "cannot read ''"),
    ("10-1", "runs backwards"),
    ("1-10x0", "step"),
    (f"1-{MAX_FRAME + 1}", "outside the allowed frames"),
])
def test_errors_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(FrameRangeError, match=fragment):
        parse_frames(text)


def test_max_count_refuses_huge_ranges_without_building_them() -> None:
    with pytest.raises(FrameRangeError, match="more than 100 frames"):
        parse_frames("1-1000000", max_count=100)
    with pytest.raises(FrameRangeError, match="more than 3 frames"):
        parse_frames("1-2,5-6", max_count=3)
    assert parse_frames("1-3", max_count=3) == [1, 2, 3]


def test_scene_frames_follow_the_step() -> None:
    assert scene_frames(1, 10, 3) == [1, 4, 7, 10]
    with pytest.raises(FrameRangeError):
        scene_frames(5, 1)


@given(st.sets(st.integers(-2000, 2000), min_size=1, max_size=60))
def test_format_round_trips(frames: set[int]) -> None:
    text = format_frames(frames)
    assert parse_frames(text) == sorted(frames)


def test_format_is_compact() -> None:
    assert format_frames([1, 2, 3, 4, 10, 20, 22, 24]) == "1-4,10,20-24x2"
