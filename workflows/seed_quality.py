"""Seed quality: is there BOLD signal where the seed is?

The default seed, the subgenual cingulate (sgACC), lies just above the sinuses, where gradient-echo
EPI loses signal to susceptibility-induced dephasing (Ojemann et al. 1997; Weiskopf et al. 2006).
A seed in dropout gives a seed time series of noise, and its "anticorrelated" DLPFC site is then
chance; the map of such a run still looks like a map. Fox et al. (2013) pointed out that the sgACC
is a small, low-signal region and proposed seed maps for this reason. Every run is therefore
measured, before its target is trusted, on the raw BOLD (fMRIPrep's preprocessed series, neither
smoothed nor denoised, over the retained volumes; as tSNR is defined by Murphy et al. 2007):

- **brain share**: the part of the seed (sum of |weights|, for a sphere, a mask or a weighted map)
  that lies in the run's brain mask, the rest of the grid being where the seed was defined but no
  brain was measured;
- **intensity ratio**: the seed's |weight|-weighted mean of the voxels' temporal mean intensity,
  divided by the median over the brain mask of that mean intensity;
- **tSNR ratio**: the seed's |weight|-weighted median of the voxels' temporal SNR (mean / standard
  deviation over time), divided by the median voxel tSNR of the brain mask (a median, as tSNR is
  skewed: voxels at the edge of the field of view or of the mask reach huge values).

Both ratios are relative to the participant's own brain, so they do not depend on the scanner's
units, the field strength or the voxel size, which set the absolute tSNR (Murphy et al. 2007).

Thresholds (module constants below, each with its reasoning): below a warning limit the run gets a
warning that names the cause and the reliability grade says so; below a hard limit (on the runs
combined) there is no usable seed signal and the participant is refused unless the user accepts it
(``--allow-poor-seed``).
"""

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

REFERENCES = {
    "Murphy2007": "Murphy K, Bodurka J, Bandettini PA. How long to scan? The relationship between fMRI "
    "temporal signal to noise ratio and necessary scan duration. Neuroimage. 2007;34(2):565-574. "
    "doi:10.1016/j.neuroimage.2006.09.032",
    "Ojemann1997": "Ojemann JG, Akbudak E, Snyder AZ, McKinstry RC, Raichle ME, Conturo TE. Anatomic "
    "localization and quantitative analysis of gradient refocused echo-planar fMRI susceptibility "
    "artifacts. Neuroimage. 1997;6(3):156-167.",
    "Weiskopf2006": "Weiskopf N, Hutton C, Josephs O, Deichmann R. Optimal EPI parameters for reduction "
    "of susceptibility-induced BOLD sensitivity losses: a whole-brain analysis at 3 T and 1.5 T. "
    "Neuroimage. 2006;33(2):493-504.",
    "Fox2013": "Fox MD, Liu H, Pascual-Leone A. Identification of reproducible individualized targets "
    "for treatment of depression with TMS based on intrinsic connectivity. Neuroimage. "
    "2013;66:151-160.",
    "IntensityMasking": "Intensity-based masking: a tool to improve functional connectivity results of "
    "resting-state fMRI. Hum Brain Mapp (signal attenuation near the sinuses lowers the SNR of up to "
    "10 % of cortical voxels and creates false and hides true correlations; "
    "https://neuropsychiatrylab.com/publications/intensitybased-masking-a-tool-to-improve-functional-"
    "connectivity-results-of-restingstate-fmri)",
}

#: tSNR ratio limits. The t statistic of a given BOLD fluctuation grows as tSNR x sqrt(volumes)
#: (Murphy et al. 2007), so a seed at a fraction f of the brain's tSNR needs 1/f^2 times the data
#: for the sensitivity the rest of the brain has: 4x at f = 0.5 (warning: a 10-minute run acts like
#: 2.5 minutes at the seed, less than the ~5 minutes connectivity needs, Van Dijk et al. 2010), 100x
#: at f = 0.1 (hard limit: no acquisition length makes up for it).
TSNR_RATIO_WARN = 0.5
TSNR_RATIO_LIMIT = 0.1

#: Mean-intensity ratio limits. Dephasing removes signal, and the BOLD sensitivity falls at least in
#: proportion to the signal left (Weiskopf et al. 2006); attenuated voxels create false and hide
#: true correlations (intensity-based masking, Hum Brain Mapp). Below half the brain's median the
#: seed has lost most of its signal (warning); below a tenth it is at the level of the image
#: background, i.e. no tissue signal (hard limit).
INTENSITY_RATIO_WARN = 0.5
INTENSITY_RATIO_LIMIT = 0.1

