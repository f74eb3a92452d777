"""Faults: a run killed in the middle resumes to the same outputs; participants run concurrently into
one output folder; the same input gives byte-identical outputs; the input is never modified and
nothing is written outside the output, work and temporary folders.

The command runs in a subprocess here, as users run it (a SIGKILL must hit a real process).
"""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bids_app.synthetic import make_fmriprep_dataset
from conftest import FAST, connectivity_row, distance_mm, run_app

SPACE = "MNI152NLin2009cAsym"


def command(bids_dir, output_dir, work_dir, *flags):
    return [sys.executable, "-m", "bids_app.cli", str(bids_dir), str(output_dir), "participant",
            "-w", str(work_dir), *flags]


def environment(**extra):
    env = dict(os.environ, NIPYPE_NO_ET="1", **extra)
    # the package from this source tree, whatever the current folder
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                         env.get("PYTHONPATH", "")])
    return env


def tree_digest(root):
    """{relative path: sha256} of every file under ``root``."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_outputs(out, reference):
    """Same files, byte for byte (maps, tables, sidecars, exports, configuration)."""
    digest, expected = tree_digest(out), tree_digest(reference)
    assert sorted(digest) == sorted(expected)
    differing = [name for name in expected if digest[name] != expected[name]]
    assert not differing, f"files differ: {differing}"
    assert any(name.endswith("_boldmap.nii.gz") for name in digest)
    assert any(name.endswith("_targets.tsv") for name in digest)


# --------------------------------------------------------------------------------------------
# one traced run: determinism, confined writes, untouched input
# --------------------------------------------------------------------------------------------
#: write-like system calls followed by strace; opens are kept only when they can write
_TRACED = ("open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,link,"
           "linkat,symlink,symlinkat,truncate,chmod,fchmodat,utimensat")
_WRITE_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")


def written_paths(trace_lines):
    """Paths a traced process tree wrote to, created, renamed, removed or changed (absolute)."""
    paths = []
    for line in trace_lines:
        match = re.match(r"\d+\s+(\w+)\((.*)\)\s+= (\d+)(?:<(.*)>)?", line)
        if not match:
            continue  # signals, exits
        call, args, _, fd_path = match.groups()
        if call in ("open", "openat", "creat"):
            if call != "creat" and not _WRITE_FLAGS.search(args):
                continue
            paths.append(fd_path)
            continue
        cwd = re.match(r"AT_FDCWD<([^>]*)>", args)
        for name in re.findall(r'"([^"]*)"', args):
            paths.append(name if name.startswith("/") else
                         os.path.join(cwd.group(1), name) if cwd else f"(relative) {name}")
    return paths


@pytest.fixture(scope="module")
def traced_run(one_run_dataset, tmp_path_factory):
    """The command run once more in a sandbox (HOME, TMPDIR and the current folder of its own),
    under strace when it is available; the input checksummed before and after."""
    root, truth = one_run_dataset
    sandbox = tmp_path_factory.mktemp("traced")
    for name in ("home", "tmp", "cwd"):
        (sandbox / name).mkdir()
    before = tree_digest(root)
    argv = command(root, sandbox / "out", sandbox / "work")
    trace = sandbox / "trace.log"
    strace = shutil.which("strace")
    if strace and subprocess.run([strace, "-o", os.devnull, "true"], capture_output=True).returncode == 0:
        argv = [strace, "-f", "-qq", "-y", "-e", f"trace={_TRACED}", "-e", "status=successful",
                "-o", str(trace), *argv]
    else:
        strace = None
    result = subprocess.run(argv, cwd=sandbox / "cwd", capture_output=True, text=True, timeout=900,
                            env=environment(HOME=str(sandbox / "home"), TMPDIR=str(sandbox / "tmp")))
    assert result.returncode == 0, result.stderr
    return {"root": root, "sandbox": sandbox, "before": before, "after": tree_digest(root),
            "trace": trace.read_text().splitlines() if strace else None}


def test_same_input_gives_byte_identical_outputs(traced_run, mni_run):
    """The same data twice (another process, work dir and output dir): byte-identical outputs,
    compressed maps included (nibabel writes gzip without a time stamp or file name)."""
    out, _, _ = mni_run
    assert_same_outputs(traced_run["sandbox"] / "out", out)


def test_input_dataset_is_never_modified(traced_run):
    assert traced_run["after"] == traced_run["before"]
    assert len(traced_run["before"]) > 20


def test_nothing_is_written_outside_output_work_and_temp(traced_run):
    if traced_run["trace"] is None:
        pytest.skip("strace is not available or not permitted here")
    sandbox = traced_run["sandbox"]
    allowed = [str(sandbox / name) + os.sep for name in ("out", "work", "tmp")]
    # /dev/null, and POSIX semaphores of Python's multiprocessing (joblib) in /dev/shm
    allowed += ["/dev/null", "/dev/shm/"]
    paths = written_paths(traced_run["trace"])
    assert any(p.startswith(allowed[0]) for p in paths)  # the trace did see the outputs
    outside = sorted({p for p in paths if not any(p == a.rstrip(os.sep) or p.startswith(a)
                                                  for a in allowed)})
    assert outside == []
    # nothing left in HOME or the current folder either
    assert not any((sandbox / "home").iterdir()) and not any((sandbox / "cwd").iterdir())


# --------------------------------------------------------------------------------------------
# SIGKILL in the middle, then resume
# --------------------------------------------------------------------------------------------
def test_killed_run_resumes_to_the_same_outputs(one_run_dataset, mni_run, tmp_path):
    """SIGKILL once the confound regression has finished, then the same command with the same
    work dir: it reuses the finished step and writes what an uninterrupted run writes."""
    root, _ = one_run_dataset
    reference, _, _ = mni_run
    out, work = tmp_path / "out", tmp_path / "work"
    process = subprocess.Popen(command(root, out, work), env=environment(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    denoised = work / "sub_01_wf" / "run_01_wf" / "denoise" / "result_denoise.pklz"
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
    jobs = [subprocess.Popen(command(root, out, work, "--participant-label", label), env=environment(),
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
    from bids_app.derivatives import atomic_write, write_text

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
