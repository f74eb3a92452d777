"""How far to trust the target: split-half agreement, a block bootstrap over time, and a grade.

Targets from one 8-minute single-echo run can move by centimetres between sessions, while more and
better data bring them within about 2 mm (Cash et al. 2021; Lynch et al. 2020). tmstarget measures
this on the participant's own data, by recomputing the target from resampled volumes:

- **split half**: from each half of the data (half of the runs when there are several, the first and
  second half in time otherwise): the distance between the two targets and the spatial correlation of
  the two halves' maps inside the search region;
- **block bootstrap**: circular blocks of consecutive volumes (so that the autocorrelation of the
  BOLD signal survives resampling; Bellec et al. 2010) drawn with replacement, many times, seeded:
  the radius around the target holding 95 % of the bootstrap targets, and how often each voxel is
  chosen.

Every resample is a set of volume *multiplicities* (how often each retained volume is drawn), so
the seed correlations of all resamples are three matrix products over the seed and search-region
voxels only, never the whole brain.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from scipy import ndimage

from tmstarget.workflows.defaults import RELIABILITY_GRADES
from tmstarget.workflows.combine import combine_runs
from tmstarget.workflows.correlation import fisher_z
from tmstarget.workflows.seed import seed_timeseries
from tmstarget.workflows.target import CONNECTIVITY_26, select_target


def block_bootstrap_counts(n_volumes, block_length, n_samples, rng):
    """Volume multiplicities of circular block bootstrap samples.

    Each sample concatenates blocks of ``block_length`` consecutive volumes starting at uniformly
    drawn volumes, wrapping around the end of the run (the circular block bootstrap), until it is as
    long as the run.

    Parameters
    ----------
    n_volumes : int
        Retained volumes of the run.
    block_length : int
        Volumes per block (at least 1; at most ``n_volumes``).
    n_samples : int
        Bootstrap samples.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of shape (n_samples, n_volumes), float64
        How often each volume is drawn in each sample; every row sums to ``n_volumes``.
    """
    block_length = int(np.clip(block_length, 1, n_volumes))
    n_blocks = -(-n_volumes // block_length)
    starts = rng.integers(0, n_volumes, size=(n_samples, n_blocks))
    drawn = (starts[:, :, None] + np.arange(block_length)) % n_volumes
    drawn = drawn.reshape(n_samples, -1)[:, :n_volumes]
    flat = drawn + n_volumes * np.arange(n_samples)[:, None]
    return np.bincount(flat.ravel(), minlength=n_samples * n_volumes).reshape(
        n_samples, n_volumes).astype(np.float64)


def weighted_correlation(timeseries, seed, counts):
    """Pearson correlation of ``seed`` with every column, once per row of volume multiplicities.

    A row of ``counts`` stands for the resampled series in which volume ``t`` appears
    ``counts[t]`` times, so its correlation follows from weighted sums: three matrix products for
    all resamples at once.

    Parameters
    ----------
    timeseries : ndarray of shape (n_volumes, n_voxels)
    seed : ndarray of shape (n_volumes,)
    counts : ndarray of shape (n_samples, n_volumes)
        Non-negative multiplicities.

    Returns
    -------
    ndarray of shape (n_samples, n_voxels), float64
        Pearson r; 0 where a resample has fewer than 3 volumes or no variance.
    """
    x = np.asarray(timeseries, dtype=np.float64)
    seed = np.asarray(seed, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    # Centre on the unweighted means first: it changes no correlation and keeps the sums of squares
    # accurate (no cancellation between large, nearly equal terms).
    x = x - x.mean(axis=0)
    seed = seed - seed.mean()
    n = counts.sum(axis=1)[:, None]
    safe_n = np.maximum(n, 1.0)
    sum_x = counts @ x
    sum_s = counts @ seed[:, None]
    covariance = counts @ (x * seed[:, None]) - sum_x * sum_s / safe_n
    var_x = counts @ (x * x) - sum_x**2 / safe_n
    var_s = counts @ (seed * seed)[:, None] - sum_s**2 / safe_n
    denominator = np.sqrt(np.clip(var_x, 0, None) * np.clip(var_s, 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where((denominator > 1e-12) & (n >= 3), covariance / denominator, 0.0)
    return np.clip(r, -1.0, 1.0)


def split_half_counts(n_volumes_per_run):
    """Volume multiplicities of the two halves of the data.

    With several runs the runs are split in two groups of about equal retained volumes (largest
    run first, each to the smaller half), so each half is independent data; with one run the
    first and the second half in time.

    Parameters
    ----------
    n_volumes_per_run : list of int

    Returns
    -------
    counts : list of ndarray, one per run, shape (2, n_volumes)
    how : str
        ``"runs"`` or ``"time"``.
    """
    if len(n_volumes_per_run) == 1:
        n = n_volumes_per_run[0]
        first = np.arange(n) < n // 2
        return [np.stack([first, ~first]).astype(np.float64)], "time"
    totals = [0, 0]
    half_of_run = {}
    for run in sorted(range(len(n_volumes_per_run)), key=lambda i: -n_volumes_per_run[i]):
        half = int(np.argmin(totals))
        half_of_run[run] = half
        totals[half] += n_volumes_per_run[run]
    counts = []
    for run, n in enumerate(n_volumes_per_run):
        c = np.zeros((2, n))
        c[half_of_run[run]] = 1.0
        counts.append(c)
    return counts, "runs"


def resampled_connectivity(runs, counts):
    """Fisher-z seed maps of each resample, the runs combined as :func:`combine_runs` does.

    Parameters
    ----------
    runs : list of (timeseries, seed, coverage)
        Per run: ``timeseries`` (n_volumes, n_voxels) of the search-region voxels, ``seed``
        (n_volumes,) and ``coverage`` (n_voxels,) bool, where the run has data.
    counts : list of ndarray (n_samples, n_volumes)
        Volume multiplicities of each run in each resample.

    Returns
    -------
    ndarray of shape (n_samples, n_voxels), float32
    """
    z = np.stack([fisher_z(weighted_correlation(x, s, c)) for (x, s, _), c in zip(runs, counts)])
    coverage = np.stack([cov[None, :] for _, _, cov in runs])
    # A run weighs as many volumes as it contributes to the resample (0 when it is left out).
    weights = np.stack([c.sum(axis=1) for c in counts])
    combined, _ = combine_runs(z, coverage, weights)
    return combined


def targets_of_maps(z_rows, region, affine, method, percentile):
    """The target selected on each of several search-region maps.

    Parameters
    ----------
    z_rows : ndarray of shape (n_maps, n_region_voxels)
        Fisher z of the region voxels (C order of ``region``).
    region : ndarray of bool, 3-D
    affine : ndarray (4, 4)
    method, percentile
        As :func:`tmstarget.workflows.target.select_target`.

    Returns
    -------
    xyz : ndarray of shape (n_maps, 3), world mm
        Each map's target as :class:`tmstarget.workflows.target.SelectTarget` gives it: the
        selection's ``centroid`` (the peak voxel for ``peak``), so that distances compare like
        with like with the target of all the data.
    ijk : ndarray of shape (n_maps, 3), voxel indices in ``region``
        The region voxel nearest each (the target-frequency map counts these).
    """
    # Select on the region's bounding box (one voxel of margin): the same targets, without
    # labelling clusters over the whole brain for every resample.
    ijk = np.argwhere(region)
    low, high = np.maximum(ijk.min(axis=0) - 1, 0), ijk.max(axis=0) + 2
    box = tuple(slice(a, b) for a, b in zip(low, high))
    box_region = region[box]
    box_affine = affine @ nb.affines.from_matvec(np.eye(3), low)
    if method == "cluster":
        xyz, chosen = _cluster_targets(np.asarray(z_rows), box_region, box_affine, percentile)
        return xyz, chosen + low
    volume = np.zeros(box_region.shape, dtype=np.float32)
    xyz, chosen = [], []
    for row in z_rows:
        volume[box_region] = row
        target = select_target(volume, box_region, box_affine, method, percentile)
        xyz.append(target["centroid"])
        chosen.append(np.asarray(target["ijk"]) + low)
    return np.array(xyz), np.array(chosen)


def _cluster_targets(z_rows, region, affine, percentile):
    """:func:`~tmstarget.workflows.target.select_target` ``method="cluster"`` on many maps at once.

    The same steps and the same floating-point operations (tested equal, target for target), with
    what all maps share computed once: the region's voxels and coordinates, the percentile
    thresholds of every map in one call, the cluster sizes and strengths by one ``bincount`` each
    (what ``ndimage.sum_labels`` computes). It makes the 1000-sample bootstrap cost a few
    hundred milliseconds rather than seconds.

    Parameters
    ----------
    z_rows : ndarray of shape (n_maps, n_region_voxels)
    region : ndarray of bool, 3-D
    affine : ndarray (4, 4)
    percentile : float

    Returns
    -------
    xyz : ndarray of shape (n_maps, 3), world mm
        The centroids.
    ijk : ndarray of shape (n_maps, 3), voxel indices in ``region``
        The region voxel nearest each centroid.
    """
    region_ijk = np.argwhere(region)
    region_xyz = nb.affines.apply_affine(affine, region_ijk)
    thresholds = np.percentile(z_rows, percentile, axis=1)
    volume = np.zeros(region.shape, dtype=np.float32)
    flat_volume = volume.reshape(-1)
    chosen = np.empty(len(z_rows), dtype=int)
    centroids = np.empty((len(z_rows), 3))
    for number, (row, threshold) in enumerate(zip(z_rows, thresholds)):
        volume[region] = row
        labels, n_clusters = ndimage.label(region & (volume <= threshold), structure=CONNECTIVITY_26)
        flat_labels = labels.reshape(-1)
        sizes = np.bincount(flat_labels, minlength=n_clusters + 1)[1:]
        strength = -np.bincount(flat_labels, weights=flat_volume, minlength=n_clusters + 1)[1:]
        best_label = 1 + np.lexsort((-strength, -sizes))[0]
        members = np.argwhere(labels == best_label)
        member_xyz = nb.affines.apply_affine(affine, members)
        member_weight = np.abs(volume[tuple(members.T)])
        centroid = (member_weight[:, None] * member_xyz).sum(axis=0) / member_weight.sum()
        centroids[number] = centroid
        chosen[number] = np.argmin(np.linalg.norm(region_xyz - centroid, axis=1))
    return centroids, region_ijk[chosen]


def _rounded(value, digits):
    """A float for JSON: rounded, or None when undefined (a half's map without variance)."""
    return round(float(value), digits) if np.isfinite(value) else None


def grade_reliability(radius95_mm, split_half_mm):
    """Reliability grade from the bootstrap 95 % radius and the split-half distance (mm).

    Returns
    -------
    grade : str
        The first grade of :data:`tmstarget.workflows.defaults.RELIABILITY_GRADES` whose limits both numbers meet.
    reason : str
    """
    for grade, limits in RELIABILITY_GRADES.items():
        radius_limit, split_limit = limits["Radius95_mm"], limits["SplitHalfDistance_mm"]
        if (radius_limit is None or radius95_mm <= radius_limit) and (
                split_limit is None or split_half_mm <= split_limit):
            break
    return grade, (f"bootstrap 95 % radius {radius95_mm:.1f} mm, split halves {split_half_mm:.1f} mm "
                   f"apart: {limits['Meaning']}")


def target_reliability(runs, region, affine, target_xyz, method="cluster", percentile=10.0,
                       n_samples=1000, block_lengths=None, random_seed=0):
    """Split-half and block-bootstrap reliability of a connectivity target.

    Parameters
    ----------
    runs : list of (timeseries, seed, coverage)
        The used runs, as :func:`resampled_connectivity` takes them; ``timeseries`` holds the
        search-region voxels in the C order of ``region``.
    region : ndarray of bool, 3-D
        Search region on the BOLD grid.
    affine : ndarray (4, 4)
    target_xyz : array of 3 floats
        The target selected on all the data (world mm).
    method, percentile
        The target selection used for the target.
    n_samples : int
        Bootstrap samples (0: no bootstrap).
    block_lengths : list of int
        Volumes per bootstrap block, per run (default: 15).
    random_seed : int
        Seed of the random generator: the same data and seed give the same numbers.

    Returns
    -------
    summary : dict
        ``SplitHalf`` (``Split``, ``Distance_mm``, ``MapCorrelation``, half targets),
        ``Bootstrap`` (``Samples``, ``BlockLength_volumes``, ``Radius95_mm``,
        ``MedianDistance_mm``, ``ChosenVoxels``, ``ModalFrequency``), ``Grade``, ``GradeReason``.
    frequency : ndarray of shape region.shape, float32
        Fraction of bootstrap samples whose target is each voxel (None without bootstrap).
    """
    halves_counts, how = split_half_counts([len(s) for _, s, _ in runs])
    halves = resampled_connectivity(runs, halves_counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        map_correlation = np.corrcoef(halves)[0, 1]
    half_xyz, _ = targets_of_maps(halves, region, affine, method, percentile)
    split_distance = float(np.linalg.norm(half_xyz[0] - half_xyz[1]))
    summary = {"SplitHalf": {
        "Split": {"runs": "runs in two groups of about equal retained volumes",
                  "time": "first and second half of the retained volumes"}[how],
        "Distance_mm": round(split_distance, 2),
        "MapCorrelation": _rounded(map_correlation, 3),
        "TargetsWorld_mm": np.round(half_xyz, 2).tolist(),
    }}
    frequency = None
    if n_samples > 0:
        rng = np.random.default_rng(random_seed)
        block_lengths = block_lengths or [15] * len(runs)
        counts = [block_bootstrap_counts(len(s), length, n_samples, rng)
                  for (_, s, _), length in zip(runs, block_lengths)]
        xyz, ijk = targets_of_maps(resampled_connectivity(runs, counts), region, affine,
                                   method, percentile)
        distances = np.linalg.norm(xyz - np.asarray(target_xyz, dtype=float), axis=1)
        frequency = np.zeros(region.shape, dtype=np.float32)
        np.add.at(frequency, tuple(ijk.T), 1.0 / n_samples)
        summary["Bootstrap"] = {
            "Samples": int(n_samples),
            "BlockLength_volumes": [int(length) for length in block_lengths],
            "RandomSeed": int(random_seed),
            "Radius95_mm": round(float(np.percentile(distances, 95)), 2),
            "MedianDistance_mm": round(float(np.median(distances)), 2),
            "ChosenVoxels": int(np.count_nonzero(frequency)),
            "ModalFrequency": round(float(frequency.max()), 3),
        }
        summary["Grade"], summary["GradeReason"] = grade_reliability(
            summary["Bootstrap"]["Radius95_mm"], split_distance)
    else:  # a grade needs the bootstrap's radius as well as the split halves
        summary["Grade"] = None
        summary["GradeReason"] = ("not graded: the bootstrap was skipped (--bootstrap-samples 0) "
                                  "and the grade needs its 95 % radius besides the split halves")
    return summary, frequency


class _ReliabilityInputSpec(BaseInterfaceInputSpec):
    cleaned_files = InputMultiObject(File(exists=True), mandatory=True,
                                     desc="per run: (retained volumes x mask voxels) .npy")
    mask_files = InputMultiObject(File(exists=True), mandatory=True, desc="per run: brain mask")
    runs_file = File(exists=True, mandatory=True, desc="JSON of the runs, with 'Used'")
    seed_file = File(exists=True, mandatory=True, desc="seed weights on the BOLD grid")
    search_file = File(exists=True, mandatory=True, desc="search-region mask on the BOLD grid")
    targets_file = File(exists=True, mandatory=True, desc="the target selected on all the data")
    method = traits.Str("cluster", usedefault=True)
    percentile = traits.Float(10.0, usedefault=True)
    n_samples = traits.Int(1000, usedefault=True)
    block_s = traits.Float(30.0, usedefault=True, desc="bootstrap block length (s)")
    random_seed = traits.Int(0, usedefault=True)


class _ReliabilityOutputSpec(TraitedSpec):
    reliability_file = File(exists=True, desc="JSON summary")
    frequency_file = File(desc="fraction of bootstrap samples choosing each voxel")


class TargetReliability(SimpleInterface):
    """Split-half and block-bootstrap reliability of the connectivity target."""

    input_spec = _ReliabilityInputSpec
    output_spec = _ReliabilityOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        infos = json.loads(Path(inputs.runs_file).read_text())
        search_img = nb.load(inputs.search_file)
        region = np.asanyarray(search_img.dataobj) > 0
        seed_weights = np.asanyarray(nb.load(inputs.seed_file).dataobj, dtype=np.float32)
        runs, block_lengths = [], []
        for cleaned_file, mask_file, info in zip(inputs.cleaned_files, inputs.mask_files, infos):
            if not info["Used"]:
                continue
            block_lengths.append(max(1, round(inputs.block_s / info["RepetitionTime"])))
            mask = np.asanyarray(nb.load(mask_file).dataobj) > 0
            cleaned = np.load(cleaned_file, mmap_mode="r")
            # Columns of the seed and of the region among the mask voxels (C order).
            column = np.full(mask.shape, -1)
            column[mask] = np.arange(mask.sum())
            seed_columns = column[mask & (seed_weights != 0)]
            seed = seed_timeseries(cleaned[:, seed_columns], seed_weights[mask & (seed_weights != 0)])
            region_columns = column[region]
            timeseries = np.zeros((cleaned.shape[0], region.sum()), dtype=np.float32)
            covered = region_columns >= 0
            timeseries[:, covered] = cleaned[:, region_columns[covered]]
            runs.append((timeseries, seed, covered))
        target = pd.read_csv(inputs.targets_file, sep="\t").iloc[0]
        summary, frequency = target_reliability(
            runs, region, search_img.affine, [target.x, target.y, target.z], inputs.method,
            inputs.percentile, inputs.n_samples, block_lengths, inputs.random_seed)
        if "Bootstrap" in summary:
            summary["Bootstrap"]["BlockLength_s"] = inputs.block_s
        out = Path(runtime.cwd)
        (out / "reliability.json").write_text(json.dumps(summary, indent=2))
        self._results["reliability_file"] = str(out / "reliability.json")
        if frequency is not None:
            nb.Nifti1Image(frequency, search_img.affine).to_filename(out / "frequency.nii")
            self._results["frequency_file"] = str(out / "frequency.nii")
        return runtime
