"""Target selection: the search-region site most anticorrelated with the seed."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from scipy import ndimage, stats
from scipy.cluster import hierarchy

from tmstarget.workflows.defaults import SNT_CLUSTER_DIAMETER_MM
from tmstarget.workflows.greymatter import snap_to_grey_matter

#: 26-connectivity: voxels touching by a face, an edge or a corner belong to one cluster.
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def select_target(z_map, region, affine, method="cluster", percentile=10.0):
    """Pick the connectivity-guided target inside the search region.

    Parameters
    ----------
    z_map : ndarray, 3-D
        Fisher-z map of the seed connectivity.
    region : ndarray of bool, 3-D
        Search region (already restricted to grey matter and brain).
    affine : ndarray (4, 4)
        Voxel-to-world affine (mm).
    method : {"cluster", "snt", "peak"}
        ``cluster`` (Cash et al. 2021; ConTarg): the ``percentile`` % most negative region voxels,
        their largest 26-connected cluster, its |z|-weighted centroid snapped to the nearest region
        voxel. ``snt``: the same candidate voxels clustered hierarchically and ranked as in
        Stanford Neuromodulation Therapy (see :func:`_snt_cluster`), the best cluster's centroid
        snapped likewise. ``peak``: the most negative region voxel.
    percentile : float
        Share of region voxels (per cent) kept as candidates by ``cluster`` and ``snt``.

    Returns
    -------
    dict
        ``ijk`` (voxel index), ``xyz`` (world mm of the target voxel centre), ``z`` (Fisher z at the
        target), ``cluster_size`` (voxels; 1 for ``peak``), ``centroid`` (world mm, before snapping).

    Raises
    ------
    ValueError
        When the region holds no voxel.
    """
    region = np.asarray(region, dtype=bool)
    if not region.any():
        raise ValueError("the search region holds no grey-matter brain voxel")
    region_ijk = np.argwhere(region)
    region_z = z_map[region]
    region_xyz = nb.affines.apply_affine(affine, region_ijk)

    if method == "peak":
        best = int(np.argmin(region_z))
        return {"ijk": region_ijk[best], "xyz": region_xyz[best], "z": float(region_z[best]),
                "cluster_size": 1, "centroid": region_xyz[best]}
    if method not in ("cluster", "snt"):
        raise ValueError(f"unknown target selection method {method!r}")

    threshold = np.percentile(region_z, percentile)
    candidates = region & (z_map <= threshold)
    if method == "cluster":
        members = _largest_cluster(candidates, z_map)
    else:
        members = _snt_cluster(np.argwhere(candidates & (z_map < 0)), z_map, affine)
    member_xyz = nb.affines.apply_affine(affine, members)
    member_weight = np.abs(z_map[tuple(members.T)])
    centroid = (member_weight[:, None] * member_xyz).sum(axis=0) / member_weight.sum()
    # A centroid can fall in a sulcus or white matter: snap it to the nearest region voxel in mm,
    # which is anisotropy- and orientation-safe because it is measured in world space.
    nearest = int(np.argmin(np.linalg.norm(region_xyz - centroid, axis=1)))
    return {"ijk": region_ijk[nearest], "xyz": region_xyz[nearest],
            "z": float(z_map[tuple(region_ijk[nearest])]), "cluster_size": int(len(members)),
            "centroid": centroid}


def _largest_cluster(candidates, z_map):
    """Voxel indices of the largest 26-connected cluster (ties: the most anticorrelated)."""
    labels, n_clusters = ndimage.label(candidates, structure=CONNECTIVITY_26)
    index = np.arange(1, n_clusters + 1)
    sizes = ndimage.sum_labels(candidates, labels, index)
    strength = -ndimage.sum_labels(z_map, labels, index)
    best_label = index[np.lexsort((-strength, -sizes))[0]]
    return np.argwhere(labels == best_label)


def _snt_cluster(candidates_ijk, z_map, affine):
    """Voxel indices of the best cluster of the SNT-style hierarchical clustering.

    Stanford Neuromodulation Therapy (Cole et al. 2020, 2022) clusters the anticorrelated DLPFC
    voxels hierarchically and ranks the clusters by size, spatial concentration and net
    anticorrelation with the sgACC. The published description gives no constants: here the tree is
    complete-linkage on world coordinates, cut so that no cluster is wider than
    :data:`tmstarget.workflows.defaults.SNT_CLUSTER_DIAMETER_MM` (about the focal spot of a figure-8 coil);
    concentration is the mean distance of a cluster's voxels to its centroid, net anticorrelation
    the sum of -z; the three ranks are summed and the lowest sum wins (ties: the most
    anticorrelated).
    """
    if len(candidates_ijk) == 0:
        raise ValueError("no search-region voxel is anticorrelated with the seed")
    xyz = nb.affines.apply_affine(affine, candidates_ijk)
    if len(xyz) == 1:
        return candidates_ijk
    labels = hierarchy.fcluster(hierarchy.linkage(xyz, method="complete"),
                                t=SNT_CLUSTER_DIAMETER_MM, criterion="distance")
    index = np.unique(labels)
    z = z_map[tuple(candidates_ijk.T)]
    size = np.array([np.sum(labels == k) for k in index])
    net = np.array([-z[labels == k].sum() for k in index])
    spread = np.array([np.linalg.norm(xyz[labels == k] - xyz[labels == k].mean(axis=0), axis=1).mean()
                       for k in index])
    rank_sum = stats.rankdata(-size) + stats.rankdata(spread) + stats.rankdata(-net)
    best = index[np.lexsort((-net, rank_sum))[0]]
    return candidates_ijk[labels == best]


class _SelectInputSpec(BaseInterfaceInputSpec):
    z_file = File(exists=True, mandatory=True, desc="combined Fisher-z map")
    search_file = File(exists=True, mandatory=True, desc="search-region mask, same grid")
    method = traits.Enum("cluster", "snt", "peak", usedefault=True)
    percentile = traits.Float(10.0, usedefault=True)


class _SelectOutputSpec(TraitedSpec):
    targets_file = File(exists=True, desc="TSV: name, x, y, z, seed_correlation_z, ...")


class SelectTarget(SimpleInterface):
    """Select the connectivity target and write it as a one-row targets table.

    The row's x, y, z is the selection's ``centroid`` (world mm; for ``peak`` the peak voxel
    centre), ``seed_correlation_z`` the Fisher z of the search-region voxel nearest it (the
    selection's ``z``). The point is not yet put in grey matter: :class:`SnapToGreyMatter` does
    that on the head the target is reported on.
    """

    input_spec = _SelectInputSpec
    output_spec = _SelectOutputSpec

    def _run_interface(self, runtime):
        z_img = nb.load(self.inputs.z_file)
        region = np.asanyarray(nb.load(self.inputs.search_file).dataobj) > 0
        try:
            target = select_target(np.asanyarray(z_img.dataobj), region, z_img.affine,
                                   self.inputs.method, self.inputs.percentile)
        except ValueError as err:
            raise ValueError(f"{err}: check --search-region-image and the grey-matter map") from None
        # The target is the cluster's |z|-weighted centroid itself (ConTarg, Cash et al. 2021),
        # not the voxel centre nearest it: snapping to the BOLD grid would cost up to a voxel
        # (2.0 mm on a 2 mm grid). SnapToGreyMatter then puts it in the grey matter of the head
        # it is reported on, at that head's precision.
        table = pd.DataFrame([{
            "name": "connectivity",
            "x": target["centroid"][0], "y": target["centroid"][1], "z": target["centroid"][2],
            "seed_correlation_z": target["z"],
            "cluster_size": target["cluster_size"],
        }])
        out = Path(runtime.cwd) / "targets.tsv"
        table.to_csv(out, sep="\t", index=False, float_format="%.4f")
        self._results["targets_file"] = str(out)
        return runtime


class _SnapInputSpec(BaseInterfaceInputSpec):
    targets_file = File(exists=True, mandatory=True, desc="targets TSV (name, x, y, z, ...)")
    gm_file = File(exists=True, mandatory=True,
                   desc="grey matter in the table's space (any grid): GM probseg or fMRIPrep dseg")
    gm_threshold = traits.Float(0.5, usedefault=True, desc="grey-matter probability threshold")


class _SnapOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the table with x, y, z in grey matter")


class SnapToGreyMatter(SimpleInterface):
    """Put the cortical points of a targets table in grey matter
    (:func:`tmstarget.workflows.greymatter.snap_to_grey_matter`): a point in a grey-matter voxel
    stays where it is, any other moves to the nearest grey-matter voxel centre. The other columns
    are written back verbatim."""

    input_spec = _SnapInputSpec
    output_spec = _SnapOutputSpec

    def _run_interface(self, runtime):
        table = pd.read_csv(self.inputs.targets_file, sep="\t", dtype=str, keep_default_na=False)
        gm_img = nb.load(self.inputs.gm_file)
        points = table[["x", "y", "z"]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        try:
            snapped, _ = snap_to_grey_matter(points, np.asanyarray(gm_img.dataobj), gm_img.affine,
                                             threshold=self.inputs.gm_threshold)
        except ValueError as err:
            raise ValueError(f"{self.inputs.gm_file}: {err}") from None
        for axis, values in zip("xyz", snapped.T):
            table[axis] = [f"{v:.4f}" if np.isfinite(v) else "n/a" for v in values]
        out = Path(runtime.cwd) / "targets_in_grey_matter.tsv"
        table.to_csv(out, sep="\t", index=False)
        self._results["out_file"] = str(out)
        return runtime
