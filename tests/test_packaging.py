"""Regular (wheel) installs: each distribution builds a wheel holding its package and entry points."""

import subprocess
import sys
import zipfile

import pytest

from support import REPO

DISTS = [
    (".", "draftsmith", "draftsmith/__init__.py", None),
    ("plugins/eagle", "draftsmith_eagle", "draftsmith_eagle/plugin.py", "eagle = draftsmith_eagle.plugin"),
    ("plugins/dflash", "draftsmith_dflash", "draftsmith_dflash/plugin.py", "dflash = draftsmith_dflash.plugin"),
    ("plugins/dspark", "draftsmith_dspark", "draftsmith_dspark/plugin.py", "dspark = draftsmith_dspark.plugin"),
]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheels")
    for path, *_ in DISTS:
        res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                              "-w", str(out), str(REPO / path)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.mark.parametrize("path, package, module_file, entry_point", DISTS)
def test_wheel_contents(wheels, path, package, module_file, entry_point):
    prefix = package.replace("_", "_")
    matches = [w for w in wheels.glob("*.whl") if w.name.split("-")[0] == prefix]
    assert len(matches) == 1, [w.name for w in wheels.glob("*.whl")]
    with zipfile.ZipFile(matches[0]) as zf:
        names = zf.namelist()
        assert module_file in names
        eps = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        text = zf.read(eps).decode()
    if entry_point:
        assert "[draftsmith]" in text and entry_point in text
    else:
        assert "draftsmith = draftsmith.cli:main" in text and "list-drafts = draftsmith.cli:list_drafts_main" in text
        assert "draftsmith/commands/list_drafts.py" in names and "draftsmith/nn/rotary.py" in names
