"""The participant pipeline end to end on synthetic fMRIPrep derivatives with a planted target."""

import json

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from bids import BIDSLayout

from helpers import connectivity_row, distance_mm, run_app

#: Each test here runs the pipeline (or a dataset generation) end to end.
pytestmark = pytest.mark.slow

SPACE = "MNI152NLin2009cAsym"


def test_planted_target_recovered_mni(mni_run):
    out, _, truth = mni_run
    row = connectivity_row(out, SPACE)
    assert distance_mm(row, truth["target_mni"]) <= 4.0
    assert row.x < 0  # left hemisphere
    assert row.seed_correlation_z < 0


def test_planted_target_recovered_t1w_space(one_run_dataset, tmp_path):
    root, truth = one_run_dataset
    assert run_app(root, tmp_path / "out", "--space", "T1w", work_dir=tmp_path / "work") == 0
    row = connectivity_row(tmp_path / "out", "T1w")
    assert distance_mm(row, truth["participants"]["01"]["target_t1w"]) <= 4.0
    # ... and reported in MNI through fMRIPrep's transform
    assert distance_mm(connectivity_row(tmp_path / "out", SPACE), truth["target_mni"]) <= 4.0


def test_targets_are_also_given_in_t1w_space(mni_run):
    out, _, truth = mni_run
    mni, t1w = connectivity_row(out, SPACE), connectivity_row(out, "T1w")
    mni_to_t1w = np.array(truth["participants"]["01"]["mni_to_t1w"])
    for prefix in ("", "scalp_"):
        point = [mni[f"{prefix}{c}"] for c in "xyz"]
        expected = nb.affines.apply_affine(mni_to_t1w, point)
        assert np.linalg.norm(np.array([t1w[f"{prefix}{c}"] for c in "xyz"]) - expected) < 0.5
    # the coil axes turn with the head (the synthetic map is a similarity: axes map by its matrix)
    for axis in "yz":
        direction = mni_to_t1w[:3, :3] @ [mni[f"coil_{axis}axis_{c}"] for c in "xyz"]
        np.testing.assert_allclose([t1w[f"coil_{axis}axis_{c}"] for c in "xyz"],
                                   direction / np.linalg.norm(direction), atol=1e-3)
    sidecar = json.loads((out / "sub-01" / "tms" / "sub-01_space-T1w_targets.json").read_text())
    # the plan is made on the native head; the target was mapped into it from the computation
    assert sidecar["Space"] == sidecar["PlanSpace"] == "T1w" and sidecar["TargetMappedFrom"] == SPACE
    assert sidecar["Transform"].endswith("sub-01_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5")


def test_planted_target_recovered_from_several_runs_and_sessions(three_run_dataset, tmp_path):
    root, truth = three_run_dataset
    # MultiProc, as on a workstation or an HPC node
    assert run_app(root, tmp_path / "out", "--nprocs", "2", "--mem-gb", "4", work_dir=tmp_path / "work") == 0
    row = connectivity_row(tmp_path / "out", SPACE)
    assert distance_mm(row, truth["target_mni"]) <= 4.0
    sidecar = json.loads((tmp_path / "out" / "sub-01" / "func" /
                          f"sub-01_task-rest_space-{SPACE}_desc-sgACC_stat-z_boldmap.json").read_text())
    assert len(sidecar["Runs"]) == 4 and all(r["Used"] for r in sidecar["Runs"])


def test_without_confound_regression_the_target_is_wrong(one_run_dataset, tmp_path):
    root, truth = one_run_dataset
    assert run_app(root, tmp_path / "out", "--confounds", "none", work_dir=tmp_path / "work") == 0
    row = connectivity_row(tmp_path / "out", SPACE)
    assert distance_mm(row, truth["target_mni"]) > 10.0


