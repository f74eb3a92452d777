"""The bad-input catalogue: every case gives one line naming the file or option and the fix, exit
code 1 (2 for wrong use of the command line), no traceback, and nothing in the output folder.

Each test damages a private copy of the one-run synthetic dataset in one way. Cases found from
headers, sidecars and tables are refused at collection time, before the graph runs; cases that need
the voxel values (NaN, zeros, a constant or truncated BOLD, empty regions) fail in the graph and are
reported from Nipype's crash file.
"""

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from helpers import cli_command, cli_environment, connectivity_row, distance_mm, run_app

SPACE = "MNI152NLin2009cAsym"
RUN = "sub-01_task-rest_run-1"


@pytest.fixture
def dataset(one_run_dataset, tmp_path):
    """A private copy of the one-run dataset (MNI152NLin2009cAsym and T1w) to damage."""
    root, truth = one_run_dataset
    copy = tmp_path / "fmriprep"
    shutil.copytree(root, copy)
    return copy, truth


def func(root, name):
    return root / "sub-01" / "func" / name


BOLD = f"{RUN}_space-{SPACE}_desc-preproc_bold.nii.gz"
MASK = f"{RUN}_space-{SPACE}_desc-brain_mask.nii.gz"
CONFOUNDS = f"{RUN}_desc-confounds_timeseries.tsv"


def fails(capsys, root, out, *flags, work_dir=None, code=1):
    """Run the app, expect failure with ``code``; return its only error line."""
    try:
        result = run_app(root, out, *flags, work_dir=work_dir)
    except SystemExit as exc:  # argparse's usage errors
        result = exc.code
    err = capsys.readouterr().err
    assert result == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("tmstarget: error:")]
    assert len(lines) == 1, err
    # nothing half-written: the output folder was not even left behind
    assert not Path(out).is_dir() or not any(Path(out).iterdir())
    return lines[0]


def rewrite_bold(path, transform):
    """Replace a BOLD by ``transform(data)`` (float32, same affine and header)."""
    img = nb.load(path)
    data = transform(img.get_fdata(dtype=np.float32))
    out = nb.Nifti1Image(data.astype(np.float32), img.affine, img.header)
    out.set_data_dtype(np.float32)
    path.unlink()
    out.to_filename(path)


def edit_confounds(root, edit):
    path = func(root, CONFOUNDS)
    table = pd.read_csv(path, sep="\t", na_values="n/a")
    table = edit(table)
    path.write_text(table.to_csv(sep="\t", index=False, na_rep="n/a"))


# --------------------------------------------------------------------------------------------
# the dataset and the folders
# --------------------------------------------------------------------------------------------
def test_folder_that_is_not_bids(tmp_path, capsys):
    (tmp_path / "in" / "sub-01").mkdir(parents=True)
    line = fails(capsys, tmp_path / "in", tmp_path / "out")
    assert "has no dataset_description.json" in line and "fMRIPrep derivatives folder" in line


def test_output_dir_is_a_file(dataset, tmp_path, capsys):
    root, _ = dataset
    (tmp_path / "out").write_text("not a folder")
    line = fails(capsys, root, tmp_path / "out", code=2)
    assert "is a file" in line
    assert (tmp_path / "out").read_text() == "not a folder"


def test_work_dir_inside_the_input_is_refused(dataset, tmp_path, capsys):
    root, _ = dataset
    line = fails(capsys, root, tmp_path / "out", work_dir=root / "work", code=2)
    assert "--work-dir" in line and "outside" in line
    assert not (root / "work").exists()


@pytest.mark.parametrize("flag,label", [("--participant-label", "sub-01/.."),
                                        ("--participant-label", "/etc"),
                                        ("--session-label", "../../x"),
                                        ("--task-id", "../../x"),  # task-<id> is in output names
                                        ("--seed-name", "../evil")])  # so is desc-<seed name>
def test_labels_escaping_a_folder(dataset, tmp_path, capsys, flag, label):
    root, _ = dataset
    line = fails(capsys, root, tmp_path / "out", flag, label, code=2)
    assert "invalid" in line and repr(label) in line


def test_unknown_task(dataset, tmp_path, capsys):
    root, _ = dataset
    line = fails(capsys, root, tmp_path / "out", "--task-id", "nback")
    assert "no preprocessed BOLD" in line and "task 'nback'" in line and "--task-id" in line


