"""Voxelwise correlation of the seed time series with every brain voxel, as Fisher z."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec

#: |r| is clipped below 1 so that Fisher z stays finite (arctanh(1 - 1e-7) = 8.4).
R_LIMIT = 1.0 - 1e-7


def seed_correlation(timeseries, seed):
    """Pearson correlation of ``seed`` with every column of ``timeseries``, in one matrix product.

    Because the centred seed sums to zero, ``timeseries.T @ seed_centred`` equals the covariance
    numerator without centring (copying) the large array.

    Parameters
    ----------
    timeseries : ndarray of shape (n_volumes, n_voxels)
    seed : ndarray of shape (n_volumes,)

    Returns
    -------
    ndarray of shape (n_voxels,), float64
        Pearson r; 0 for voxels (or a seed) without variance.
    """
    timeseries = np.asarray(timeseries)
    seed = np.asarray(seed, dtype=np.float64)
    n_volumes = len(seed)
    seed_centred = seed - seed.mean()
    seed_norm = np.linalg.norm(seed_centred)
    # One matrix-vector product in the array's own precision (a float64 copy of a float32
    # array would double the memory); the result is accumulated in float64 below.
    dtype = timeseries.dtype if timeseries.dtype.kind == "f" else np.float64
    numerator = (seed_centred.astype(dtype) @ timeseries).astype(np.float64)
    means = timeseries.mean(axis=0, dtype=np.float64)
    sum_squares = np.einsum("ij,ij->j", timeseries, timeseries, dtype=np.float64)
    voxel_norm = np.sqrt(np.clip(sum_squares - n_volumes * means**2, 0.0, None))
    denominator = voxel_norm * seed_norm
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denominator > 1e-12 * max(denominator.max(initial=0.0), 1.0),
                     numerator / denominator, 0.0)
    return np.clip(r, -1.0, 1.0)


def fisher_z(r):
    """Fisher's z transform, ``arctanh(r)``, finite at |r| = 1 (clipped to :data:`R_LIMIT`)."""
    return np.arctanh(np.clip(r, -R_LIMIT, R_LIMIT))


class _CorrelationInputSpec(BaseInterfaceInputSpec):
    cleaned_file = File(exists=True, mandatory=True, desc="(volumes x voxels) .npy")
    mask_file = File(exists=True, mandatory=True, desc="brain mask the voxels come from")
    timeseries_file = File(exists=True, mandatory=True, desc="seed time series")


class _CorrelationOutputSpec(TraitedSpec):
    z_file = File(exists=True, desc="Fisher-z map on the BOLD grid (0 outside the mask)")


class SeedCorrelation(SimpleInterface):
    """Correlate the seed with every brain voxel of one run."""

    input_spec = _CorrelationInputSpec
    output_spec = _CorrelationOutputSpec

    def _run_interface(self, runtime):
        mask_img = nb.load(self.inputs.mask_file)
        mask = np.asanyarray(mask_img.dataobj) > 0
        cleaned = np.load(self.inputs.cleaned_file, mmap_mode="r")
        seed = np.loadtxt(self.inputs.timeseries_file, ndmin=1)
        volume = np.zeros(mask.shape, dtype=np.float32)
        volume[mask] = fisher_z(seed_correlation(cleaned, seed))
        out = Path(runtime.cwd) / "fisher_z.nii"
        nb.Nifti1Image(volume, mask_img.affine).to_filename(out)
        self._results["z_file"] = str(out)
        return runtime
