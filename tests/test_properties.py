"""Property-based tests (hypothesis) of the numerical core: correlation against numpy, regression
residuals orthogonal to the confounds, Fisher z finite at |r| = 1."""

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tmstarget.workflows.confounds import check_timeseries, denoise
from tmstarget.workflows.correlation import R_LIMIT, fisher_z, seed_correlation

# The machine is shared: no deadline (timings are not what these tests are about).
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def series_and_seed(draw):
    n_volumes = draw(st.integers(3, 80))
    n_voxels = draw(st.integers(1, 12))
    data = draw(arrays(np.float32, (n_volumes, n_voxels), elements=finite))
    seed = draw(arrays(np.float64, n_volumes, elements=finite))
    return data, seed


@PROPERTY
@given(series_and_seed())
def test_correlation_equals_numpy_corrcoef(case):
    data, seed = case
    # numpy's answer is only defined for series that vary; a series whose spread is at the float32
    # rounding of its mean holds no signal either way
    spread = data.std(axis=0, dtype=np.float64)
    assume(seed.std() > 1e-3 * max(1.0, np.abs(seed).max()))
    r = seed_correlation(data, seed)
    assert r.shape == (data.shape[1],) and np.all(np.abs(r) <= 1.0)
    for j in range(data.shape[1]):
        if spread[j] > 1e-3 * max(1.0, float(np.abs(data[:, j]).max())):
            expected = np.corrcoef(data[:, j].astype(np.float64), seed)[0, 1]
            assert abs(r[j] - expected) < 1e-6
        elif spread[j] == 0:
            assert r[j] == 0.0  # a constant voxel has no correlation, not NaN


@PROPERTY
@given(st.integers(0, 2**32 - 1), st.integers(30, 200), st.integers(1, 8), st.integers(1, 6),
       st.floats(0.1, 1e3), st.booleans())
def test_residuals_are_orthogonal_to_the_confounds(seed, n_volumes, n_confounds, n_voxels, scale,
                                                   drop_leading):
    """Without band-pass, ``denoise`` is detrending + least squares: the cleaned series (z-scored)
    are orthogonal to every confound, including on the retained volumes after dropping the
    non-steady-state ones."""
    rng = np.random.default_rng(seed)
    confounds = rng.normal(size=(n_volumes, n_confounds)) * rng.uniform(0.1, 10, n_confounds)
    mixing = rng.normal(size=(n_confounds, n_voxels))
    data = scale * (confounds @ mixing + rng.normal(size=(n_volumes, n_voxels))) + rng.uniform(-500, 500, n_voxels)
    keep = np.arange(3 if drop_leading else 0, n_volumes)
    cleaned = denoise(data.astype(np.float32), confounds, keep, t_r=2.0, high_pass=None, low_pass=None)
    assert cleaned.shape == (len(keep), n_voxels) and np.all(np.isfinite(cleaned))
    kept = confounds[keep]
    # correlation of each cleaned voxel with each confound: zero up to float32 rounding
    unit_confounds = (kept - kept.mean(0)) / np.linalg.norm(kept - kept.mean(0), axis=0)
    unit_cleaned = cleaned.astype(np.float64) / np.linalg.norm(cleaned.astype(np.float64), axis=0)
    assert np.abs(unit_cleaned.T @ unit_confounds).max() < 1e-4
    np.testing.assert_allclose(cleaned.std(axis=0, ddof=1), 1.0, atol=1e-3)


@PROPERTY
@given(st.floats(-1.0, 1.0) | st.sampled_from([-1.0, 1.0, -R_LIMIT, R_LIMIT, 0.0]))
def test_fisher_z_is_finite_odd_and_arctanh(r):
    z = fisher_z(np.array([r, -r]))
    assert np.all(np.isfinite(z))
    assert z[0] == -z[1]
    if abs(r) <= R_LIMIT:
        assert z[0] == np.arctanh(r)
    else:
        assert abs(z[0]) == np.arctanh(R_LIMIT)


@PROPERTY
@given(st.integers(0, 2**32 - 1), st.integers(3, 100),
       st.floats(1e-3, 1e3) | st.floats(-1e3, -1e-3), st.floats(-1e3, 1e3))
def test_perfect_correlation_gives_a_finite_signed_z(seed, n_volumes, slope, offset):
    """A voxel that is an affine copy of the seed has |r| = 1 and a finite Fisher z of its sign."""
    series = np.random.default_rng(seed).normal(size=n_volumes)
    voxel = (slope * series + offset)[:, None]
    z = fisher_z(seed_correlation(voxel, series))
    assert np.isfinite(z[0]) and np.sign(z[0]) == np.sign(slope) and abs(z[0]) > 5.0


@PROPERTY
@given(st.integers(0, 2**32 - 1), st.sampled_from([np.nan, np.inf, -np.inf]), st.integers(0, 9),
       st.integers(0, 19))
def test_check_timeseries_refuses_any_non_finite_value(seed, bad, volume, voxel):
    data = np.random.default_rng(seed).normal(size=(10, 20)).astype(np.float32)
    check_timeseries(data, "bold.nii.gz")  # a good series passes
    data[volume, voxel] = bad
    try:
        check_timeseries(data, "bold.nii.gz")
    except ValueError as err:
        assert "bold.nii.gz" in str(err) and "NaN or infinite" in str(err)
    else:
        raise AssertionError("a non-finite value was accepted")
