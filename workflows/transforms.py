"""Map world coordinates through fMRIPrep's ITK composite transforms.

fMRIPrep writes the anatomical spatial normalization as two ITK/ANTs composite HDF5 files,
``…_from-T1w_to-<template>_mode-image_xfm.h5`` and ``…_from-<template>_to-T1w_mode-image_xfm.h5``.
They are *image* transforms (``mode-image``): an image transform is evaluated on the points of the
grid one resamples *onto* (the reference, the ``to-`` space) and returns where to sample the
image being moved (the ``from-`` space). Hence, for points:

==============================================  =====================================
file                                            :func:`map_points` maps
==============================================  =====================================
``from-T1w_to-MNI152NLin2009cAsym…_xfm.h5``     MNI152NLin2009cAsym mm  ->  T1w mm
``from-MNI152NLin2009cAsym_to-T1w…_xfm.h5``     T1w mm  ->  MNI152NLin2009cAsym mm
==============================================  =====================================

That is the reverse of what the file names suggest at first reading; it is how ITK, ANTs and
nitransforms define a transform (``antsApplyTransforms -r MNI -t from-T1w_to-MNI…`` walks the MNI
grid and asks, for each of its points, where that point is in the T1w image).

The reading is done by nitransforms' ITK reader (``nitransforms.io.itk.ITKCompositeH5``, what
``nitransforms.manip.load(path, fmt="itk")`` uses; ``fmt="itk"`` matters there: since
nitransforms 25 the default format of ``load`` is X5, which rejects ITK files). It gives each
transform of the file in RAS+ millimetres (converted from ITK's LPS): the affines as
nitransforms ``Affine`` objects; the displacement field's array is taken from the file as
nitransforms takes it, to the bit, without its copies (:meth:`SplineField.from_itk_h5`), and
:class:`SplineField` maps points through it (the field first, then the affine, as ITK applies a
composite transform). A displacement field has no inverse, so each direction needs its own
file, as fMRIPrep provides. The graph reads each transform that several steps use once
(:class:`ReadTransform`, :func:`write_mapping`).
"""

from __future__ import annotations

import json
import pickle
import warnings
from os import PathLike
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from scipy.ndimage import map_coordinates, spline_filter

from tmstarget.workflows.coil import coil_frame, plan_distances


def map_points(points_ras, xfm_file: str | PathLike) -> np.ndarray:
    """Map points of a transform's reference space into its moving space.

    Parameters
    ----------
    points_ras : array_like, shape (N, 3) or (3,)
        World coordinates in millimetres, RAS+, in the reference (``to-``) space of the transform.
    xfm_file : str or os.PathLike
        An ITK composite transform in HDF5 (``*_mode-image_xfm.h5``, as fMRIPrep writes them), or
        the same transform as :class:`ReadTransform` writes it (:func:`write_mapping`).

    Returns
    -------
    numpy.ndarray, shape (N, 3), float64
        The same points in millimetres, RAS+, in the moving (``from-``) space. For
        ``from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5`` this maps T1w mm to MNI mm; for
        ``from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5`` it maps MNI mm to T1w mm.

    Notes
    -----
    Points outside the grid of the transform's displacement field are moved by the affine part
    only (nitransforms treats the field as zero there).
    """
    points = _as_points(points_ras)
    if points.shape[0] == 0:
        return np.empty((0, 3))
    return points_mapping(xfm_file)(points)


def _as_points(points_ras) -> np.ndarray:
    points = np.atleast_2d(np.asarray(points_ras, dtype=float))
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points_ras must have shape (N, 3), got {np.shape(points_ras)}")
    return points


