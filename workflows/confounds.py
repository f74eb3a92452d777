"""Confound regression: fMRIPrep confounds through nilearn, band-pass, smoothing, censoring.

The BOLD run is read once, smoothed, masked and kept as a float32 (time x voxels) array; the cleaned
array is handed to the next nodes as an uncompressed ``.npy`` file (memory-mapped by its readers).
"""

from __future__ import annotations

import json
import zlib
from contextlib import contextmanager
from pathlib import Path

import nibabel as nb
import numpy as np
from nilearn import signal
from nilearn.image.image import smooth_array
from nilearn.interfaces.fmriprep import load_confounds
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from bids_app.config import CONFOUND_STRATEGIES


def confound_regressors(bold_file, strategy_name, fd_threshold=None):
    """Select fMRIPrep confounds for ``bold_file`` with nilearn's ``load_confounds``.

    Parameters
    ----------
    bold_file : str
        fMRIPrep ``desc-preproc_bold`` file; its ``desc-confounds_timeseries.tsv`` (+ ``.json``) is
        found beside it by fMRIPrep's naming.
    strategy_name : str
        A key of :data:`bids_app.config.CONFOUND_STRATEGIES`.
    fd_threshold : float or None
        Framewise displacement (mm) above which volumes are censored; ``None`` censors nothing.
        Segments of fewer than 5 retained volumes are censored too (Power et al. 2014).

    Returns
    -------
    confounds : ndarray of shape (n_volumes, n_regressors) or None
    sample_mask : ndarray of int
        Indices of the volumes kept: non-steady-state volumes (fMRIPrep's
        ``non_steady_state_outlier*`` columns) are always dropped.
    names : list of str
        The regressor names.
    """
    spec = {k: v for k, v in CONFOUND_STRATEGIES[strategy_name].items()
            if k not in ("description", "references")}
    strategy = tuple(spec.pop("strategy"))
    if fd_threshold is not None:
        # FD-only censoring, as DESIGN.md specifies: DVARS never censors.
        strategy += ("scrub",)
        spec.update(fd_threshold=float(fd_threshold), std_dvars_threshold=np.inf, scrub=5)
    n_volumes = nb.load(bold_file).shape[-1]
    if not strategy:
        # load_confounds always reads the non-steady-state outliers; with an empty strategy it
        # returns no confounds, so ask for the motion table and keep only its sample mask.
        _, sample_mask = load_confounds(bold_file, strategy=("motion",), motion="basic")
        confounds = None
    else:
        confounds, sample_mask = load_confounds(bold_file, strategy=strategy, **spec)
    if sample_mask is None:
        sample_mask = np.arange(n_volumes)
    if confounds is None or confounds.shape[1] == 0:
        return None, np.asarray(sample_mask, dtype=int), []
    return (confounds.to_numpy(dtype=np.float64), np.asarray(sample_mask, dtype=int),
            list(confounds.columns))


@contextmanager
def reading(path):
    """Turn a failure to read the data of ``path`` into a one-line error naming the file.

    A ``.nii.gz`` cut short (an interrupted copy) has a valid header, so it passes the collection
    checks and fails only here, when its data are decompressed.
    """
    try:
        yield
    except (EOFError, zlib.error, OSError) as err:
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}): the file is truncated "
                         "or corrupt; copy it again from the fMRIPrep outputs") from None


def check_timeseries(timeseries, bold_file):
    """Refuse BOLD data that would give a target without meaning.

    Parameters
    ----------
    timeseries : ndarray of shape (n_volumes, n_voxels)
        The masked BOLD, any units.
    bold_file : str
        Its file, named in the error.

    Raises
    ------
    ValueError
        When any value is NaN or infinite (a correlation with it is undefined), when every value
        is zero, or when no brain voxel varies in time (a constant BOLD has no connectivity).
    """
    # Two reductions over time and no full-size temporary: NaN and inf propagate into min and max.
    lowest, highest = timeseries.min(axis=0), timeseries.max(axis=0)
    bad_voxels = int((~(np.isfinite(lowest) & np.isfinite(highest))).sum())
    if bad_voxels:
        raise ValueError(f"{bold_file} has NaN or infinite values ({bad_voxels} brain voxels affected): "
                         "the preprocessing failed; rerun fMRIPrep for this run or exclude it with "
                         "--bids-filter-file")
    if not (lowest.any() or highest.any()):
        raise ValueError(f"{bold_file} is all zeros inside its brain mask: the file is empty or "
                         "was overwritten; copy it again from the fMRIPrep outputs")
    if not (highest > lowest).any():
        raise ValueError(f"{bold_file} does not vary in time in any brain voxel (a constant image): "
                         "it holds no connectivity; check that it is the desc-preproc_bold time series")


