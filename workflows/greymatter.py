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


def cortical_point_beneath(scalp_point, gm_points, *, tree=None) -> np.ndarray:
    """The grey-matter voxel centre nearest a scalp point (world mm).

    ``gm_points`` from :func:`grey_matter_points`; ``tree`` may pass a ``cKDTree`` of them.
    """
    gm_points = np.asarray(gm_points, dtype=float)
    if len(gm_points) == 0:
        raise ValueError("the grey-matter map holds no voxel")
    tree = cKDTree(gm_points) if tree is None else tree
    _, index = tree.query(np.asarray(scalp_point, dtype=float))
    return gm_points[index]