class SplineField:
    """A displacement field of a composite transform, ready to map points (RAS mm).

    A point ``x`` goes to ``x + u(x)``: ``u`` is the field's displacements (RAS mm, as
    nitransforms reads them from ITK's LPS file), interpolated by cubic B-splines whose
    coefficients are computed once (``spline_filter(..., order=3, mode="constant")``, then
    ``map_coordinates(..., prefilter=False)``); off the field's grid the point stays put, as in
    nitransforms. nitransforms' ``DenseFieldTransform`` maps points by interpolating the same
    splines through the field of mapped positions (the world coordinates of every voxel plus the
    displacements). Why by hand:

    - it builds those coordinates (a 1 mm field, fMRIPrep's MNI152NLin2009cAsym res-1 grid of
      193 x 229 x 193: about 3 s and 1 GB while it reads) and computes the spline coefficients
      again at every ``map`` (1.5 s at 1 mm), for every step that maps points through it;
    - interpolating only the displacements keeps the identity part exact: a zero field maps each
      point onto itself up to the field's faces, where a spline through the coordinates bends
      (its boundary condition mirrors them: 0.2 mm off within a voxel of a face of the 1 mm
      grid, 0.001 mm at 4 voxels). Further in, both agree to about 1e-5 mm (nitransforms works
      in float32 there; tested), and ITK itself agrees within 0.1 mm
      (tests/test_transforms_itk.py).

    Parameters
    ----------
    affine : ndarray (4, 4)
        Voxel indices -> RAS mm of the field's grid.
    coefficients : ndarray (3, I, J, K), float64
        Cubic B-spline coefficients of each component of the displacements (:meth:`from_itk_h5`).
    """

    def __init__(self, affine, coefficients):
        self.affine = np.asarray(affine, dtype=float)
        self.coefficients = coefficients

    @classmethod
    def from_itk_h5(cls, transform):
        """From one ``DisplacementFieldTransform`` group of an ITK composite ``.h5`` (h5py).

        The same grid affine and coefficients, to the bit, as the splines of the displacement
        image nitransforms reads (``ITKCompositeH5.from_h5obj``, whose steps are followed here;
        tested), for less time and memory: nitransforms turns ITK's LPS displacements into RAS
        with a fancy-indexed sign flip over the whole (I, J, K, 3) array, then copies it to
        float64. Here each component is filtered from the file's array as it lies (ITK: Fortran
        order, the vector index first) and the sign is flipped on the coefficients of the L and
        P components (the prefilter is linear and IEEE rounding is symmetric: the same bits).
        On fMRIPrep's 1 mm MNI grid (193 x 229 x 193; 2 cores, 2026-12-04) a file took 1.6-2.0 s
        and 472 MB with nitransforms' reading, 0.8-1.4 s and 358 MB here (the file's array and
        the coefficients).
        """
        from nitransforms.io.itk import LPS

        prefix = "Transform" if "TransformParameters" in transform else "Tranform"  # as nitransforms
        fixed = np.asarray(transform[f"{prefix}FixedParameters"], dtype=float)
        shape, offset, zooms = fixed[:3].astype(int), fixed[3:6], fixed[6:9]
        directions = np.reshape(fixed[9:], (3, 3))
        affine = LPS @ nb.affines.from_matvec(directions * zooms, offset)
        components = np.reshape(np.asarray(transform[f"{prefix}Parameters"]), (3, *shape), order="F")
        coefficients = np.empty(components.shape)
        for axis in range(3):
            spline_filter(components[axis], order=3, output=coefficients[axis], mode="constant")
            if axis < 2:  # L, P -> R, A: exact, as spline_filter(-u) == -spline_filter(u)
                np.negative(coefficients[axis], out=coefficients[axis])
        return cls(affine, coefficients)

    def map(self, x, inverse=False):
        """RAS mm in, RAS mm out (nitransforms' ``map`` signature); off the field, a point stays
        put."""
        if inverse:
            raise NotImplementedError("a displacement field has no inverse: read the other file")
        points = np.asarray(x, dtype=float)
        ijk = nb.affines.apply_affine(np.linalg.inv(self.affine), points)
        displacements = np.vstack([
            map_coordinates(self.coefficients[axis], ijk.T, order=3, mode="constant", cval=np.nan,
                            prefilter=False) for axis in range(3)]).T
        return points + np.nan_to_num(displacements, nan=0.0)


