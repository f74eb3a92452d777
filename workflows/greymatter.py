"""Grey matter from fMRIPrep's anatomical outputs: one rule for a probseg or a dseg.

fMRIPrep writes a grey-matter probability map (``label-GM_probseg``, values 0-1) and a discrete
segmentation (``dseg``: 0 background, 1 GM, 2 WM, 3 CSF); tmstarget takes either where it needs
grey matter (the search region, the cortex beneath a scalp point). The rule, decided from the
data, never from the file name:

- an image whose values are all integers with one above 1 is a segmentation: grey matter is
  label 1 (:func:`is_segmentation`);
- anything else is a probability map: grey matter is a probability of at least the threshold
  (``--gm-threshold``, default 0.5).

A binary 0/1 mask gives the same voxels under both readings.
"""

from __future__ import annotations

import numpy as np
from nibabel.affines import apply_affine
from scipy.spatial import cKDTree

#: Label of grey matter in an fMRIPrep ``dseg``.
GM_LABEL = 1


def is_segmentation(data) -> bool:
    """Whether ``data`` is a discrete segmentation (integer values, one above 1), not a map of
    probabilities. NaN is ignored."""
    data = np.asanyarray(data)
    finite = data[np.isfinite(data)] if np.issubdtype(data.dtype, np.floating) else data
    return bool(finite.size and finite.max() > 1.0 + 1e-6 and np.allclose(finite, np.round(finite)))


def grey_matter_mask(data, threshold: float = 0.5) -> np.ndarray:
    """Boolean grey matter: probability >= ``threshold``, or label 1 of a segmentation."""
    data = np.asanyarray(data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if is_segmentation(data):
        return np.round(data) == GM_LABEL
    return np.nan_to_num(data) >= threshold


def grey_matter_points(gm_data, affine, *, threshold: float = 0.5) -> np.ndarray:
    """World coordinates (mm) of the grey-matter voxel centres (:func:`grey_matter_mask`)."""
    return apply_affine(affine, np.argwhere(grey_matter_mask(gm_data, threshold)))


def snap_to_grey_matter(points, gm_data, affine, *, threshold: float = 0.5):
    """Each point where it is if it lies in grey matter, else the nearest grey-matter voxel centre.

    A point lies in grey matter when the voxel holding it (its nearest voxel centre) is grey matter
    (:func:`grey_matter_mask`). So a point is moved only when it falls outside the ribbon (a
    cluster centroid in a sulcus or in white matter), and then by the least distance at the
    precision of the map: on fMRIPrep's 1 mm T1w the point ends within 0.87 mm (half a voxel
    diagonal) of where the ribbon begins, instead of on the voxel centres of a 2 mm BOLD grid.

    Parameters
    ----------
    points : array-like (K, 3)
        World mm (RAS) of the map's space; rows with NaN are left NaN.
    gm_data : ndarray, 3-D
        Grey-matter probability map or fMRIPrep dseg.
    affine : ndarray (4, 4)
        Its voxel-to-world affine.
    threshold : float
        Probability threshold (``--gm-threshold``).

    Returns
    -------
    snapped : ndarray (K, 3)
        World mm.
    moved_mm : ndarray (K,)
        How far each point was moved (0 for a point already in grey matter).

    Raises
    ------
    ValueError
        When the map holds no grey matter.
    """
    points = np.atleast_2d(np.asarray(points, dtype=float))
    gm = grey_matter_mask(gm_data, threshold)
    if not gm.any():
        raise ValueError("the grey-matter map holds no voxel")
    snapped = points.copy()
    finite = np.isfinite(points).all(axis=1)
    ijk = np.round(apply_affine(np.linalg.inv(affine), points[finite])).astype(int)
    inside = np.all((ijk >= 0) & (ijk < gm.shape), axis=1)
    in_gm = np.zeros(len(ijk), dtype=bool)
    in_gm[inside] = gm[tuple(ijk[inside].T)]
    outside = np.flatnonzero(finite)[~in_gm]
    if len(outside):
        snapped[outside] = cortical_point_beneath(points[outside], apply_affine(affine, np.argwhere(gm)))
    return snapped, np.linalg.norm(snapped - points, axis=1)


def cortical_point_beneath(scalp_point, gm_points, *, tree=None) -> np.ndarray:
    """The grey-matter voxel centre nearest a scalp point (world mm); for (K, 3) points, (K, 3).

    ``gm_points`` from :func:`grey_matter_points`; ``tree`` may pass a ``cKDTree`` of them.
    """
    gm_points = np.asarray(gm_points, dtype=float)
    if len(gm_points) == 0:
        raise ValueError("the grey-matter map holds no voxel")
    tree = cKDTree(gm_points) if tree is None else tree
    _, index = tree.query(np.asarray(scalp_point, dtype=float))
    return gm_points[index]
