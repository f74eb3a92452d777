"""Reliability of the target: resampling machinery, the SNT-style method, grades, data sufficiency."""

import json

import nibabel as nb
import numpy as np
import pytest

from tmstarget.synthetic import make_fmriprep_dataset
from helpers import FAST, connectivity_row, copy_with_a_short_run, distance_mm, run_app
from tmstarget.workflows.reliability import (
    block_bootstrap_counts,
    grade_reliability,
    split_half_counts,
    targets_of_maps,
    weighted_correlation,
)
from tmstarget.workflows.target import select_target

MNI = "MNI152NLin2009cAsym"


def test_block_bootstrap_draws_whole_circular_blocks():
    rng = np.random.default_rng(0)
    counts = block_bootstrap_counts(n_volumes=50, block_length=8, n_samples=200, rng=rng)
    assert counts.shape == (200, 50)
    assert np.all(counts.sum(axis=1) == 50)
    # Blocks keep neighbours together: a drawn volume's successor (circularly) is drawn too,
    # except at the ends of blocks, at most one end per block (7 blocks for 50 volumes).
    drawn = counts > 0
    breaks = (drawn & ~np.roll(drawn, -1, axis=1)).sum(axis=1)
    assert breaks.max() <= 7
    # Seeded: the same seed gives the same samples, another seed other samples.
    again = block_bootstrap_counts(50, 8, 200, np.random.default_rng(0))
    other = block_bootstrap_counts(50, 8, 200, np.random.default_rng(1))
    assert np.array_equal(counts, again) and not np.array_equal(counts, other)


def test_weighted_correlation_equals_correlation_of_the_resampled_series():
    rng = np.random.default_rng(3)
    timeseries = rng.normal(size=(40, 6)) + 100.0  # an offset, as raw BOLD has
    seed = timeseries[:, 0] * 0.5 + rng.normal(size=40)
    counts = rng.integers(0, 3, size=(5, 40)).astype(float)
    r = weighted_correlation(timeseries, seed, counts)
    for row, c in zip(r, counts):
        repeat = np.repeat(np.arange(40), c.astype(int))
        expected = [np.corrcoef(seed[repeat], timeseries[repeat, v])[0, 1] for v in range(6)]
        np.testing.assert_allclose(row, expected, atol=1e-10)


