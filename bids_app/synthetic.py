"""Synthetic fMRIPrep derivatives with a planted, known TMS target.

No real 4-D resting-state BOLD can be shipped with tmstarget, so the demo, the tests and the
benchmarks run on data made here. The data are built to behave like fMRIPrep outputs, including
the ways real data mislead a naive analysis; every choice below says which behaviour it imitates.

Layout
------
The output is an fMRIPrep derivatives dataset (real fMRIPrep file names)::

    dataset_description.json                  DatasetType "derivative"
    tmstarget_synthetic_truth.json            what was planted where (see below)
    sub-01/anat/sub-01_desc-preproc_T1w.nii.gz                    head, not skull-stripped, T1w space
                sub-01_desc-brain_mask, _label-{GM,WM,CSF}_probseg, _dseg (1 GM, 2 WM, 3 CSF)
                sub-01_space-<MNI>_desc-preproc_T1w, ..._desc-brain_mask, _label-*_probseg, _dseg
                sub-01_from-T1w_to-<MNI>_mode-image_xfm.h5
                sub-01_from-<MNI>_to-T1w_mode-image_xfm.h5
    sub-01/[ses-1/]func/sub-01[_ses-1]_task-rest_run-1_space-<space>_desc-preproc_bold.nii.gz (+ .json)
                ..._space-<space>_desc-brain_mask.nii.gz, ..._space-<space>_boldref.nii.gz
                sub-01[_ses-1]_task-rest_run-1_desc-confounds_timeseries.tsv (+ .json)

``<space>`` is ``MNI152NLin2009cAsym``, ``MNI152NLin6Asym`` (the same geometry and the same data,
only labelled differently) or ``T1w`` (the participant's own space). The transforms between T1w
and MNI152NLin2009cAsym are always written (the pipeline needs them for a T1w-space run); those of
MNI152NLin6Asym when that space is asked for.

The head
--------
The MNI-space head is the TemplateFlow MNI152NLin2009cAsym template (full-head T1w, brain mask,
GM/WM/CSF probabilities at 2 mm) when a seeded TemplateFlow home is found, read with nibabel from
disk (never downloaded). Otherwise a self-made head of nested ellipsoids (scalp, skull, CSF, a
cortical grey-matter ribbon 8 mm thick, a medial grey-matter wall, ventricles, deep white matter)
that puts the four DLPFC sites and the planted target in the ribbon and the sgACC inside the
brain. Each participant's T1w space is a similarity transform of MNI space,
``T1w mm = A @ MNI mm + b`` (a rotation of a few degrees about each axis, isotropic scale about
0.95, a shift of 2-8 mm left-right and 1-4 cm on the other axes; all seed-dependent), and every
T1w-space image is the MNI-space field resampled through that map onto an axis-aligned RAS grid
covering the head.

Transforms, and which way they map
----------------------------------
The ``*_xfm.h5`` files are real ITK composite transforms, as antsRegistration writes them for
fMRIPrep: ``/TransformGroup/0`` a ``CompositeTransform_double_3_3``, ``/1`` an
``AffineTransform_double_3_3`` (12 parameters in ITK's LPS convention and a 3-value centre),
``/2`` a ``DisplacementFieldTransform_float_3_3`` whose field is all zero (the map is exactly
affine). ITK image transforms map points of the reference (fixed, ``to-``) space into the moving
(``from-``) space, so:

- ``from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5`` maps MNI mm -> T1w mm (``A x + b``);
- ``from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5`` maps T1w mm -> MNI mm.

With nitransforms: ``nitransforms.manip.load(path, fmt="itk").map(points_ras)`` does exactly
that (``fmt="itk"`` is needed; nitransforms >= 25 defaults to X5), and
:func:`tmstarget.workflows.transforms.map_points` wraps it. ``tests/test_transforms.py`` holds the round
trip. The zero field is stored on the reference anatomical grid padded by five voxels, because
nitransforms evaluates the field with cubic splines that lose accuracy within three voxels of the
field's edge.

The BOLD signal model
---------------------
Everything is made on the MNI BOLD grid as spatial maps times time courses, plus voxel noise; the
T1w-space BOLD resamples the same maps through the participant's map, with the same time courses
and fresh noise. With ``B`` the tissue baseline (EPI contrast: CSF bright, GM, then WM, non-brain
tissue dim), a voxel's intensity is

``B * (1 + sum_k map_k * tc_k(t)) - grad(B) . d(x, t) + spin_history + noise``

- **sgACC network**: a band-limited (0.01-0.1 Hz) signal s(t) carried by a Gaussian blob
  (sigma 6 mm) at the sgACC (6, 16, -10) with positive weight and by a grey-matter-restricted
  Gaussian blob (sigma 5 mm) at the planted target with negative weight: the anticorrelated DLPFC
  cluster the pipeline must find. ``signal_strength`` scales both.
- **global signal** g(t) in every brain voxel; **white-matter** and **CSF** physiological signals
  (partly leaking into grey matter), a slow **scanner drift** and three spatially smooth
  **structured-noise** components (what aCompCor is for).
- **motion**: six rigid-body parameters per volume, taken from a real fMRIPrep confounds table
  (a different segment of it per run, reflected at its ends when more rows are needed) or
  synthesized as a smooth random walk; two spikes (about 0.7 mm) are added per run so that
  censoring at FD > 0.5 mm has something to remove. The physical artefact is first order in the
  displacement, ``-grad(B) . (t + omega x (x - c))`` about the head centre c, plus a small
  spin-history signal drop proportional to framewise displacement at image edges.
- **motion-locked decoy**: a linear combination m(t) of the six motion parameters and their
  first derivatives (so it lies exactly in the span of the 24 motion regressors and a constant)
  added with positive weight in the sgACC blob and negative weight at :data:`DECOY_MNI` (3 % of
  the baseline, 2.5 times the planted signal). Without confound regression, with or without
  band-pass filtering, the decoy is the most anticorrelated part of the DLPFC search region;
  24-parameter regression removes it exactly. Of all such combinations m(t) is the one with the
  largest share of its variance in 0.01-0.1 Hz, so that filtering cannot remove it, and its
  weights cancel the spikes, so that it is carried by ordinary motion, not by two volumes.
- **non-steady state**: the first three volumes carry a decaying positive offset (40 %, 12 %,
  3 %) and are flagged as ``non_steady_state_outlier00..02``.
- **noise**: AR(1) (rho 0.3) thermal noise of uniform standard deviation, 3 % of grey-matter
  intensity at 2 mm, scaled like thermal noise with the voxel volume (about 1 % at 4 mm) and by
  ``noise_level``. At 2 mm the planted voxel's correlation with the seed after denoising is
  about -0.5, at 4 mm about -0.8.

The BOLD is stored as int16 with a scale factor; voxels more than about 6 mm outside the brain
mask are zero.

Confounds
---------
The table carries fMRIPrep's column names and conventions ('n/a' for missing values): the six
motion parameters with ``_derivative1``, ``_power2`` and ``_derivative1_power2``;
``framewise_displacement`` (Power: rotations on a 50 mm sphere); ``global_signal``,
``white_matter`` and ``csf`` computed from the synthetic BOLD as written (means over the brain
mask, the eroded WM mask and the eroded CSF mask) with the same expansions; ``dvars`` and
``std_dvars`` (nipype's ComputeDVARS); ``a_comp_cor_XX`` from a PCA of the high-pass-filtered,
variance-normalized WM+CSF time series (fMRIPrep keeps the components explaining 50 % of the
variance; at least five are kept here), with their JSON metadata; ``cosineXX`` (the DCT basis of
a 128 s high-pass, as fMRIPrep writes it); ``non_steady_state_outlierXX`` and ``motion_outlierXX``.
Confounds are computed from the BOLD of the first space in ``spaces``. As in fMRIPrep, the
CompCor and cosine columns are zero in the non-steady-state rows.

Truth
-----
:func:`make_fmriprep_dataset` returns (and writes as ``tmstarget_synthetic_truth.json``) the
planted target snapped to the nearest grey-matter voxel centre of the MNI BOLD grid, the decoy,
and per participant the target in T1w mm and the 4x4 MNI-to-T1w matrix.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
from scipy import linalg, ndimage

from tmstarget import __version__
from tmstarget.collect import clean_label
from tmstarget.config import DLPFC_SITES_MNI, SGACC_CENTER_MNI

__all__ = ["PLANTED_TARGET_MNI", "DECOY_MNI", "make_fmriprep_dataset", "main"]

PLANTED_TARGET_MNI = (-40.0, 40.0, 30.0)
"""Default planted DLPFC target, MNI152NLin2009cAsym mm RAS (near BA46)."""
DECOY_MNI = DLPFC_SITES_MNI["5cm"]
"""Default motion-artefact decoy, MNI mm RAS (the "5 cm" site, inside the DLPFC search region)."""
SGACC_MNI = SGACC_CENTER_MNI
"""Subgenual cingulate seed centre, MNI mm RAS (Fox et al. 2012)."""

TEMPLATE = "MNI152NLin2009cAsym"
MNI_SPACES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")
N_NON_STEADY = 3
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
TRUTH_FILE = "tmstarget_synthetic_truth.json"

# Rotation centre for head motion, MNI mm: roughly the middle of the head.
_HEAD_CENTRE_MNI = np.array([0.0, -18.0, 15.0])
# Field of view of the template's res-02 grid (first voxel centre, mm; shape at 2 mm). The
# self-made head uses the same so that both heads give the same grids.
_FOV_ORIGIN = np.array([-96.5, -132.5, -78.5])
_FOV_SHAPE_2MM = np.array([97, 115, 97])

_REPO_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
_SHARED_TEMPLATEFLOW = _REPO_SHARED / "templateflow"
_SHARED_CONFOUNDS = (_REPO_SHARED / "fmriprep-confounds" / "ds005239"
                     / "sub-01_ses-2_task-rest_desc-confounds_timeseries.tsv")

# Amplitudes of the BOLD model, as fractions of the local baseline unless said otherwise.
_SEED_WEIGHT = 0.012        # sgACC blob, times signal_strength
_TARGET_WEIGHT = 0.012      # planted DLPFC blob (negative), times signal_strength
_DECOY_WEIGHT = 0.030       # motion-locked decoy in the seed (+) and at the decoy (-)
_GLOBAL_WEIGHT = 0.006
_WM_WEIGHT, _CSF_WEIGHT, _LEAK = 0.010, 0.015, 0.25
_STRUCTURED_WEIGHT = 0.004
_DRIFT_WEIGHT = 0.008
_NOISE_SD_2MM = 0.030       # of grey-matter intensity, thermal noise at 2 mm voxels
_NOISE_AR1 = 0.3
_NON_STEADY_OFFSETS = (0.40, 0.12, 0.03)
_SPIN_HISTORY_MM = 0.5      # signal drop per mm of FD, as a displacement along grad(B)
_GM_INTENSITY = 600.0       # BOLD baseline of grey matter (arbitrary units)
_TISSUE_BOLD = {"gm": 1.0, "wm": 0.72, "csf": 1.5, "nonbrain": 0.35}


# --------------------------------------------------------------------------------------------
# grids and resampling
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Grid:
    """An axis-aligned RAS voxel grid: ``shape`` (3 ints) and a diagonal 4x4 ``affine`` (mm)."""

    shape: tuple
    affine: np.ndarray

    @property
    def spacing(self) -> float:
        return float(self.affine[0, 0])

    def world(self, mask=None, to_world=None) -> np.ndarray:
        """World coordinates (mm) of the voxel centres, (*shape, 3), or (N, 3) inside ``mask``.

        ``to_world`` (4x4) first maps this grid's mm into another space (e.g. T1w -> MNI).
        """
        m = self.affine if to_world is None else to_world @ self.affine
        if mask is not None:
            ijk = np.stack(np.nonzero(mask), axis=-1).astype(np.float32)
            return ijk @ m[:3, :3].T.astype(np.float32) + m[:3, 3].astype(np.float32)
        return np.moveaxis(_affine_lattice(m, self.shape), 0, -1)

    def padded(self, n: int) -> "_Grid":
        affine = self.affine.copy()
        affine[:3, 3] -= n * self.spacing
        return _Grid(tuple(int(s) + 2 * n for s in self.shape), affine)


def _affine_lattice(matrix: np.ndarray, shape) -> np.ndarray:
    """``matrix`` (4x4) applied to every voxel index of ``shape``: (3, *shape) float32.

    Built by broadcasting the three index axes, which is much faster than a (N, 3) product.
    """
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    out = np.empty((3, *shape), np.float32)
    for c in range(3):
        out[c] = matrix[c, 3]
        out[c] += np.float32(matrix[c, 0]) * axes[0][:, None, None]
        out[c] += np.float32(matrix[c, 1]) * axes[1][None, :, None]
        out[c] += np.float32(matrix[c, 2]) * axes[2][None, None, :]
    return out


def _mni_grid(spacing: float) -> _Grid:
    """The template's field of view sampled every ``spacing`` mm (2 mm gives the res-02 grid)."""
    shape = np.floor((_FOV_SHAPE_2MM - 1) * 2.0 / spacing + 1e-6).astype(int) + 1
    return _Grid(tuple(int(s) for s in shape), nib.affines.from_matvec(np.eye(3) * spacing, _FOV_ORIGIN))


