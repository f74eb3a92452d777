"""``ImportAhead``: the report's libraries imported while the workers compute, never under a fork.

And ``tmstarget.cli.run``, the command, which exits without the interpreter's last collection.
"""

import gc
import os
import sys
import threading
import time
import types

import pytest

from tmstarget.execution import ImportAhead, NodeProgress

#: A module that takes a while to import and says at its very end that it is complete.
SLOW_MODULE = "import time\ntime.sleep({seconds})\nCOMPLETE = True\n"


@pytest.fixture
def slow_module(tmp_path, monkeypatch):
    """The name of a fresh importable module whose import takes 0.6 s."""
    name = f"tmstarget_slow_{os.getpid()}_{time.monotonic_ns()}"
    (tmp_path / f"{name}.py").write_text(SLOW_MODULE.format(seconds=0.6))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _step(name):
    return types.SimpleNamespace(name=name, fullname=f"wf.{name}")


def _finish(ahead, name="denoise"):
    """What MultiProc's status callback does when the step ``name`` ends."""
    ahead(_step(name), "end")


def test_the_imports_begin_when_the_named_step_ends(slow_module):
    ahead = ImportAhead([slow_module], after="denoise")
    ahead(_step("denoise"), "start")
    _finish(ahead, "regions")
    assert ahead._thread is None  # a start, or another step: nothing yet
    _finish(ahead)
    thread = ahead._thread
    assert thread is not None and thread.daemon
    _finish(ahead)  # the step of another participant: the same thread, no second one
    assert ahead._thread is thread
    ImportAhead.wait()
    assert sys.modules[slow_module].COMPLETE


def test_a_fork_waits_for_the_imports(slow_module):
    """The child of a fork made mid-import gets the module whole, not half-initialised."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    ahead = ImportAhead([slow_module], after="denoise")
    _finish(ahead)
    time.sleep(0.2)  # the thread is inside the module's import now
    assert slow_module in sys.modules and not hasattr(sys.modules[slow_module], "COMPLETE")
    pid = os.fork()
    if pid == 0:  # the child: is the module whole?
        os._exit(0 if getattr(sys.modules.get(slow_module), "COMPLETE", False) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_once_imported_the_modules_are_frozen_out_of_the_collections(slow_module):
    """MultiProc collects before each pass: matplotlib's objects would be walked every time."""
    ahead = ImportAhead([slow_module], after="denoise")
    _finish(ahead)
    try:
        ImportAhead.wait()
        before = gc.get_freeze_count()
        ahead(_step("select_target"), "start")  # the next status after the imports
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_a_module_that_fails_to_import_only_stops_the_imports(tmp_path, monkeypatch, caplog):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "tmstarget_broken_ahead.py").write_text("raise ImportError('no such library')\n")
    ahead = ImportAhead(["tmstarget_broken_ahead", "tmstarget_never_reached_ahead"], after="denoise")
    with caplog.at_level("DEBUG", logger="tmstarget"):
        _finish(ahead)
        ImportAhead.wait()
    assert "tmstarget_never_reached_ahead" not in sys.modules
    assert any("no such library" in r.getMessage() for r in caplog.records)


def test_the_progress_lines_pass_every_status_on():
    seen = []
    progress = NodeProgress(also=lambda node, status: seen.append((node.name, status)))
    node = types.SimpleNamespace(name="denoise", fullname="wf.tmstarget_0_sub_01_wf.denoise",
                                 interface=object(), result=None)
    progress(node, "start")
    progress(node, "end")
    assert seen == [("denoise", "start"), ("denoise", "end")]


def test_the_command_returns_mains_status_and_freezes_the_survivors(monkeypatch):
    from tmstarget import cli

    monkeypatch.setattr(cli, "main", lambda argv=None: 3)
    assert gc.get_freeze_count() == 0
    try:
        assert cli.run([]) == 3
        assert gc.get_freeze_count() > 1000  # this process's modules and objects
    finally:
        gc.unfreeze()


def test_no_thread_is_left_behind(slow_module):
    ahead = ImportAhead([slow_module], after="denoise")
    _finish(ahead)
    ImportAhead.wait()
    assert not ImportAhead._running
    assert not [t for t in threading.enumerate() if t.name == "import-ahead"]