def test_bootstrap_targets_are_select_target_map_by_map():
    """The bootstrap's batched cluster selection is select_target, target for target, bit for bit."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    region = np.zeros((24, 26, 22), dtype=bool)
    region[3:20, 4:22, 5:18] = rng.random((17, 18, 13)) < 0.7  # a ragged region, as grey matter is
    affine = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
    maps = ndimage.gaussian_filter(rng.normal(size=(60,) + region.shape), (0, 1.5, 1.5, 1.5))
    maps[:20, 8:12, 9:14, 7:11] -= 0.5  # a planted cluster in a third of them
    maps[20:25] = np.round(maps[20:25], 1)  # ties between voxels and clusters
    rows = maps[:, region].astype(np.float32)
    for method in ("cluster", "peak"):
        xyz, ijk = targets_of_maps(rows, region, affine, method, 10.0)
        for row, got_xyz, got_ijk in zip(rows, xyz, ijk):
            volume = np.zeros(region.shape, dtype=np.float32)
            volume[region] = row
            expected = select_target(volume, region, affine, method, 10.0)
            assert np.array_equal(got_ijk, expected["ijk"]) and np.array_equal(got_xyz, expected["centroid"])
    assert len({tuple(t) for t in ijk}) > 5  # the maps differ: not one target for all


def test_split_half_counts_balances_runs_and_halves_a_single_run():
    (single,), how = split_half_counts([11])
    assert how == "time"
    assert single.sum(axis=1).tolist() == [5, 6] and np.all(single.sum(axis=0) == 1)
    counts, how = split_half_counts([100, 60, 50, 40])
    assert how == "runs"
    halves = sum(c.sum(axis=1) for c in counts)
    assert halves.tolist() == [140, 110]  # 100+40 | 60+50: each run whole, in one half
    assert all(sorted(c[:, 0]) == [0, 1] for c in counts)


def test_grades_follow_the_limits():
    assert grade_reliability(2.0, 4.0)[0] == "high"
    assert grade_reliability(2.0, 15.0)[0] == "moderate"
    assert grade_reliability(9.0, 4.0)[0] == "moderate"
    assert grade_reliability(12.0, 4.0)[0] == "low"
    assert "more" in grade_reliability(30.0, 40.0)[1]


def test_summary_is_valid_json_when_a_map_has_no_variance():
    """A region without signal (a constant map) has no defined map correlation: null, not NaN
    (NaN is not JSON and would break the sidecar)."""
    from tmstarget.workflows.reliability import target_reliability

    region = np.zeros((6, 6, 6), dtype=bool)
    region[1:5, 1:5, 1:5] = True
    n = int(region.sum())
    seed = np.random.default_rng(0).normal(size=40)
    summary, frequency = target_reliability([(np.zeros((40, n), np.float32), seed, np.ones(n, bool))],
                                            region, np.eye(4), [1, 1, 1], "peak", 10.0, n_samples=20)
    assert summary["SplitHalf"]["MapCorrelation"] is None
    json.dumps(summary, allow_nan=False)
    assert frequency.sum() == pytest.approx(1.0)


def _blob(shape, center, radius):
    ijk = np.indices(shape).reshape(3, -1).T
    return (np.linalg.norm(ijk - center, axis=1) <= radius).reshape(shape)


def test_snt_picks_the_large_concentrated_anticorrelated_cluster():
    """Two planted clusters: a compact strong one and scattered strongly negative single voxels;
    'snt' and 'cluster' both pick the compact cluster, 'peak' the strongest single voxel."""
    shape = (30, 30, 30)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    rng = np.random.default_rng(0)
    z = rng.normal(0, 0.05, size=shape)
    compact = _blob(shape, (20, 10, 15), 2.5)
    z[compact] = -0.8
    scattered = [(5, 25, 5), (25, 25, 25), (5, 5, 25), (8, 20, 20)]
    for ijk in scattered:
        z[ijk] = -1.2
    region = np.ones(shape, dtype=bool)
    centroid = np.argwhere(compact).mean(axis=0) * 2.0  # world mm: the affine scales by 2
    for method in ("snt", "cluster"):
        target = select_target(z, region, affine, method, percentile=1.0)
        assert np.linalg.norm(target["xyz"] - centroid) <= 2.0, method
        assert target["cluster_size"] >= compact.sum() * 0.9
    peak = select_target(z, region, affine, "peak")
    assert tuple(peak["ijk"]) in scattered
    assert np.linalg.norm(peak["xyz"] - centroid) > 10


@pytest.fixture(scope="module")
def strong_and_weak(tmp_path_factory):
    """One participant, three acquisitions that differ in one factor each: ample data (20 min) of a
    moderately strong planted anticorrelation, the same with a third of the signal, and the same
    with only 5 minutes."""
    results = {}
    for name, changes in (("strong", dict(n_volumes=600, signal_strength=0.3)),
                          ("low_snr", dict(n_volumes=600, signal_strength=0.1)),
                          ("few_volumes", dict(n_volumes=160, signal_strength=0.3))):
        base = tmp_path_factory.mktemp(name)
        truth = make_fmriprep_dataset(base / "fmriprep", participants=("01",), n_runs=1,
                                      spaces=(MNI,), **{**FAST, **changes})
        assert run_app(base / "fmriprep", base / "out", "--min-time", "0", "--min-total-time", "0",
                       work_dir=base / "work") == 0
        sidecar = json.loads((base / "out" / "sub-01" / "tms" /
                              f"sub-01_space-{MNI}_targets.json").read_text())
        results[name] = (base / "out", truth, sidecar)
    return results


def test_ample_clean_data_gives_a_tight_target(strong_and_weak):
    out, truth, sidecar = strong_and_weak["strong"]
    reliability = sidecar["Reliability"]
    assert distance_mm(connectivity_row(out, MNI), truth["target_mni"]) <= 4.0
    assert reliability["Bootstrap"]["Radius95_mm"] <= 4.0
    assert reliability["SplitHalf"]["Distance_mm"] <= 4.0
    assert reliability["Grade"] == "high"
    # The frequency map: the bootstrap targets, all inside the search region, summing to one.
    freq = nb.load(out / "sub-01" / "func" /
                   f"sub-01_task-rest_space-{MNI}_desc-targetfrequency_boldmap.nii.gz")
    region = nb.load(out / "sub-01" / "func" / f"sub-01_task-rest_space-{MNI}_desc-searchregion_mask.nii.gz")
    data = freq.get_fdata()
    assert data.sum() == pytest.approx(1.0, abs=1e-3)
    assert np.all(region.get_fdata()[data > 0] > 0)
    modal = nb.affines.apply_affine(freq.affine, np.unravel_index(np.argmax(data), data.shape))
    assert distance_mm(connectivity_row(out, MNI), modal) <= 4.0


@pytest.mark.parametrize("worse", ["low_snr", "few_volumes"])
def test_less_signal_or_data_widens_the_target(strong_and_weak, worse):
    """Less signal or less data scatters the bootstrap targets (centroids, like the target) more
    and makes the halves' maps agree less. A third of the signal makes the target uncertain (not
    graded high, halves far apart); a quarter of the time widens it by less (measured: 95 % radius
    2.6 -> 3.4 mm on the 4 mm grid), which may still be stable within the coil's focal spot."""
    good = strong_and_weak["strong"][2]["Reliability"]
    bad = strong_and_weak[worse][2]["Reliability"]
    assert bad["Bootstrap"]["Radius95_mm"] > good["Bootstrap"]["Radius95_mm"]
    assert bad["Bootstrap"]["MedianDistance_mm"] > good["Bootstrap"]["MedianDistance_mm"]
    assert bad["SplitHalf"]["MapCorrelation"] < good["SplitHalf"]["MapCorrelation"]
    if worse == "low_snr":
        assert bad["Bootstrap"]["Radius95_mm"] > good["Bootstrap"]["Radius95_mm"] + 2.0
        assert bad["SplitHalf"]["Distance_mm"] > good["SplitHalf"]["Distance_mm"]
        assert bad["Grade"] != "high"
    sufficiency = strong_and_weak[worse][2]["DataSufficiency"]
    assert sufficiency["RunsUsed"] == 1
    assert sufficiency["TotalRetainedVolumes"] == sufficiency["PerRun"][0]["RetainedVolumes"]


