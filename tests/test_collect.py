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
