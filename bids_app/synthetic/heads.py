"""The MNI-space head: tissue fields of the template head or of a self-made one, at any points.

The MNI-space head is the TemplateFlow MNI152NLin2009cAsym template (full-head T1w, brain mask,
GM/WM/CSF probabilities at 2 mm) when a seeded TemplateFlow home is found (:mod:`.sources`), read
with nibabel from disk (never downloaded). Otherwise a self-made head (:class:`_SyntheticHead`).
Participants' heads are these fields evaluated through each participant's map
(:mod:`.transforms`).
"""

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .constants import TEMPLATE
from .grids import _Grid, _box_sigma, _sampler


class _TemplateHead:
    """The TemplateFlow MNI152NLin2009cAsym head (res-02 files read with nibabel)."""

    kind = "templateflow"

    def __init__(self, tpl_dir: Path):
        def load(suffix):
            img = nib.load(tpl_dir / f"tpl-{TEMPLATE}_res-02_{suffix}.nii.gz")
            return np.asarray(img.dataobj, dtype=np.float32), img.affine

        t1w, self.affine = load("T1w")
        self._fields = {
            "t1w": t1w,
            "brain": load("desc-brain_mask")[0],
            "gm": load("label-GM_probseg")[0],
            "wm": load("label-WM_probseg")[0],
            "csf": load("label-CSF_probseg")[0],
        }
        # Head mask: the template's background is about 5 % of the scalp's intensity; keep the
        # largest component above 10 % of the 99th percentile and fill the skull and sinuses.
        head = ndimage.binary_closing(t1w > 0.1 * np.percentile(t1w, 99), iterations=2)
        labels, _ = ndimage.label(head)
        head = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
        self._fields["head"] = ndimage.binary_fill_holes(head).astype(np.float32)
        self._smoothed = {}

    def fields(self, grid: _Grid, to_mni=None) -> dict:
        """Tissue fields on ``grid`` (``to_mni`` maps its mm to MNI mm), as partial volumes."""
        sigma = _box_sigma(grid.spacing, 2.0)
        sample = _sampler(self.affine, grid, to_mni)
        out = {}
        for name, volume in self._fields.items():
            if sigma > 0.05:
                key = (name, round(sigma, 3))
                if key not in self._smoothed:
                    self._smoothed[key] = ndimage.gaussian_filter(volume, sigma)
                volume = self._smoothed[key]
            out[name] = sample(volume)
        return out


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume step: 0 below -width/2, 1 above +width/2, linear between."""
    return np.clip(0.5 + x / width, 0.0, 1.0, dtype=np.float32)


def _ellipsoid_depth(points: np.ndarray, centre, semi_axes) -> np.ndarray:
    """Approximate depth (mm) of ``points`` below the surface of an ellipsoid (negative outside).

    Scaling the normalized radius r by the point's distance from the centre turns (1 - r) into
    millimetres along the ray from the centre, which is the distance to the surface for a sphere
    and close to it for the mild ellipsoids used here.
    """
    rel = points - np.asarray(centre, dtype=np.float32)
    dist = np.linalg.norm(rel, axis=-1)
    r = np.sqrt(np.sum((rel / np.asarray(semi_axes, dtype=np.float32)) ** 2, axis=-1))
    return (1.0 - r) * dist / np.maximum(r, 1e-3)


def _half_ellipsoid_depth(points: np.ndarray, centre, semi_axes, axis: int, back_axis: float) -> np.ndarray:
    """:func:`_ellipsoid_depth` of an egg: semi-axis ``back_axis`` instead of ``semi_axes[axis]``
    where the point lies below the centre on that axis (the two halves join smoothly)."""
    rel = points[..., axis] - np.float32(centre[axis])
    axes = [np.full(points.shape[:-1], a, np.float32) for a in semi_axes]
    axes[axis] = np.where(rel < 0, np.float32(back_axis), np.float32(semi_axes[axis]))
    return _ellipsoid_depth(points, centre, np.stack(axes, axis=-1))


def _smooth_union(depths, blend_mm: float) -> np.ndarray:
    """Depth inside the union of shapes (a soft maximum of their depths, blended over ``blend_mm``)."""
    out = depths[0]
    for d in depths[1:]:
        out = np.float32(blend_mm) * np.logaddexp(out / np.float32(blend_mm), d / np.float32(blend_mm))
    return out.astype(np.float32)


class _SyntheticHead:
    """A self-made head, evaluated analytically at any point.

    The brain is an ellipsoid; layers outward from its surface (depth 0): 14 mm of cortical grey
    matter over white matter, 3 mm of CSF, 5.5 mm of skull. The head's surface is the union of
    the cranium (the brain ellipsoid 13.5 mm out, so 5 mm of scalp, muscle then fat, lie over the
    skull), a lower head (face, cheeks, occiput and neck: an egg-shaped ellipsoid through the
    template's nasion, inion and preauricular points), a nose below the nasion and two ears
    behind the preauricular points, blended over 3-5 mm; below the cranium the head is soft
    tissue under 2.5 mm of fat. So the published F3 scalp positions lie on the scalp, the DLPFC
    sites in the grey-matter ribbon, and the fiducials of
    :data:`tmstarget.workflows.landmarks.FIDUCIALS_MNI` (Jurcak et al. 2007) on the skin.

    The ribbon is thick because this cortex is not folded: 14 mm gives grey matter the share of
    the brain it has in the MNI152NLin2009cAsym template (55 % of brain-mask voxels at 2 mm, WM
    38 %; the template: 56 %, 38 %) and puts the planted target (6.5 mm deep) and the DLPFC
    sites (3.7-6.5 mm) inside it, not at its white-matter edge. With 8 mm the planted target lay
    1.5 mm above white matter, its grey-matter blob was one-sided, the smoothed map's minimum
    fell 4 mm outward and split halves of ample clean data disagreed by a voxel diagonal
    (5.7 mm; the template head gives 0 mm).
    """

    kind = "synthetic"
    _CENTRE = (0.0, -17.0, 15.0)
    _AXES = (68.0, 86.0, 64.0)
    _RIBBON, _CSF, _SKULL, _MUSCLE, _FAT = 14.0, 3.0, 5.5, 2.5, 2.5
    _VENTRICLES = (((-11.0, -12.0, 14.0), (5.0, 20.0, 9.0)), ((11.0, -12.0, 14.0), (5.0, 20.0, 9.0)))
    _MEDIAL_WALL = 8.0      # mm either side of the midline: medial cortex (holds the sgACC)
    # Lower head: centre, semi-axes (x, y anterior, z) and the posterior y semi-axis, fitted so
    # that Nz (0, 82.9, -43), Iz (0, -116.2, -30.5), LPA (-79.6, -20.6, -48.6) and RPA
    # (80.6, -20.6, -48.1) lie on it within about 1 mm.
    _LOWER_CENTRE, _LOWER_AXES, _LOWER_BACK = (0.0, -17.0, -42.0), (80.5, 100.0, 42.0), 103.0
    _NOSE = ((0.0, 80.0, -62.0), (10.0, 15.0, 17.0))
    _EARS = (((-82.0, -36.0, -45.0), (7.0, 11.0, 16.0)), ((82.0, -36.0, -45.0), (7.0, 11.0, 16.0)))
    _BLEND_MM, _FEATURE_BLEND_MM = 5.0, 3.0

    def _head_depth(self, points: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Depth (mm, approximately) below the head's surface; ``depth`` is the brain's."""
        cranium = depth + np.float32(self._CSF + self._SKULL + self._MUSCLE + self._FAT)
        lower = _half_ellipsoid_depth(points, self._LOWER_CENTRE, self._LOWER_AXES, 1, self._LOWER_BACK)
        head = _smooth_union([cranium, lower], self._BLEND_MM)
        features = [_ellipsoid_depth(points, *self._NOSE)] + [_ellipsoid_depth(points, *e) for e in self._EARS]
        return _smooth_union([head, *features], self._FEATURE_BLEND_MM)

    def fields(self, grid: _Grid, to_mni=None) -> dict:
        """Tissue fields on ``grid`` (``to_mni`` maps its mm to MNI mm), as partial volumes."""
        points = grid.world(to_world=to_mni)
        w = max(grid.spacing, 1.0)
        depth = _ellipsoid_depth(points, self._CENTRE, self._AXES)
        brain = _ramp(depth, w)
        wm = _ramp(depth - self._RIBBON, w)
        wm *= 1.0 - _ramp(self._MEDIAL_WALL - np.abs(points[..., 0]), w)
        ventricles = np.zeros_like(brain)
        for centre, axes in self._VENTRICLES:
            ventricles = np.maximum(ventricles, _ramp(_ellipsoid_depth(points, centre, axes), w))
        gm = (brain - wm) * (1.0 - ventricles)
        wm *= 1.0 - ventricles
        csf_out, skull_out = (_ramp(depth + d, w) for d in np.cumsum([self._CSF, self._SKULL]))
        head_depth = self._head_depth(points, depth)
        head = _ramp(head_depth, w)
        # soft tissue under the fat; never less than the skull it covers (head_depth >= cranium)
        soft_out = np.maximum(_ramp(head_depth - self._FAT, w), skull_out)
        csf = (csf_out - brain) + ventricles * brain
        skull, muscle, fat = skull_out - csf_out, soft_out - skull_out, head - soft_out
        t1w = 150 * csf + 500 * gm + 800 * wm + 80 * skull + 450 * muscle + 950 * fat
        return {
            "t1w": t1w.astype(np.float32),
            # fMRIPrep's brain mask takes in about half of the CSF around the brain
            "brain": _ramp(depth + 0.5 * self._CSF, w),
            "gm": gm, "wm": wm, "csf": csf, "head": head,
        }


def _tissue_fields(head, grid: _Grid, to_mni=None) -> dict:
    """Head fields on ``grid`` (``to_mni`` maps its mm to MNI mm) plus a dseg, brain as bool."""
    f = head.fields(grid, to_mni)
    brain = f["brain"] > 0.5
    probs = np.stack([f["gm"], f["wm"], f["csf"]], axis=-1)
    f["dseg"] = np.where(brain & (probs.sum(-1) > 0.05), np.argmax(probs, axis=-1) + 1, 0).astype(np.uint8)
    f["brain"] = brain
    return f



def _rician(volume: np.ndarray, sd: float, rng) -> np.ndarray:
    """Magnitude of the complex signal plus Gaussian noise: Rician background, as in MR images."""
    real = volume + rng.normal(0.0, sd, volume.shape)
    return np.hypot(real, rng.normal(0.0, sd, volume.shape)).astype(np.float32)