def test_target_inside_search_region_and_on_grey_matter(mni_run, one_run_dataset):
    out, _, _ = mni_run
    row = connectivity_row(out, SPACE)
    region_img = nb.load(out / "sub-01" / "func" / f"sub-01_task-rest_space-{SPACE}_desc-searchregion_mask.nii.gz")
    ijk = np.round(nb.affines.apply_affine(np.linalg.inv(region_img.affine), [row.x, row.y, row.z])).astype(int)
    assert region_img.get_fdata()[tuple(ijk)] == 1
    root, _ = one_run_dataset
    gm_img = nb.load(root / "sub-01" / "anat" / f"sub-01_space-{SPACE}_label-GM_probseg.nii.gz")
    gm_ijk = np.round(nb.affines.apply_affine(np.linalg.inv(gm_img.affine), [row.x, row.y, row.z])).astype(int)
    # the anatomical grid is finer than the BOLD grid: GM within one BOLD voxel of the target
    neighbourhood = gm_img.get_fdata()[tuple(slice(max(i - 2, 0), i + 3) for i in gm_ijk)]
    assert neighbourhood.max() >= 0.5


def test_map_equals_numpy_reference(mni_run, one_run_dataset):
    out, work, _ = mni_run
    root, _ = one_run_dataset
    mask_file = next(root.glob(f"sub-01/func/*_space-{SPACE}_desc-brain_mask.nii.gz"))
    cleaned_file = next(work.rglob("denoise/cleaned.npy"))
    cleaned = np.load(cleaned_file).astype(np.float64)
    seed_ts = np.loadtxt(next(work.rglob("seed_timeseries/seed_timeseries.txt")))
    seed_img = nb.load(out / "sub-01" / "func" / f"sub-01_task-rest_space-{SPACE}_desc-sgACC_mask.nii.gz")
    z_img = nb.load(out / "sub-01" / "func" / f"sub-01_task-rest_space-{SPACE}_desc-sgACC_stat-z_boldmap.nii.gz")
    # Plain numpy reference: the seed is the mean of the seed voxels, r from np.corrcoef.
    run_mask = nb.load(mask_file).get_fdata() > 0
    seed_voxels = seed_img.get_fdata()[run_mask] > 0
    np.testing.assert_allclose(seed_ts, cleaned[:, seed_voxels].mean(axis=1), rtol=1e-5, atol=1e-6)
    reference = np.arctanh([np.corrcoef(seed_ts, voxel)[0, 1] for voxel in cleaned.T])
    np.testing.assert_allclose(z_img.get_fdata()[run_mask], reference, atol=1e-4)


def test_second_run_with_same_work_dir_recomputes_nothing(mni_run, one_run_dataset):
    out, work, _ = mni_run
    root, _ = one_run_dataset
    # the sink and the report run every time; nothing else
    results = {p: p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")
               if not {"derivatives", "report"} & set(p.parts)}
    assert len(results) >= 6
    targets = out / "sub-01" / "tms" / f"sub-01_space-{SPACE}_targets.tsv"
    before = targets.read_bytes()
    targets.unlink()  # the outputs are written again even when nothing is recomputed
    assert run_app(root, out, work_dir=work) == 0
    assert {p: p.stat().st_mtime_ns for p in results} == results
    assert targets.read_bytes() == before