def _covering_grid(points: np.ndarray, spacing: float, margin: float) -> _Grid:
    """Axis-aligned grid of ``spacing`` mm covering ``points`` (N, 3) with ``margin`` mm to spare."""
    lo = points.min(axis=0) - margin
    shape = np.ceil((points.max(axis=0) + margin - lo) / spacing).astype(int) + 1
    return _Grid(tuple(int(s) for s in shape), nib.affines.from_matvec(np.eye(3) * spacing, lo))


def _sampler(src_affine: np.ndarray, grid: _Grid, to_src=None):
    """A function resampling volumes of an image (voxel-to-mm ``src_affine``) onto ``grid``.

    ``to_src`` (4x4) maps ``grid`` mm into the source's mm (default: same space). The returned
    ``sample(volume, order=1)`` gives a ``grid.shape`` float32 array, zero outside the source.
    When the grid's voxel centres lie on the source lattice (the 4 mm MNI grid subsamples the
    2 mm one) values are gathered exactly, an order of magnitude faster than interpolation.
    """
    index = np.linalg.inv(src_affine) @ (grid.affine if to_src is None else to_src @ grid.affine)
    steps, offsets = np.diag(index)[:3], index[:3, 3]
    on_lattice = (np.allclose(index[:3, :3], np.diag(steps), atol=1e-6) and np.all(steps > 0.5)
                  and np.allclose(steps, np.rint(steps), atol=1e-6)
                  and np.allclose(offsets, np.rint(offsets), atol=1e-4))
    if on_lattice:
        idx = [int(round(o)) + int(round(st)) * np.arange(n) for o, st, n in zip(offsets, steps, grid.shape)]

        def sample(volume, order=1):
            valid = [(i >= 0) & (i < d) for i, d in zip(idx, volume.shape)]
            out = np.zeros(grid.shape, np.float32)
            out[np.ix_(*valid)] = volume[np.ix_(*[i[v] for i, v in zip(idx, valid)])]
            return out
        return sample

    coords = _affine_lattice(index, grid.shape)

    def sample(volume, order=1):
        return ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0,
                                       prefilter=False).astype(np.float32, copy=False)
    return sample


