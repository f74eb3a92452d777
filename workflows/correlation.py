"""Voxelwise correlation of the seed time series with every brain voxel, as Fisher z."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec

#: Voxels correlated at a time (a float64 block of 300 volumes is ~20 MB).
VOXEL_BLOCK = 8192

#: |r| is clipped below 1 so that Fisher z stays finite (arctanh(1 - 1e-7) = 8.4).
R_LIMIT = 1.0 - 1e-7


def seed_correlation(timeseries, seed):
    """Pearson correlation of ``seed`` with every column of ``timeseries``.

    One pass over the data, a block of voxels at a time: each block is centred in float64 and
    correlated with the centred seed by one matrix-vector product. Centring before summing avoids
    the cancellation of ``sum(x^2) - n * mean^2`` when a voxel's mean dwarfs its fluctuations
    (raw BOLD), and the block keeps the float64 copy small (the array may be a float32 memmap of
    every brain voxel).

    Parameters
    ----------
    timeseries : ndarray of shape (n_volumes, n_voxels)
    seed : ndarray of shape (n_volumes,)

    Returns
    -------
    ndarray of shape (n_voxels,), float64
        Pearson r; 0 for voxels (or a seed) without variance.
    """
    seed = np.asarray(seed, dtype=np.float64)
    seed_centred = seed - seed.mean()
    seed_norm = np.linalg.norm(seed_centred)
    n_voxels = np.shape(timeseries)[1]
    numerator, voxel_norm = np.empty(n_voxels), np.empty(n_voxels)
    for start in range(0, n_voxels, VOXEL_BLOCK):
        voxels = slice(start, start + VOXEL_BLOCK)
        block = np.array(timeseries[:, voxels], dtype=np.float64)
        block -= block.mean(axis=0)
        numerator[voxels] = seed_centred @ block
        voxel_norm[voxels] = np.sqrt(np.einsum("ij,ij->j", block, block))
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
