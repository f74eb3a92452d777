"""Known answers for the numerical steps, without Nipype."""

import nibabel as nb
import numpy as np
import pytest

from tmstarget.workflows.combine import combine_runs, usable_runs
from tmstarget.workflows.confounds import degrees_of_freedom, denoise
from tmstarget.workflows.correlation import R_LIMIT, fisher_z, seed_correlation
from tmstarget.workflows.regions import sample_image, search_region, seed_weights, sphere_weights, voxel_coordinates
from tmstarget.workflows.seed import seed_timeseries
from tmstarget.workflows.target import select_target


def test_seed_correlation_equals_numpy_reference():
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(120, 500)) * rng.uniform(0.5, 30, 500) + rng.uniform(-1e3, 1e3, 500))
    data = data.astype(np.float32)
    seed = rng.normal(size=120) * 7 + 3
    expected = np.array([np.corrcoef(data[:, j].astype(np.float64), seed)[0, 1] for j in range(500)])
    np.testing.assert_allclose(seed_correlation(data, seed), expected, atol=2e-5)


def test_seed_correlation_constant_voxel_is_zero_and_sign_is_kept():
    t = np.linspace(0, 10, 50)
    seed = np.sin(t)
    data = np.stack([np.ones(50), 2 * seed + 5, -seed], axis=1)
    r = seed_correlation(data, seed)
    np.testing.assert_allclose(r, [0.0, 1.0, -1.0], atol=1e-9)


def test_fisher_z_known_values_and_finite_at_one():
    np.testing.assert_allclose(fisher_z(np.array([0.0, 0.5, -0.5])), [0.0, 0.5493061, -0.5493061], atol=1e-6)
    z = fisher_z(np.array([1.0, -1.0]))
    assert np.all(np.isfinite(z)) and z[0] == pytest.approx(np.arctanh(R_LIMIT))


def test_seed_timeseries_weighted_mean():
    data = np.array([[1.0, 3.0, 10.0], [2.0, 6.0, 20.0]])
    np.testing.assert_allclose(seed_timeseries(data, [1, 1, 0]), [2.0, 4.0])
    np.testing.assert_allclose(seed_timeseries(data, [0.5, 0, -0.5]), [-4.5, -9.0])
    with pytest.raises(ValueError, match="no brain voxel"):
        seed_timeseries(data, [0, 0, 0])


def test_denoise_removes_confound_and_keeps_band_signal():
    rng = np.random.default_rng(1)
    t_r, n = 2.0, 300
    time = np.arange(n) * t_r
    neural = np.sin(2 * np.pi * 0.05 * time)           # inside 0.01-0.1 Hz
    motion = rng.normal(size=n).cumsum()                 # a confound
    drift = np.sin(2 * np.pi * 0.002 * time)             # below the band
    voxel = neural + 3 * motion + 5 * drift + 0.1 * rng.normal(size=n)
    keep = np.arange(3, n)                               # non-steady-state volumes dropped
    cleaned = denoise(voxel[:, None], motion[:, None], keep, t_r)
    assert cleaned.shape == (n - 3, 1) and cleaned.dtype == np.float32
    np.testing.assert_allclose(cleaned.std(ddof=1), 1.0, atol=1e-4)
    # The regression is fit on retained volumes: the output is orthogonal to the filtered confound
    # and follows the in-band signal.
    assert abs(np.corrcoef(cleaned[:, 0], neural[keep])[0, 1]) > 0.9
    no_regression = denoise(voxel[:, None], None, keep, t_r)
    assert abs(np.corrcoef(no_regression[:, 0], neural[keep])[0, 1]) < 0.6


def test_denoise_matches_nilearn_with_and_without_interior_censoring():
    from nilearn import signal

    rng = np.random.default_rng(2)
    data = rng.normal(size=(200, 40)).cumsum(axis=0).astype(np.float32)
    confounds = rng.normal(size=(200, 6))
    kw = dict(detrend=True, standardize="zscore_sample", filter="butterworth", high_pass=0.01,
              low_pass=0.1, t_r=2.0)
    for keep in (np.arange(4, 200), np.setdiff1d(np.arange(4, 200), [50, 51, 52, 53, 54, 120])):
        reference = signal.clean(data.copy(), confounds=confounds, sample_mask=keep, **kw)
        np.testing.assert_allclose(denoise(data, confounds, keep, 2.0), reference, atol=1e-4)


