"""Faults: a run killed in the middle resumes to the same outputs; participants run concurrently into
one output folder; a failure leaves the previous outputs in place.

The command runs in a subprocess here, as users run it (a SIGKILL must hit a real process).
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tmstarget.synthetic import make_fmriprep_dataset
from helpers import (
    FAST,
    assert_same_outputs,
    cli_command,
    cli_environment,
    connectivity_row,
    distance_mm,
    run_app,
    tree_digest,
)
from tmstarget.participant import participant_work_dir

#: Each test here runs the pipeline (or a dataset generation) end to end.
pytestmark = pytest.mark.slow

SPACE = "MNI152NLin2009cAsym"


# --------------------------------------------------------------------------------------------
# SIGKILL in the middle, then resume
# --------------------------------------------------------------------------------------------
def test_killed_run_resumes_to_the_same_outputs(one_run_dataset, mni_run, tmp_path):
    """SIGKILL once the confound regression has finished, then the same command with the same
    work dir: it reuses the finished step and writes what an uninterrupted run writes."""
    root, _ = one_run_dataset
    reference, _, _ = mni_run
    out, work = tmp_path / "out", tmp_path / "work"
    process = subprocess.Popen(cli_command(root, out, work), env=cli_environment(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    denoised = participant_work_dir(work, "01") / "run_01_wf" / "denoise" / "result_denoise.pklz"
    deadline = time.time() + 600
    while not denoised.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    finished_before_kill = process.poll() is not None
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not finished_before_kill, "the run ended before it could be killed"
    assert process.returncode == -signal.SIGKILL
    assert denoised.exists()
    # killed before the derivatives: no targets yet
    assert not list(out.rglob("*_targets.tsv"))
    reused = denoised.stat().st_mtime_ns

    assert run_app(root, out, work_dir=work) == 0
    assert denoised.stat().st_mtime_ns == reused  # the finished step was not computed again
    assert_same_outputs(out, reference)


# --------------------------------------------------------------------------------------------
# two participants at once into one output dir
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_participants(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_participants") / "fmriprep"
    truth = make_fmriprep_dataset(root, participants=("01", "02"), spaces=(SPACE,), seed=5, **FAST)
    return root, truth


def test_two_participants_concurrently_into_one_output_dir(two_participants, tmp_path):
    """As on a cluster: one job per participant, same output (and work) folder, at the same time."""
    root, truth = two_participants
    out, work = tmp_path / "out", tmp_path / "work"
    jobs = [subprocess.Popen(cli_command(root, out, work, "--participant-label", label), env=cli_environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for label in ("01", "02")]
    for job in jobs:
        _, err = job.communicate(timeout=900)
        assert job.returncode == 0, err
    files = {label: sorted(p.relative_to(out / f"sub-{label}").as_posix().replace(f"sub-{label}", "sub-X")
                           for p in (out / f"sub-{label}").rglob("*") if p.is_file())
             for label in ("01", "02")}
    assert files["01"] == files["02"] and len(files["01"]) >= 10
    for label in ("01", "02"):
        row = connectivity_row(out, SPACE, subject=label)
        assert distance_mm(row, truth["target_mni"]) <= 4.0
    description = (out / "dataset_description.json").read_text()
    assert '"DatasetType": "derivative"' in description
    # no temporary file left by either writer
    assert [p.name for p in out.rglob(".*")] == [".bidsignore"]


# --------------------------------------------------------------------------------------------
# a failure leaves the previous complete outputs in place
# --------------------------------------------------------------------------------------------
def test_interrupted_write_keeps_the_previous_file(tmp_path):
    """The mechanism: a writer dying half way leaves the previous file and no temporary file."""
    from tmstarget.derivatives import atomic_write, write_text

    target = write_text(tmp_path / "sub-01" / "targets.tsv", "name\tx\nconnectivity\t-40\n")

    def dies_half_way(tmp):
        Path(tmp).write_text("name\tx\nconnec")
        raise KeyboardInterrupt  # as a Ctrl-C or a killed node

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, dies_half_way)
    assert target.read_text() == "name\tx\nconnectivity\t-40\n"
    assert [p.name for p in target.parent.iterdir()] == ["targets.tsv"]


def test_failed_rerun_keeps_the_previous_outputs(one_run_dataset, mni_run, tmp_path, capsys):
    """Outputs of a good run, then a re-run on data that became bad (NaN in the BOLD): the error is
    reported and every previous output file is still there, byte for byte."""
    import nibabel as nb
    import numpy as np

    root, _ = one_run_dataset
    reference, _, _ = mni_run
    data = tmp_path / "fmriprep"
    shutil.copytree(root, data)
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = tree_digest(out)
    bold = next(data.glob(f"sub-01/func/*_space-{SPACE}_desc-preproc_bold.nii.gz"))
    img = nb.load(bold)
    values = img.get_fdata(dtype=np.float32)
    values[20, 20, 20, 30] = np.nan
    bold.unlink()
    damaged = nb.Nifti1Image(values, img.affine, img.header)
    damaged.set_data_dtype(np.float32)  # int16 cannot hold a NaN
    damaged.to_filename(bold)
    assert run_app(data, out, work_dir=tmp_path / "work") == 1
    assert "NaN or infinite" in capsys.readouterr().err
    assert tree_digest(out) == before
