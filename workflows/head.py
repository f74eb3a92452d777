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


def _squared_distances(mask: np.ndarray, zooms) -> np.ndarray:
    """Squared Euclidean distance (mm²) from each True voxel to the nearest False one (0 on
    False voxels; infinite when there is none), voxel sizes ``zooms`` (mm) along the array axes.

    What ``scipy.ndimage.distance_transform_edt(mask, sampling=zooms) ** 2`` gives, by the
    ``edt`` package (Felzenszwalb & Huttenlocher's separable transform): 5x faster than scipy's
    (0.6 against 3.0 s on a 1 mm head), which matters as a head mask takes four of them. Outside
    the array is not background (``black_border=False``), as in scipy.
    """
    import edt

    return edt.edtsq(mask, anisotropy=tuple(float(z) for z in zooms), black_border=False,
                     parallel=1)


def _dilate(mask: np.ndarray, radius_mm: float, zooms) -> np.ndarray:
    """Dilation by a ball of ``radius_mm`` (Euclidean distance in mm, anisotropy-safe)."""
    if not mask.any():
        return mask.copy()
    return _squared_distances(~mask, zooms) <= radius_mm ** 2


def _erode(mask: np.ndarray, radius_mm: float, zooms) -> np.ndarray:
    """Erosion by a ball of ``radius_mm``. The array border does not erode (a neck cut stays)."""
    return _squared_distances(mask, zooms) > radius_mm ** 2


