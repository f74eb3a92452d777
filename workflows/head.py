"""The head in a T1w image: its mask, and whether it is a whole head to plan a coil on.

:func:`head_mask` segments the head (scalp and all it encloses) from a T1w that is not
skull-stripped. All radii are in millimetres, through the voxel sizes, so anisotropic grids are
handled; the functions take and return arrays only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# --------------------------------------------------------------------------------------------
# Head mask
# --------------------------------------------------------------------------------------------
def largest_component(mask: np.ndarray, min_fraction: float = 1.0) -> np.ndarray:
    """Face-connected components of a boolean mask at least ``min_fraction`` times as large as
    the largest one (default: the largest only). Empty stays empty."""
    labels, n_labels = ndimage.label(mask)
    if n_labels <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    if min_fraction >= 1.0:
        return labels == np.argmax(sizes)
    keep = sizes >= min_fraction * sizes.max()
    keep[0] = False
    return keep[labels]


def _dilate(mask: np.ndarray, radius_mm: float, zooms) -> np.ndarray:
    """Dilation by a ball of ``radius_mm`` (Euclidean distance in mm, anisotropy-safe)."""
    if not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask, sampling=zooms) <= radius_mm


def _erode(mask: np.ndarray, radius_mm: float, zooms) -> np.ndarray:
    """Erosion by a ball of ``radius_mm``. The array border does not erode (a neck cut stays)."""
    return ndimage.distance_transform_edt(mask, sampling=zooms) > radius_mm


def _fill_holes_in_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fill background regions enclosed within each 2-D slice perpendicular to ``axis``.

    A head cut open at the neck (or by the field of view) leaves the dark skull and CSF
    connected to the outside through the cut, so 3-D hole filling misses them; in slices across
    the head they are still enclosed by scalp.
    """
    structure = np.zeros((3, 3, 3), dtype=bool)
    plane = [slice(None)] * 3
    plane[axis] = 1
    structure[tuple(plane)] = ndimage.generate_binary_structure(2, 1)
    labels, n_labels = ndimage.label(~mask, structure=structure)
    # Background components reaching the in-plane border of their slice are outside the head.
    border = np.zeros(mask.shape, dtype=bool)
    for other in {0, 1, 2} - {axis}:
        edge = [slice(None)] * 3
        edge[other] = [0, -1]
        border[tuple(edge)] = True
    outside = np.zeros(n_labels + 1, dtype=bool)
    outside[np.unique(labels[border])] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside[labels]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """3-D hole filling, then slice-wise filling along each voxel axis."""
    filled = ndimage.binary_fill_holes(mask)
    # All three axes: the image axes need not be axial/coronal/sagittal (oblique, any order).
    slice_filled = filled.copy()
    for axis in range(3):
        slice_filled |= _fill_holes_in_slices(filled, axis)
    return ndimage.binary_fill_holes(slice_filled)


