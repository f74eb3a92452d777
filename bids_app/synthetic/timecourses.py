"""Time courses of the BOLD model: band-limited signals, head motion, the motion-locked decoy."""

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import linalg, ndimage

from .constants import MOTION_COLUMNS, N_NON_STEADY

_NON_STEADY_OFFSETS = (0.40, 0.12, 0.03)


def _bandlimited(rng, n: int, tr: float, low: float, high: float) -> np.ndarray:
    """Gaussian random process with a flat spectrum between ``low`` and ``high`` Hz, unit SD."""
    n_pad = 2 * n  # zero-padding keeps the FFT's wrap-around out of the series
    freqs = np.fft.rfftfreq(n_pad, d=tr)
    spectrum = (rng.standard_normal(freqs.size) + 1j * rng.standard_normal(freqs.size))
    spectrum *= (freqs >= low) & (freqs <= high)
    series = np.fft.irfft(spectrum, n_pad)[:n]
    return ((series - series.mean()) / series.std()).astype(np.float32)


def _standardize(x: np.ndarray, rows=slice(N_NON_STEADY, None)) -> np.ndarray:
    """Zero-mean unit-SD version of ``x`` (columns), statistics from the steady-state rows."""
    ref = x[rows]
    return (x - ref.mean(axis=0)) / np.maximum(ref.std(axis=0), 1e-12)


def _real_motion(table: Path, n: int, rng) -> np.ndarray:
    """Six motion parameters from a real fMRIPrep table: a random segment, reflected at the ends."""
    params = pd.read_csv(table, sep="\t", usecols=list(MOTION_COLUMNS))[list(MOTION_COLUMNS)].to_numpy(float)
    rows = len(params)
    index = rng.integers(0, rows) + np.arange(n)
    period = 2 * (rows - 1)
    index = index % period
    index = np.where(index < rows, index, period - index)
    segment = params[index]
    return segment - segment[0]  # fMRIPrep reports motion relative to the reference volume


def _synthetic_motion(n: int, rng) -> np.ndarray:
    """Six motion parameters (mm, rad): smooth random walk plus a slow drift."""
    steps = rng.standard_normal((n, 6)) * np.r_[[0.02] * 3, [0.0004] * 3]
    walk = ndimage.gaussian_filter1d(np.cumsum(steps, axis=0), 1.5, axis=0)
    drift = np.linspace(0.0, 1.0, n)[:, None] * rng.normal(0, 1, 6) * np.r_[[0.15] * 3, [0.002] * 3]
    motion = walk + drift
    return motion - motion[0]


def _add_spikes(motion: np.ndarray, rng, n_spikes: int = 2):
    """Add one-volume head jerks (about 0.7 mm, 0.004 rad) that FD > 0.5 mm censoring catches.

    Returns the new parameters and the spike displacement vectors (n_spikes, 6).
    """
    n = len(motion)
    motion = motion.copy()
    margin = min(20, n // 5)  # keep the jerks away from the start (non-steady state) and the end
    if n - 2 * margin < 2 * n_spikes:
        return motion, np.zeros((0, 6))
    where = np.sort(rng.choice(np.arange(margin, n - margin), n_spikes, replace=False))
    jerks = np.zeros((n_spikes, 6))
    for k, t in enumerate(where):
        direction = rng.normal(size=6)
        direction[:3] *= 0.7 / np.linalg.norm(direction[:3])
        direction[3:] *= 0.004 / np.linalg.norm(direction[3:])
        motion[t] += direction
        jerks[k] = direction
    return motion, jerks


def _bandpass(x: np.ndarray, tr: float, low: float = 0.01, high: float = 0.1) -> np.ndarray:
    """Ideal (FFT) band-pass of the columns of ``x``."""
    freqs = np.fft.rfftfreq(len(x), d=tr)
    keep = (freqs >= low) & (freqs <= high)
    return np.fft.irfft(np.fft.rfft(x, axis=0) * keep[:, None], len(x), axis=0)


def _decoy_timecourse(motion: np.ndarray, jerks: np.ndarray, tr: float) -> np.ndarray:
    """The motion-locked decoy m(t): a unit-SD combination of the motion parameters and their
    first differences, thus exactly in the span of the 24 motion regressors plus a constant.

    Of all such combinations it takes the one with the largest share of its variance in the
    0.01-0.1 Hz resting-state band (a generalized eigenproblem), so that band-pass filtering does
    not remove the decoy, only confound regression does. Its weights are constrained to cancel
    the spike displacements, so that it is carried by ordinary motion, not by two volumes.
    """
    diff = np.diff(motion, axis=0, prepend=motion[:1])
    diff[0] = diff[1]  # nilearn's load_confounds fills the n/a first row with the second
    columns = np.c_[motion, diff]
    scale = columns[N_NON_STEADY:].std(axis=0) + 1e-12
    z = _standardize(columns)
    # A spike d at volume t adds d to the parameters at t and d, -d to the differences at t, t+1:
    # weights w (on standardized columns) cancel it when (d / scale) . w = 0 for both halves.
    constraints = [np.r_[j, np.zeros(6)] / scale for j in jerks] + [np.r_[np.zeros(6), j] / scale for j in jerks]
    basis = linalg.null_space(np.array(constraints)) if constraints else np.eye(12)
    reduced = z[N_NON_STEADY:] @ basis
    in_band = _bandpass(reduced, tr)
    total = reduced.T @ reduced
    _, vectors = linalg.eigh(in_band.T @ in_band, total + 1e-6 * np.trace(total) * np.eye(len(total)))
    m = z @ (basis @ vectors[:, -1])
    return _standardize(m).astype(np.float32)


def _framewise_displacement(motion: np.ndarray) -> np.ndarray:
    """Power et al. 2012 FD (mm): rotations as arc length on a 50 mm sphere; first value NaN."""
    delta = np.abs(np.diff(motion, axis=0))
    return np.r_[np.nan, delta[:, :3].sum(1) + 50.0 * delta[:, 3:].sum(1)]



def _timecourses(motion: np.ndarray, jerks: np.ndarray, tr: float, rng) -> dict:
    """Time courses matching the maps of :func:`_mni_bold_maps` (see the module docstring)."""
    n = len(motion)
    fd = np.nan_to_num(_framewise_displacement(motion))
    u = np.linspace(-1.0, 1.0, n)
    tcs = {
        "neural": _bandlimited(rng, n, tr, 0.01, 0.1),
        "decoy": _decoy_timecourse(motion, jerks, tr),
        "global": _bandlimited(rng, n, tr, 0.01, 0.1),
        "wm": 0.6 * _bandlimited(rng, n, tr, 0.005, 0.1) + 0.8 * _standardize(rng.standard_normal(n)),
        "csf": 0.4 * _bandlimited(rng, n, tr, 0.005, 0.1) + 0.9 * _standardize(rng.standard_normal(n)),
        "drift": rng.normal() * u + 0.5 * rng.normal() * (u**2 - 1.0 / 3.0),
        "non_steady": np.r_[_NON_STEADY_OFFSETS, np.zeros(n - N_NON_STEADY)][:n],
        "spin_history": fd,
    }
    for k in range(3):
        tcs[f"structured{k}"] = _bandlimited(rng, n, tr, 0.005, 0.15)
    for j, name in enumerate(MOTION_COLUMNS):
        tcs[name] = motion[:, j]
    return {k: np.asarray(v, np.float32) for k, v in tcs.items()}