#: Brain-share limits. tmstarget's rule, no published value: the published seeds (Fox et al. 2012;
#: Cash et al. 2019, 2021) are defined in full; with a fifth of the seed outside the brain mask the
#: seed time series comes from a different region (warning), with half outside, mostly from none.
BRAIN_SHARE_WARN = 0.8
BRAIN_SHARE_LIMIT = 0.5

#: What the sidecar records about the limits.
THRESHOLDS = {
    "TSNRRatio": {"Warning": TSNR_RATIO_WARN, "HardLimit": TSNR_RATIO_LIMIT,
                  "Reasoning": "data needed for equal sensitivity scales as 1/tSNR^2 (Murphy et al. "
                  "2007): 4x at 0.5, 100x at 0.1", "References": ["Murphy2007"]},
    "IntensityRatio": {"Warning": INTENSITY_RATIO_WARN, "HardLimit": INTENSITY_RATIO_LIMIT,
                       "Reasoning": "susceptibility dropout removes signal and BOLD sensitivity "
                       "(Ojemann et al. 1997; Weiskopf et al. 2006) and distorts connectivity "
                       "(intensity-based masking); 0.1 is the image background",
                       "References": ["Ojemann1997", "Weiskopf2006", "IntensityMasking"]},
    "BrainShare": {"Warning": BRAIN_SHARE_WARN, "HardLimit": BRAIN_SHARE_LIMIT,
                   "Reasoning": "tmstarget's rule: the seed must be measured mostly where it was "
                   "defined", "References": []},
}

#: The remedies a warning or an error proposes.
REMEDY = ("acquire with dropout-reducing EPI (slice tilt, z-shim, shorter TE, thinner slices: "
          "Weiskopf et al. 2006; or multi-echo) or give a seed map over intact signal with "
          "--seed-image (Fox et al. 2013)")


class RawMoments:
    """Per-voxel sums of the raw BOLD over the retained volumes, fed one chunk of volumes at a time.

    The BOLD is read once (:func:`tmstarget.workflows.confounds.read_masked_bold`); this collects,
    on the way and before any smoothing, what the seed quality needs: the mean and the temporal
    standard deviation of every mask voxel. The reader hands over each chunk as it is in the file
    (all voxels of its box, no masking: a gather per chunk would cost more than the sums) and the
    mask voxels are taken once at the end (:meth:`select`). Each chunk is summed in float32 after
    subtracting the first retained volume (sums of fluctuations rather than of a baseline ~100
    times larger, so the rounding stays ~1e-6 of the standard deviation) into float64 totals.

    Parameters
    ----------
    retained : array_like of int
        Indices of the volumes kept by the denoising (the others are not counted).
    """

    def __init__(self, retained):
        self.retained = np.asarray(retained, dtype=int)
        self.count = 0
        self.reference = self.total = self.squares = self._buffer = None

    def add(self, start, values):
        """Count the volumes ``start, start + 1, ...`` of ``values`` (volumes x voxels) that are retained."""
        keep = np.isin(np.arange(start, start + len(values)), self.retained)
        if not keep.any():
            return
        values = values[keep] if not keep.all() else values
        if self.reference is None:
            self.reference = np.array(values[0], dtype=np.float32)
            self.total = np.zeros(values.shape[1])
            self.squares = np.zeros(values.shape[1])
        if self._buffer is None or len(self._buffer) < len(values):
            self._buffer = np.empty(values.shape, dtype=np.float32)
        deviations = np.subtract(values, self.reference, out=self._buffer[:len(values)])
        self.count += len(values)
        self.total += deviations.sum(axis=0)
        self.squares += np.einsum("ij,ij->j", deviations, deviations)

    def select(self, columns):
        """Keep only the voxels ``columns`` (indices into the columns given to :meth:`add`), in that order."""
        if self.reference is not None:
            self.reference, self.total, self.squares = (
                a[columns] for a in (self.reference, self.total, self.squares))
        self._buffer = None

    def concatenate(self, parts):
        """Take as this one's the sums of ``parts``: the same volumes, successive sets of voxels."""
        self.count = parts[0].count
        if parts[0].reference is not None:
            self.reference, self.total, self.squares = (
                np.concatenate([getattr(p, name) for p in parts]) for name in ("reference", "total", "squares"))
        self._buffer = None

    def mean_std(self):
        """Temporal mean and standard deviation (ddof 1) of each voxel, float64."""
        if not self.count:
            raise ValueError("no retained volume was read")
        shift = self.total / self.count
        variance = (self.squares - self.count * shift**2) / max(self.count - 1, 1)
        return self.reference + shift, np.sqrt(np.clip(variance, 0.0, None))

    def save(self, path):
        """Write ``mean`` and ``std`` (float32, mask voxels in C order) and ``volumes`` as .npz."""
        mean, std = self.mean_std()
        np.savez(path, mean=mean.astype(np.float32), std=std.astype(np.float32), volumes=self.count)
        return path