def _intensity_levels(image: np.ndarray) -> tuple[float, float]:
    """Head/background threshold and clip level for hot voxels, robust to outliers.

    The threshold is the "clip level" of AFNI's 3dAutomask: the fixed point of
    ``c = median(x > c) / 2``, half the median head intensity. Being a median, hot voxels and
    specks do not move it, nor does the share of background in the field of view; it lies far
    above the noise floor and below any tissue of the scalp. Intensities above four times it
    (about twice the median head value, brighter than any tissue) are to be clipped.

    Returns
    -------
    threshold, clip : float
        In the image's intensity units.
    """
    values = image.ravel()
    if values.size > 2_000_000:  # a regular subsample is plenty for a median
        values = values[:: values.size // 2_000_000 + 1]
    level = float(values.mean())
    for _ in range(100):
        above = values[values > level]
        new = 0.5 * float(np.median(above)) if above.size else level
        if abs(new - level) <= 1e-3 * abs(level):
            break
        level = new
    return level, 4.0 * level


def head_mask(
    t1w: np.ndarray,
    zooms: tuple[float, float, float],
    *,
    smooth_mm: float = 1.0,
    closing_mm: float = 6.0,
    opening_mm: float = 3.0,
) -> np.ndarray:
    """Boolean mask of the head (scalp and all inside) from a T1w that is NOT skull-stripped.

    Steps: hot voxels clipped at about twice the median head intensity; light Gaussian
    smoothing; threshold at half the median head intensity (AFNI's clip level); connected
    components of at least 1 % of the largest (drops noise and specks, keeps a scalp that the
    dark skull separates from the brain); morphological closing (seals thin gaps in the scalp
    and the mouths of thin dark slots such as a skull band exposed by defacing); hole filling in
    3-D and slice-wise along every voxel axis (dark skull, CSF, sinuses; also for a head cut open
    at the neck), then the largest component; morphological opening (cuts specks and thin
    bridges touching the head); largest component and 3-D hole filling again. Radii are balls
    in millimetres (Euclidean distance transforms with the voxel sizes), so anisotropic voxels
    are handled.

    Limits: a dark structure wider than about twice ``closing_mm`` opened to the outside by a
    defacing cut (an eye, an opened frontal sinus) stays a crater in the face, which is far from
    the DLPFC and F3 scalp. A speck touching the scalp can leave a one-voxel bump, which the mesh
    smoothing of :func:`scalp_mesh` removes.

    Parameters
    ----------
    t1w : ndarray, 3-D
        T1-weighted head image (any intensity scale; NaN is treated as background).
    zooms : tuple of 3 float
        Voxel sizes in mm along the three array axes (``nibabel.affines.voxel_sizes(affine)``).
    smooth_mm : float
        Gaussian sigma (mm) applied before thresholding, against voxel noise.
    closing_mm : float
        Closing radius (mm): dark gaps or slots narrower than about twice this are sealed. It does
        not move a convex surface, and a missing face (a concavity tens of mm wide) stays missing.
    opening_mm : float
        Opening radius (mm): structures thinner than about twice this that stick out of the head
        (specks, noise bridges) are removed.

    Returns
    -------
    ndarray of bool, same shape as ``t1w``
        True inside the head. Empty if the image holds no signal.
    """
    image = np.nan_to_num(np.asarray(t1w, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if image.ndim != 3:
        raise ValueError(f"head_mask expects a 3-D image, got shape {image.shape}")
    zooms = np.asarray(zooms, dtype=float)[:3]
    if np.ptp(image) == 0:
        return np.zeros(image.shape, dtype=bool)

    # Hot voxels (vessels, artefacts, specks) are clipped to the tissue range: they would squeeze
    # the threshold's median little, but their blurred halo would swell specks beyond what the
    # opening removes.
    threshold, clip = _intensity_levels(image)
    smoothed = ndimage.gaussian_filter(np.minimum(image, clip), sigma=smooth_mm / zooms)
    # Not only the largest component: the scalp can be separated from the brain by the dark
    # skull all around (it is joined only through the neck, or not at all in a cut-off image).
    # Small pieces (specks, noise) go now, before the closing could join them to the head.
    mask = largest_component(smoothed > threshold, min_fraction=0.01)
    if not mask.any():
        return mask

    # Work in the bounding box, with room for the closing, to keep 1 mm heads fast.
    margin = np.ceil(closing_mm / zooms).astype(int) + 2
    voxels = np.argwhere(mask)
    first, last = voxels.min(axis=0), voxels.max(axis=0)
    lo = np.maximum(first - margin, 0)
    hi = np.minimum(last + margin + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    head = mask[box]

    # Closing with zero padding where the box meets the image edge: the array border does not
    # count as background for the erosion, so the closing would glue the head to that edge.
    before, after = margin - (first - lo), margin - (hi - 1 - last)
    padded = np.pad(head, tuple(zip(before, after)))
    closed = _erode(_dilate(padded, closing_mm, zooms), closing_mm, zooms)
    head = closed[tuple(slice(b, b + n) for b, n in zip(before, head.shape))]

    # Filled, the scalp shell and what it encloses become one solid: the largest component.
    head = largest_component(_fill_holes(head))
    # Opening without padding: the border of the field of view does not erode, so a neck cut by
    # the field of view keeps its full cross-section.
    head = _dilate(_erode(head, opening_mm, zooms), opening_mm, zooms)
    head = ndimage.binary_fill_holes(largest_component(head))

    out = np.zeros(image.shape, dtype=bool)
    out[box] = head
    return out