def test_degrees_of_freedom():
    # TR 2 s: Nyquist 0.25 Hz; the 0.01-0.1 Hz band keeps 36 % of 100 volumes, minus 30 regressors, minus 1.
    assert degrees_of_freedom(100, 30, 2.0, 0.01, 0.1) == pytest.approx(36 - 30 - 1)


def test_combine_runs_weighted_by_volumes_and_coverage():
    z = np.array([[1.0, 1.0, 5.0], [4.0, 2.0, 7.0]])
    coverage = np.array([[True, True, False], [True, True, True]])
    combined, covered = combine_runs(z, coverage, [100, 300])
    np.testing.assert_allclose(combined, [(100 * 1 + 300 * 4) / 400, (100 + 600) / 400, 7.0], rtol=1e-6)
    assert covered.all()
    assert usable_runs([300, 100], 240) == [True, False]


def test_regions_spheres_and_grey_matter():
    affine = np.diag([2.0, 2.0, 2.0, 1.0]); affine[:3, 3] = [-20, -20, -20]
    mask = np.ones((21, 21, 21), bool)
    coords = voxel_coordinates(mask, affine)
    weights = sphere_weights(coords, (0, 0, 0), 4.0)
    # voxels within 4 mm on a 2 mm grid: centre, 6 face neighbours at 2 mm, 12 edge at 2.83 mm,
    # 8 corners at 3.46 mm, 6 at 4 mm = 33
    assert weights.sum() == 33
    gm = (coords[:, 0] < 0).astype(float)  # grey matter only on the left (x < 0)
    region = search_region(coords, gm, [(-6, 0, 0), (6, 0, 0)], 3.0, 0.5)
    assert region.any() and np.all(coords[region, 0] < 0)


def test_seed_image_mask_and_weighted_map_sampled_in_world_space():
    # An LAS image (x flipped): the sampling must use world coordinates, never voxel indices.
    data = np.zeros((10, 10, 10), np.float32)
    data[2, 5, 5] = 1.0
    affine = np.diag([-2.0, 2.0, 2.0, 1.0]); affine[:3, 3] = [9, -9, -9]
    img = nb.Nifti1Image(data, affine)
    world = nb.affines.apply_affine(affine, [2, 5, 5])  # x = +5 mm, the right hemisphere
    assert world[0] == 5.0
    coords = np.array([world, world * [-1, 1, 1]])
    np.testing.assert_array_equal(seed_weights(coords, image=img), [1.0, 0.0])
    weighted = nb.Nifti1Image(data * 0.7, affine)
    np.testing.assert_allclose(seed_weights(coords, image=weighted), [0.7, 0.0])
    np.testing.assert_allclose(sample_image(data, affine, coords, order=0), [1.0, 0.0])


def _blob_map(shape, centre, sigma=1.5, depth=-1.0):
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    return depth * np.exp(-((grid - centre) ** 2).sum(-1) / (2 * sigma**2))


def test_select_target_cluster_recovers_largest_cluster_centroid():
    shape = (30, 30, 30)
    z = _blob_map(shape, (20, 10, 12), sigma=2.5, depth=-0.6)   # large, moderate cluster
    z += _blob_map(shape, (6, 22, 20), sigma=0.6, depth=-1.5)   # tiny, strongest voxel
    region = np.ones(shape, bool)
    affine = np.diag([2.0, 2.0, 2.0, 1.0]); affine[:3, 3] = [-30, -30, -30]
    cluster = select_target(z, region, affine, "cluster", 10.0)
    np.testing.assert_allclose(cluster["xyz"], nb.affines.apply_affine(affine, [20, 10, 12]), atol=1e-6)
    assert cluster["cluster_size"] > 100
    peak = select_target(z, region, affine, "peak")
    np.testing.assert_allclose(peak["xyz"], nb.affines.apply_affine(affine, [6, 22, 20]))
    assert peak["z"] == pytest.approx(z.min())


def test_select_target_snaps_into_the_region():
    # A ring-shaped cluster: its centroid is a hole outside the region; the target must be snapped
    # onto the nearest region voxel.
    shape = (21, 21, 5)
    grid = np.indices(shape)
    radius = np.hypot(grid[0] - 10, grid[1] - 10)
    region = (radius > 5) & (radius < 8)
    z = np.where(region, -1.0 - 0.01 * grid[0], 0.0)
    target = select_target(z, region, np.eye(4), "cluster", 100.0)
    assert region[tuple(target["ijk"])]
    assert 5 < np.hypot(target["xyz"][0] - 10, target["xyz"][1] - 10) < 8
    with pytest.raises(ValueError, match="no grey-matter"):
        select_target(z, np.zeros(shape, bool), np.eye(4))
