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


class _SyntheticHead:
    """A self-made head of nested ellipsoids, evaluated analytically at any point.

    Layers outward from the brain surface (depth 0): 8 mm of cortical grey matter over white
    matter, 3 mm of CSF, 5.5 mm of skull, 5 mm of scalp (muscle, then fat), so the published F3
    scalp positions lie on the scalp and the DLPFC sites lie in the grey-matter ribbon.
    """

    kind = "synthetic"
    _CENTRE = (0.0, -17.0, 15.0)
    _AXES = (68.0, 86.0, 64.0)
    _RIBBON, _CSF, _SKULL, _MUSCLE, _FAT = 8.0, 3.0, 5.5, 2.5, 2.5
    _VENTRICLES = (((-11.0, -12.0, 14.0), (5.0, 20.0, 9.0)), ((11.0, -12.0, 14.0), (5.0, 20.0, 9.0)))
    _MEDIAL_WALL = 8.0      # mm either side of the midline: medial cortex (holds the sgACC)

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
        outer = np.cumsum([self._CSF, self._SKULL, self._MUSCLE, self._FAT])
        csf_out, skull_out, muscle_out, fat_out = (_ramp(depth + d, w) for d in outer)
        csf = (csf_out - brain) + ventricles * brain
        skull, muscle, fat = skull_out - csf_out, muscle_out - skull_out, fat_out - muscle_out
        t1w = 150 * csf + 500 * gm + 800 * wm + 80 * skull + 450 * muscle + 950 * fat
        return {
            "t1w": t1w.astype(np.float32),
            # fMRIPrep's brain mask takes in about half of the CSF around the brain
            "brain": _ramp(depth + 0.5 * self._CSF, w),
            "gm": gm, "wm": wm, "csf": csf, "head": fat_out,
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

