"""Seed quality (issue 16, item 3): the share of the seed in the brain, its raw intensity and tSNR
relative to the brain, warnings, the reliability cause and the hard limit."""

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from helpers import FAST, SHARED, run_app
from tmstarget.synthetic import SGACC_MNI, make_fmriprep_dataset
from tmstarget.workflows.confounds import read_masked_bold
from tmstarget.workflows.regions import sphere_weights, voxel_coordinates
from tmstarget.workflows.seed_quality import (
    INTENSITY_RATIO_WARN,
    TSNR_RATIO_WARN,
    RawMoments,
    assess_seed_quality,
    seed_quality,
    weighted_median,
)

FACEREP = SHARED / "real-bold" / "facerep"


def _grid(shape=(12, 12, 12)):
    """A brain mask (all but a 1-voxel border), a central 3-voxel-radius seed, and voxel figures."""
    mask = np.zeros(shape, dtype=bool)
    mask[1:-1, 1:-1, 1:-1] = True
    ijk = np.indices(shape).reshape(3, -1).T
    seed = (np.linalg.norm(ijk - np.array(shape) // 2, axis=1) <= 3).reshape(shape).astype(np.float32)
    rng = np.random.default_rng(0)
    mean = np.where(mask, 1000.0 + rng.normal(0, 5, shape), 0.0)
    std = np.where(mask, 10.0, 0.0)  # tSNR 100 in the brain
    return mask, seed, mean, std


def test_seed_in_full_signal_passes():
    mask, seed, mean, std = _grid()
    quality = seed_quality(seed, mask, mean[mask], std[mask])
    assert quality["BrainShare"] == 1.0
    assert quality["SeedVoxels"] == int(seed.sum())
    assert quality["IntensityRatio"] == pytest.approx(1.0, abs=0.01)
    assert quality["TSNRRatio"] == pytest.approx(1.0, abs=0.01)
    assert quality["DropoutShare"] == 0.0
    summary = assess_seed_quality([quality], ["/data/sub-01_bold.nii.gz"], [200])
    assert summary["Passed"] and summary["Cause"] is None and summary["QualityWarnings"] == []


def test_seed_in_dropout_warns_with_the_right_numbers():
    mask, seed, mean, std = _grid()
    mean[:], std[:] = np.where(mask, 1000.0, 0.0), np.where(mask, 10.0, 0.0)
    in_seed = seed > 0
    mean[in_seed], std[in_seed] = 200.0, 8.0  # 0.2x the intensity, tSNR 25 = 0.25x the brain's 100
    quality = seed_quality(seed, mask, mean[mask], std[mask])
    assert quality["IntensityRatio"] == pytest.approx(0.2)
    assert quality["TSNRRatio"] == pytest.approx(0.25)
    assert quality["SeedTSNR"] == pytest.approx(25.0)
    assert quality["BrainMedianTSNR"] == pytest.approx(100.0)
    assert quality["BrainMedianIntensity"] == pytest.approx(1000.0)
    assert quality["DropoutShare"] == 1.0
    summary = assess_seed_quality([quality], ["/data/sub-01_run-1_bold.nii.gz"], [200])
    assert not summary["Passed"]
    (warning,) = summary["QualityWarnings"]
    assert "\n" not in warning
    assert "seed signal dropout in sub-01_run-1_bold.nii.gz" in warning
    assert "mean intensity 0.20x and tSNR 0.25x the brain median" in warning
    assert summary["Cause"].startswith("seed signal dropout (mean intensity 0.20x")


def test_hard_limit_refuses_unless_allowed():
    mask, seed, mean, std = _grid()
    mean[:], std[:] = np.where(mask, 1000.0, 0.0), np.where(mask, 10.0, 0.0)
    mean[seed > 0], std[seed > 0] = 50.0, 5.0  # 0.05x the intensity, 0.1x... the tSNR: 10 / 100
    quality = seed_quality(seed, mask, mean[mask], std[mask])
    with pytest.raises(ValueError) as err:
        assess_seed_quality([quality], ["/data/sub-01_run-1_bold.nii.gz"], [200])
    message = str(err.value)
    assert "\n" not in message
    assert "/data/sub-01_run-1_bold.nii.gz" in message and "--allow-poor-seed" in message
    assert "mean intensity 0.05x" in message
    summary = assess_seed_quality([quality], ["/data/sub-01_run-1_bold.nii.gz"], [200],
                                  allow_poor_seed=True)
    assert len(summary["QualityWarnings"]) == 2
    assert "--allow-poor-seed" in summary["QualityWarnings"][1]


def test_seed_partly_outside_the_brain_mask():
    mask, seed, mean, std = _grid()
    outside = mask.copy()
    outside[:6] = False  # half the grid, and about half of the seed, has no brain
    share = seed[outside].sum() / seed.sum()
    quality = seed_quality(seed, outside, mean[outside], std[outside])
    assert quality["BrainShare"] == pytest.approx(share)
    assert 0.5 < share < 0.8
    summary = assess_seed_quality([quality], ["/data/run-1_bold.nii.gz"], [100])
    (warning,) = summary["QualityWarnings"]
    assert warning.startswith("seed outside the brain mask in run-1_bold.nii.gz")
    assert summary["Cause"].startswith("seed outside the brain mask")
    outside[:7] = False
    quality = seed_quality(seed, outside, mean[outside], std[outside])
    assert quality["BrainShare"] < 0.5
    with pytest.raises(ValueError, match="in the brain mask"):
        assess_seed_quality([quality], ["/data/run-1_bold.nii.gz"], [100])


def test_runs_combined_by_retained_volumes_and_unused_runs_not_judged():
    mask, seed, mean, std = _grid()
    mean[:], std[:] = np.where(mask, 1000.0, 0.0), np.where(mask, 10.0, 0.0)
    good = seed_quality(seed, mask, mean[mask], std[mask])
    mean[seed > 0] = 300.0
    bad = seed_quality(seed, mask, mean[mask], std[mask])
    summary = assess_seed_quality([good, bad], ["a_bold.nii.gz", "b_bold.nii.gz"], [300, 100])
    assert summary["Combined"]["IntensityRatio"] == pytest.approx((300 * 1.0 + 100 * 0.3) / 400)
    assert [w.split(":")[0] for w in summary["QualityWarnings"]] == ["seed signal dropout in b_bold.nii.gz"]
    unused = assess_seed_quality([good, bad], ["a_bold.nii.gz", "b_bold.nii.gz"], [300, 0])
    assert unused["Passed"] and unused["Combined"]["IntensityRatio"] == pytest.approx(1.0)
    assert [run["Used"] for run in unused["PerRun"]] == [True, False]


def test_weighted_map_uses_absolute_weights_and_a_weighted_median():
    rng = np.random.default_rng(1)
    values = rng.normal(50, 10, 101)
    counts = rng.integers(1, 5, 101)
    assert weighted_median(values, counts) == pytest.approx(np.median(np.repeat(values, counts)),
                                                            abs=np.ptp(values) / 50)
    mask, seed, mean, std = _grid()
    signed = seed * np.where(np.indices(seed.shape)[0] % 2, 1.0, -1.0)  # a map with both signs
    assert seed_quality(signed, mask, mean[mask], std[mask]) == seed_quality(seed, mask, mean[mask], std[mask])


def test_raw_moments_match_numpy_on_retained_volumes():
    rng = np.random.default_rng(2)
    data = (800 + 30 * rng.standard_normal((50, 40))).astype(np.float32)
    retained = np.r_[3:20, 25:50]
    moments = RawMoments(retained)
    for start in range(0, 50, 16):
        moments.add(start, data[start:start + 16])
    columns = rng.permutation(40)[:25]
    moments.select(columns)
    mean, std = moments.mean_std()
    assert moments.count == len(retained)
    np.testing.assert_allclose(mean, data[retained][:, columns].mean(0, dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(std, data[retained][:, columns].std(0, ddof=1, dtype=np.float64), rtol=1e-4)


def test_read_masked_bold_hands_over_the_unsmoothed_bold(tmp_path):
    """The seed quality sees the raw BOLD, not the smoothed one that is cleaned."""
    rng = np.random.default_rng(3)
    data = (500 + 40 * rng.standard_normal((14, 13, 12, 37))).astype(np.float32)
    mask = np.zeros(data.shape[:3], dtype=bool)
    mask[3:11, 2:10, 3:9] = True
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    nb.Nifti1Image(data, affine).to_filename(tmp_path / "bold.nii.gz")
    retained = np.arange(2, 37)
    moments = RawMoments(retained)
    smoothed = read_masked_bold(tmp_path / "bold.nii.gz", mask, smoothing_fwhm=6.0, chunk_volumes=8,
                                raw_moments=moments)
    mean, std = moments.mean_std()
    raw = nb.load(tmp_path / "bold.nii.gz").get_fdata()[mask][:, retained]  # nibabel, C order
    np.testing.assert_allclose(mean, raw.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(std, raw.std(axis=1, ddof=1), rtol=1e-4)
    assert np.median(smoothed[retained].std(axis=0)) < 0.5 * np.median(std)  # smoothing averages noise


# --- a generated participant with planted dropout ---------------------------------------------

def damage_seed(bold_file, center_mni, radius_mm, scale, noise_sd, seed=0):
    """Plant susceptibility dropout: scale the BOLD in a sphere and add white noise (tSNR falls).

    The generated BOLD is in MNI space (world mm are MNI mm). Returns the damaged voxels' mask.
    """
    img = nb.load(bold_file)
    data = img.get_fdata(dtype=np.float32)
    coords = voxel_coordinates(np.ones(img.shape[:3], dtype=bool), img.affine)
    sphere = sphere_weights(coords, center_mni, radius_mm).reshape(img.shape[:3]) > 0
    rng = np.random.default_rng(seed)
    data[sphere] = scale * data[sphere] + rng.normal(0, noise_sd, (int(sphere.sum()), data.shape[3]))
    out = nb.Nifti1Image(data, img.affine, img.header)
    out.header.set_data_dtype(np.float32)
    out.to_filename(bold_file)
    return sphere


def expected_quality(bold_file, mask_file, sphere):
    """An independent measurement (nibabel, nilearn's sample mask, numpy) of the damaged run."""
    from nilearn.interfaces.fmriprep import load_confounds

    _, sample_mask = load_confounds(str(bold_file), strategy=("motion",), motion="basic")
    data = nb.load(bold_file).get_fdata()
    retained = np.arange(data.shape[3]) if sample_mask is None else sample_mask
    mask = np.asanyarray(nb.load(mask_file).dataobj) > 0
    series = data[..., retained]
    mean, std = series.mean(axis=-1), series.std(axis=-1, ddof=1)
    tsnr = np.divide(mean, std, out=np.zeros_like(mean), where=std > 0)
    seed = sphere & mask
    return {"IntensityRatio": mean[seed].mean() / np.median(mean[mask]),
            "TSNRRatio": np.median(tsnr[seed]) / np.median(tsnr[mask]),
            "BrainShare": seed.sum() / sphere.sum()}


def _targets_sidecar(out, space="MNI152NLin2009cAsym"):
    return json.loads((Path(out) / "sub-01" / "tms" / f"sub-01_space-{space}_targets.json").read_text())


@pytest.fixture(scope="module")
def damaged_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dropout") / "fmriprep"
    make_fmriprep_dataset(root, participants=("01",), n_runs=1, spaces=("MNI152NLin2009cAsym",), **FAST)
    (bold,) = root.glob("sub-01/func/*_desc-preproc_bold.nii.gz")
    (mask,) = root.glob("sub-01/func/*_desc-brain_mask.nii.gz")
    return root, bold, mask


@pytest.mark.slow
def test_generated_participant_with_dropout_warns(damaged_dataset, tmp_path):
    root, bold, mask = damaged_dataset
    before = nb.load(bold).get_fdata()
    median = np.median(before[np.asanyarray(nb.load(mask).dataobj) > 0])
    # 0.2x the intensity, and noise of 2 % of the brain's median: tSNR falls well below half
    sphere = damage_seed(bold, SGACC_MNI, 10.0, scale=0.2, noise_sd=0.02 * median)
    expected = expected_quality(bold, mask, sphere)
    assert expected["IntensityRatio"] < INTENSITY_RATIO_WARN and expected["TSNRRatio"] < TSNR_RATIO_WARN

    assert run_app(root, tmp_path / "out", "--bootstrap-samples", "20", work_dir=tmp_path / "work") == 0
    sidecar = _targets_sidecar(tmp_path / "out")
    quality = sidecar["SeedQuality"]
    (run,) = quality["PerRun"]
    assert run["Source"].endswith(bold.name)
    for key, value in expected.items():
        assert run[key] == pytest.approx(value, rel=1e-3), key
        assert quality["Combined"][key] == pytest.approx(value, rel=1e-3), key
    assert not quality["Passed"]
    warnings = [w for w in sidecar["QualityWarnings"] if w.startswith("seed signal dropout")]
    assert len(warnings) == 1 and bold.name in warnings[0]
    assert f"mean intensity {expected['IntensityRatio']:.2f}x" in warnings[0]
    assert sidecar["Reliability"]["Cause"].startswith("seed signal dropout")
    assert quality["Thresholds"]["TSNRRatio"]["References"] == ["Murphy2007"]


@pytest.mark.slow
def test_generated_participant_in_full_signal_passes(mni_run):
    out, _, _ = mni_run
    sidecar = _targets_sidecar(out)
    quality = sidecar["SeedQuality"]
    assert quality["Passed"] and quality["Cause"] is None
    assert quality["Combined"]["BrainShare"] > 0.95
    assert quality["Combined"]["IntensityRatio"] > INTENSITY_RATIO_WARN
    assert quality["Combined"]["TSNRRatio"] > TSNR_RATIO_WARN
    assert not [w for w in sidecar.get("QualityWarnings", []) if "seed signal dropout" in w
                or "seed outside the brain mask" in w or "seed is below the hard limits" in w]
    assert "Cause" not in sidecar["Reliability"]


@pytest.mark.slow
def test_dead_seed_is_refused_unless_allowed(tmp_path, capsys):
    root = tmp_path / "fmriprep"
    make_fmriprep_dataset(root, participants=("01",), n_runs=1, spaces=("MNI152NLin2009cAsym",), **FAST)
    (bold,) = root.glob("sub-01/func/*_desc-preproc_bold.nii.gz")
    damage_seed(bold, SGACC_MNI, 10.0, scale=0.02, noise_sd=1.0)  # no tissue signal left
    out = tmp_path / "out"
    assert run_app(root, out, "--bootstrap-samples", "0", work_dir=tmp_path / "work") == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert bold.name in error and "--allow-poor-seed" in error
    assert not out.exists() or not any(out.rglob("*"))  # nothing written
    assert run_app(root, out, "--bootstrap-samples", "0", "--allow-poor-seed",
                   work_dir=tmp_path / "work") == 0
    sidecar = _targets_sidecar(out)
    assert any("--allow-poor-seed" in w for w in sidecar["QualityWarnings"])
    assert sidecar["SeedQuality"]["Combined"]["IntensityRatio"] < 0.1


# --- the real facerep run ---------------------------------------------------------------------

@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.skipif(not FACEREP.is_dir(), reason="needs ../shared/data/real-bold/facerep")
def test_facerep_seed_dropout_warns(tmp_path):
    """SPM's face-repetition run: the issue measured 0.21x intensity and tSNR 14.6 against 70."""
    assert run_app(FACEREP, tmp_path / "out", "--task-id", "facerep", "--space", "MNI152NLin6Asym",
                   work_dir=tmp_path / "work") == 0
    sidecar = json.loads((tmp_path / "out" / "sub-facerep" / "tms" /
                          "sub-facerep_space-MNI152NLin6Asym_targets.json").read_text())
    quality = sidecar["SeedQuality"]
    (run,) = quality["PerRun"]
    assert run["BrainShare"] == 1.0 and run["SeedVoxels"] == 149
    assert run["IntensityRatio"] == pytest.approx(0.21, abs=0.01)
    assert run["TSNRRatio"] == pytest.approx(0.21, abs=0.01)
    assert run["SeedTSNR"] == pytest.approx(14.6, abs=0.1)
    assert run["BrainMedianTSNR"] == pytest.approx(70, abs=1)
    assert any(w.startswith("seed signal dropout") for w in sidecar["QualityWarnings"])
    assert sidecar["Reliability"]["Cause"].startswith("seed signal dropout")
