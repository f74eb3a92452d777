"""Participant spaces and the ITK ``.h5`` transform files antsRegistration writes for fMRIPrep."""

from pathlib import Path
import zlib

import h5py
import nibabel as nib
import numpy as np

from .grids import _Grid


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


def _write_itk_h5(path: Path, ref_to_moving: np.ndarray, centre_ras, field_grid: _Grid,
                  displacement_ras=None, field_applied_first: bool = True) -> None:
    """Write an ITK composite transform (affine + displacement field) like antsRegistration.

    ITK's ``CompositeTransform`` applies its transforms from the last in the file to the first.
    antsRegistration's forward composite (``from-T1w_to-<MNI>``) holds the affine at
    ``/TransformGroup/1`` and the field at ``/2``, so a reference point ``x`` goes to
    ``M (x + u(x))``: the field first (``field_applied_first=True``). Its inverse composite (what
    ``CompositeTransform::GetInverse`` writes: each transform inverted, the order reversed) holds
    the inverse field at ``/1`` and the inverse affine at ``/2``: ``y -> q + v(q)``, ``q = M y``
    (``field_applied_first=False``).

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
        Grid the displacement field is stored on: the reference space when the field is applied
        first, the space the affine maps into otherwise.
    displacement_ras : ndarray (*field_grid.shape, 3), optional
        The field's displacement vectors, mm RAS, on ``field_grid``; default all zero (an
        exactly affine map). Stored as ITK does: LPS vectors, one per voxel, the vector index
        fastest, then x, y, z (Fortran order).
    field_applied_first : bool
        Order of the two transforms (see above).
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
        # Groups made in file order (the default's bytes are those of the previous version).
        for name, part in zip("12", ("affine", "field") if field_applied_first else ("field", "affine")):
            sub = group.create_group(name)
            if part == "affine":
                sub.create_dataset("TransformType", data=[b"AffineTransform_double_3_3"], dtype=vlen)
                sub.create_dataset("TransformParameters", data=np.r_[matrix.ravel(), translation])
                sub.create_dataset("TransformFixedParameters", data=centre)
                continue
            sub.create_dataset("TransformType", data=[b"DisplacementFieldTransform_float_3_3"], dtype=vlen)
            # ITK's field fixed parameters: size, origin (LPS), spacing, direction (row-major).
            sub.create_dataset("TransformFixedParameters", data=np.r_[
                np.asarray(field_grid.shape, float), lps @ field_grid.affine[:3, 3], spacing, direction.ravel()])
            # One LPS vector per voxel, vector index fastest then x, y, z (Fortran order).
            if displacement_ras is None:
                vectors = np.zeros(3 * n_voxels, np.float32)
            else:
                lps_vectors = np.asarray(displacement_ras, np.float32) * np.float32([-1.0, -1.0, 1.0])
                vectors = np.moveaxis(lps_vectors, -1, 0).ravel(order="F")
            sub.create_dataset("TransformParameters", data=vectors, compression="gzip", chunks=True)