def test_unwritable_output_dir(dataset, tmp_path):
    """A read-only output folder (a read-only bind mount, as in containers; chmod when not root)."""
    root, _ = dataset
    out = tmp_path / "readonly"
    out.mkdir()
    command = cli_command(root, out / "derivatives", tmp_path / "work")
    if os.geteuid() == 0:  # root ignores permission bits: make the folder a read-only mount
        if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
            pytest.skip("root without mount namespaces: cannot make a read-only folder")
        command = ["unshare", "-m", "sh", "-c",
                   f'mount --bind "{out}" "{out}" && mount -o remount,ro,bind "{out}" && exec "$@"',
                   "sh", *command]
    else:
        out.chmod(0o555)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=cli_environment())
    assert result.returncode == 1, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("tmstarget: error:")]
    assert f"output_dir {out / 'derivatives'} is not writable" in line and "Traceback" not in result.stderr
    assert not any(out.iterdir())


def test_datalad_link_without_content(dataset, tmp_path, capsys):
    root, _ = dataset
    bold = func(root, BOLD)
    bold.unlink()
    bold.symlink_to("../../.git/annex/objects/XX/missing.nii.gz")
    line = fails(capsys, root, tmp_path / "out")
    assert BOLD in line and "datalad get" in line


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
def test_corrupt_bold_header(dataset, tmp_path, capsys):
    root, _ = dataset
    func(root, BOLD).write_bytes(gzip.compress(b"not a nifti file" * 10))
    line = fails(capsys, root, tmp_path / "out")
    assert BOLD in line and "cannot be read as NIfTI" in line and "copy it again" in line


