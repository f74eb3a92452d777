"""The installed distribution is one import package, ``tmstarget`` (issue 12): no generic top-level
``workflows`` or ``bids_app`` that could clash with PyPI's ``workflows`` or be shadowed by a folder
of that name on ``sys.path``."""

import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

import pytest

import tmstarget


def test_one_top_level_package():
    site = Path(tmstarget.__file__).resolve().parents[1]
    if site.name not in ("site-packages", "dist-packages"):
        pytest.skip(f"tmstarget imported from a source tree ({site}): checked on a regular install (CI)")
    (dist,) = [d for d in distributions(path=[str(site)]) if d.metadata["Name"] == "tmstarget"]
    assert dist.read_text("top_level.txt").split() == ["tmstarget"]
    packaged = {str(f).split("/")[0] for f in dist.files if str(f).endswith(".py")
                and not str(f).startswith("..")}
    assert packaged == {"tmstarget"}, packaged


@pytest.mark.parametrize("name", ["workflows", "bids_app"])
def test_folder_names_are_not_importable(name, tmp_path):
    # From an empty folder, so the source tree's own folders are not on sys.path.
    result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "No module named" in result.stderr


def test_graph_and_face_under_one_name(tmp_path):
    code = ("import tmstarget.workflows.base, tmstarget.cli, tmstarget.synthetic, tmstarget.reports; "
            "print(tmstarget.workflows.base.__name__)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tmstarget.workflows.base"