def test_several_runs_are_split_by_run(three_run_dataset, tmp_path):
    root, truth = three_run_dataset
    assert run_app(root, tmp_path / "out", "--bootstrap-samples", "200", work_dir=tmp_path / "work") == 0
    sidecar = json.loads((tmp_path / "out" / "sub-01" / "tms" / f"sub-01_space-{MNI}_targets.json").read_text())
    assert sidecar["Reliability"]["SplitHalf"]["Split"].startswith("runs")
    assert sidecar["Reliability"]["SplitHalf"]["Distance_mm"] <= 4.0
    assert sidecar["Reliability"]["Bootstrap"]["Samples"] == 200
    assert sidecar["DataSufficiency"]["RunsUsed"] == 4


def test_snt_method_recovers_the_planted_target(one_run_dataset, tmp_path):
    root, truth = one_run_dataset
    # its own work dir: a run with other options in the shared mni_run one would change what the
    # tests after it find there (test_pipeline's rerun that must recompute nothing)
    assert run_app(root, tmp_path / "out", "--target-method", "snt", work_dir=tmp_path / "work") == 0
    assert distance_mm(connectivity_row(tmp_path / "out", MNI), truth["target_mni"]) <= 4.0
    sidecar = json.loads((tmp_path / "out" / "sub-01" / "tms" / f"sub-01_space-{MNI}_targets.json").read_text())
    assert sidecar["TargetSelection"]["Method"] == "snt"


def test_too_little_data_in_total_fails_without_a_target(one_run_dataset, tmp_path, capsys):
    root, truth = one_run_dataset
    retained_s = (truth["n_volumes"] - truth["n_non_steady"]) * truth["tr"]
    code = run_app(root, tmp_path / "out", "--min-time", "0", "--min-total-time", str(retained_s + 60),
                   work_dir=tmp_path / "work")
    assert code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "too little data" in line and f"{retained_s:.0f} s in total" in line
    assert "--min-total-time" in line
    assert not list((tmp_path / "out").glob("sub-01/tms/*targets.tsv"))


def test_a_short_run_is_dropped_with_a_warning_and_the_rest_used(three_run_dataset, tmp_path, caplog):
    """One of four runs cut to 80 volumes (160 s, under --min-time 240 s): it is dropped, named in a
    warning and in DataSufficiency, and the target comes from the other three."""
    root, truth = three_run_dataset
    data = tmp_path / "fmriprep"
    bold = copy_with_a_short_run(root, data, n_volumes=80)

    with caplog.at_level("WARNING", logger="tmstarget"):
        assert run_app(data, tmp_path / "out", "--bootstrap-samples", "50", work_dir=tmp_path / "work") == 0
    assert any("dropped" in r.getMessage() and bold.name.split("_space-")[0] in r.getMessage()
               for r in caplog.records)
    sidecar = json.loads((tmp_path / "out" / "sub-01" / "tms" / f"sub-01_space-{MNI}_targets.json").read_text())
    sufficiency = sidecar["DataSufficiency"]
    assert (sufficiency["RunsUsed"], sufficiency["RunsDropped"]) == (3, 1)
    dropped = [r for r in sufficiency["PerRun"] if not r["Used"]]
    assert len(dropped) == 1 and dropped[0]["Volumes"] == 80 and bold.name in dropped[0]["Source"]
    assert distance_mm(connectivity_row(tmp_path / "out", MNI), truth["target_mni"]) <= 4.0
