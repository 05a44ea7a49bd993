"""Python embedded in a .blend runs only when the job allows it and the farm permits it."""

from __future__ import annotations

from pathlib import Path

import pytest

from renderfarm.errors import InputError
from renderfarm.job import JobSpec

from .conftest import run_python

pytestmark = [pytest.mark.blender, pytest.mark.ray]

MAKER = '''
import sys, bpy
from renderfarm.blender.scenes import SceneRecipe, build_scene
path, marker = sys.argv[1], sys.argv[2]
build_scene(path, SceneRecipe(width=32, height=24, frames=1, samples=1))
text = bpy.data.texts.new("on_load.py")
text.write(f"open({marker!r}, 'a').write('ran\\\\n')\\n")
text.use_module = True  # Blender runs registered text blocks when a trusted file loads
bpy.ops.wm.save_as_mainfile(filepath=path)
'''


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("scripted")
    blend, marker = folder / "scripted.blend", folder / "marker.txt"
    maker = folder / "make.py"
    maker.write_text(MAKER)
    run_python(str(maker), str(blend), str(marker))
    marker.unlink(missing_ok=True)
    return blend, marker


@pytest.fixture(scope="module")
def permitting_farm(ray_local):
    from renderfarm.farm import Farm

    with Farm(workers=1, permit_scripts=True) as the_farm:
        yield the_farm


def test_scripts_stay_off_unless_the_job_allows_them(permitting_farm, scripted,
                                                     tmp_path) -> None:
    blend, marker = scripted
    result = permitting_farm.render(JobSpec(str(blend), frames="1",
                                            output=str(tmp_path / "s_####.exr")))
    assert result.outputs[1].exists()
    assert not marker.exists(), "the file's script ran although the job did not allow it"


def test_a_job_cannot_allow_scripts_on_a_farm_that_does_not_permit_them(farm, scripted,
                                                                         tmp_path) -> None:
    with pytest.raises(InputError, match="does not permit"):
        farm.submit(JobSpec(str(scripted[0]), frames="1", allow_scripts=True,
                            output=str(tmp_path / "s_####.exr")))


def test_scripts_run_when_allowed_and_permitted(permitting_farm, scripted, tmp_path) -> None:
    blend, marker = scripted
    permitting_farm.render(JobSpec(str(blend), frames="1", allow_scripts=True,
                                   output=str(tmp_path / "s_####.exr")))
    assert marker.exists() and "ran" in marker.read_text()