def _box_sigma(spacing_out: float, spacing_in: float) -> float:
    """Gaussian sigma (input voxels) approximating the average over a ``spacing_out`` box.

    Downsampling a probability map by sampling alone would alias; real partial-volume fractions
    are averages over the larger voxel. A box of width f voxels has a FWHM near f; the input
    voxel already averaged over one, hence sqrt(f**2 - 1).
    """
    f = spacing_out / spacing_in
    return float(np.sqrt(max(f * f - 1.0, 0.0)) / 2.355)


# --------------------------------------------------------------------------------------------
# heads: tissue fields of the MNI-space head, evaluated at any MNI points
# --------------------------------------------------------------------------------------------
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

    Layers outward from the brain surface (depth 0): 14 mm of cortical grey matter over white
    matter, 3 mm of CSF, 5.5 mm of skull, 5 mm of scalp (muscle, then fat), so the published F3
    scalp positions lie on the scalp and the DLPFC sites lie in the grey-matter ribbon.

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


def _find_template_dir(templateflow_home):
    """Resolve ``templateflow_home`` (None = auto, False = none, or a path) to the template folder."""
    needed = [f"tpl-{TEMPLATE}_res-02_{s}.nii.gz" for s in
              ("T1w", "desc-brain_mask", "label-GM_probseg", "label-WM_probseg", "label-CSF_probseg")]

    def complete(home):
        folder = Path(home) / f"tpl-{TEMPLATE}"
        return folder if all((folder / n).is_file() for n in needed) else None

    if templateflow_home is False:
        return None
    if templateflow_home is not None:
        folder = complete(templateflow_home)
        if folder is None:
            raise FileNotFoundError(f"{templateflow_home} holds no complete tpl-{TEMPLATE} (res-02 "
                                    f"T1w, brain mask and GM/WM/CSF probsegs are needed)")
        return folder
    for home in (os.environ.get("TEMPLATEFLOW_HOME"), _SHARED_TEMPLATEFLOW):
        if home and complete(home):
            return complete(home)
    return None


def _find_confounds_table(confounds_tsv):
    """Resolve ``confounds_tsv`` (None = auto, False = synthesize, or a path) to a path or None."""
    if confounds_tsv is False:
        return None
    if confounds_tsv is not None:
        if not Path(confounds_tsv).is_file():
            raise FileNotFoundError(confounds_tsv)
        return Path(confounds_tsv)
    return _SHARED_CONFOUNDS if _SHARED_CONFOUNDS.is_file() else None


def _tissue_fields(head, grid: _Grid, to_mni=None) -> dict:
    """Head fields on ``grid`` (``to_mni`` maps its mm to MNI mm) plus a dseg, brain as bool."""
    f = head.fields(grid, to_mni)
    brain = f["brain"] > 0.5
    probs = np.stack([f["gm"], f["wm"], f["csf"]], axis=-1)
    f["dseg"] = np.where(brain & (probs.sum(-1) > 0.05), np.argmax(probs, axis=-1) + 1, 0).astype(np.uint8)
    f["brain"] = brain
    return f