def test_truncated_bold(dataset, tmp_path, capsys):
    """An interrupted copy: the header reads, the data end early. Found when the data are read."""
    root, _ = dataset
    bold = func(root, BOLD)
    data = bold.read_bytes()
    bold.write_bytes(data[: len(data) // 2])
    line = fails(capsys, root, tmp_path / "out", work_dir=tmp_path / "work")
    assert BOLD in line and "truncated or corrupt" in line


def test_3d_image_instead_of_bold(dataset, tmp_path, capsys):
    root, _ = dataset
    bold = func(root, BOLD)
    img = nb.load(bold)
    mean = nb.Nifti1Image(img.get_fdata(dtype=np.float32).mean(axis=-1), img.affine)
    bold.unlink()
    mean.to_filename(bold)
    line = fails(capsys, root, tmp_path / "out")
    assert BOLD in line and "4-D time series is needed" in line


@pytest.mark.parametrize("damage,words", [
    (lambda d: np.where(np.arange(d.shape[-1]) == 40, np.nan, d), "NaN or infinite values"),
    (lambda d: np.zeros_like(d), "all zeros"),
    (lambda d: np.repeat(d[..., 5:6], d.shape[-1], axis=-1), "does not vary in time"),
], ids=["nan", "zeros", "constant"])  # inf: test_properties.py, same check
def test_bold_values_without_meaning(dataset, tmp_path, capsys, damage, words):
    root, _ = dataset
    rewrite_bold(func(root, BOLD), damage)
    line = fails(capsys, root, tmp_path / "out", work_dir=tmp_path / "work")
    assert BOLD in line and words in line


def test_mask_on_another_grid(dataset, tmp_path, capsys):
    root, _ = dataset
    mask = func(root, MASK)
    img = nb.load(mask)
    shifted = img.affine.copy()
    shifted[:3, 3] += 8.0  # two voxels: a mask of another run or resolution
    nb.Nifti1Image(np.asanyarray(img.dataobj), shifted, img.header).to_filename(mask)
    line = fails(capsys, root, tmp_path / "out")
    assert MASK in line and "not on the grid" in line and "desc-brain_mask" in line


def test_empty_mask(dataset, tmp_path, capsys):
    root, _ = dataset
    mask = func(root, MASK)
    img = nb.load(mask)
    nb.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header).to_filename(mask)
    line = fails(capsys, root, tmp_path / "out")
    assert MASK in line and "is empty" in line


def test_t1w_of_another_space(dataset, tmp_path, capsys):
    """A head T1w whose field of view misses the brain (another space or person): refused."""
    root, _ = dataset
    t1w = root / "sub-01" / "anat" / f"sub-01_space-{SPACE}_desc-preproc_T1w.nii.gz"
    img = nb.load(t1w)
    moved = img.affine.copy()
    moved[:3, 3] += [0.0, 0.0, 300.0]
    nb.Nifti1Image(np.asanyarray(img.dataobj), moved, img.header).to_filename(t1w)
    line = fails(capsys, root, tmp_path / "out")
    assert t1w.name in line and "does not cover the brain" in line


def test_runs_on_different_grids(dataset, tmp_path, capsys):
    """fMRIPrep run with two resolutions of one space: both would be averaged; refused."""
    root, _ = dataset
    for name in (BOLD, MASK, BOLD.replace(".nii.gz", ".json")):
        source = func(root, name)
        target = func(root, name.replace(f"space-{SPACE}_", f"space-{SPACE}_res-1_"))
        if name.endswith(".json"):
            shutil.copy(source, target)
            continue
        img = nb.load(source)
        half = img.affine.copy()
        half[:3, :3] /= 2  # a finer grid (first half of the field of view: the grid is what matters)
        nb.Nifti1Image(np.asanyarray(img.dataobj), half, img.header).to_filename(target)
    line = fails(capsys, root, tmp_path / "out")
    assert "different grids" in line and '"res"' in line


def test_missing_t1w_still_gives_the_target_without_scalp(dataset, tmp_path, caplog):
    root, truth = dataset
    for t1w in (root / "sub-01" / "anat").glob("*desc-preproc_T1w.nii.gz"):
        t1w.unlink()
    assert run_app(root, tmp_path / "out", work_dir=tmp_path / "work") == 0
    warnings = [r.message for r in caplog.records if r.levelname == "WARNING"]
    (scalp,) = [w for w in warnings if "scalp stage" in w]
    assert "no desc-preproc_T1w" in scalp and "skipped" in scalp
    row = connectivity_row(tmp_path / "out", SPACE)
    assert distance_mm(row, truth["target_mni"]) <= 4.0
    assert "scalp_x" not in row.index
    # no exports, and the user is told so: console, sidecar (the report shows the sidecar's list)
    assert not list((tmp_path / "out").rglob("*brainsight*"))
    (exports,) = [w for w in warnings if "neuronavigation exports" in w]
    sidecar = json.loads((tmp_path / "out" / "sub-01" / "tms" /
                          f"sub-01_space-{SPACE}_targets.json").read_text())
    assert exports.endswith(sidecar["QualityWarnings"][-1])


# --------------------------------------------------------------------------------------------
# the repetition time
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sidecar,words", [
    ({"TaskName": "rest"}, "has no RepetitionTime"),
    ({"RepetitionTime": "2s"}, "not a positive number"),
    ({"RepetitionTime": 0}, "not a positive number"),
    ({"RepetitionTime": 3.0}, "contradicts 2 s in the NIfTI header"),
], ids=["missing", "text", "zero", "contradicts-header"])
def test_bad_repetition_time(dataset, tmp_path, capsys, sidecar, words):
    root, _ = dataset
    func(root, BOLD.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    line = fails(capsys, root, tmp_path / "out")
    assert BOLD in line and words in line


def test_low_pass_above_nyquist(dataset, tmp_path, capsys):
    root, _ = dataset  # TR 2 s: Nyquist 0.25 Hz
    line = fails(capsys, root, tmp_path / "out", "--low-pass", "0.3")
    assert "--low-pass 0.3 Hz" in line and "Nyquist frequency 0.25 Hz" in line


# --------------------------------------------------------------------------------------------
# confounds
# --------------------------------------------------------------------------------------------
def test_missing_confounds(dataset, tmp_path, capsys):
    root, _ = dataset
    func(root, CONFOUNDS).unlink()
    line = fails(capsys, root, tmp_path / "out")
    assert "no confounds table" in line and "desc-confounds_timeseries.tsv" in line


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\x00binary"],
                         ids=["empty", "binary"])
def test_unreadable_confounds(dataset, tmp_path, capsys, content):
    root, _ = dataset
    func(root, CONFOUNDS).write_bytes(content)
    line = fails(capsys, root, tmp_path / "out")
    assert CONFOUNDS in line and ("cannot be read" in line or "rows" in line)