def read_transform(xfm_file: str | PathLike) -> list:
    """Read an ITK composite transform (fMRIPrep's ``*_xfm.h5``) for mapping points.

    Parameters
    ----------
    xfm_file : str or os.PathLike
        The ``.h5`` file: its linear transforms read by nitransforms' ITK reader
        (``nitransforms.io.itk.ITKCompositeH5``, what ``nitransforms.manip.load(..., fmt="itk")``
        reads it with), its displacement fields by :meth:`SplineField.from_itk_h5`.

    Returns
    -------
    list
        The transforms in the order they apply to a point (the reverse of the file's, as ITK
        applies a composite transform): nitransforms' ``Affine`` for each linear transform, and a
        :class:`SplineField` for each displacement field.
    """
    import h5py
    from nitransforms.io.itk import ITKCompositeH5
    from nitransforms.linear import Affine

    # nitransforms.manip.load's chain, without the DenseFieldTransform (see SplineField):
    # nitransforms reads the linear parts, SplineField.from_itk_h5 the displacement fields, each
    # in the file's order as nitransforms walks it
    transforms = []
    with h5py.File(str(xfm_file), "r") as h5:
        linear = iter(ITKCompositeH5.from_h5obj(h5, only_linear=True))
        for part in list(h5["TransformGroup"].values())[1:]:
            if part["TransformType"][0].startswith(b"DisplacementFieldTransform"):
                transforms.insert(0, SplineField.from_itk_h5(part))
            else:
                transforms.insert(0, Affine(next(linear).to_ras()))
    return transforms


#: The file :func:`write_mapping` writes beside the fields' arrays.
MAPPING_FILE = "mapping.pkl"


def write_mapping(xfm_file: str | PathLike, folder: str | PathLike) -> Path:
    """Read a composite transform once (:func:`read_transform`) and write it into ``folder`` for
    the steps that map points with it: :data:`MAPPING_FILE` (the transforms, pickled, each
    displacement field by its grid's affine and the name of the ``.npy`` array of its spline
    coefficients beside it), which :func:`points_mapping` reads with the array memory-mapped (a
    step then reads only the coefficients around its points). Returns the path of
    :data:`MAPPING_FILE`."""
    folder = Path(folder)
    stored = []
    for k, transform in enumerate(read_transform(xfm_file)):
        if isinstance(transform, SplineField):
            np.save(folder / f"coefficients_{k}.npy", transform.coefficients)
            stored.append(("field", transform.affine, f"coefficients_{k}.npy"))
        else:
            stored.append(("transform", transform))
    out = folder / MAPPING_FILE
    with open(out, "wb") as handle:
        pickle.dump({"source": str(xfm_file), "transforms": stored}, handle)
    return out


def _load_mapping(mapping_file: Path) -> list:
    """The transforms written by :func:`write_mapping`, with the fields' coefficients memory-mapped."""
    with open(mapping_file, "rb") as handle:
        stored = pickle.load(handle)["transforms"]
    folder = mapping_file.parent
    return [SplineField(entry[1], np.load(folder / entry[2], mmap_mode="r"))
            if entry[0] == "field" else entry[1] for entry in stored]


def transform_source(xfm_file: str | PathLike) -> Path:
    """The ITK file a transform comes from (for provenance): ``xfm_file`` itself, or the file a
    :data:`MAPPING_FILE` was read from."""
    path = Path(xfm_file)
    if path.name != MAPPING_FILE:
        return path
    with open(path, "rb") as handle:
        return Path(pickle.load(handle)["source"])


