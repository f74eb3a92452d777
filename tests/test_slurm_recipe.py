"""The SLURM recipe's job scripts hand each array task its participant and its resources.

The recipe itself runs on a real SLURM cluster in scripts/test_slurm.sh; here the job scripts run
as SLURM would start them (its environment variables set), with ``$TMSTARGET`` replaced by
``echo`` so that the command they build can be read.
"""

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

SLURM_DIR = Path(__file__).resolve().parents[1] / "scripts" / "slurm"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_job(script, *args, **env):
    """Run a job script as SLURM would; return the argv it gives tmstarget."""
    result = subprocess.run(["bash", str(SLURM_DIR / script), *map(str, args)], capture_output=True,
                            text=True, env={**os.environ, "TMSTARGET": "echo", **env})
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout.splitlines()[-1])


@pytest.fixture
def bids_dir(tmp_path):
    root = tmp_path / "fmriprep"
    for label in ("03", "01", "10"):  # created out of order on purpose
        (root / f"sub-{label}").mkdir(parents=True)
    (root / "sub-02.html").write_text("")  # an fMRIPrep report, not a participant
    return root


def test_array_task_takes_the_ith_participant_and_its_resources(bids_dir, tmp_path):
    argv = run_job("participant.sbatch", bids_dir, tmp_path / "out", tmp_path / "work", "--fd-threshold", "0.5",
                   SLURM_ARRAY_TASK_ID="2", SLURM_CPUS_PER_TASK="3", SLURM_MEM_PER_NODE="10240")
    assert argv[:3] == [str(bids_dir), str(tmp_path / "out"), "participant"]
    options = dict(zip(argv[3::2], argv[4::2]))
    assert options["--participant-label"] == "03"  # sorted: 01, 03, 10
    assert options["-w"] == str(tmp_path / "work" / "sub-03")  # a work dir per task
    assert options["--nprocs"] == "3"
    assert float(options["--mem-gb"]) == pytest.approx(9.0)  # 10 GB less 10 %
    assert options["--fd-threshold"] == "0.5"  # extra options reach tmstarget


def test_participants_file_overrides_the_folder_order(bids_dir, tmp_path):
    listing = tmp_path / "participants.txt"
    listing.write_text("sub-10\n01\n")
    argv = run_job("participant.sbatch", bids_dir, tmp_path / "out", tmp_path / "work",
                   SLURM_ARRAY_TASK_ID="1", PARTICIPANTS_FILE=str(listing))
    assert argv[argv.index("--participant-label") + 1] == "10"


def test_task_beyond_the_participants_fails(bids_dir, tmp_path):
    result = subprocess.run(["bash", str(SLURM_DIR / "participant.sbatch"), str(bids_dir), "out", "work"],
                            capture_output=True, text=True,
                            env={**os.environ, "TMSTARGET": "echo", "SLURM_ARRAY_TASK_ID": "4"})
    assert result.returncode == 1
    assert "array task 4: no participant" in result.stderr


def test_group_job_runs_the_group_level(bids_dir, tmp_path):
    argv = run_job("group.sbatch", bids_dir, tmp_path / "out", tmp_path / "work")
    assert argv == [str(bids_dir), str(tmp_path / "out"), "group", "-w", str(tmp_path / "work" / "group")]
