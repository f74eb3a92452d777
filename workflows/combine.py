"""Combine the runs (and sessions) of a participant into one Fisher-z map."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from tmstarget.workflows.quality import write_warnings


def combine_runs(z_maps, coverage, weights):
    """Weighted mean of per-run Fisher-z maps.

    Averaging in Fisher-z space is the standard way to pool correlations; the weights are the
    retained volumes of each run, so a long clean run counts more than a short censored one.

    Parameters
    ----------
    z_maps : ndarray of shape (n_runs, ...)
        Fisher-z maps on one grid.
    coverage : ndarray of bool, shape (n_runs, ...)
        Where each run has data (its brain mask).
    weights : ndarray of shape (n_runs,) or (n_runs, n_maps)
        Non-negative weight of each run (or of each run in each of ``n_maps`` maps, when
        ``z_maps`` is (n_runs, n_maps, ...) and ``coverage`` broadcasts against it).

    Returns
    -------
    combined : ndarray of shape (...), float32
        0 where no run with a positive weight has data.
    covered : ndarray of bool, shape (...)
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w.reshape(w.shape + (1,) * (np.ndim(z_maps) - w.ndim))
    w = w * np.asarray(coverage, dtype=bool)
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        combined = np.where(total > 0, (w * np.asarray(z_maps, dtype=np.float64)).sum(axis=0) / total, 0)
    return combined.astype(np.float32), total > 0


def usable_runs(retained_times, min_time):
    """Which runs keep at least ``min_time`` seconds of data after censoring."""
    return [t >= min_time for t in retained_times]


class _CombineInputSpec(BaseInterfaceInputSpec):
    z_files = InputMultiObject(File(exists=True), mandatory=True)
    mask_files = InputMultiObject(File(exists=True), mandatory=True)
    info_files = InputMultiObject(File(exists=True), mandatory=True, desc="denoising summaries")
    min_time = traits.Float(0.0, usedefault=True, desc="minimum retained time per run (s)")
    min_total_time = traits.Float(0.0, usedefault=True,
                                  desc="minimum retained time of the used runs together (s)")


class _CombineOutputSpec(TraitedSpec):
    z_file = File(exists=True, desc="combined Fisher-z map")
    runs_file = File(exists=True, desc="JSON: each run's data and whether it was used")
    warnings_file = File(exists=True, desc="JSON list of warnings: the runs dropped")


class CombineRuns(SimpleInterface):
    """Drop runs with too little data, refuse a participant with too little, average the rest."""

    input_spec = _CombineInputSpec
    output_spec = _CombineOutputSpec

    def _run_interface(self, runtime):
        infos = [json.loads(Path(f).read_text()) for f in self.inputs.info_files]
        used = usable_runs([i["RetainedTime_s"] for i in infos], self.inputs.min_time)
        warnings = []
        for info, ok in zip(infos, used):
            info["Used"] = ok
            if not ok:
                warnings.append(f"{Path(info['BoldFile']).name} was dropped: {info['RetainedTime_s']:.0f} s "
                                f"retained after censoring, less than --min-time {self.inputs.min_time:.0f} s")
        if not any(used):
            summary = ", ".join(f"{Path(i['BoldFile']).name}: {i['RetainedTime_s']:.0f} s"
                                for i in infos)
            raise ValueError(f"too little data: every run keeps less than --min-time "
                             f"{self.inputs.min_time:.0f} s after censoring ({summary}); lower "
                             "--min-time or --fd-threshold only if you accept a less reliable target")
        total = sum(i["RetainedTime_s"] for i, ok in zip(infos, used) if ok)
        if total < self.inputs.min_total_time:
            raise ValueError(f"too little data: {sum(used)} usable run(s) keep {total:.0f} s in total "
                             f"after censoring, less than --min-total-time "
                             f"{self.inputs.min_total_time:.0f} s; acquire more resting-state data, or "
                             "lower --min-total-time only if you accept a less reliable target")
        reference = nb.load(self.inputs.z_files[0])
        z_maps = np.stack([np.asanyarray(nb.load(f).dataobj) for f in self.inputs.z_files])
        coverage = np.stack([np.asanyarray(nb.load(f).dataobj) > 0 for f in self.inputs.mask_files])
        weights = [i["RetainedVolumes"] * ok for i, ok in zip(infos, used)]
        combined, _ = combine_runs(z_maps, coverage, weights)
        out = Path(runtime.cwd)
        nb.Nifti1Image(combined, reference.affine).to_filename(out / "combined_z.nii")
        (out / "runs.json").write_text(json.dumps(infos, indent=2))
        self._results.update(z_file=str(out / "combined_z.nii"), runs_file=str(out / "runs.json"),
                             warnings_file=write_warnings(out / "warnings.json", warnings))
        return runtime
