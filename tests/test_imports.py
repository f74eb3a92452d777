"""The graph stands alone: nothing under ``workflows/`` (``tmstarget.workflows``) imports the face.

The face (``tmstarget`` outside ``tmstarget.workflows``: the command line, its configuration, the
BIDS queries, the derivatives sink, the reports) wraps the graph; an outer Nipype pipeline must be
able to take the graph without it (issue 12).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tmstarget.workflows

GRAPH = Path(tmstarget.workflows.__file__).resolve().parent
MODULES = sorted(GRAPH.rglob("*.py"))


def face_imports(source, package="tmstarget.workflows"):
    """The imports of ``source`` (module text of ``package``) that reach the face, as text."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                parts = package.split(".")
                base = parts[:len(parts) - node.level + 1] if node.level <= len(parts) else []
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from tmstarget import x`` imports the face's x, unless x is the graph itself
            names = ([f"{module}.{alias.name}" for alias in node.names] if module == "tmstarget"
                     else [module])
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in ("bids_app", "workflows") or (
                    top == "tmstarget" and not (name + ".").startswith("tmstarget.workflows.")):
                found.append(f"line {node.lineno}: {name}")
    return found


def test_the_checker_finds_each_kind_of_face_import():
    """The rule itself: it must flag every spelling of a face import and nothing else."""
    bad = ["import tmstarget.config", "from tmstarget import __version__", "from tmstarget.reports import X",
           "from tmstarget import config", "from .. import derivatives", "from ..collect import Run",
           "import bids_app.cli", "from workflows.base import init_run_wf",
           "def f():\n    from tmstarget.derivatives import sidecar\n"]
    for source in bad:
        assert face_imports(source), source
    good = ["import numpy", "from tmstarget.workflows.defaults import REFERENCES",
            "from tmstarget import workflows", "from . import quality", "from .quality import X",
            "import tmstarget.workflows.base"]
    for source in good:
        assert not face_imports(source), source


def test_the_graph_modules_exist():
    names = {p.stem for p in MODULES}
    assert {"base", "defaults", "confounds", "target", "reliability"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(GRAPH).as_posix())
def test_no_graph_module_imports_the_face(path):
    package = ".".join(["tmstarget.workflows", *path.relative_to(GRAPH).parent.parts])
    assert not face_imports(path.read_text(), package), f"{path.name} imports the face"


def test_importing_the_graph_loads_neither_the_face_nor_matplotlib(tmp_path):
    """In a fresh interpreter (nothing imported before), from a folder holding no source."""
    code = ("import sys, tmstarget.workflows.base\n"
            "print('\\n'.join(sorted(sys.modules)))\n")
    modules = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True,
                             capture_output=True, text=True).stdout.split()
    assert "tmstarget.workflows.base" in modules
    face = [m for m in modules if m.startswith("tmstarget.") and not m.startswith("tmstarget.workflows")]
    assert face == []
    assert not [m for m in modules if m == "matplotlib" or m.startswith("matplotlib.")]
    assert "tmstarget.reports" not in modules and "bids" not in modules
