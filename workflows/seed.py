"""Seed time series: the (weighted) mean of the cleaned time series of the seed voxels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec


def seed_timeseries(cleaned, weights):
    """Weighted mean time series of the seed.

    Parameters
    ----------
    cleaned : ndarray of shape (n_volumes, n_voxels)
        Cleaned voxel time series.
    weights : ndarray of shape (n_voxels,)
        Seed weight of each voxel: 1/0 for a sphere or mask, any real value for a weighted map
        (negative weights subtract).

    Returns
    -------
    ndarray of shape (n_volumes,), float64

    Raises
    ------
    ValueError
        When no brain voxel has a non-zero weight.
    """
    weights = np.asarray(weights, dtype=np.float64)
    total = np.abs(weights).sum()
    if total == 0:
        raise ValueError("the seed contains no brain voxel")
    # Only the seed's columns are read (and converted to float64): a few hundred of the
    # ~240,000 of a 2 mm brain, so a memory-mapped array is barely touched.
    columns = np.flatnonzero(weights)
    return np.asarray(cleaned[:, columns], dtype=np.float64) @ weights[columns] / total


class _SeedInputSpec(BaseInterfaceInputSpec):
    cleaned_file = File(exists=True, mandatory=True, desc="(volumes x voxels) .npy")
    mask_file = File(exists=True, mandatory=True, desc="brain mask the voxels come from")
    seed_file = File(exists=True, mandatory=True, desc="seed weights on the BOLD grid")


class _SeedOutputSpec(TraitedSpec):
    timeseries_file = File(exists=True, desc="seed time series, one value per retained volume")


class SeedTimeseries(SimpleInterface):
    """Extract the seed time series of one cleaned run."""

    input_spec = _SeedInputSpec
    output_spec = _SeedOutputSpec

    def _run_interface(self, runtime):
        mask = np.asanyarray(nb.load(self.inputs.mask_file).dataobj) > 0
        weights = np.asanyarray(nb.load(self.inputs.seed_file).dataobj, dtype=np.float32)[mask]
        cleaned = np.load(self.inputs.cleaned_file, mmap_mode="r")
        try:
            series = seed_timeseries(cleaned, weights)
        except ValueError as err:
            raise ValueError(f"{err} of {self.inputs.mask_file}: check the seed coordinates or "
                             "image (--seed-center/--seed-image)") from None
        out = Path(runtime.cwd) / "seed_timeseries.txt"
        np.savetxt(out, series, fmt="%.8g")
        self._results["timeseries_file"] = str(out)
        return runtime