def points_mapping(xfm_file: str | PathLike):
    """:func:`map_points` with the transform read once: a function ``points_ras -> points``.

    ``xfm_file`` is fMRIPrep's ``.h5`` (read here) or the :data:`MAPPING_FILE` that
    :class:`ReadTransform` wrote from it (loaded at once). A step that maps several sets of
    points through one file reads it once; the graph reads each transform used by more than
    one step once (:class:`ReadTransform`).
    """
    path = Path(xfm_file)
    transforms = _load_mapping(path) if path.name == MAPPING_FILE else read_transform(path)

    def mapping(points_ras) -> np.ndarray:
        points = _as_points(points_ras)
        if points.shape[0] == 0:
            return np.empty((0, 3))
        # nitransforms' TransformChain.map: each transform in turn
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Reference space not set")
            for transform in transforms:
                points = transform.map(points)
        return np.asarray(points, dtype=float).reshape(-1, 3)

    return mapping


#: Point columns of a targets table: each prefix names an (x, y, z) triplet in world mm.
POINT_COLUMNS = (("x", "y", "z"), ("scalp_x", "scalp_y", "scalp_z"), ("coil_x", "coil_y", "coil_z"))
#: Coil axes (unit vectors) of a targets table.
AXIS_COLUMNS = {axis: tuple(f"coil_{axis}axis_{c}" for c in "xyz") for axis in "xyz"}
#: Half-width (mm) of the central differences that estimate a transform's Jacobian at a coil.
JACOBIAN_STEP_MM = 1.0


def map_coil_axes(inward, handle, jacobians):
    """Coil axes carried through a mapping as what they are.

    The coil normal is a surface normal: it goes through the inverse transpose of the Jacobian,
    ``J^-T z`` (normals of the mapped scalp); the handle is a tangent: it goes through ``J``
    (``J y`` lies in the mapped scalp's tangent plane, since ``(J^-T z) . (J y) = z . y = 0``).
    The frame is then re-orthonormalized (:func:`tmstarget.workflows.coil.coil_frame`: the normal
    kept, the handle projected onto the coil plane), so the handle keeps its angle to the midline
    as the mapping carries the midline. Carrying the normal like a tangent (``J z``) tilts it off
    the mapped skin wherever the mapping is anisotropic or sheared.

    Parameters
    ----------
    inward, handle : ndarray (K, 3)
        Coil z (into the head) and y (handle) axes in the table's space.
    jacobians : ndarray (K, 3, 3)
        ``J[k, i, j] = d mapped_i / d x_j`` of the mapping at each coil centre.

    Returns
    -------
    x_axis, y_axis, z_axis : ndarray (K, 3)
    """
    jacobians = np.asarray(jacobians, dtype=float).reshape(-1, 3, 3)
    normal = np.linalg.solve(np.transpose(jacobians, (0, 2, 1)), np.asarray(inward, float)[..., None])
    tangent = jacobians @ np.asarray(handle, float)[..., None]
    return coil_frame(normal[..., 0], tangent[..., 0])


def _jacobian_offsets():
    """The six points of a central difference around a centre, in the order of
    :func:`_jacobians_from`: +x, -x, +y, -y, +z, -z."""
    steps = np.vstack([np.eye(3), -np.eye(3)])[[0, 3, 1, 4, 2, 5]]
    return JACOBIAN_STEP_MM * steps


def _jacobians_from(moved):
    """Jacobians (K, 3, 3) from the mapped central-difference points (K, 6, 3)."""
    plus, minus = moved[:, 0::2], moved[:, 1::2]  # (K, 3 axes, 3 coordinates)
    return np.transpose(plus - minus, (0, 2, 1)) / (2.0 * JACOBIAN_STEP_MM)


