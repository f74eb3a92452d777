"""A realistic participant map: anisotropic affine plus a smooth displacement field, and its inverse.

fMRIPrep's spatial normalization (antsRegistration: rigid, affine, then SyN) maps a template
point ``x`` (MNI mm) to the participant's T1w mm as ``A (x + u(x))``: the displacement field ``u``
lives on the template grid and is applied first, the affine ``A`` second. The registration is
driven by the brain (fMRIPrep registers skull-stripped images), so ``u`` is small inside the
brain and what it does beyond is an extrapolation that grows towards the scalp. This module makes
such a map (:func:`_nonlinear_map`):

- ``A``: rotations of 2-6 degrees about each axis, a different scale on each axis (0.90-1.06;
  individual heads differ from the template by several per cent, not isotropically), a small
  shear (up to 0.03) and a translation of 2-8 mm left-right (the left hemisphere keeps x < 0) and
  1-4 cm on the other axes;
- ``u(x) = amplitude(x) * taper(x) * g(x)``: ``g`` per component the mean of three plane waves
  (wavelengths 90-160 mm: smooth at the scale of a gyrus), ``amplitude`` 0.8 mm in the deep brain
  rising to 4 mm at the scalp (a smoothstep of the normalized radius of the brain ellipsoid from
  0.95 to 1.45), ``taper`` bringing it to zero over 30 mm before the last three voxels of the
  field's grid (ITK takes the displacement as zero outside the grid; nitransforms also within two
  voxels of it, where its cubic splines are undefined; both then agree). With the template head,
  seed 0: at most about 3.7 mm in the brain mask and 5.4 mm in the head;
- the inverse field ``v`` on the same grid, ``y -> y + v(y)`` undoing ``x -> x + u(x)``, by the
  fixed-point iteration ``v = -u(y + v)`` on the analytic ``u`` (it converges because
  ``|grad u| < 1``) until it changes by less than 1e-6 mm.

The maps the generator uses for the images and the truth (:meth:`_NonlinearMap.to_t1w`,
:meth:`_NonlinearMap.to_mni`) interpolate the stored float32 fields trilinearly, as ITK's
``DisplacementFieldTransform`` does, so that the files and the truth agree to float precision.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from .grids import _Grid
from .transforms import _rotation

# Brain ellipsoid of the MNI head (centre and semi-axes, mm), the reference of "inside the brain".
_BRAIN_CENTRE = np.array([0.0, -17.0, 15.0])
_BRAIN_AXES = np.array([68.0, 86.0, 64.0])
_AMPLITUDE_BRAIN_MM = 0.8
_AMPLITUDE_SCALP_MM = 4.0
_RADIUS_RAMP = (0.95, 1.45)     # normalized brain radius where the amplitude rises
_WAVELENGTHS_MM = (90.0, 160.0)
_N_WAVES = 3
_TAPER_MM = 30.0


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (np.float32(3.0) - np.float32(2.0) * t)


@dataclass(frozen=True)
class _Waves:
    """The random smooth vector field ``g``: per component, a mean of plane waves (|g_c| <= 1)."""

    frequencies: np.ndarray   # (3, n_waves, 3) cycles per mm
    phases: np.ndarray        # (3, n_waves) rad

    def __call__(self, x, y, z) -> list:
        """The three components at points given as coordinate arrays (float32, mm)."""
        out = []
        n_waves = self.phases.shape[1]
        for c in range(3):
            total = np.zeros_like(x)
            for k in range(n_waves):
                fx, fy, fz = (np.float32(2 * np.pi * f) for f in self.frequencies[c, k])
                total += np.sin(fx * x + fy * y + fz * z + np.float32(self.phases[c, k]))
            out.append(total / np.float32(n_waves))
        return out


def _displacement(points: np.ndarray, waves: _Waves, grid: _Grid) -> np.ndarray:
    """The analytic field ``u`` (mm, RAS, float32) at MNI ``points`` (..., 3), zero near ``grid``'s edge."""
    x, y, z = (np.ascontiguousarray(points[..., c], dtype=np.float32) for c in range(3))
    radius = np.sqrt(sum(((v - np.float32(c)) / np.float32(a)) ** 2
                         for v, c, a in zip((x, y, z), _BRAIN_CENTRE, _BRAIN_AXES)))
    rise = _smoothstep((radius - np.float32(_RADIUS_RAMP[0])) / np.float32(_RADIUS_RAMP[1] - _RADIUS_RAMP[0]))
    weight = np.float32(_AMPLITUDE_BRAIN_MM) + np.float32(_AMPLITUDE_SCALP_MM - _AMPLITUDE_BRAIN_MM) * rise
    lo = grid.affine[:3, 3]
    hi = lo + (np.asarray(grid.shape) - 1) * grid.spacing
    for v, a, b in zip((x, y, z), lo, hi):
        weight *= _smoothstep((np.minimum(v - np.float32(a), np.float32(b) - v) - np.float32(3.0 * grid.spacing))
                              / np.float32(_TAPER_MM))
    return np.stack([weight * g for g in waves(x, y, z)], axis=-1)


