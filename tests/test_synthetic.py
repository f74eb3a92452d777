"""The synthetic fMRIPrep derivatives generator: names, shapes, the planted signal, confounds.

Each test would fail if the generator were wrong in a way the pipeline's tests could not see:
a file fMRIPrep would name differently, a target planted off grey matter or in the wrong
hemisphere, a signal that is not anticorrelated, a decoy that confound regression cannot remove,
confounds that do not come from the BOLD, a table nilearn cannot read.
"""

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from nilearn.interfaces.fmriprep import load_confounds

from tmstarget import synthetic
from tmstarget.config import DLPFC_SITES_MNI
from tmstarget.synthetic import sources
from tmstarget.synthetic import DECOY_MNI, PLANTED_TARGET_MNI, make_fmriprep_dataset, main
from helpers import REAL_DATA

SPACE = "MNI152NLin2009cAsym"
FAST = dict(voxel_size=4.0, n_volumes=150, tr=2.0, **REAL_DATA)
MOTION = [f"{p}_{a}" for p in ("trans", "rot") for a in "xyz"]
MOTION_24 = [m + s for m in MOTION for s in ("", "_derivative1", "_power2", "_derivative1_power2")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "fmriprep"
    truth = make_fmriprep_dataset(root, spaces=(SPACE, "T1w"), seed=2, **FAST)
    return root, truth


def _run_files(root, space, prefix="sub-01_task-rest_run-1"):
    func = Path(root) / "sub-01" / "func"
    return {
        "bold": func / f"{prefix}_space-{space}_desc-preproc_bold.nii.gz",
        "mask": func / f"{prefix}_space-{space}_desc-brain_mask.nii.gz",
        "confounds": func / f"{prefix}_desc-confounds_timeseries.tsv",
    }


def _value_at(img, point_mm):
    ijk = np.round(nb.affines.apply_affine(np.linalg.inv(img.affine), point_mm)).astype(int)
    return np.asanyarray(img.dataobj)[tuple(ijk)]


def _correlations(root, space, points, sgacc, confound_columns, radius=0.0):
    """Correlation of the sgACC seed (mean of a 10 mm sphere) with the voxels nearest ``points``
    (or the most negative one within ``radius`` mm of each), in the raw BOLD without the
    non-steady-state volumes, after plain least-squares regression of ``confound_columns`` (and a
    constant)."""
    files = _run_files(root, space)
    bold = nb.load(files["bold"])
    data = bold.get_fdata(dtype=np.float32)[..., synthetic.N_NON_STEADY:]
    mask = nb.load(files["mask"]).get_fdata() > 0
    ijk = np.argwhere(mask)
    xyz = nb.affines.apply_affine(bold.affine, ijk)
    series = data[mask].T.astype(np.float64)                      # (T, V)
    table = pd.read_csv(files["confounds"], sep="\t", na_values="n/a")
    design = np.column_stack([table[confound_columns].to_numpy()[synthetic.N_NON_STEADY:],
                              np.ones(len(series))])
    series -= design @ np.linalg.lstsq(design, series, rcond=None)[0]
    seed = series[:, np.linalg.norm(xyz - sgacc, axis=1) <= 10.0].mean(axis=1)
    out = []
    for point in points:
        distance = np.linalg.norm(xyz - point, axis=1)
        near = np.nonzero(distance <= max(radius, distance.min()))[0]
        out.append(min(np.corrcoef(seed, series[:, v])[0, 1] for v in near))
    return out


def test_layout_has_fmriprep_names(dataset):
    root, truth = dataset
    anat = root / "sub-01" / "anat"
    expected = [anat / f"sub-01_{s}.nii.gz" for s in
                ("desc-preproc_T1w", "desc-brain_mask", "label-GM_probseg", "label-WM_probseg",
                 "label-CSF_probseg", "dseg")]
    expected += [anat / f"sub-01_space-{SPACE}_{s}.nii.gz" for s in
                 ("desc-preproc_T1w", "desc-brain_mask", "label-GM_probseg", "label-WM_probseg",
                  "label-CSF_probseg", "dseg")]
    expected += [anat / f"sub-01_from-T1w_to-{SPACE}_mode-image_xfm.h5",
                 anat / f"sub-01_from-{SPACE}_to-T1w_mode-image_xfm.h5"]
    for space in (SPACE, "T1w"):
        files = _run_files(root, space)
        expected += list(files.values())
        expected += [files["bold"].with_name(files["bold"].name.replace(".nii.gz", ".json")),
                     files["confounds"].with_suffix(".json")]
    missing = [str(p.relative_to(root)) for p in expected if not p.is_file()]
    assert not missing
    assert not list(root.glob("sub-01/ses-*"))           # no sessions asked: no ses- level
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "tmstarget-synth"
    sidecar = json.loads(_run_files(root, SPACE)["bold"].with_name(
        f"sub-01_task-rest_run-1_space-{SPACE}_desc-preproc_bold.json").read_text())
    assert sidecar == {"RepetitionTime": 2.0, "TaskName": "rest", "SkullStripped": False}
    assert json.loads((root / synthetic.TRUTH_FILE).read_text()) == json.loads(json.dumps(truth))


def test_bold_mask_and_confounds_shapes(dataset):
    root, truth = dataset
    for space in (SPACE, "T1w"):
        files = _run_files(root, space)
        bold, mask = nb.load(files["bold"]), nb.load(files["mask"])
        assert bold.ndim == 4 and bold.shape[3] == FAST["n_volumes"]
        assert bold.header.get_zooms() == (4.0, 4.0, 4.0, 2.0)
        assert bold.get_data_dtype() == np.int16 and bold.dataobj.slope != 1.0
        assert mask.shape == bold.shape[:3]
        np.testing.assert_allclose(mask.affine, bold.affine)
    table = pd.read_csv(_run_files(root, SPACE)["confounds"], sep="\t", na_values="n/a")
    assert len(table) == FAST["n_volumes"]
    for column in MOTION_24 + ["framewise_displacement", "global_signal", "white_matter", "csf",
                               "std_dvars", "dvars", "a_comp_cor_04", "cosine00"]:
        assert column in table
    assert np.isnan(table.loc[0, "framewise_displacement"]) and np.isnan(table.loc[0, "trans_x_derivative1"])
    outliers = table[[f"non_steady_state_outlier{k:02d}" for k in range(3)]].to_numpy()
    np.testing.assert_array_equal(outliers[:4], np.r_[np.eye(3), np.zeros((1, 3))])
    assert outliers[3:].sum() == 0
    # the expansions and FD follow fMRIPrep's definitions
    np.testing.assert_allclose(table.rot_y_derivative1[1:], np.diff(table.rot_y))
    np.testing.assert_allclose(table.trans_z_power2, table.trans_z ** 2)
    fd = np.abs(np.diff(table[MOTION].to_numpy(), axis=0)) @ np.r_[1, 1, 1, 50, 50, 50]
    np.testing.assert_allclose(table.framewise_displacement[1:], fd)


def test_planted_target_is_on_grey_matter_in_both_spaces(dataset):
    root, truth = dataset
    target = np.array(truth["target_mni"])
    assert np.linalg.norm(target - PLANTED_TARGET_MNI) <= 4.0
    assert target[0] < 0                                   # left hemisphere
    anat = root / "sub-01" / "anat"
    assert _value_at(nb.load(anat / f"sub-01_space-{SPACE}_dseg.nii.gz"), target) == 1
    assert _value_at(nb.load(anat / f"sub-01_space-{SPACE}_label-GM_probseg.nii.gz"), target) > 0.5
    # a voxel centre of the MNI BOLD grid
    bold = nb.load(_run_files(root, SPACE)["bold"])
    ijk = nb.affines.apply_affine(np.linalg.inv(bold.affine), target)
    np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-6)
    # the T1w-space anatomy is the MNI anatomy moved by the participant's map
    target_t1w = truth["participants"]["01"]["target_t1w"]
    assert _value_at(nb.load(anat / "sub-01_dseg.nii.gz"), target_t1w) == 1
    decoy = np.array(truth["decoy_mni"])
    assert np.linalg.norm(decoy - DECOY_MNI) <= 4.0 and np.linalg.norm(decoy - target) > 10.0