def map_targets_table(table, mapping, *, remeasure=False):
    """A targets table with every point and coil axis mapped into another space.

    Points go through the transform; each coil frame goes through the transform's Jacobian at
    its centre (estimated by central differences of :data:`JACOBIAN_STEP_MM`), the normal as a
    normal and the handle as a tangent (:func:`map_coil_axes`). Angles, correlations and
    ``scalp_trusted`` are kept.

    Parameters
    ----------
    table : pandas.DataFrame
        Rows of targets with any of :data:`POINT_COLUMNS` and :data:`AXIS_COLUMNS`.
    mapping : callable
        ``points (N, 3) -> points (N, 3)`` from the table's space into the new one
        (:func:`points_mapping` of a transform whose reference space is the table's space).
    remeasure : bool
        False (a plan made on the participant's own head): the depths, distances and dose
        adjustments are the patient's and are kept, so both tables give one dose per target.
        True (a plan made on a head warped to a template, mapped into T1w): they are measured
        again in the new space, which is closer to the patient's than the template's.
    """
    mapped = table.copy()
    # Every point goes through the mapping in one call: the point columns, and around each coil
    # centre the six points of the central differences.
    blocks = {columns: table[list(columns)].to_numpy(float)
              for columns in POINT_COLUMNS if set(columns) <= set(table.columns)}
    has_pose = ("coil_x", "coil_y", "coil_z") in blocks and all(
        set(c) <= set(table.columns) for c in AXIS_COLUMNS.values())
    if has_pose:
        centres = blocks[("coil_x", "coil_y", "coil_z")]
        blocks["jacobian"] = (centres[:, None, :] + _jacobian_offsets()[None]).reshape(-1, 3)
    sizes = [len(block) for block in blocks.values()]
    stacked = np.concatenate(list(blocks.values())) if blocks else np.empty((0, 3))
    valid = np.isfinite(stacked).all(axis=1)
    moved = np.full_like(stacked, np.nan)
    moved[valid] = mapping(stacked[valid])
    moved = dict(zip(blocks, np.split(moved, np.cumsum(sizes)[:-1]))) if blocks else {}
    for columns in POINT_COLUMNS:
        if columns in moved:
            mapped[list(columns)] = moved[columns]
    if has_pose:
        centres = blocks[("coil_x", "coil_y", "coil_z")]
        jacobians = _jacobians_from(moved["jacobian"].reshape(-1, 6, 3))
        axes = {a: table[list(AXIS_COLUMNS[a])].to_numpy(float) for a in "yz"}
        rows = (np.isfinite(centres).all(axis=1) & np.isfinite(jacobians).all(axis=(1, 2))
                & np.isfinite(axes["y"]).all(axis=1) & np.isfinite(axes["z"]).all(axis=1))
        frame = map_coil_axes(axes["z"][rows], axes["y"][rows], jacobians[rows])
        for axis, values in zip("xyz", frame):
            mapped.loc[rows, list(AXIS_COLUMNS[axis])] = values
    if not remeasure:
        return mapped
    if "scalp_distance_mm" in table:
        mapped["scalp_distance_mm"] = np.linalg.norm(
            mapped[["scalp_x", "scalp_y", "scalp_z"]].to_numpy(float) - mapped[["x", "y", "z"]].to_numpy(float), axis=1)
    distance, dose = plan_distances(mapped["name"], mapped[["x", "y", "z"]].to_numpy(float),
                                    mapped["scalp_distance_mm"] if "scalp_distance_mm" in mapped
                                    else np.full(len(mapped), np.nan))
    if "depth_adjustment_pct_mso" in table and (mapped["name"] == "motor_hand").any():
        mapped["depth_adjustment_pct_mso"] = dose
    if "distance_to_connectivity_mm" in table:
        mapped["distance_to_connectivity_mm"] = distance
    return mapped


#: The points of :class:`tmstarget.workflows.comparators.ScalpTargets`' measurements (JSON paths:
#: each holds one [x, y, z] or a {name: [x, y, z]} of world mm in the table's space). Everything
#: else there is a length on the head (cm, mm), an angle, a text, or a template coordinate
#: (``MNI152NLin2009cAsym_mm``), which no mapping changes.
MEASUREMENT_POINTS = (("Fiducials", "Mapped_mm"), ("Fiducials", "Used_mm"), ("TenTwenty_mm",),
                      ("BeamF3", "PointX"), ("BeamF3", "F3"), ("MotorHand", "Mapped_mm"),
                      ("MotorHand", "Cortex_mm"), ("MotorHand", "Scalp_mm"), ("FiveCm", "Scalp_mm"))