def fill_holes(mask: np.ndarray, structure=None, border_axes=None) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` (default structure): the background not connected by
    faces to the array border becomes True.

    One labelling of the background instead of scipy's dilations from the border repeated until
    nothing changes (0.1 against 0.8 s on a 1 mm head); the same mask (tested). ``structure``
    (the background's connectivity, ``scipy.ndimage.label``'s) and ``border_axes`` (the axes
    whose two ends are the border; default all) serve the slice-wise filling.
    """
    labels, n_labels = ndimage.label(~mask, structure=structure)
    outside = np.zeros(n_labels + 1, dtype=bool)
    for axis in range(mask.ndim) if border_axes is None else border_axes:
        for end in (0, -1):
            outside[np.take(labels, end, axis=axis)] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside[labels]


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
    # Background components reaching the in-plane border of their slice are outside the head.
    return fill_holes(mask, structure=structure, border_axes=sorted({0, 1, 2} - {axis}))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """3-D hole filling, then slice-wise filling along each voxel axis."""
    filled = fill_holes(mask)
    # All three axes: the image axes need not be axial/coronal/sagittal (oblique, any order).
    slice_filled = filled.copy()
    for axis in range(3):
        slice_filled |= _fill_holes_in_slices(filled, axis)
    return fill_holes(slice_filled)


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
    # the first and last voxel of the mask along each axis (np.argwhere would list its millions)
    extents = [np.flatnonzero(mask.any(axis=tuple({0, 1, 2} - {axis}))) for axis in range(3)]
    first, last = np.array([e[0] for e in extents]), np.array([e[-1] for e in extents])
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
    head = fill_holes(largest_component(head))

    out = np.zeros(image.shape, dtype=bool)
    out[box] = head
    return out


# --------------------------------------------------------------------------------------------
# Is it a whole head to plan a coil on?
# --------------------------------------------------------------------------------------------
#: A head mask smaller than this many times the brain mask is taken as a skull-stripped image.
#: Scalp, skull and CSF add a shell of 10-15 mm around the brain (scalp-to-cortex distances of
#: adults are about 10-25 mm: Stokes et al. 2007; Kozel et al. 2000), which on a brain of 1.2-1.9 l is
#: 1.5-2 times its volume: measured here 1.6 (the demo head), 1.9 (SPM's cropped face-repetition
#: head), 2.1 (MNI152NLin2009cAsym); the same images masked by their brain mask give 0.9-1.0.
MIN_HEAD_TO_BRAIN_VOLUME = 1.3

#: Plausible scalp-to-cortex distances (mm). Adults measure about 10-25 mm over motor and prefrontal
#: cortex (Stokes et al. 2007; Kozel et al. 2000; more with atrophy): below 8 mm there is no room
#: for scalp, skull and CSF (a brain image, or a cut head closed by a flat cap), beyond 40 mm the
#: point is not under the scalp the coil touches.
SCALP_DEPTH_RANGE_MM = (8.0, 40.0)

#: A point within this many voxels of the image's first or last voxel lies on the cut of the
#: field of view: the mesh closes a cut head with a flat cap there, which is not skin.
BORDER_VOXELS = 1.5

HEAD_REFERENCES = {
    "Stokes2007": "Stokes MG, Chambers CD, Gould IC, et al. Distance-adjusted motor threshold for "
    "transcranial magnetic stimulation. Clin Neurophysiol. 2007;118(7):1617-1625. "
    "doi:10.1016/j.clinph.2007.04.004",
    "Kozel2000": "Kozel FA, Nahas Z, deBrux C, et al. How coil-cortex distance relates to age, "
    "motor threshold, and antidepressant response to repetitive transcranial magnetic "
    "stimulation. J Neuropsychiatry Clin Neurosci. 2000;12(3):376-384. "
    "doi:10.1176/jnp.12.3.376",
}

#: What to give instead, the end of every warning about the head.
GIVE_A_WHOLE_HEAD = ("give fMRIPrep's head T1w (desc-preproc_T1w, not skull-stripped) whose field "
                     "of view holds the whole head")


def on_image_border(points, affine, shape, margin_voxels: float = BORDER_VOXELS) -> np.ndarray:
    """Whether each point (world mm) lies outside an image or within ``margin_voxels`` of its
    border (first or last voxel along any axis). NaN points are not on the border."""
    points = np.atleast_2d(np.asarray(points, dtype=float))
    ijk = (np.linalg.inv(np.asarray(affine, dtype=float)) @ np.column_stack(
        [points, np.ones(len(points))]).T).T[:, :3]
    last = np.asarray(shape[:3], dtype=float) - 1.0
    with np.errstate(invalid="ignore"):
        near = ((ijk < margin_voxels) | (ijk > last - margin_voxels)).any(axis=1)
    return near & np.isfinite(points).all(axis=1)


def skull_stripped(head_volume_mm3: float, brain_volume_mm3: float) -> bool:
    """Whether a head mask this close to the brain mask's volume can only be a brain image
    (:data:`MIN_HEAD_TO_BRAIN_VOLUME`)."""
    return bool(brain_volume_mm3 > 0
                and head_volume_mm3 < MIN_HEAD_TO_BRAIN_VOLUME * brain_volume_mm3)


def head_check(head_volume_mm3: float, brain_volume_mm3: float | None, t1w_name: str):
    """Whether the head of ``t1w_name`` can carry a plan, and the warning when it cannot.

    Returns
    -------
    trusted : bool
    warnings : list of str
    """
    if brain_volume_mm3 is None or not skull_stripped(head_volume_mm3, brain_volume_mm3):
        return True, []
    ratio = head_volume_mm3 / brain_volume_mm3
    return False, [
        f"{t1w_name}: the head mask ({head_volume_mm3 / 1000:.0f} cm3) is only {ratio:.2f} times "
        f"the brain mask ({brain_volume_mm3 / 1000:.0f} cm3, at least "
        f"{MIN_HEAD_TO_BRAIN_VOLUME:g} for a head): the image looks skull-stripped, there is no "
        "scalp to put a coil on; no scalp point, coil pose, comparator or dose was computed "
        f"(the cortical target is kept): {GIVE_A_WHOLE_HEAD}."]


def point_checks(names, scalp_xyz, depth_mm, field_of_view, t1w_name: str, *,
                 what="scalp point", consequence="no coil pose or dose from it"):
    """Which scalp points can carry a coil: not on the border of the field of view, at a
    plausible depth above their cortical point (:data:`SCALP_DEPTH_RANGE_MM`).

    Parameters
    ----------
    names : sequence of str
        Row names, for the warnings.
    scalp_xyz : array-like (K, 3)
        Scalp points, world mm.
    depth_mm : array-like (K,)
        Scalp-to-cortex distances (NaN: not checked).
    field_of_view : tuple (ndarray (4, 4), tuple) or None
        Affine and shape of the head image; None: the border is not checked.
    t1w_name : str
        The head image, named in the warnings.
    what, consequence : str
        What the points are and what is not done when one is not trusted (for the warnings).

    Returns
    -------
    trusted : ndarray (K,) of bool
    warnings : list of str
        One line per untrusted point.
    """
    scalp_xyz = np.atleast_2d(np.asarray(scalp_xyz, dtype=float))
    depth_mm = np.asarray(depth_mm, dtype=float).reshape(-1)
    border = (on_image_border(scalp_xyz, *field_of_view) if field_of_view is not None
              else np.zeros(len(scalp_xyz), dtype=bool))
    low, high = SCALP_DEPTH_RANGE_MM
    with np.errstate(invalid="ignore"):
        implausible = (depth_mm < low) | (depth_mm > high)
    missing = ~np.isfinite(scalp_xyz).all(axis=1)
    warnings = []
    for name, xyz, depth, on_border, odd, absent in zip(names, scalp_xyz, depth_mm, border,
                                                        implausible, missing):
        if absent:
            continue
        where = f"the {what} of {name!r} ({', '.join(f'{v:.1f}' for v in xyz)} mm)"
        if on_border:
            warnings.append(f"{t1w_name}: {where} lies on the border of the image, where the "
                            f"head is cut off: {consequence}; {GIVE_A_WHOLE_HEAD}.")
        elif odd:
            warnings.append(f"{t1w_name}: {where} is {depth:.1f} mm from its cortical point, "
                            f"outside the {low:g}-{high:g} mm of adult scalp-to-cortex distances "
                            f"(a skull-stripped or cut head?): {consequence}; "
                            f"{GIVE_A_WHOLE_HEAD}.")
    return ~(border | implausible | missing), warnings