# --------------------------------------------------------------------------------------------
# participant space and transform files
# --------------------------------------------------------------------------------------------
def _rotation(angles_rad) -> np.ndarray:
    """Rotation matrix R = Rz @ Ry @ Rx for rotations (rad) about the x, y and z axes."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _participant_map(seed: int, label: str) -> np.ndarray:
    """4x4 RAS matrix mapping MNI mm to the participant's T1w mm (seed- and label-dependent).

    Rotations of 2-6 degrees about each axis, an isotropic scale of 0.93-0.97 (heads are smaller
    than the MNI template) and a translation, each with a random sign: 2-8 mm left-right (heads
    sit near the scanner's midline, so the left hemisphere keeps x < 0) and 1-4 cm on the other
    axes.
    """
    rng = np.random.default_rng([seed, 11, zlib.crc32(label.encode())])
    signs = rng.choice([-1.0, 1.0], size=6)
    angles = np.deg2rad(rng.uniform(2.0, 6.0, 3)) * signs[:3]
    scale = rng.uniform(0.93, 0.97)
    shift = rng.uniform([2.0, 10.0, 10.0], [8.0, 40.0, 40.0]) * signs[3:]
    return nib.affines.from_matvec(scale * _rotation(angles), shift)


def _write_itk_h5(path: Path, ref_to_moving: np.ndarray, centre_ras, field_grid: _Grid) -> None:
    """Write an ITK composite transform (affine + zero displacement field) like antsRegistration.

    Parameters
    ----------
    path : Path
        Output ``.h5`` file.
    ref_to_moving : ndarray (4, 4)
        RAS matrix mapping reference-space mm to moving-space mm (the ITK image-transform sense).
    centre_ras : array_like (3,)
        Centre of the affine in reference-space mm (ITK's fixed parameters; any point works,
        antsRegistration uses the image centre).
    field_grid : _Grid
        Reference-space grid the (all-zero) displacement field is stored on.
    """
    lps = np.diag([-1.0, -1.0, 1.0])
    # ITK works in LPS: x_lps = L x_ras. An affine with centre c maps x to M (x - c) + c + t.
    matrix = lps @ ref_to_moving[:3, :3] @ lps
    centre = lps @ np.asarray(centre_ras, dtype=float)
    translation = lps @ ref_to_moving[:3, 3] + matrix @ centre - centre
    spacing = np.abs(np.diag(field_grid.affine)[:3])
    direction = lps @ (field_grid.affine[:3, :3] / spacing)  # unit axes in LPS, row-major
    n_voxels = int(np.prod(field_grid.shape))
    vlen = h5py.string_dtype("ascii")  # ITK stores its strings as variable-length ASCII
    with h5py.File(path, "w") as f:
        for name, value in (("HDFVersion", f"HDF5 library version: {h5py.version.hdf5_version}"),
                            ("ITKVersion", "5.3.0"), ("OSName", "Linux"), ("OSVersion", "tmstarget-synth")):
            f.create_dataset(name, data=[value.encode()], dtype=vlen)
        group = f.create_group("TransformGroup")
        group.create_group("0").create_dataset("TransformType", data=[b"CompositeTransform_double_3_3"],
                                               dtype=vlen)
        affine = group.create_group("1")
        affine.create_dataset("TransformType", data=[b"AffineTransform_double_3_3"], dtype=vlen)
        affine.create_dataset("TransformParameters", data=np.r_[matrix.ravel(), translation])
        affine.create_dataset("TransformFixedParameters", data=centre)
        field = group.create_group("2")
        field.create_dataset("TransformType", data=[b"DisplacementFieldTransform_float_3_3"], dtype=vlen)
        # ITK's field fixed parameters: size, origin (LPS), spacing, direction (row-major).
        field.create_dataset("TransformFixedParameters", data=np.r_[
            np.asarray(field_grid.shape, float), lps @ field_grid.affine[:3, 3], spacing, direction.ravel()])
        # One LPS vector per voxel, vector index fastest then x, y, z (Fortran order).
        field.create_dataset("TransformParameters", data=np.zeros(3 * n_voxels, np.float32),
                             compression="gzip", chunks=True)


# --------------------------------------------------------------------------------------------
# time courses
# --------------------------------------------------------------------------------------------
def _bandlimited(rng, n: int, tr: float, low: float, high: float) -> np.ndarray:
    """Gaussian random process with a flat spectrum between ``low`` and ``high`` Hz, unit SD."""
    n_pad = 2 * n  # zero-padding keeps the FFT's wrap-around out of the series
    freqs = np.fft.rfftfreq(n_pad, d=tr)
    spectrum = (rng.standard_normal(freqs.size) + 1j * rng.standard_normal(freqs.size))
    spectrum *= (freqs >= low) & (freqs <= high)
    series = np.fft.irfft(spectrum, n_pad)[:n]
    return ((series - series.mean()) / series.std()).astype(np.float32)


def _standardize(x: np.ndarray, rows=slice(N_NON_STEADY, None)) -> np.ndarray:
    """Zero-mean unit-SD version of ``x`` (columns), statistics from the steady-state rows."""
    ref = x[rows]
    return (x - ref.mean(axis=0)) / np.maximum(ref.std(axis=0), 1e-12)


def _real_motion(table: Path, n: int, rng) -> np.ndarray:
    """Six motion parameters from a real fMRIPrep table: a random segment, reflected at the ends."""
    params = pd.read_csv(table, sep="\t", usecols=list(MOTION_COLUMNS))[list(MOTION_COLUMNS)].to_numpy(float)
    rows = len(params)
    index = rng.integers(0, rows) + np.arange(n)
    period = 2 * (rows - 1)
    index = index % period
    index = np.where(index < rows, index, period - index)
    segment = params[index]
    return segment - segment[0]  # fMRIPrep reports motion relative to the reference volume


def _synthetic_motion(n: int, rng) -> np.ndarray:
    """Six motion parameters (mm, rad): smooth random walk plus a slow drift."""
    steps = rng.standard_normal((n, 6)) * np.r_[[0.02] * 3, [0.0004] * 3]
    walk = ndimage.gaussian_filter1d(np.cumsum(steps, axis=0), 1.5, axis=0)
    drift = np.linspace(0.0, 1.0, n)[:, None] * rng.normal(0, 1, 6) * np.r_[[0.15] * 3, [0.002] * 3]
    motion = walk + drift
    return motion - motion[0]


def _add_spikes(motion: np.ndarray, rng, n_spikes: int = 2):
    """Add one-volume head jerks (about 0.7 mm, 0.004 rad) that FD > 0.5 mm censoring catches.

    Returns the new parameters and the spike displacement vectors (n_spikes, 6).
    """
    n = len(motion)
    motion = motion.copy()
    margin = min(20, n // 5)  # keep the jerks away from the start (non-steady state) and the end
    if n - 2 * margin < 2 * n_spikes:
        return motion, np.zeros((0, 6))
    where = np.sort(rng.choice(np.arange(margin, n - margin), n_spikes, replace=False))
    jerks = np.zeros((n_spikes, 6))
    for k, t in enumerate(where):
        direction = rng.normal(size=6)
        direction[:3] *= 0.7 / np.linalg.norm(direction[:3])
        direction[3:] *= 0.004 / np.linalg.norm(direction[3:])
        motion[t] += direction
        jerks[k] = direction
    return motion, jerks


def _bandpass(x: np.ndarray, tr: float, low: float = 0.01, high: float = 0.1) -> np.ndarray:
    """Ideal (FFT) band-pass of the columns of ``x``."""
    freqs = np.fft.rfftfreq(len(x), d=tr)
    keep = (freqs >= low) & (freqs <= high)
    return np.fft.irfft(np.fft.rfft(x, axis=0) * keep[:, None], len(x), axis=0)


def _decoy_timecourse(motion: np.ndarray, jerks: np.ndarray, tr: float) -> np.ndarray:
    """The motion-locked decoy m(t): a unit-SD combination of the motion parameters and their
    first differences, thus exactly in the span of the 24 motion regressors plus a constant.

    Of all such combinations it takes the one with the largest share of its variance in the
    0.01-0.1 Hz resting-state band (a generalized eigenproblem), so that band-pass filtering does
    not remove the decoy, only confound regression does. Its weights are constrained to cancel
    the spike displacements, so that it is carried by ordinary motion, not by two volumes.
    """
    diff = np.diff(motion, axis=0, prepend=motion[:1])
    diff[0] = diff[1]  # nilearn's load_confounds fills the n/a first row with the second
    columns = np.c_[motion, diff]
    scale = columns[N_NON_STEADY:].std(axis=0) + 1e-12
    z = _standardize(columns)
    # A spike d at volume t adds d to the parameters at t and d, -d to the differences at t, t+1:
    # weights w (on standardized columns) cancel it when (d / scale) . w = 0 for both halves.
    constraints = [np.r_[j, np.zeros(6)] / scale for j in jerks] + [np.r_[np.zeros(6), j] / scale for j in jerks]
    basis = linalg.null_space(np.array(constraints)) if constraints else np.eye(12)
    reduced = z[N_NON_STEADY:] @ basis
    in_band = _bandpass(reduced, tr)
    total = reduced.T @ reduced
    _, vectors = linalg.eigh(in_band.T @ in_band, total + 1e-6 * np.trace(total) * np.eye(len(total)))
    m = z @ (basis @ vectors[:, -1])
    return _standardize(m).astype(np.float32)


def _framewise_displacement(motion: np.ndarray) -> np.ndarray:
    """Power et al. 2012 FD (mm): rotations as arc length on a 50 mm sphere; first value NaN."""
    delta = np.abs(np.diff(motion, axis=0))
    return np.r_[np.nan, delta[:, :3].sum(1) + 50.0 * delta[:, 3:].sum(1)]


# --------------------------------------------------------------------------------------------
# spatial maps on a BOLD grid
# --------------------------------------------------------------------------------------------
def _blob(world: np.ndarray, centre, sigma: float) -> np.ndarray:
    return np.exp(-np.sum((world - np.asarray(centre, np.float32)) ** 2, axis=-1) / (2 * sigma**2))


def _bold_baseline(f: dict) -> np.ndarray:
    """EPI baseline intensity from tissue fractions (CSF bright, then GM, WM, non-brain tissue)."""
    t = _TISSUE_BOLD
    nonbrain = np.clip(f["head"] - f["gm"] - f["wm"] - f["csf"], 0.0, 1.0)
    baseline = t["gm"] * f["gm"] + t["wm"] * f["wm"] + t["csf"] * f["csf"] + t["nonbrain"] * nonbrain
    return (_GM_INTENSITY * baseline).astype(np.float32)


@dataclass
class _Maps:
    """Spatial maps on one BOLD grid: baseline, named maps (absolute intensity per unit of the
    matching time course), the masks and the stored region."""

    grid: _Grid
    baseline: np.ndarray
    maps: dict
    brain: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    dseg: np.ndarray
    stored: np.ndarray

    @cached_property
    def voxels(self) -> tuple:
        """Indices of the stored voxels, brain-mask voxels first: the BOLD is handled as (T, V)
        arrays in this order, so brain-wide statistics read one contiguous block of columns."""
        inside, outside = np.nonzero(self.brain), np.nonzero(self.stored & ~self.brain)
        return tuple(np.r_[a, b] for a, b in zip(inside, outside))


def _mni_bold_maps(f: dict, grid: _Grid, target, decoy, signal_strength: float, rng) -> _Maps:
    """All spatial maps of the model on the MNI BOLD grid (see the module docstring)."""
    world = grid.world()
    baseline = _bold_baseline(f)
    # A soft coil-sensitivity profile: brighter posteriorly and superiorly by about 10 %.
    baseline *= 1.0 + 0.0005 * (-world[..., 1]) + 0.0004 * world[..., 2]
    gm_mask = (f["dseg"] == 1).astype(np.float32)
    seed = _blob(world, SGACC_MNI, 6.0)
    target_blob = _blob(world, target, 5.0) * gm_mask
    decoy_blob = _blob(world, decoy, 5.0) * gm_mask
    brainish = f["gm"] + 0.6 * f["wm"] + 0.6 * f["csf"]
    relative = {
        "neural": signal_strength * (_SEED_WEIGHT * seed - _TARGET_WEIGHT * target_blob),
        "decoy": _DECOY_WEIGHT * (seed - decoy_blob),
        "global": _GLOBAL_WEIGHT * brainish,
        "wm": _WM_WEIGHT * (f["wm"] + _LEAK * f["gm"]),
        "csf": _CSF_WEIGHT * (f["csf"] + _LEAK * f["gm"]),
        "drift": np.full(grid.shape, _DRIFT_WEIGHT, np.float32),
        # long-T1 CSF recovers last, so its non-steady-state excess is larger
        "non_steady": 1.0 + f["csf"],
    }
    for k in range(3):
        field = ndimage.gaussian_filter(rng.standard_normal(grid.shape).astype(np.float32),
                                        12.0 / grid.spacing)
        relative[f"structured{k}"] = _STRUCTURED_WEIGHT * field / np.abs(field).max() * brainish
    maps = {name: (m * baseline).astype(np.float32) for name, m in relative.items()}

    # Motion artefact, first order: I(x - d) - I(x) = -grad(B) . d, d = t + omega x (x - c).
    grad = np.stack(np.gradient(baseline, grid.spacing), axis=-1)  # intensity per mm
    rel = world - _HEAD_CENTRE_MNI.astype(np.float32)
    moment = np.cross(rel, grad)                                   # (x - c) x grad(B)
    for j, name in enumerate(MOTION_COLUMNS[:3]):
        maps[name] = -grad[..., j]
    for j, name in enumerate(MOTION_COLUMNS[3:]):
        # grad . (omega x r) = omega . (r x grad)
        maps[name] = -moment[..., j]
    maps["spin_history"] = -_SPIN_HISTORY_MM * np.linalg.norm(grad, axis=-1)

    brain = f["brain"]
    # Keep the brain and about 6 mm around it (motion artefacts live at its edge); zero beyond.
    stored = ndimage.binary_dilation(brain, iterations=max(1, int(round(6.0 / grid.spacing))))
    return _Maps(grid, baseline, maps, brain, f["gm"], f["wm"], f["csf"], f["dseg"], stored)


def _t1w_bold_maps(head, mni: _Maps, mni_to_t1w: np.ndarray, target_t1w) -> _Maps:
    """The MNI BOLD maps resampled (linear) onto a participant's T1w BOLD grid.

    The grid is axis-aligned in T1w space with the MNI voxel size and covers the stored region;
    the tissue fields and masks come from the head itself at that resolution. Its origin puts the
    planted target on a voxel centre, as it is in MNI space, so that a recovered target's error
    measures the pipeline, not the grid.
    """
    t1w_to_mni = np.linalg.inv(mni_to_t1w)
    spacing = mni.grid.spacing
    grid = _covering_grid(mni.grid.world(mni.stored, to_world=mni_to_t1w), spacing, 2 * spacing)
    origin = grid.affine[:3, 3]
    grid.affine[:3, 3] = origin + np.mod(np.asarray(target_t1w) - origin, spacing)
    f = _tissue_fields(head, grid, t1w_to_mni)
    through = _sampler(mni.grid.affine, grid, t1w_to_mni)
    stored = (through(mni.stored.astype(np.float32)) > 0.5) | f["brain"]
    return _Maps(grid, through(mni.baseline), {k: through(v) for k, v in mni.maps.items()},
                 f["brain"], f["gm"], f["wm"], f["csf"], f["dseg"], stored)


def _timecourses(motion: np.ndarray, jerks: np.ndarray, tr: float, rng) -> dict:
    """Time courses matching the maps of :func:`_mni_bold_maps` (see the module docstring)."""
    n = len(motion)
    fd = np.nan_to_num(_framewise_displacement(motion))
    u = np.linspace(-1.0, 1.0, n)
    tcs = {
        "neural": _bandlimited(rng, n, tr, 0.01, 0.1),
        "decoy": _decoy_timecourse(motion, jerks, tr),
        "global": _bandlimited(rng, n, tr, 0.01, 0.1),
        "wm": 0.6 * _bandlimited(rng, n, tr, 0.005, 0.1) + 0.8 * _standardize(rng.standard_normal(n)),
        "csf": 0.4 * _bandlimited(rng, n, tr, 0.005, 0.1) + 0.9 * _standardize(rng.standard_normal(n)),
        "drift": rng.normal() * u + 0.5 * rng.normal() * (u**2 - 1.0 / 3.0),
        "non_steady": np.r_[_NON_STEADY_OFFSETS, np.zeros(n - N_NON_STEADY)][:n],
        "spin_history": fd,
    }
    for k in range(3):
        tcs[f"structured{k}"] = _bandlimited(rng, n, tr, 0.005, 0.15)
    for j, name in enumerate(MOTION_COLUMNS):
        tcs[name] = motion[:, j]
    return {k: np.asarray(v, np.float32) for k, v in tcs.items()}


def _render(maps: _Maps, tcs: dict, noise_sd: float, rng) -> np.ndarray:
    """BOLD of ``maps.voxels``, (T, V) float32: baseline + maps @ time courses + AR(1) noise."""
    names = sorted(maps.maps)
    voxels = maps.voxels
    spatial = np.stack([maps.maps[k][voxels] for k in names], axis=0)  # (K, V)
    temporal = np.stack([tcs[k] for k in names], axis=1)               # (T, K)
    n = temporal.shape[0]
    data = rng.standard_normal((n, spatial.shape[1]), dtype=np.float32)
    innovation = np.float32(np.sqrt(1.0 - _NOISE_AR1**2))
    for t in range(1, n):  # AR(1) in place, one volume at a time (rows are contiguous)
        data[t] *= innovation
        data[t] += np.float32(_NOISE_AR1) * data[t - 1]
    data *= np.float32(noise_sd)
    data += maps.baseline[voxels]
    for start in range(0, n, 64):  # chunks keep the (T, V) temporaries small
        data[start:start + 64] += temporal[start:start + 64] @ spatial
    return data


# --------------------------------------------------------------------------------------------
# confounds
# --------------------------------------------------------------------------------------------
def _cosine_basis(n: int, tr: float, period_cut: float = 128.0) -> np.ndarray:
    """fMRIPrep's (nipype's) DCT high-pass basis without the constant, shape (n, order - 1)."""
    order = int(np.floor(2 * n * tr / period_cut))
    k = np.arange(1, order)
    return np.sqrt(2.0 / n) * np.cos(np.pi / n * (np.arange(n)[:, None] + 0.5) * k[None, :])


def _tissue_mask(prob: np.ndarray, brain: np.ndarray, min_voxels: int = 10) -> np.ndarray:
    """A mask of nearly pure tissue: probability > 0.9 in the brain, eroded by one voxel.

    Like fMRIPrep's CompCor/WM/CSF masks. The erosion, then the threshold, are relaxed when a
    coarse grid leaves too few voxels.
    """
    for threshold, erode in ((0.9, True), (0.9, False), (0.5, False)):
        mask = (prob > threshold) & brain
        if erode:
            mask = ndimage.binary_erosion(mask)
        if mask.sum() >= min_voxels:
            return mask
    return mask


def _expansions(name: str, x: np.ndarray) -> dict:
    """fMRIPrep's expansions: ``x``, ``_derivative1`` (backward difference, n/a first),
    ``_power2`` and ``_derivative1_power2``."""
    d = np.r_[np.nan, np.diff(x)]
    return {name: x, f"{name}_derivative1": d, f"{name}_power2": x**2, f"{name}_derivative1_power2": d**2}


def _dvars(data: np.ndarray) -> tuple:
    """nipype's ComputeDVARS (as fMRIPrep uses it): (std_dvars, dvars), NaN in the first row.

    ``data`` is (T, V). Intensities are scaled to a median of 1000; the expected SD of the
    temporal difference comes from each voxel's robust SD (IQR / 1.349) and lag-1 autocorrelation.
    """
    scale = 1000.0 / np.median(data)  # applied at the end: every quantity is linear in it
    q25, q75 = np.percentile(data, [25, 75], axis=0, method="lower")
    robust_sd = (q75 - q25) / 1.349
    centred = data - data.mean(axis=0)
    ar1 = np.sum(centred[1:] * centred[:-1], axis=0) / np.maximum(np.sum(centred**2, axis=0), 1e-12)
    del centred
    keep = robust_sd > 0
    diff_sd = np.mean(np.sqrt(2.0 * (1.0 - ar1[keep])) * robust_sd[keep])
    dvars = np.sqrt(np.mean(np.diff(data, axis=0) ** 2, axis=1, dtype=np.float64))
    return np.r_[np.nan, dvars / diff_sd], np.r_[np.nan, scale * dvars]


def _acompcor(data: np.ndarray, tr: float, min_keep: int = 5) -> tuple:
    """aCompCor as nipype/fMRIPrep: DCT high-pass, variance-normalize, SVD.

    Returns the retained components (T, k), zero in the non-steady rows, and their metadata.
    """
    series = data[N_NON_STEADY:].astype(np.float64)
    n = series.shape[0]
    design = np.c_[_cosine_basis(n, tr), np.ones(n)]
    series -= design @ np.linalg.lstsq(design, series, rcond=None)[0]
    sd = series.std(axis=0)
    series /= np.where(sd > 0, sd, 1.0)
    # Left singular vectors from the small (T, T) Gram matrix: the same as an SVD of the
    # (T, V) matrix, at a fraction of the cost when V is in the tens of thousands.
    eigval, u = np.linalg.eigh(series @ series.T)
    order = np.argsort(eigval)[::-1]
    s, u = np.sqrt(np.clip(eigval[order], 0.0, None)), u[:, order]
    explained = s**2 / np.sum(s**2)
    cumulative = np.cumsum(explained)
    n_keep = max(int(np.searchsorted(cumulative, 0.5)) + 1, min(min_keep, len(s)))
    components = np.zeros((data.shape[0], n_keep))
    components[N_NON_STEADY:] = u[:, :n_keep]
    meta = {}
    for k in range(len(s)):
        key = f"a_comp_cor_{k:02d}" if k < n_keep else f"dropped_{k - n_keep}"
        meta[key] = {"CumulativeVarianceExplained": float(cumulative[k]), "Mask": "combined",
                     "Method": "aCompCor", "Retained": k < n_keep, "SingularValue": float(s[k]),
                     "VarianceExplained": float(explained[k])}
    return components, meta


def _confounds(data: np.ndarray, maps: _Maps, motion: np.ndarray, tr: float) -> tuple:
    """The fMRIPrep confounds table (DataFrame) and its JSON metadata for one run.

    ``data`` (T, V) is the BOLD of ``maps.voxels`` (brain-mask voxels first) as written to disk.
    """
    n = len(motion)
    brain = maps.brain
    in_brain = data[:, :int(brain.sum())]  # a view: the brain voxels come first
    column_of = np.full(maps.grid.shape, -1)
    column_of[maps.voxels] = np.arange(data.shape[1])
    wm_mask, csf_mask = _tissue_mask(maps.wm, brain), _tissue_mask(maps.csf, brain)
    columns = {}
    for name, values in (("global_signal", in_brain), ("csf", data[:, column_of[csf_mask]]),
                         ("white_matter", data[:, column_of[wm_mask]])):
        columns.update(_expansions(name, values.mean(axis=1, dtype=np.float64)))
    columns["std_dvars"], columns["dvars"] = _dvars(in_brain)
    fd = _framewise_displacement(motion)
    columns["framewise_displacement"] = fd

    components, meta = _acompcor(data[:, column_of[wm_mask | csf_mask]], tr)
    for k in range(components.shape[1]):
        columns[f"a_comp_cor_{k:02d}"] = components[:, k]
    cosines = _cosine_basis(n - N_NON_STEADY, tr)
    cosines = np.r_[np.zeros((N_NON_STEADY, cosines.shape[1])), cosines]
    for k in range(cosines.shape[1]):
        columns[f"cosine{k:02d}"] = cosines[:, k]
    for k in range(N_NON_STEADY):
        columns[f"non_steady_state_outlier{k:02d}"] = (np.arange(n) == k).astype(float)
    for j, name in enumerate(MOTION_COLUMNS):
        columns.update(_expansions(name, motion[:, j]))
    # fMRIPrep's motion outliers: FD > 0.5 mm or standardized DVARS > 1.5
    outliers = np.nonzero((np.nan_to_num(fd) > 0.5) | (np.nan_to_num(columns["std_dvars"]) > 1.5))[0]
    for k, t in enumerate(outliers):
        columns[f"motion_outlier{k:02d}"] = (np.arange(n) == t).astype(float)
    return pd.DataFrame(columns), meta


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _save(volume: np.ndarray, grid: _Grid, path: Path, dtype, space_code: int) -> None:
    img = nib.Nifti1Image(np.asarray(volume), grid.affine)
    img.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(grid.affine, code=space_code)
    img.set_sform(grid.affine, code=space_code)
    img.to_filename(path)


def _write_bold(path: Path, quantized: np.ndarray, maps: _Maps, slope: float, tr: float,
                space_code: int) -> None:
    """Stream an int16 4-D NIfTI (scale factor ``slope``) volume by volume into a .nii.gz.

    A full-grid float array of a 2 mm run would take about 1 GB; streaming needs one volume.
    ``quantized`` (T, V) holds the integer values of ``maps.voxels``.
    """
    shape = maps.grid.shape
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((*shape, quantized.shape[0]))
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(maps.grid.affine, code=space_code)
    hdr.set_sform(maps.grid.affine, code=space_code)
    hdr.set_xyzt_units("mm", "sec")
    hdr["pixdim"][4] = tr
    hdr.set_slope_inter(slope, 0.0)
    flat = np.ravel_multi_index(maps.voxels, shape, order="F")
    order = np.argsort(flat)  # write each volume in file (Fortran) order
    flat = flat[order]
    volume = np.zeros(int(np.prod(shape)), np.int16)
    header = io.BytesIO()
    hdr.write_to(header)
    # A gzip stream (wbits 31) with run-length matching: a third faster than gzip level 1 on
    # these mostly-zero volumes, and no larger.
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31, 9, zlib.Z_RLE)
    with open(path, "wb") as fobj:
        fobj.write(compressor.compress(header.getvalue()))
        for values in quantized:
            volume[flat] = values[order]
            fobj.write(compressor.compress(volume.tobytes()))
        fobj.write(compressor.flush())


def _write_json(path: Path, content) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")


def _entities(participant: str, session, run: int) -> str:
    """``sub-<p>[_ses-<s>]_task-rest_run-<r>``: fMRIPrep's file-name stem of a run."""
    session = [f"ses-{session}"] if session is not None else []
    return "_".join([f"sub-{participant}", *session, f"task-rest_run-{run}"])