def denoise(timeseries, confounds, sample_mask, t_r, high_pass=0.01, low_pass=0.1):
    """Regress confounds, band-pass filter, censor and standardize voxel time series.

    Confounds are filtered like the data (Lindquist et al. 2019) and the regression is fit on the
    retained volumes only; censored volumes are interpolated before filtering and then removed
    (nilearn's ``signal.clean``).

    Parameters
    ----------
    timeseries : ndarray of shape (n_volumes, n_voxels)
        Voxel time series, any units.
    confounds : ndarray of shape (n_volumes, n_regressors) or None
    sample_mask : ndarray of int
        Indices of the volumes to keep.
    t_r : float
        Repetition time in seconds.
    high_pass, low_pass : float or None
        Band-pass edges in Hz.

    Returns
    -------
    ndarray of shape (len(sample_mask), n_voxels), float32
        Cleaned time series, each voxel with zero mean and unit sample variance (constant voxels
        stay zero).
    """
    timeseries = np.asarray(timeseries, dtype=np.float32)
    sample_mask = np.asarray(sample_mask)
    if sample_mask.size and np.array_equal(sample_mask, np.arange(sample_mask[0], sample_mask[-1] + 1)):
        # Only leading/trailing volumes dropped (non-steady state): nilearn would cut them off
        # rather than interpolate, so cut them here and skip its costly spline interpolation.
        timeseries = timeseries[sample_mask]
        confounds = None if confounds is None else np.asarray(confounds)[sample_mask]
        sample_mask = None
    cleaned = signal.clean(
        timeseries,
        detrend=True,
        standardize="zscore_sample",
        confounds=confounds,
        standardize_confounds=True,
        sample_mask=sample_mask,
        filter="butterworth",
        high_pass=high_pass,
        low_pass=low_pass,
        t_r=t_r,
        # nilearn filters voxel by voxel unless asked for a copy; one vectorized filter call over
        # the whole (time x voxels) array is >10x faster for the same result.
        butterworth__copy=True,
    )
    return np.asarray(cleaned, dtype=np.float32)


def degrees_of_freedom(n_retained, n_regressors, t_r, high_pass, low_pass):
    """Degrees of freedom left after band-pass and regression (a simple, conservative count).

    A band-pass keeps the fraction ``2 * TR * (low_pass - high_pass)`` of the spectrum's independent
    frequencies; each regressor removes one more. A guide for data sufficiency, not an exact figure.
    """
    nyquist = 0.5 / t_r
    upper = min(low_pass or nyquist, nyquist)
    kept_fraction = (upper - (high_pass or 0.0)) / nyquist
    return float(n_retained * kept_fraction - n_regressors - 1)


class _DenoiseInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="fMRIPrep preprocessed BOLD")
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the BOLD grid")
    t_r = traits.Float(mandatory=True, desc="repetition time (s)")
    strategy = traits.Str("gsr", usedefault=True)
    fd_threshold = traits.Either(None, traits.Float, usedefault=True)
    high_pass = traits.Float(0.01, usedefault=True)
    low_pass = traits.Float(0.1, usedefault=True)
    smoothing_fwhm = traits.Float(6.0, usedefault=True)


class _DenoiseOutputSpec(TraitedSpec):
    cleaned_file = File(exists=True, desc="float32 (retained volumes x mask voxels) .npy")
    info_file = File(exists=True, desc="JSON: volumes, retained volumes, regressors, dof")
    carpet_file = File(exists=True, desc="NPZ for the report's carpet plot: raw, cleaned, retained, voxels")
    n_retained = traits.Int()


class Denoise(SimpleInterface):
    """Smooth, mask, regress confounds, band-pass and censor one BOLD run."""

    input_spec = _DenoiseInputSpec
    output_spec = _DenoiseOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        fd = inputs.fd_threshold if isinstance(inputs.fd_threshold, float) else None
        confounds, sample_mask, names = confound_regressors(inputs.bold_file, inputs.strategy, fd)
        # As nilearn's masking.apply_mask, but the masked data are checked before smoothing, which
        # would silently zero NaN and inf (nilearn forces ensure_finite when smoothing).
        bold = nb.load(inputs.bold_file)
        with reading(inputs.bold_file):
            data = bold.get_fdata(dtype=np.float32)
        mask = np.asanyarray(nb.load(inputs.mask_file).dataobj) > 0
        check_timeseries(data[mask].T, inputs.bold_file)
        if inputs.smoothing_fwhm:
            smooth_array(data, bold.affine, fwhm=inputs.smoothing_fwhm, ensure_finite=True, copy=False)
        timeseries = data[mask].T
        del data
        cleaned = denoise(timeseries, confounds, sample_mask, inputs.t_r,
                          inputs.high_pass, inputs.low_pass)
        out = Path(runtime.cwd)
        np.save(out / "cleaned.npy", cleaned)
        # A few thousand evenly spaced voxels are enough for the report's carpet plot.
        n_mask = timeseries.shape[1]
        voxels = np.linspace(0, n_mask - 1, min(3000, n_mask)).astype(int)
        np.savez(out / "carpet.npz", raw=timeseries[:, voxels], cleaned=cleaned[:, voxels],
                 retained=np.asarray(sample_mask, dtype=int), voxels=voxels)
        info = {
            "BoldFile": inputs.bold_file,
            "RepetitionTime": inputs.t_r,
            "Volumes": int(timeseries.shape[0]),
            "RetainedVolumes": int(len(sample_mask)),
            "RetainedTime_s": float(len(sample_mask) * inputs.t_r),
            "Regressors": names,
            "DegreesOfFreedom": degrees_of_freedom(len(sample_mask), len(names), inputs.t_r,
                                                   inputs.high_pass, inputs.low_pass),
        }
        (out / "denoise.json").write_text(json.dumps(info, indent=2))
        self._results.update(cleaned_file=str(out / "cleaned.npy"),
                             info_file=str(out / "denoise.json"),
                             carpet_file=str(out / "carpet.npz"),
                             n_retained=len(sample_mask))
        return runtime