def test_pybids_indexes_the_outputs(mni_run):
    out, _, _ = mni_run
    layout = BIDSLayout(out, validate=False, config=["bids", "derivatives"])
    assert layout.get_subjects() == ["01"]
    maps = layout.get(subject="01", suffix="boldmap", desc="sgACC", space=SPACE, extension=".nii.gz")
    assert len(maps) == 1 and maps[0].get_metadata()["Space"] == SPACE
    targets = layout.get(subject="01", suffix="targets", extension=".tsv")
    assert sorted(t.entities["space"] for t in targets) == sorted([SPACE, "T1w"])
    # what the BIDS specification does not cover yet is listed for the validator
    assert (out / ".bidsignore").read_text().split() == ["sub-*/log", "sub-*/tms", "*_boldmap.*",
                                                            "*.html", "sub-*/figures", "group"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "tmstarget"
    assert description["SourceDatasets"]


def test_targets_table_and_sidecar(mni_run):
    out, _, _ = mni_run
    tsv = out / "sub-01" / "tms" / f"sub-01_space-{SPACE}_targets.tsv"
    header = tsv.read_text().splitlines()[0].split("\t")
    for column in ("name", "x", "y", "z", "scalp_x", "scalp_y", "scalp_z", "scalp_distance_mm",
                   "seed_correlation_z"):
        assert column in header
    sidecar = json.loads(tsv.with_suffix(".json").read_text())
    assert sidecar["Space"] == SPACE
    assert all(column in sidecar for column in header)
    assert "Fox" in json.dumps(sidecar["Seed"]["References"])
    assert sidecar["TargetSelection"]["Method"] == "cluster"
    config = json.loads((out / "sub-01" / "log" / "config.json").read_text())
    assert config["confounds"] == "gsr"
    # no temporary files left
    assert [p.name for p in out.rglob(".*")] == [".bidsignore"]


def _seed_image(path, weighted):
    """An MNI seed image around the sgACC on a 2 mm grid: a 10 mm sphere mask or Gaussian weights."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-40, -30, -50]
    ijk = np.indices((40, 40, 40)).reshape(3, -1).T
    distance = np.linalg.norm(nb.affines.apply_affine(affine, ijk) - [6, 16, -10], axis=1).reshape(40, 40, 40)
    data = np.exp(-(distance**2) / (2 * 5.0**2)) if weighted else (distance <= 10).astype(np.uint8)
    nb.Nifti1Image(data.astype(np.float32 if weighted else np.uint8), affine).to_filename(path)
    return path


@pytest.mark.parametrize("flags", [
    ["--confounds", "nogsr"],
    ["--confounds", "acompcor"],
    ["--target-method", "peak"],
    ["--fd-threshold", "0.5", "--min-time", "120"],
    ["--seed-image", "MASK"],
    ["--seed-image", "WEIGHTED"],
], ids=["nogsr", "acompcor", "peak", "censoring", "seed-mask", "weighted-seed"])
def test_options_recover_the_planted_target(one_run_dataset, tmp_path, flags):
    root, truth = one_run_dataset
    flags = [str(_seed_image(tmp_path / "seed.nii.gz", weighted=f == "WEIGHTED")) if f in ("MASK", "WEIGHTED")
             else f for f in flags]
    assert run_app(root, tmp_path / "out", *flags, work_dir=tmp_path / "work") == 0
    row = connectivity_row(tmp_path / "out", SPACE)
    # A single voxel is noisier than a cluster centroid: the peak may be a diagonal neighbour of the
    # planted voxel on the 4 mm test grid (4 * sqrt(3) = 6.9 mm).
    tolerance = 4.0 * np.sqrt(3) if "peak" in flags else 4.0
    assert distance_mm(row, truth["target_mni"]) <= tolerance
    if "--fd-threshold" in flags:  # volumes were really censored
        sidecar = json.loads((tmp_path / "out" / "sub-01" / "func" /
                              f"sub-01_task-rest_space-{SPACE}_desc-sgACC_stat-z_boldmap.json").read_text())
        assert sidecar["Runs"][0]["RetainedVolumes"] < truth["n_volumes"] - truth["n_non_steady"] - 3


def test_navigation_exports_round_trip_to_the_t1w_targets(mni_run):
    from tmstarget import exports

    out, _, _ = mni_run
    tms = out / "sub-01" / "tms"
    table = pd.read_csv(tms / "sub-01_space-T1w_targets.tsv", sep="\t", na_values="n/a").set_index("name")
    assert {"connectivity", "F3_1020", "F3_beam", "5cm", "motor_hand"} <= set(table.index)
    readers = {
        "sub-01_space-T1w_desc-brainsight_targets.txt": exports.read_brainsight_targets,
        "sub-01_space-T1w_desc-localite_markers.xml": exports.read_localite_instrument_markers,
        "sub-01_space-T1w_markers.tsv": exports.read_nibs_markers,
    }
    for name, reader in readers.items():
        poses = {p["name"]: p["pose"] for p in reader((tms / name).read_text())}
        assert set(poses) == set(table.index)
        for target, pose in poses.items():
            row = table.loc[target]
            np.testing.assert_allclose(pose[:3, 3], [row.coil_x, row.coil_y, row.coil_z], atol=0.01)
            np.testing.assert_allclose(pose[:3, 2], [row[f"coil_zaxis_{c}"] for c in "xyz"], atol=2e-4)
            # the coil normal points into the head: from the scalp towards the cortical target
            inward = np.array([row.x, row.y, row.z]) - pose[:3, 3]
            assert inward @ pose[:3, 2] > 0.7 * np.linalg.norm(inward)
    assert json.loads((tms / "sub-01_space-T1w_coordsystem.json").read_text())["IntendedFor"].endswith(
        "sub-01/anat/sub-01_desc-preproc_T1w.nii.gz")
