"""The progress lines (issue 13): ``(reused)`` only for steps taken from the work dir."""

import pytest

from helpers import run_app

#: Each test here runs the pipeline (or a dataset generation) end to end.
pytestmark = pytest.mark.slow


def _step_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "tmstarget" and r.getMessage().startswith("sub-01  ")]


@pytest.mark.slow
@pytest.mark.parametrize("nprocs", ["1", "2"])
def test_reused_only_for_what_the_work_dir_held(one_run_dataset, tmp_path, caplog, nprocs):
    root, _ = one_run_dataset
    flags = ("--nprocs", nprocs, "--no-report", "--bootstrap-samples", "20")
    with caplog.at_level("INFO", logger="tmstarget"):
        assert run_app(root, tmp_path / "out", *flags, work_dir=tmp_path / "work") == 0
    first = _step_lines(caplog)
    assert any("denoise" in line for line in first) and any("derivatives" in line for line in first)
    assert not [line for line in first if "(reused)" in line], first

    caplog.clear()
    with caplog.at_level("INFO", logger="tmstarget"):
        assert run_app(root, tmp_path / "out", *flags, work_dir=tmp_path / "work") == 0
    second = {line.split("  ")[1].split("   ")[0].strip(): line for line in _step_lines(caplog)}
    (denoise,) = [step for step in second if step.endswith("denoise")]  # the run as its file names it
    assert "(reused)" in second[denoise] and "(reused)" in second["target reliability"]
    # the derivatives are written again every time (the outputs may have been moved since)
    assert "(reused)" not in second["derivatives"]