def temporal_snr(mean, std):
    """mean / std per voxel; 0 where the voxel does not vary (no measurable signal-to-noise)."""
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    return np.divide(mean, std, out=np.zeros_like(mean), where=std > 0)


def weighted_median(values, weights):
    """The median of ``values`` with non-negative ``weights`` (the lower one at an even split)."""
    order = np.argsort(values)
    cumulative = np.cumsum(np.asarray(weights, dtype=np.float64)[order])
    return float(np.asarray(values)[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def seed_quality(seed_weights, brain_mask, voxel_mean, voxel_std):
    """Signal of the seed relative to the brain in one run.

    Parameters
    ----------
    seed_weights : ndarray, shape of the BOLD grid (3-D)
        Seed weight of every voxel of the grid, inside and outside the brain (sphere or mask: 1/0;
        weighted map: any real value, its absolute value counts).
    brain_mask : ndarray of bool, same shape
        The run's brain mask.
    voxel_mean, voxel_std : ndarray of shape (brain_mask.sum(),)
        Temporal mean and standard deviation of the raw BOLD of each mask voxel (numpy C order),
        any units.

    Returns
    -------
    dict
        ``BrainShare`` (fraction of the seed's total |weight| inside the mask), ``IntensityRatio``,
        ``TSNRRatio`` (see the module docstring), ``DropoutShare`` (fraction of the in-mask seed
        |weight| on voxels below :data:`INTENSITY_RATIO_WARN` of the brain's median intensity), and
        the absolute figures ``SeedMeanIntensity``, ``BrainMedianIntensity``, ``SeedTSNR``,
        ``BrainMedianTSNR`` (raw BOLD units; tSNR unitless), ``SeedVoxels`` (in the mask).
        Ratios are None when no seed voxel is in the mask.
    """
    weights = np.abs(np.asarray(seed_weights, dtype=np.float64))
    mask = np.asarray(brain_mask, dtype=bool)
    total = weights.sum()
    if total == 0:
        raise ValueError("the seed has no non-zero weight on the BOLD grid")
    inside = weights[mask]
    voxel_mean = np.asarray(voxel_mean, dtype=np.float64)
    tsnr = temporal_snr(voxel_mean, voxel_std)
    brain_intensity = float(np.median(voxel_mean))
    brain_tsnr = float(np.median(tsnr))
    result = {"BrainShare": float(inside.sum() / total), "SeedVoxels": int(np.count_nonzero(inside)),
              "BrainMedianIntensity": brain_intensity, "BrainMedianTSNR": brain_tsnr,
              "SeedMeanIntensity": None, "SeedTSNR": None, "IntensityRatio": None,
              "TSNRRatio": None, "DropoutShare": None}
    if not inside.any():
        return result
    seed = inside > 0
    w = inside[seed]
    seed_intensity = float(np.average(voxel_mean[seed], weights=w))
    seed_tsnr = weighted_median(tsnr[seed], w)
    dropout = voxel_mean[seed] < INTENSITY_RATIO_WARN * brain_intensity
    result.update(SeedMeanIntensity=seed_intensity, SeedTSNR=seed_tsnr,
                  IntensityRatio=seed_intensity / brain_intensity if brain_intensity > 0 else None,
                  TSNRRatio=seed_tsnr / brain_tsnr if brain_tsnr > 0 else None,
                  DropoutShare=float(w[dropout].sum() / w.sum()))
    return result


def combine_quality(runs, weights):
    """The runs' figures combined as the runs' maps are: a mean weighted by retained volumes.

    Parameters
    ----------
    runs : list of dict
        :func:`seed_quality` of each run.
    weights : list of float
        Retained volumes of each run (0 for a run not used).
    """
    weights = np.asarray(weights, dtype=np.float64)
    combined = {}
    for key in ("BrainShare", "IntensityRatio", "TSNRRatio", "DropoutShare"):
        pairs = [(r[key], w) for r, w in zip(runs, weights) if r[key] is not None and w > 0]
        combined[key] = (float(np.average([v for v, _ in pairs], weights=[w for _, w in pairs]))
                         if pairs else None)
    return combined


def _below(quality, limits):
    """Names and values of the figures of ``quality`` below ``limits`` {figure: limit}."""
    return {key: quality[key] for key, limit in limits.items()
            if quality[key] is None or quality[key] < limit}


def _cause(low):
    """What the figures below their limits say: dropout when a ratio is measured and low."""
    if any(low.get(key) is not None for key in ("IntensityRatio", "TSNRRatio")):
        return "seed signal dropout"
    return "seed outside the brain mask"


def describe(figures):
    """'mean intensity 0.21x and tSNR 0.21x the brain median, 100 % of the seed in the brain mask'."""
    parts = []
    if figures.get("IntensityRatio") is not None:
        parts.append(f"mean intensity {figures['IntensityRatio']:.2f}x")
    if figures.get("TSNRRatio") is not None:
        parts.append(f"tSNR {figures['TSNRRatio']:.2f}x")
    text = " and ".join(parts) + " the brain median" if parts else "no seed voxel in the brain mask"
    if figures.get("BrainShare") is not None:
        text += f", {100 * figures['BrainShare']:.0f} % of the seed in the brain mask"
    return text


def assess_seed_quality(runs, sources, weights, seed_name="sgACC", allow_poor_seed=False):
    """Seed quality of a participant: per run, combined, warnings, cause, and the hard limit.

    Parameters
    ----------
    runs : list of dict
        :func:`seed_quality` of each run.
    sources : list of str
        The runs' BOLD files, named in the warnings.
    weights : list of float
        Retained volumes of each run, 0 for a run not used (it is measured but not judged).
    seed_name : str
    allow_poor_seed : bool
        Below the hard limits: warn instead of refusing.

    Returns
    -------
    dict
        The ``SeedQuality`` entry of the targets sidecar: ``PerRun``, ``Combined``, ``Thresholds``,
        ``References``, ``Passed`` (no figure below a warning limit), ``Cause`` (None or one phrase
        for the reliability grade) and ``QualityWarnings`` (list of one-line strings).

    Raises
    ------
    ValueError
        When the combined figures are below a hard limit and ``allow_poor_seed`` is False: one line
        naming the files and the fixes.
    """
    warn = {"BrainShare": BRAIN_SHARE_WARN, "IntensityRatio": INTENSITY_RATIO_WARN,
            "TSNRRatio": TSNR_RATIO_WARN}
    hard = {"BrainShare": BRAIN_SHARE_LIMIT, "IntensityRatio": INTENSITY_RATIO_LIMIT,
            "TSNRRatio": TSNR_RATIO_LIMIT}
    combined = combine_quality(runs, weights)
    warnings, flagged = [], []
    for quality, source, weight in zip(runs, sources, weights):
        low = _below(quality, warn)
        if weight > 0 and low:
            flagged.append(source)
            warnings.append(f"{_cause(low)} in {Path(source).name}: the {seed_name} seed has "
                            f"{describe(quality)} (warning below {INTENSITY_RATIO_WARN:g}x intensity, "
                            f"{TSNR_RATIO_WARN:g}x tSNR, {100 * BRAIN_SHARE_WARN:.0f} % in the brain): "
                            "its connectivity map and target are unreliable; " + REMEDY)
    failed = _below(combined, hard)
    if failed and allow_poor_seed:
        warnings.append(f"the {seed_name} seed is below the hard limits ({describe(combined)}, runs "
                        "combined) and was accepted with --allow-poor-seed: do not treat from this "
                        "target without other evidence")
    elif failed:
        names = ", ".join(str(s) for s, w in zip(sources, weights) if w > 0)
        raise ValueError(f"no usable {seed_name} seed signal in {names}: {describe(combined)} (runs "
                         f"combined; hard limits {INTENSITY_RATIO_LIMIT:g}x intensity, "
                         f"{TSNR_RATIO_LIMIT:g}x tSNR, {100 * BRAIN_SHARE_LIMIT:.0f} % in the brain), "
                         f"susceptibility dropout or a seed off the brain; {REMEDY}; or rerun with "
                         "--allow-poor-seed to accept it")
    cause = None
    if flagged:
        causes = {_cause(_below(q, warn)) for q, w in zip(runs, weights) if w > 0 and _below(q, warn)}
        cause = f"{' and '.join(sorted(causes))} ({describe(combined)}, runs combined)"
    return {
        "PerRun": [{"Source": str(s), "Used": bool(w > 0), **q} for q, s, w in zip(runs, sources, weights)],
        "Combined": combined,
        "Passed": not flagged,
        "Cause": cause,
        "Thresholds": THRESHOLDS,
        "Definition": "raw (fMRIPrep-preprocessed, not smoothed, not denoised) BOLD over the retained "
        "volumes; IntensityRatio = |weight|-weighted mean of the seed voxels' temporal mean / median "
        "over the brain mask; TSNRRatio = |weight|-weighted median of the seed voxels' tSNR "
        "(mean / standard deviation) / median over the brain mask; BrainShare = fraction of the "
        "seed's |weight| on the BOLD grid inside the run's brain mask; Combined: mean over the used "
        "runs weighted by retained volumes",
        "References": REFERENCES,
        "QualityWarnings": warnings,
    }


def grid_seed_weights(reference_img, center=None, radius=None, image=None, to_mni_xfm=None):
    """The seed on every voxel of a BOLD grid, inside and outside the brain (as Regions defines it).

    Regions places the seed on the brain voxels only; its share inside the brain needs the rest.
    """
    from tmstarget.workflows.regions import seed_weights, voxel_coordinates
    from tmstarget.workflows.transforms import map_points

    shape = reference_img.shape[:3]
    coords = voxel_coordinates(np.ones(shape, dtype=bool), reference_img.affine)
    coords_mni = map_points(coords, to_mni_xfm) if to_mni_xfm else coords
    return seed_weights(coords_mni, center, radius, image).reshape(shape)


class _SeedQualityInputSpec(BaseInterfaceInputSpec):
    raw_stats_files = InputMultiObject(File(exists=True), mandatory=True,
                                       desc="per run: raw BOLD mean and std of the mask voxels (.npz)")
    mask_files = InputMultiObject(File(exists=True), mandatory=True, desc="per run: brain mask")
    runs_file = File(exists=True, mandatory=True, desc="CombineRuns' JSON: the runs and whether used")
    seed_center = traits.Tuple(traits.Float, traits.Float, traits.Float)
    seed_radius = traits.Float()
    seed_image = File(exists=True)
    to_mni_xfm = File(exists=True, desc="BOLD-space points to MNI points; absent for MNI spaces")
    seed_name = traits.Str("sgACC", usedefault=True)
    allow_poor_seed = traits.Bool(False, usedefault=True)


class _SeedQualityOutputSpec(TraitedSpec):
    quality_file = File(exists=True, desc="JSON: the SeedQuality entry, with QualityWarnings")


class SeedQuality(SimpleInterface):
    """Measure the seed's signal in every run; warn, or refuse below the hard limits."""

    input_spec = _SeedQualityInputSpec
    output_spec = _SeedQualityOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        runs_info = json.loads(Path(inputs.runs_file).read_text())
        reference = nb.load(inputs.mask_files[0])
        seed = grid_seed_weights(reference, inputs.seed_center or None, inputs.seed_radius or None,
                                 nb.load(inputs.seed_image) if inputs.seed_image else None,
                                 inputs.to_mni_xfm or None)
        runs = []
        for stats_file, mask_file in zip(inputs.raw_stats_files, inputs.mask_files):
            stats = np.load(stats_file)
            mask = np.asanyarray(nb.load(mask_file).dataobj) > 0
            runs.append(seed_quality(seed, mask, stats["mean"], stats["std"]))
        summary = assess_seed_quality(
            runs, [r["BoldFile"] for r in runs_info],
            [r["RetainedVolumes"] * bool(r.get("Used", True)) for r in runs_info],
            seed_name=inputs.seed_name, allow_poor_seed=inputs.allow_poor_seed)
        out = Path(runtime.cwd) / "seed_quality.json"
        out.write_text(json.dumps(summary, indent=2))
        self._results["quality_file"] = str(out)
        return runtime