def _write_anat(anat_dir: Path, prefix: str, f: dict, grid: _Grid, space_code: int) -> None:
    _save(f["t1w"], grid, anat_dir / f"{prefix}_desc-preproc_T1w.nii.gz", np.int16, space_code)
    _save(f["brain"].astype(np.uint8), grid, anat_dir / f"{prefix}_desc-brain_mask.nii.gz", np.uint8,
          space_code)
    for label in ("GM", "WM", "CSF"):
        _save(f[label.lower()], grid, anat_dir / f"{prefix}_label-{label}_probseg.nii.gz", np.float32,
              space_code)
    _save(f["dseg"], grid, anat_dir / f"{prefix}_dseg.nii.gz", np.uint8, space_code)


def _write_anatomy(anat_dir: Path, subject: str, head, mni_anat: dict, mni_anat_grid: _Grid,
                   mni_to_t1w: np.ndarray, mni_spaces, rng) -> None:
    """Write a participant's anatomy (T1w space and each MNI space) and the T1w<->MNI transforms.

    The T1w-space images are the MNI fields resampled through ``mni_to_t1w`` onto an axis-aligned
    grid covering the head with 10 mm to spare.
    """
    anat_dir.mkdir(parents=True, exist_ok=True)
    t1w_to_mni = np.linalg.inv(mni_to_t1w)
    head_in_t1w = mni_anat_grid.world(mni_anat["head"] > 0.5, to_world=mni_to_t1w)
    t1w_grid = _covering_grid(head_in_t1w, mni_anat_grid.spacing, 10.0)
    outputs = [(_tissue_fields(head, t1w_grid, t1w_to_mni), t1w_grid, subject, 1)]
    outputs += [(mni_anat, mni_anat_grid, f"{subject}_space-{space}", 4) for space in mni_spaces]
    for fields, grid, prefix, code in outputs:
        if head.kind == "synthetic":  # a scanner's image has noise; the template has none to add
            fields = dict(fields, t1w=_rician(fields["t1w"], 12.0, rng))
        _write_anat(anat_dir, prefix, fields, grid, code)
    # The zero displacement fields live on the reference grids, padded (see the module docstring).
    for space in dict.fromkeys([TEMPLATE, *mni_spaces]):
        _write_itk_h5(anat_dir / f"{subject}_from-T1w_to-{space}_mode-image_xfm.h5",
                      mni_to_t1w, _HEAD_CENTRE_MNI, mni_anat_grid.padded(5))
        _write_itk_h5(anat_dir / f"{subject}_from-{space}_to-T1w_mode-image_xfm.h5",
                      t1w_to_mni, nib.affines.apply_affine(mni_to_t1w, _HEAD_CENTRE_MNI), t1w_grid.padded(5))


