"""pybids queries on a real fMRIPrep tree (colornest: sessions, rec-refaced anatomy in the session)."""

import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from tmstarget.collect import InputError, clean_label, collect_participant, find_fmriprep_dir, load_layout

COLORNEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "fmriprep-layout" / "colornest"


@pytest.fixture
def colornest(tmp_path):
    """The real colornest tree plus the 4-D BOLD, confounds TSV and T1w it leaves out."""
    if not COLORNEST.is_dir():
        pytest.skip("../shared/data/fmriprep-layout/colornest is absent")
    root = tmp_path / "colornest"
    shutil.copytree(COLORNEST, root)
    func = root / "sub-colornest001" / "ses-1" / "func"
    prefix = "sub-colornest001_ses-1_task-rest_run-1"
    ref = nb.load(func / f"{prefix}_space-MNI152NLin2009cAsym_boldref.nii.gz")
    bold = np.repeat(np.asanyarray(ref.dataobj)[..., None], 4, axis=-1)
    nb.Nifti1Image(bold, ref.affine).to_filename(func / f"{prefix}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    (func / f"{prefix}_desc-confounds_timeseries.tsv").write_text("trans_x\n0\n0\n0\n0\n")
    anat = root / "sub-colornest001" / "ses-1" / "anat"
    nb.Nifti1Image(np.zeros((4, 4, 4), np.float32), ref.affine).to_filename(
        anat / "sub-colornest001_ses-1_rec-refaced_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz")
    return root


@pytest.mark.shared_data
def test_colornest_is_collected(colornest):
    assert find_fmriprep_dir(colornest) == colornest
    layout = load_layout(colornest)
    inputs = collect_participant(layout, "colornest001")
    assert len(inputs.runs) == 1
    run = inputs.runs[0]
    assert Path(run.bold).name.endswith("_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    assert Path(run.mask).name == "sub-colornest001_ses-1_task-rest_run-1_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz"
    assert Path(run.confounds).name == "sub-colornest001_ses-1_task-rest_run-1_desc-confounds_timeseries.tsv"
    assert run.t_r == 2.5
    assert run.entities == {"session": "1", "run": 1}
    # Anatomy lives in the session folder and carries rec-refaced; there is no MNI GM probseg, so
    # the MNI dseg stands in for it.
    assert Path(inputs.t1w).name == "sub-colornest001_ses-1_rec-refaced_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz"
    assert Path(inputs.gm).name == "sub-colornest001_ses-1_rec-refaced_space-MNI152NLin2009cAsym_dseg.nii.gz"
    assert inputs.source_version == "20.2.1"
    assert inputs.to_mni_xfm is None


@pytest.mark.shared_data
def test_colornest_missing_space_or_session_is_named(colornest):
    layout = load_layout(colornest)
    with pytest.raises(InputError, match="space T1w"):
        collect_participant(layout, "colornest001", space="T1w")
    with pytest.raises(InputError, match="session"):
        collect_participant(layout, "colornest001", sessions=["2"])
    with pytest.raises(InputError, match="task 'nback'"):
        collect_participant(layout, "colornest001", task="nback")


def test_raw_dataset_without_fmriprep_is_refused(tmp_path):
    (tmp_path / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    with pytest.raises(InputError, match="--derivatives fmriprep=PATH"):
        find_fmriprep_dir(tmp_path)
    (tmp_path / "derivatives" / "fmriprep").mkdir(parents=True)
    assert find_fmriprep_dir(tmp_path) == tmp_path / "derivatives" / "fmriprep"


@pytest.mark.parametrize("label", ["../x", "sub-01/..", "/abs", "01 02", ""])
def test_labels_cannot_escape_a_folder(label):
    with pytest.raises(ValueError, match="invalid participant label"):
        clean_label(label)


def test_labels_accept_both_spellings():
    assert clean_label("sub-01") == clean_label("01") == "01"
    assert clean_label("ses-pre", "session") == "pre"


def _bold_names(root, names):
    """A derivative tree holding only (empty) BOLD files of these names: pybids reads names."""
    (root / "dataset_description.json").write_text(
        '{"Name": "f", "BIDSVersion": "1.9.0", "DatasetType": "derivative"}')
    for name in names:
        parts = dict(p.split("-", 1) for p in name.split("_")[:-1] if "-" in p)
        folder = root / f"sub-{parts['sub']}" / (f"ses-{parts['ses']}" if "ses" in parts else "") / "func"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    return load_layout(root)


def test_wrong_task_space_or_session_lists_the_participants_runs(tmp_path):
    layout = _bold_names(tmp_path, [
        "sub-01_ses-A_task-rest_run-1_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz",
        "sub-01_ses-B_task-rest_run-1_space-MNI152NLin6Asym_res-1_desc-preproc_bold.nii.gz",
        "sub-01_ses-B_task-nback_space-T1w_desc-preproc_bold.nii.gz",
        "sub-02_task-movie_space-fsLR_den-91k_desc-preproc_bold.nii.gz",
    ])
    found = "found for sub-01: tasks nback, rest; spaces MNI152NLin6Asym (res-1, res-2), T1w; sessions A, B"
    for kwargs in (dict(space="MNI152NLin2009cAsym"), dict(task="rst", space="MNI152NLin6Asym"),
                   dict(space="T1w", sessions=["C"])):
        with pytest.raises(InputError) as exc:
            collect_participant(layout, "01", **kwargs)
        assert found in str(exc.value)
        assert "check --task-id, --space and --session-label" in str(exc.value)
    with pytest.raises(InputError, match="sub-03 has no desc-preproc_bold at all"):
        collect_participant(layout, "03")
