"""Voxel grids of the generator and resampling of volumes between them."""

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

# Field of view of the template's res-02 grid (first voxel centre, mm; shape at 2 mm). The
# self-made head uses the same so that both heads give the same grids.
_FOV_ORIGIN = np.array([-96.5, -132.5, -78.5])
_FOV_SHAPE_2MM = np.array([97, 115, 97])


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

        ``to_world`` first maps this grid's mm into another space (e.g. T1w -> MNI): a 4x4
        matrix, or a function of (..., 3) points (a nonlinear map, :mod:`.warp`).
        """
        if callable(to_world):
            return to_world(self.world(mask))
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

    ``to_src`` maps ``grid`` mm into the source's mm (default: same space), a 4x4 matrix or a
    function of (..., 3) points (then always interpolated). The returned
    ``sample(volume, order=1)`` gives a ``grid.shape`` float32 array, zero outside the source.
    When the grid's voxel centres lie on the source lattice (the 4 mm MNI grid subsamples the
    2 mm one) values are gathered exactly, an order of magnitude faster than interpolation.
    """
    if callable(to_src):
        coords = np.moveaxis(nib.affines.apply_affine(np.linalg.inv(src_affine), grid.world(to_world=to_src)),
                             -1, 0).astype(np.float32)

        def sample(volume, order=1):
            return ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0,
                                           prefilter=False).astype(np.float32, copy=False)
        return sample

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