def _write_run(func_dir: Path, base: str, spaces, space_maps: dict, tcs: dict, motion: np.ndarray,
               tr: float, noise_sd: float, rng) -> None:
    """Render and write one run's BOLD in every space, then its confounds (from the first space)."""
    rendered = {}
    for space in spaces:
        maps = space_maps[space]
        if id(maps) not in rendered:  # MNI152NLin6Asym shares the MNI geometry: same data
            data = _render(maps, tcs, noise_sd, rng)
            slope = np.float32(np.abs(data).max() / 32000.0)
            data /= slope
            np.rint(data, out=data)   # the int16 values as stored
            rendered[id(maps)] = (data, slope)
        data, slope = rendered[id(maps)]
        code = 1 if space == "T1w" else 4  # NIfTI xform codes: scanner-based, MNI
        stem = f"{base}_space-{space}"
        _write_bold(func_dir / f"{stem}_desc-preproc_bold.nii.gz", data, maps, float(slope), tr, code)
        _write_json(func_dir / f"{stem}_desc-preproc_bold.json",
                    {"RepetitionTime": float(tr), "TaskName": "rest", "SkullStripped": False})
        _save(maps.brain.astype(np.uint8), maps.grid, func_dir / f"{stem}_desc-brain_mask.nii.gz",
              np.uint8, code)
        boldref = np.zeros(maps.grid.shape, np.float32)
        boldref[maps.voxels] = data[N_NON_STEADY:].mean(axis=0) * slope
        _save(boldref, maps.grid, func_dir / f"{stem}_boldref.nii.gz", np.float32, code)
    # confounds from the first space's BOLD as written (rescaled in place: no copy)
    data, slope = rendered.pop(id(space_maps[spaces[0]]))
    data *= slope
    table, meta = _confounds(data, space_maps[spaces[0]], motion, tr)
    table.to_csv(func_dir / f"{base}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
    _write_json(func_dir / f"{base}_desc-confounds_timeseries.json", meta)


def _rician(volume: np.ndarray, sd: float, rng) -> np.ndarray:
    """Magnitude of the complex signal plus Gaussian noise: Rician background, as in MR images."""
    real = volume + rng.normal(0.0, sd, volume.shape)
    return np.hypot(real, rng.normal(0.0, sd, volume.shape)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# the public generator
# --------------------------------------------------------------------------------------------
def _snap_to_gm(point, gm: np.ndarray, grid: _Grid) -> np.ndarray:
    """Centre of the grey-matter voxel of ``grid`` nearest to ``point`` (mm)."""
    centres = grid.world(gm)
    if len(centres) == 0:
        raise RuntimeError("the head has no grey matter on the BOLD grid")
    return centres[np.argmin(np.sum((centres - np.asarray(point, np.float32)) ** 2, axis=1))].astype(float)


def make_fmriprep_dataset(out_dir, participants=("01",), sessions=(None,), n_runs=1, n_volumes=240,
                          tr=2.0, spaces=("MNI152NLin2009cAsym",), voxel_size=2.0, anat_voxel_size=None,
                          target_mni=PLANTED_TARGET_MNI, signal_strength=1.0, noise_level=1.0,
                          seed=0, templateflow_home=None, confounds_tsv=None) -> dict:
    """Write a synthetic fMRIPrep derivatives dataset with a planted sgACC-anticorrelated target.

    Parameters
    ----------
    out_dir : str or Path
        Folder of the derivatives dataset (created if needed).
    participants : sequence of str
        Participant labels (``"01"`` or ``"sub-01"``).
    sessions : sequence of str or None
        Session labels; ``(None,)`` writes no ``ses-`` level.
    n_runs : int
        Resting-state runs per participant and session (``run-1`` ...).
    n_volumes : int
        Volumes per run, including the three non-steady-state volumes.
    tr : float
        Repetition time, seconds.
    spaces : sequence of str
        BOLD output spaces: ``"MNI152NLin2009cAsym"``, ``"MNI152NLin6Asym"``, ``"T1w"``.
        Confounds are computed from the BOLD of the first one.
    voxel_size : float
        BOLD voxel size, mm (2 mm reproduces the template's res-02 grid; 4 mm for fast tests).
    anat_voxel_size : float, optional
        Anatomical voxel size, mm; default ``min(voxel_size, 2.0)``.
    target_mni : tuple of 3 floats
        Where to plant the anticorrelated DLPFC cluster, MNI mm RAS; snapped to the nearest
        grey-matter voxel centre of the MNI BOLD grid.
    signal_strength : float
        Scale of the sgACC network signal (seed blob and planted cluster); 1 is about 1 % signal.
    noise_level : float
        Scale of the voxel (thermal, AR(1)) noise; 1 is 3 % of grey matter at 2 mm voxels.
    seed : int
        Seed of every random choice (participant maps, motion segments, signals, noise).
    templateflow_home : None, False or path
        None: use ``$TEMPLATEFLOW_HOME`` if it holds tpl-MNI152NLin2009cAsym, else
        ``../shared/data/templateflow`` beside the repository if present, else the self-made head.
        False: always the self-made head. A path: that TemplateFlow home (error if incomplete).
    confounds_tsv : None, False or path
        Source of the motion parameters. None: the real fMRIPrep table in
        ``../shared/data/fmriprep-confounds`` if present, else synthesized; False: synthesized;
        a path: that fMRIPrep confounds table.

    Returns
    -------
    dict
        The truth, also written to ``out_dir/tmstarget_synthetic_truth.json``: ``target_mni`` and
        ``decoy_mni`` (mm, after snapping), ``target_mni_requested``, ``sgacc_mni``, ``participants`` (per label:
        ``target_t1w``, ``decoy_t1w`` in mm and ``mni_to_t1w``, the 4x4 RAS matrix mapping MNI mm
        to T1w mm), ``tr``, ``n_volumes``, ``n_non_steady``, ``voxel_size``,
        ``anat_voxel_size``, ``spaces``, ``sessions``, ``n_runs``, ``head``, ``motion_source``,
        ``seed``, ``signal_strength``, ``noise_level``.
    """
    out_dir = Path(out_dir)
    participants = tuple(clean_label(str(p)) for p in participants) or ("01",)
    sessions = tuple(None if s is None else clean_label(str(s), "session") for s in sessions or ()) or (None,)
    spaces = tuple(spaces)
    unknown = [s for s in spaces if s not in MNI_SPACES + ("T1w",)]
    if unknown or not spaces:
        raise ValueError(f"unsupported spaces {unknown or spaces}; use {MNI_SPACES + ('T1w',)}")
    if n_volumes <= N_NON_STEADY + 10:
        raise ValueError(f"n_volumes must exceed {N_NON_STEADY + 10}")
    voxel_size = float(voxel_size)
    anat_voxel_size = float(anat_voxel_size or min(voxel_size, 2.0))
    tpl_dir = _find_template_dir(templateflow_home)
    motion_table = _find_confounds_table(confounds_tsv)
    head = _TemplateHead(tpl_dir) if tpl_dir is not None else _SyntheticHead()
    noise_sd = _NOISE_SD_2MM * noise_level * (2.0 / voxel_size) ** 1.5 * _GM_INTENSITY

    # MNI-space anatomy and BOLD grids, shared by all participants
    mni_anat_grid = _mni_grid(anat_voxel_size)
    mni_anat = _tissue_fields(head, mni_anat_grid)
    mni_bold_grid = _mni_grid(voxel_size)
    mni_bold = _tissue_fields(head, mni_bold_grid)
    # grey matter on both the BOLD grid and (sampled at the voxel centre) the anatomical dseg
    anat_dseg_here = _sampler(mni_anat_grid.affine, mni_bold_grid)(mni_anat["dseg"].astype(np.float32),
                                                                   order=0)
    gm_bold = (mni_bold["dseg"] == 1) & (anat_dseg_here == 1)
    target = _snap_to_gm(target_mni, gm_bold, mni_bold_grid)
    decoy = _snap_to_gm(DECOY_MNI, gm_bold, mni_bold_grid)
    mni_maps = _mni_bold_maps(mni_bold, mni_bold_grid, target, decoy, signal_strength,
                              np.random.default_rng([seed, 7]))

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "dataset_description.json", {
        "Name": "tmstarget synthetic fMRIPrep derivatives",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "tmstarget-synth", "Version": __version__,
                         "Description": "synthetic resting-state fMRIPrep outputs with a planted "
                                        "sgACC-anticorrelated DLPFC target"}],
    })
    truth = {
        "target_mni": [float(v) for v in target],
        "target_mni_requested": [float(v) for v in target_mni],
        "decoy_mni": [float(v) for v in decoy],
        "sgacc_mni": list(SGACC_MNI),
        "participants": {},
        "tr": float(tr), "n_volumes": int(n_volumes), "n_non_steady": N_NON_STEADY,
        "n_runs": int(n_runs), "sessions": list(sessions), "spaces": list(spaces),
        "voxel_size": voxel_size, "anat_voxel_size": anat_voxel_size,
        "head": head.kind, "motion_source": str(motion_table) if motion_table else "synthesized",
        "seed": int(seed), "signal_strength": float(signal_strength), "noise_level": float(noise_level),
    }

    for p_index, label in enumerate(participants):
        mni_to_t1w = _participant_map(seed, label)
        _write_anatomy(out_dir / f"sub-{label}" / "anat", f"sub-{label}", head, mni_anat, mni_anat_grid,
                       mni_to_t1w, [s for s in spaces if s in MNI_SPACES],
                       np.random.default_rng([seed, 13, p_index]))

        space_maps = {s: mni_maps for s in spaces if s in MNI_SPACES}
        if "T1w" in spaces:
            space_maps["T1w"] = _t1w_bold_maps(head, mni_maps, mni_to_t1w,
                                               nib.affines.apply_affine(mni_to_t1w, target))

        truth["participants"][label] = {
            "target_t1w": nib.affines.apply_affine(mni_to_t1w, target).tolist(),
            "decoy_t1w": nib.affines.apply_affine(mni_to_t1w, decoy).tolist(),
            "mni_to_t1w": mni_to_t1w.tolist(),
        }

        for s_index, session in enumerate(sessions):
            func_dir = out_dir / f"sub-{label}" / (f"ses-{session}" if session is not None else "") / "func"
            func_dir.mkdir(parents=True, exist_ok=True)
            for run in range(1, int(n_runs) + 1):
                rng = np.random.default_rng([seed, 17, p_index, s_index, run])
                motion = (_real_motion(motion_table, n_volumes, rng) if motion_table
                          else _synthetic_motion(n_volumes, rng))
                motion, jerks = _add_spikes(motion, rng)
                _write_run(func_dir, _entities(label, session, run), spaces, space_maps,
                           _timecourses(motion, jerks, tr, rng), motion, tr, noise_sd, rng)

    _write_json(out_dir / TRUTH_FILE, truth)
    return truth