def test_confounds_rows_differ_from_volumes(dataset, tmp_path, capsys):
    root, truth = dataset
    edit_confounds(root, lambda t: t.iloc[:-10])
    line = fails(capsys, root, tmp_path / "out")
    assert CONFOUNDS in line and f"{truth['n_volumes'] - 10} rows" in line
    assert f"{truth['n_volumes']} volumes" in line


def test_confounds_columns_missing_for_the_strategy(dataset, tmp_path, capsys):
    root, _ = dataset
    edit_confounds(root, lambda t: t.drop(columns=[c for c in t if c.startswith("global_signal")]))
    line = fails(capsys, root, tmp_path / "out")
    assert CONFOUNDS in line and "global_signal" in line and "--confounds gsr" in line
    # the same table serves a strategy that does not need the global signal
    from tmstarget.collect import check_participant, collect_participant, load_layout
    from tmstarget.config import Options

    options = Options(confounds="nogsr")
    check_participant(collect_participant(load_layout(root), "01"), options)


def test_censoring_without_framewise_displacement(dataset, tmp_path, capsys):
    root, _ = dataset
    edit_confounds(root, lambda t: t.drop(columns=["framewise_displacement"]))
    line = fails(capsys, root, tmp_path / "out", "--fd-threshold", "0.5")
    assert CONFOUNDS in line and "framewise_displacement" in line and "--fd-threshold" in line


@pytest.mark.parametrize("column,value", [("trans_x", np.nan), ("csf", np.inf)])
def test_non_finite_confounds(dataset, tmp_path, capsys, column, value):
    root, _ = dataset

    def poison(table):
        table.loc[50, column] = value
        return table

    edit_confounds(root, poison)
    line = fails(capsys, root, tmp_path / "out")
    assert CONFOUNDS in line and "NaN or infinite" in line and column in line


