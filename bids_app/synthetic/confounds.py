"""The fMRIPrep confounds table of a run, computed from its BOLD as written."""

import numpy as np
import pandas as pd
from scipy import ndimage

from .bold import _Maps
from .constants import MOTION_COLUMNS, N_NON_STEADY
from .timecourses import _framewise_displacement


def _cosine_basis(n: int, tr: float, period_cut: float = 128.0) -> np.ndarray:
    """fMRIPrep's (nipype's) DCT high-pass basis without the constant, shape (n, order - 1)."""
    order = int(np.floor(2 * n * tr / period_cut))
    k = np.arange(1, order)
    return np.sqrt(2.0 / n) * np.cos(np.pi / n * (np.arange(n)[:, None] + 0.5) * k[None, :])


def _tissue_mask(prob: np.ndarray, brain: np.ndarray, min_voxels: int = 10) -> np.ndarray:
    """A mask of nearly pure tissue: probability > 0.9 in the brain, eroded by one voxel.

    Like fMRIPrep's CompCor/WM/CSF masks. The erosion, then the threshold, are relaxed when a
    coarse grid leaves too few voxels.
    """
    for threshold, erode in ((0.9, True), (0.9, False), (0.5, False)):
        mask = (prob > threshold) & brain
        if erode:
            mask = ndimage.binary_erosion(mask)
        if mask.sum() >= min_voxels:
            return mask
    return mask


def _expansions(name: str, x: np.ndarray) -> dict:
    """fMRIPrep's expansions: ``x``, ``_derivative1`` (backward difference, n/a first),
    ``_power2`` and ``_derivative1_power2``."""
    d = np.r_[np.nan, np.diff(x)]
    return {name: x, f"{name}_derivative1": d, f"{name}_power2": x**2, f"{name}_derivative1_power2": d**2}


def _dvars(data: np.ndarray) -> tuple:
    """nipype's ComputeDVARS (as fMRIPrep uses it): (std_dvars, dvars), NaN in the first row.

    ``data`` is (T, V). Intensities are scaled to a median of 1000; the expected SD of the
    temporal difference comes from each voxel's robust SD (IQR / 1.349) and lag-1 autocorrelation.
    """
    scale = 1000.0 / np.median(data)  # applied at the end: every quantity is linear in it
    q25, q75 = np.percentile(data, [25, 75], axis=0, method="lower")
    robust_sd = (q75 - q25) / 1.349
    centred = data - data.mean(axis=0)
    ar1 = np.sum(centred[1:] * centred[:-1], axis=0) / np.maximum(np.sum(centred**2, axis=0), 1e-12)
    del centred
    keep = robust_sd > 0
    diff_sd = np.mean(np.sqrt(2.0 * (1.0 - ar1[keep])) * robust_sd[keep])
    dvars = np.sqrt(np.mean(np.diff(data, axis=0) ** 2, axis=1, dtype=np.float64))
    return np.r_[np.nan, dvars / diff_sd], np.r_[np.nan, scale * dvars]


def _acompcor(data: np.ndarray, tr: float, min_keep: int = 5) -> tuple:
    """aCompCor as nipype/fMRIPrep: DCT high-pass, variance-normalize, SVD.

    Returns the retained components (T, k), zero in the non-steady rows, and their metadata.
    """
    series = data[N_NON_STEADY:].astype(np.float64)
    n = series.shape[0]
    design = np.c_[_cosine_basis(n, tr), np.ones(n)]
    series -= design @ np.linalg.lstsq(design, series, rcond=None)[0]
    sd = series.std(axis=0)
    series /= np.where(sd > 0, sd, 1.0)
    # Left singular vectors from the small (T, T) Gram matrix: the same as an SVD of the
    # (T, V) matrix, at a fraction of the cost when V is in the tens of thousands.
    eigval, u = np.linalg.eigh(series @ series.T)
    order = np.argsort(eigval)[::-1]
    s, u = np.sqrt(np.clip(eigval[order], 0.0, None)), u[:, order]
    explained = s**2 / np.sum(s**2)
    cumulative = np.cumsum(explained)
    n_keep = max(int(np.searchsorted(cumulative, 0.5)) + 1, min(min_keep, len(s)))
    components = np.zeros((data.shape[0], n_keep))
    components[N_NON_STEADY:] = u[:, :n_keep]
    meta = {}
    for k in range(len(s)):
        key = f"a_comp_cor_{k:02d}" if k < n_keep else f"dropped_{k - n_keep}"
        meta[key] = {"CumulativeVarianceExplained": float(cumulative[k]), "Mask": "combined",
                     "Method": "aCompCor", "Retained": k < n_keep, "SingularValue": float(s[k]),
                     "VarianceExplained": float(explained[k])}
    return components, meta


def _confounds(data: np.ndarray, maps: _Maps, motion: np.ndarray, tr: float) -> tuple:
    """The fMRIPrep confounds table (DataFrame) and its JSON metadata for one run.

    ``data`` (T, V) is the BOLD of ``maps.voxels`` (brain-mask voxels first) as written to disk.
    """
    n = len(motion)
    brain = maps.brain
    in_brain = data[:, :int(brain.sum())]  # a view: the brain voxels come first
    column_of = np.full(maps.grid.shape, -1)
    column_of[maps.voxels] = np.arange(data.shape[1])
    wm_mask, csf_mask = _tissue_mask(maps.wm, brain), _tissue_mask(maps.csf, brain)
    columns = {}
    for name, values in (("global_signal", in_brain), ("csf", data[:, column_of[csf_mask]]),
                         ("white_matter", data[:, column_of[wm_mask]])):
        columns.update(_expansions(name, values.mean(axis=1, dtype=np.float64)))
    columns["std_dvars"], columns["dvars"] = _dvars(in_brain)
    fd = _framewise_displacement(motion)
    columns["framewise_displacement"] = fd

    components, meta = _acompcor(data[:, column_of[wm_mask | csf_mask]], tr)
    for k in range(components.shape[1]):
        columns[f"a_comp_cor_{k:02d}"] = components[:, k]
    cosines = _cosine_basis(n - N_NON_STEADY, tr)
    cosines = np.r_[np.zeros((N_NON_STEADY, cosines.shape[1])), cosines]
    for k in range(cosines.shape[1]):
        columns[f"cosine{k:02d}"] = cosines[:, k]
    for k in range(N_NON_STEADY):
        columns[f"non_steady_state_outlier{k:02d}"] = (np.arange(n) == k).astype(float)
    for j, name in enumerate(MOTION_COLUMNS):
        columns.update(_expansions(name, motion[:, j]))
    # fMRIPrep's motion outliers: FD > 0.5 mm or standardized DVARS > 1.5
    outliers = np.nonzero((np.nan_to_num(fd) > 0.5) | (np.nan_to_num(columns["std_dvars"]) > 1.5))[0]
    for k, t in enumerate(outliers):
        columns[f"motion_outlier{k:02d}"] = (np.arange(n) == t).astype(float)
    return pd.DataFrame(columns), meta