def test_truth_t1w_points_follow_the_participant_map(dataset):
    _, truth = dataset
    participant = truth["participants"]["01"]
    matrix = np.array(participant["mni_to_t1w"])
    assert matrix.shape == (4, 4)
    a, b = matrix[:3, :3], matrix[:3, 3]
    np.testing.assert_allclose(participant["target_t1w"], a @ truth["target_mni"] + b, atol=1e-9)
    np.testing.assert_allclose(participant["decoy_t1w"], a @ truth["decoy_mni"] + b, atol=1e-9)
    assert not np.allclose(a, np.eye(3), atol=0.02)
    assert participant["target_t1w"][0] < 0               # still the left hemisphere in T1w space


def test_planted_target_anticorrelated_only_after_confound_regression(dataset):
    root, truth = dataset
    target, decoy = truth["target_mni"], truth["decoy_mni"]
    nuisance = MOTION_24 + ["global_signal", "white_matter", "csf"]
    r_target, r_decoy = _correlations(root, SPACE, [target, decoy], synthetic.SGACC_MNI, nuisance)
    assert r_target < -0.4
    assert r_decoy > r_target + 0.3
    # without regression the motion-locked decoy is the more anticorrelated site
    raw_target, raw_decoy = _correlations(root, SPACE, [target, decoy], synthetic.SGACC_MNI, [])
    assert raw_decoy < -0.2 and raw_decoy < raw_target - 0.2