def _trilinear(field: np.ndarray, grid: _Grid, points: np.ndarray) -> np.ndarray:
    """``field`` (*grid.shape, 3) at ``points`` (..., 3) mm, trilinear, zero outside the grid."""
    points = np.asarray(points)
    ijk = nib.affines.apply_affine(np.linalg.inv(grid.affine), points.reshape(-1, 3)).T
    out = np.stack([ndimage.map_coordinates(field[..., c], ijk, order=1, mode="constant", cval=0.0)
                    for c in range(3)], axis=-1)
    return out.reshape(points.shape)


@dataclass(frozen=True)
class _NonlinearMap:
    """MNI mm -> T1w mm as ``A (x + u(x))``, and its inverse ``y -> q + v(q)`` with ``q = A^-1 y``.

    ``forward`` (u) and ``inverse`` (v) are (*grid.shape, 3) float32 RAS displacements (mm) on the
    MNI-space ``grid``; ``affine`` is the 4x4 RAS matrix A.
    """

    affine: np.ndarray
    grid: _Grid
    forward: np.ndarray
    inverse: np.ndarray

    def to_t1w(self, points_mni: np.ndarray) -> np.ndarray:
        points = np.asarray(points_mni, np.float64)
        return nib.affines.apply_affine(self.affine, points + _trilinear(self.forward, self.grid, points))

    def to_mni(self, points_t1w: np.ndarray) -> np.ndarray:
        q = nib.affines.apply_affine(np.linalg.inv(self.affine), np.asarray(points_t1w, np.float64))
        return q + _trilinear(self.inverse, self.grid, q)


def _anisotropic_affine(rng) -> np.ndarray:
    """4x4 RAS matrix MNI mm -> T1w mm: rotation @ shear @ per-axis scale, plus a translation."""
    signs = rng.choice([-1.0, 1.0], size=6)
    angles = np.deg2rad(rng.uniform(2.0, 6.0, 3)) * signs[:3]
    scales = rng.uniform(0.90, 1.06, 3)
    shear = np.eye(3)
    shear[np.triu_indices(3, 1)] = rng.uniform(-0.03, 0.03, 3)
    shift = rng.uniform([2.0, 10.0, 10.0], [8.0, 40.0, 40.0]) * signs[3:]
    return nib.affines.from_matvec(_rotation(angles) @ shear @ np.diag(scales), shift)


def _nonlinear_map(seed: int, label: str, grid: _Grid) -> _NonlinearMap:
    """The participant's nonlinear map (seed- and label-dependent), fields on the MNI ``grid``."""
    rng = np.random.default_rng([seed, 23, zlib.crc32(label.encode())])
    affine = _anisotropic_affine(rng)
    directions = rng.normal(size=(3, _N_WAVES, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    wavelengths = rng.uniform(*_WAVELENGTHS_MM, size=(3, _N_WAVES, 1))
    waves = _Waves(directions / wavelengths, rng.uniform(0.0, 2 * np.pi, (3, _N_WAVES)))
    nodes = grid.world()
    forward = _displacement(nodes, waves, grid)
    inverse = -_displacement(nodes - forward, waves, grid)   # second-order first guess
    for _ in range(100):
        updated = -_displacement(nodes + inverse, waves, grid)
        change = np.abs(updated - inverse).max()
        inverse = updated
        if change < 1e-5:   # mm; float32 evaluation
            break
    else:
        raise RuntimeError("the inverse displacement field did not converge")
    return _NonlinearMap(affine, grid, forward, inverse)


def _point_maps(participant):
    """(MNI -> T1w, T1w -> MNI) of a participant map: 4x4 matrices for a similarity (a matrix),
    functions of (..., 3) points for a :class:`_NonlinearMap`; both kinds are accepted wherever
    the generator maps grids (:meth:`.grids._Grid.world`, :func:`.grids._sampler`)."""
    if isinstance(participant, _NonlinearMap):
        return participant.to_t1w, participant.to_mni
    return participant, np.linalg.inv(participant)
