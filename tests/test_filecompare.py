"""The comparators the suite's "exact" claims rest on fail where they should: a NaN or an
infinity in one file only is a difference (``max() > tolerance`` is false for NaN), the same
non-finite value at the same place in both is not. Real OpenEXR files, written and read by
OpenImageIO; no Blender or Ray needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from renderfarm.merge import compare_images
from tests.filecompare import differences, unequal
from tests.test_render import assert_same_image
from tests.test_seamfree import assert_same_to_float_precision


def _exr(path: Path, pixels: np.ndarray) -> Path:
    import OpenImageIO as oiio

    height, width, channels = pixels.shape
    spec = oiio.ImageSpec(width, height, channels, oiio.FLOAT)
    spec.channelnames = ("R", "G", "B", "A")[:channels]
    out = oiio.ImageOutput.create(str(path))
    assert out.open(str(path), spec), oiio.geterror()
    assert out.write_image(pixels.astype(np.float32))
    out.close()
    return path


@pytest.fixture
def clean() -> np.ndarray:
    return np.random.default_rng(7).random((6, 8, 4)).astype(np.float32)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_one_non_finite_value_in_one_file_is_a_difference(tmp_path, clean, value) -> None:
    spoiled = clean.copy()
    spoiled[2, 3, 1] = value
    good = _exr(tmp_path / "good.exr", clean)
    bad = _exr(tmp_path / "bad.exr", spoiled)
    for got, want in ((bad, good), (good, bad)):
        found = differences(got, want)
        assert found and "1 values differ" in found[0] and "NaN or infinite" in found[0]
        assert differences(got, want, tolerance=1.0)  # no tolerance hides it
        with pytest.raises(AssertionError, match="pixels differ"):
            assert_same_image(got, want)
        with pytest.raises(AssertionError, match="NaN or infinite"):
            assert_same_to_float_precision(got, want)
        assert not compare_images(got, want)[0]
        assert not compare_images(got, want, tolerance=1.0)[0]


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_the_same_non_finite_value_at_the_same_place_is_equal(tmp_path, clean, value) -> None:
    spoiled = clean.copy()
    spoiled[2, 3, 1] = value
    first = _exr(tmp_path / "a.exr", spoiled)
    second = _exr(tmp_path / "b.exr", spoiled)
    assert differences(first, second) == []
    assert_same_image(first, second)
    assert_same_to_float_precision(first, second)
    assert compare_images(first, second) == (True, "")
    assert compare_images(first, second, tolerance=0.5) == (True, "")
    elsewhere = clean.copy()
    elsewhere[0, 0, 0] = value
    assert differences(first, _exr(tmp_path / "c.exr", elsewhere))  # not the same place


def test_unequal_marks_each_kind_of_difference() -> None:
    a = np.array([1.0, np.nan, np.inf, np.nan, 2.0, -np.inf, 5.0])
    b = np.array([1.0, np.nan, np.inf, 0.0, np.inf, np.inf, 5.25])
    assert unequal(a, b).tolist() == [False, False, False, True, True, True, True]
    assert unequal(a, b, tolerance=0.5).tolist() == [False, False, False, True, True, True,
                                                     False]