def test_planted_target_anticorrelated_in_t1w_space(dataset):
    root, truth = dataset
    participant = truth["participants"]["01"]
    matrix = np.array(participant["mni_to_t1w"])
    sgacc_t1w = nb.affines.apply_affine(matrix, synthetic.SGACC_MNI)
    nuisance = MOTION_24 + ["global_signal", "white_matter", "csf"]
    # the T1w grid is not aligned with the planted blob: the best voxel within 4 mm
    (r_target,) = _correlations(root, "T1w", [participant["target_t1w"]], sgacc_t1w, nuisance, radius=4.0)
    assert r_target < -0.4


def test_decoy_lies_in_the_span_of_the_24_motion_regressors(dataset):
    root, _ = dataset
    table = pd.read_csv(_run_files(root, SPACE)["confounds"], sep="\t", na_values="n/a")
    motion = table[MOTION].to_numpy()
    jerks = np.zeros((0, 6))
    m = synthetic._decoy_timecourse(motion, jerks, 2.0)
    regressors = table[MOTION_24].bfill().to_numpy()     # nilearn fills the n/a first row likewise
    design = np.column_stack([regressors, np.ones(len(m))])
    residual = m - design @ np.linalg.lstsq(design, m, rcond=None)[0]
    assert np.abs(residual).max() < 1e-4
    # and it lives in the resting-state band, so filtering alone does not remove it
    steady = m[synthetic.N_NON_STEADY:]
    assert np.var(synthetic._bandpass(steady[:, None], 2.0)) / np.var(steady) > 0.5


def test_confounds_come_from_the_bold(dataset):
    root, _ = dataset
    files = _run_files(root, SPACE)
    data = nb.load(files["bold"]).get_fdata()
    mask = nb.load(files["mask"]).get_fdata() > 0
    table = pd.read_csv(files["confounds"], sep="\t", na_values="n/a")
    np.testing.assert_allclose(table.global_signal, data[mask].mean(axis=0), rtol=1e-6)
    # the non-steady-state volumes are bright, in the data and hence in the confounds
    assert table.global_signal[0] > 1.2 * table.global_signal[5:].mean()
    assert table.csf.mean() > table.global_signal.mean() > table.white_matter.mean()  # EPI contrast
    assert 0.5 < np.nanmedian(table.std_dvars) < 2.0


def test_nilearn_loads_the_confounds(dataset):
    root, _ = dataset
    bold = str(_run_files(root, SPACE)["bold"])
    n = FAST["n_volumes"]
    confounds, sample_mask = load_confounds(
        bold, strategy=("motion", "wm_csf", "global_signal", "high_pass", "compcor"),
        motion="full", compcor="anat_combined", n_compcor=5)
    assert confounds.shape[0] == n and not confounds.isna().any().any()
    assert set(MOTION_24) <= set(confounds.columns)
    assert [c for c in confounds.columns if c.startswith("a_comp_cor")] == [f"a_comp_cor_{k:02d}" for k in range(5)]
    np.testing.assert_array_equal(sample_mask, np.arange(synthetic.N_NON_STEADY, n))
    _, scrubbed = load_confounds(bold, strategy=("motion", "scrub"), motion="basic", scrub=0,
                                 fd_threshold=0.5, std_dvars_threshold=100.0)
    table = pd.read_csv(_run_files(root, SPACE)["confounds"], sep="\t", na_values="n/a")
    high_motion = np.nonzero(table.framewise_displacement.to_numpy() > 0.5)[0]
    assert len(high_motion) >= 2                           # the planted head jerks
    assert not set(high_motion) & set(scrubbed)
    assert len(scrubbed) == n - synthetic.N_NON_STEADY - len(high_motion)