def map_measurements(measurements, mapping):
    """The scalp stage's measurements with their points (:data:`MEASUREMENT_POINTS`) mapped into
    another space by ``mapping`` (as in :func:`map_targets_table`); the head measurements
    themselves (NI, TT, HC, Beam's X and Y, depths) are the head's and are kept. Each sidecar
    then gives its coordinates in its own space."""
    mapped = json.loads(json.dumps(measurements))  # a deep copy
    slots = []  # (holder, key) of each point, in order
    for path in MEASUREMENT_POINTS:
        holder = mapped
        for key in path[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or path[-1] not in holder:
            continue
        value = holder[path[-1]]
        if isinstance(value, dict):
            slots += [(value, name) for name in value]
        else:
            slots.append((holder, path[-1]))
    if not slots:
        return mapped
    points = np.array([holder[key] for holder, key in slots], dtype=float)
    valid = np.isfinite(points).all(axis=1)
    moved = np.full_like(points, np.nan)
    moved[valid] = mapping(points[valid])
    for (holder, key), point, ok in zip(slots, moved, valid):
        if ok:
            holder[key] = [round(float(v), 2) for v in point]
    return mapped


class _ReadTransformInputSpec(BaseInterfaceInputSpec):
    xfm_file = File(exists=True, mandatory=True,
                    desc="ITK composite transform (fMRIPrep's *_mode-image_xfm.h5)")


class _ReadTransformOutputSpec(TraitedSpec):
    mapping_file = File(exists=True, desc="the transform read once (write_mapping), for the "
                        "steps' transform inputs (points_mapping)")


class ReadTransform(SimpleInterface):
    """Read a composite transform once for all the steps that map points with it
    (:func:`write_mapping` in the node's working directory)."""

    input_spec = _ReadTransformInputSpec
    output_spec = _ReadTransformOutputSpec

    def _run_interface(self, runtime):
        self._results["mapping_file"] = str(write_mapping(self.inputs.xfm_file, runtime.cwd))
        return runtime


class _MapTargetsInputSpec(BaseInterfaceInputSpec):
    targets_file = File(exists=True, mandatory=True, desc="targets TSV in the table's space")
    xfm_file = File(exists=True, mandatory=True,
                    desc="transform whose reference space is the table's space (points_mapping)")
    measurements_file = File(exists=True, desc="scalp_measurements.json of the same plan")
    remeasure = traits.Bool(False, usedefault=True,
                            desc="measure depths, distances and doses again in the new space "
                            "(a plan made on a warped head); see map_targets_table")


class _MapTargetsOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the same targets in the other space")
    measurements_file = File(exists=True, desc="the measurements with their points mapped")


class MapTargets(SimpleInterface):
    """Give every point of a targets table (and of its scalp measurements) in another space
    (T1w <-> MNI)."""

    input_spec = _MapTargetsInputSpec
    output_spec = _MapTargetsOutputSpec

    def _run_interface(self, runtime):
        table = pd.read_csv(self.inputs.targets_file, sep="\t", na_values="n/a")
        mapping = points_mapping(self.inputs.xfm_file)  # read once for the table and measurements
        out = Path(runtime.cwd) / "targets_mapped.tsv"
        map_targets_table(table, mapping, remeasure=self.inputs.remeasure).to_csv(
            out, sep="\t", index=False, float_format="%.4f", na_rep="n/a")
        self._results["out_file"] = str(out)
        if isdefined(self.inputs.measurements_file):
            measurements = json.loads(Path(self.inputs.measurements_file).read_text())
            mapped = Path(runtime.cwd) / "measurements_mapped.json"
            mapped.write_text(json.dumps(map_measurements(measurements, mapping), indent=2))
            self._results["measurements_file"] = str(mapped)
        return runtime