def main(argv=None) -> int:
    """Console script ``tmstarget-synth``: write a synthetic dataset and say where the target is."""
    parser = argparse.ArgumentParser(
        prog="tmstarget-synth",
        description="Write synthetic fMRIPrep derivatives (resting-state BOLD, anatomy, transforms, "
                    "confounds) with a planted sgACC-anticorrelated left-DLPFC target.")
    parser.add_argument("out_dir", help="output folder (an fMRIPrep derivatives dataset)")
    parser.add_argument("--participants", nargs="+", default=["01"], metavar="LABEL")
    parser.add_argument("--sessions", nargs="+", default=None, metavar="LABEL",
                        help="session labels (default: no session level)")
    parser.add_argument("--runs", type=int, default=1, help="runs per session (default 1)")
    parser.add_argument("--volumes", type=int, default=240, help="volumes per run (default 240)")
    parser.add_argument("--tr", type=float, default=2.0, help="repetition time, s (default 2)")
    parser.add_argument("--voxel-size", type=float, default=2.0, help="BOLD voxel size, mm (default 2)")
    parser.add_argument("--anat-voxel-size", type=float, default=None,
                        help="anatomical voxel size, mm (default min(voxel size, 2))")
    parser.add_argument("--spaces", nargs="+", default=[TEMPLATE], choices=MNI_SPACES + ("T1w",))
    parser.add_argument("--target", nargs=3, type=float, default=PLANTED_TARGET_MNI,
                        metavar=("X", "Y", "Z"), help="planted target, MNI mm RAS (default %(default)s)")
    parser.add_argument("--signal-strength", type=float, default=1.0)
    parser.add_argument("--noise-level", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--templateflow-home", type=Path, default=None,
                        help="TemplateFlow home holding tpl-MNI152NLin2009cAsym (default: $TEMPLATEFLOW_HOME "
                             "or ../shared/data/templateflow when present, else the self-made head)")
    parser.add_argument("--confounds-tsv", type=Path, default=None,
                        help="real fMRIPrep confounds table to take motion from (default: the one in "
                             "../shared/data when present, else synthesized motion)")
    parser.add_argument("--no-shared-data", action="store_true",
                        help="use the self-made head and synthesized motion whatever is available")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    truth = make_fmriprep_dataset(
        args.out_dir, participants=args.participants, sessions=args.sessions or (None,),
        n_runs=args.runs, n_volumes=args.volumes, tr=args.tr, spaces=args.spaces,
        voxel_size=args.voxel_size, anat_voxel_size=args.anat_voxel_size, target_mni=tuple(args.target),
        signal_strength=args.signal_strength, noise_level=args.noise_level, seed=args.seed,
        templateflow_home=False if args.no_shared_data else args.templateflow_home,
        confounds_tsv=False if args.no_shared_data else args.confounds_tsv)

    def fmt(xyz):
        return "(" + ", ".join(f"{v:.1f}" for v in xyz) + ")"

    print(f"wrote {args.out_dir} in {time.perf_counter() - start:.1f} s "
          f"(head: {truth['head']}, motion: {truth['motion_source']})")
    print(f"planted target: MNI152NLin2009cAsym {fmt(truth['target_mni'])} mm "
          f"(requested {fmt(args.target)}); decoy {fmt(truth['decoy_mni'])} mm")
    for label, info in truth["participants"].items():
        print(f"  sub-{label}: T1w {fmt(info['target_t1w'])} mm")
    print(f"truth: {Path(args.out_dir) / TRUTH_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