def test_self_made_head_without_shared_data(tmp_path, monkeypatch):
    """A fresh clone has no ../shared: the self-made head and synthesized motion must do."""
    monkeypatch.setattr(sources, "SHARED_TEMPLATEFLOW", tmp_path / "absent")
    monkeypatch.setattr(sources, "SHARED_CONFOUNDS", tmp_path / "absent.tsv")
    monkeypatch.delenv("TEMPLATEFLOW_HOME", raising=False)
    root = tmp_path / "fmriprep"
    truth = make_fmriprep_dataset(root, seed=4, **{**FAST, "templateflow_home": None, "confounds_tsv": None})
    assert truth["head"] == "synthetic" and truth["motion_source"] == "synthesized"
    anat = root / "sub-01" / "anat"
    gm = nb.load(anat / f"sub-01_space-{SPACE}_label-GM_probseg.nii.gz")
    for site in list(DLPFC_SITES_MNI.values()) + [truth["target_mni"]]:
        assert _value_at(gm, site) > 0.5, site
    assert _value_at(nb.load(anat / f"sub-01_space-{SPACE}_desc-brain_mask.nii.gz"), synthetic.SGACC_MNI) == 1
    t1w = nb.load(anat / "sub-01_desc-preproc_T1w.nii.gz").get_fdata()
    assert np.median(t1w[t1w.shape[0] // 2, :, -3:]) > 0    # Rician background, not zeros
    nuisance = MOTION_24 + ["global_signal", "white_matter", "csf"]
    r_target, r_decoy = _correlations(root, SPACE, [truth["target_mni"], truth["decoy_mni"]],
                                      synthetic.SGACC_MNI, nuisance)
    assert r_target < -0.4 < r_target + 0.3 < r_decoy


def test_command_line_sessions_runs_and_participants(tmp_path, capsys):
    out = tmp_path / "fmriprep"
    code = main([str(out), "--participants", "sub-01", "02", "--sessions", "1", "2", "--runs", "2",
                 "--volumes", "40", "--voxel-size", "4", "--anat-voxel-size", "4",
                 "--spaces", "MNI152NLin6Asym", "--no-shared-data", "--seed", "7"])
    assert code == 0
    printed = capsys.readouterr().out
    truth = json.loads((out / synthetic.TRUTH_FILE).read_text())
    assert "planted target" in printed and "sub-02: T1w" in printed
    for label in ("01", "02"):
        anat = out / f"sub-{label}" / "anat"
        assert (anat / f"sub-{label}_from-MNI152NLin6Asym_to-T1w_mode-image_xfm.h5").is_file()
        assert (anat / f"sub-{label}_from-{SPACE}_to-T1w_mode-image_xfm.h5").is_file()
        assert not list(out.glob(f"sub-{label}/ses-*/anat"))   # anatomy at the participant level
        for session in ("1", "2"):
            for run in (1, 2):
                prefix = f"sub-{label}_ses-{session}_task-rest_run-{run}"
                func = out / f"sub-{label}" / f"ses-{session}" / "func"
                assert (func / f"{prefix}_space-MNI152NLin6Asym_desc-preproc_bold.nii.gz").is_file()
                assert (func / f"{prefix}_desc-confounds_timeseries.tsv").is_file()
    motion = [pd.read_csv(p, sep="\t")[MOTION].to_numpy()
              for p in sorted(out.glob("sub-01/ses-*/func/*_desc-confounds_timeseries.tsv"))]
    assert len(motion) == 4 and not np.allclose(motion[0], motion[1])
    maps = [np.array(truth["participants"][label]["mni_to_t1w"]) for label in ("01", "02")]
    assert not np.allclose(maps[0], maps[1])


def test_rejects_unknown_space(tmp_path):
    with pytest.raises(ValueError):
        make_fmriprep_dataset(tmp_path, spaces=("fsaverage",), **FAST)


def test_command_line_nonlinear_warp(tmp_path):
    """--warp nonlinear writes antsRegistration's layout: forward affine then field, inverse field
    then affine, both fields non-zero; the truth names the warp and no exact matrix."""
    import h5py

    out = tmp_path / "fmriprep"
    assert main([str(out), "--volumes", "20", "--voxel-size", "4", "--anat-voxel-size", "4",
                 "--no-shared-data", "--warp", "nonlinear"]) == 0
    truth = json.loads((out / synthetic.TRUTH_FILE).read_text())
    assert truth["warp"] == "nonlinear"
    assert "mni_to_t1w" not in truth["participants"]["01"] and "mni_to_t1w_affine" in truth["participants"]["01"]
    anat = out / "sub-01" / "anat"
    for name, kinds in ((f"sub-01_from-T1w_to-{SPACE}_mode-image_xfm.h5", ("Affine", "DisplacementField")),
                        (f"sub-01_from-{SPACE}_to-T1w_mode-image_xfm.h5", ("DisplacementField", "Affine"))):
        with h5py.File(anat / name, "r") as f:
            group = f["TransformGroup"]
            assert [group[k]["TransformType"][0].decode().split("Transform")[0] for k in "12"] == list(kinds)
            field = group["2" if kinds[1] == "DisplacementField" else "1"]["TransformParameters"][()]
            assert np.abs(field).max() > 1.0     # mm: a real displacement, not the zero field
    with pytest.raises(ValueError, match="warp"):
        make_fmriprep_dataset(tmp_path / "bad", warp="bspline")