# --------------------------------------------------------------------------------------------
# seed and search region
# --------------------------------------------------------------------------------------------
def _mask_image(path, center, shape=(20, 20, 20)):
    """A 10 mm cube mask on a 2 mm grid around ``center`` (MNI mm)."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = np.asarray(center) - 20.0
    data = np.zeros(shape, np.uint8)
    data[8:13, 8:13, 8:13] = 1
    nb.Nifti1Image(data, affine).to_filename(path)
    return path


def test_seed_outside_the_brain(dataset, tmp_path, capsys):
    root, _ = dataset
    line = fails(capsys, root, tmp_path / "out", "--seed-center", "0", "0", "150",
                 work_dir=tmp_path / "work")
    assert "seed" in line and "no brain voxel" in line and "--seed-center" in line


def test_search_region_without_brain_voxels(dataset, tmp_path, capsys):
    root, _ = dataset
    image = _mask_image(tmp_path / "region.nii.gz", (0.0, 0.0, 150.0))
    line = fails(capsys, root, tmp_path / "out", "--search-region-image", str(image),
                 work_dir=tmp_path / "work")
    assert "search region" in line and "no grey-matter" in line and "--search-region-image" in line


@pytest.mark.parametrize("flag", ["--seed-image", "--search-region-image"])
def test_region_image_that_is_not_a_3d_nifti(dataset, tmp_path, capsys, flag):
    root, _ = dataset
    (tmp_path / "notes.nii.gz").write_text("a text file")
    line = fails(capsys, root, tmp_path / "out", flag, str(tmp_path / "notes.nii.gz"), code=2)
    assert flag in line and "cannot be read as NIfTI" in line
    four_d = tmp_path / "maps.nii.gz"
    nb.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)).to_filename(four_d)
    line = fails(capsys, root, tmp_path / "out", flag, str(four_d), code=2)
    assert flag in line and "3-D image" in line


# --------------------------------------------------------------------------------------------
# options and option files
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,words", [
    (["--gm-threshold", "2"], "--gm-threshold 2 is out of range"),
    (["--smoothing-fwhm", "-6"], "--smoothing-fwhm -6 is out of range"),
    (["--cluster-percentile", "0"], "--cluster-percentile 0 is out of range"),
    (["--seed-radius", "0"], "--seed-radius 0 is out of range"),
    (["--fd-threshold", "-0.5"], "--fd-threshold -0.5 is out of range"),
    (["--nprocs", "0"], "--nprocs"),
], ids=["gm", "fwhm", "percentile", "radius", "fd", "nprocs"])
def test_option_out_of_range(dataset, tmp_path, capsys, flags, words):
    root, _ = dataset
    assert words in fails(capsys, root, tmp_path / "out", *flags, code=2)


@pytest.mark.parametrize("content,words", [
    ("{not json", "--bids-filter-file"),
    ('{"bold": {"acqusition": "mb8"}}', "unknown BIDS entity acqusition"),
    ('{"bold": "mb8"}', "must be a JSON object"),
    ('{"anat": {}}', 'keys "bold" and/or "t1w"'),
], ids=["json", "typo", "not-object", "kind"])
def test_bad_bids_filter_file(dataset, tmp_path, capsys, content, words):
    root, _ = dataset
    (tmp_path / "filter.json").write_text(content)
    line = fails(capsys, root, tmp_path / "out", "--bids-filter-file", str(tmp_path / "filter.json"),
                 code=2)
    assert words in line


@pytest.mark.parametrize("content,words", [
    (None, "does not exist"),
    ("[1, 2", "--config-file"),
    ('{"smoothing": 6}', "unknown option(s) smoothing"),
    ('{"gm_threshold": 7}', "--gm-threshold 7 is out of range"),
    ('{"participant_label": ["../../x"]}', "invalid participant label '../../x'"),
], ids=["missing", "json", "unknown-key", "range", "label"])
def test_bad_config_file(dataset, tmp_path, capsys, content, words):
    root, _ = dataset
    config = tmp_path / "config.json"
    if content is not None:
        config.write_text(content)
    line = fails(capsys, root, tmp_path / "out", "--config-file", str(config), code=2)
    assert words in line


# --------------------------------------------------------------------------------------------
# the work folder
# --------------------------------------------------------------------------------------------
def test_work_dir_that_is_a_file(dataset, tmp_path, capsys):
    root, _ = dataset
    (tmp_path / "work").write_text("not a folder")
    line = fails(capsys, root, tmp_path / "out", work_dir=tmp_path / "work", code=2)
    assert "--work-dir" in line and "is a file" in line
    assert (tmp_path / "work").read_text() == "not a folder"


def test_unwritable_work_dir_is_refused_before_anything_is_read(dataset, tmp_path):
    """A read-only work folder: one line, exit 1, and the output folder not even created."""
    root, _ = dataset
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    command = cli_command(root, tmp_path / "out", readonly / "work")
    if os.geteuid() == 0:
        if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
            pytest.skip("root without mount namespaces: cannot make a read-only folder")
        command = ["unshare", "-m", "sh", "-c",
                   f'mount --bind "{readonly}" "{readonly}" && mount -o remount,ro,bind "{readonly}" && exec "$@"',
                   "sh", *command]
    else:
        readonly.chmod(0o555)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=cli_environment())
    assert result.returncode == 1, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("tmstarget: error:")]
    assert f"--work-dir {readonly / 'work'} is not writable" in line and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not any(readonly.iterdir())


def test_failed_run_leaves_no_work_dir_it_created(dataset, tmp_path, capsys):
    root, _ = dataset
    work = tmp_path / "new" / "work"
    line = fails(capsys, root, tmp_path / "out", "--task-id", "nback", work_dir=work)
    assert "task 'nback'" in line
    assert not work.exists()
    # a work folder that was there before stays, with what it held
    work.mkdir(parents=True)
    (work / "keep.txt").write_text("mine")
    fails(capsys, root, tmp_path / "out", "--task-id", "nback", work_dir=work)
    assert (work / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty work"
    empty.mkdir()
    fails(capsys, root, tmp_path / "out", "--task-id", "nback", work_dir=empty)
    assert empty.is_dir()


@pytest.mark.parametrize("flags,words", [
    (["--task-id", "nback"], "found for sub-01: task rest; spaces MNI152NLin2009cAsym, T1w; no sessions"),
    (["--space", "MNI152NLin6Asym"], "spaces MNI152NLin2009cAsym, T1w"),
    (["--session-label", "2"], "session(s) 2 task 'rest'"),
], ids=["task", "space", "session"])
def test_wrong_task_space_or_session_lists_what_exists(dataset, tmp_path, capsys, flags, words):
    root, _ = dataset
    line = fails(capsys, root, tmp_path / "out", *flags)
    assert words in line and "found for sub-01" in line
