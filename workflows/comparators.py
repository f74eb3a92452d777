"""The scalp-based comparators of the connectivity target, as rows of the targets table.

:func:`scalp_comparators` takes the targets table of
:class:`tmstarget.workflows.scalp.ScalpProjection` (the connectivity row and its scalp point), the
scalp mesh, the grey matter and the connectivity map, and adds the rows ``F3_1020`` (10-20 F3),
``F3_beam`` (Beam F3), ``5cm`` (the 5 cm rule) and ``motor_hand`` (the motor hot spot), each as
its scalp point and the cortex beneath it (the grey-matter voxel nearest it), with for every row
the coil pose (:func:`tmstarget.workflows.coil.coil_pose`), the distance to the connectivity
target and the depth-adjusted dose (:func:`tmstarget.workflows.coil.plan_distances`). The
constructions are those of :mod:`tmstarget.workflows.landmarks`. :class:`ScalpTargets` only reads
the files, calls it and writes its results.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from nibabel.affines import apply_affine
from nipype import logging
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from scipy.spatial import cKDTree

from tmstarget.workflows.coil import STOKES_SLOPE_PCT_PER_MM, coil_pose, plan_distances
from tmstarget.workflows.greymatter import cortical_point_beneath, grey_matter_points
from tmstarget.workflows.landmarks import (
    BEAM_FORMULA,
    FIDUCIALS_MNI,
    FIDUCIALS_SOURCE,
    FIVE_CM_MM,
    LANDMARK_REFERENCES,
    MOTOR_HAND_MNI,
    five_cm_rule,
    place_beam_f3,
    place_fiducials,
    ten_twenty_construction,
)
from tmstarget.workflows.scalp import SCALP_COLUMNS, format_table_number, project_to_scalp
from tmstarget.workflows.surface import Surface

LOGGER = logging.getLogger("nipype.interface")

#: Names of the points published in MNI152NLin2009cAsym mm that are mapped into the space.
MNI_LANDMARKS = ("Nz", "Iz", "LPA", "RPA", "motor_hand")


def mni_landmarks() -> np.ndarray:
    """The fiducials and the motor hand point (:data:`MNI_LANDMARKS`), MNI152NLin2009cAsym mm."""
    return np.array([*(FIDUCIALS_MNI[k] for k in MNI_LANDMARKS[:4]), MOTOR_HAND_MNI], dtype=float)


POSE_COLUMNS = ("coil_x", "coil_y", "coil_z",
                "coil_xaxis_x", "coil_xaxis_y", "coil_xaxis_z",
                "coil_yaxis_x", "coil_yaxis_y", "coil_yaxis_z",
                "coil_zaxis_x", "coil_zaxis_y", "coil_zaxis_z")
COMPARATOR_ROWS = ("F3_1020", "F3_beam", "5cm", "motor_hand")

METHODS = {
    "connectivity": "The connectivity target (input table) and its nearest scalp point "
    "(ScalpProjection).",
    "F3_1020": "10-20 F3 constructed on this scalp from the fiducials (plane-section curves: Cz at "
    "50 % of Nz-Iz and LPA-RPA, Fpz/Fz at 10/30 % of Nz-Iz, T7 at 10 % of LPA-RPA, F7 at 30 % of "
    "Fpz-T7-Oz, F3 midway along F7-Fz of the curve F7-Fz-F8); sources Jasper 1958, Oostenveld & "
    "Praamstra 2001, Jurcak et al. 2007.",
    "F3_beam": "Beam F3 (Beam et al. 2009, formula of the web calculator) from NI, TT and HC "
    "measured along this scalp; placed at arc X from Fpz along the left circumference (point P), "
    "then Y along the scalp from Cz towards P.",
    "5cm": "5 cm anterior of the scalp point above the motor hand area, along the parasagittal "
    "plane section of the scalp (Pascual-Leone et al. 1996; reliability: Herwig et al. 2001).",
    "motor_hand": "Motor hot spot: the scalp point nearest the left M1 hand area, MNI (-37, -21, "
    "58) (Mayka et al. 2006, as used by SimNIBS) mapped into this space; x, y, z is the cortex "
    "beneath it. Its scalp_distance_mm is the reference depth of the dose adjustment (the motor "
    "threshold is measured there).",
    "cortical_point": "For the scalp-based rows (F3_1020, F3_beam, 5cm, motor_hand), x, y, z is "
    "the grey-matter voxel (probability >= 0.5, or dseg label 1) nearest the scalp point: the "
    "cortex beneath the coil; scalp_distance_mm is the distance between the two.",
    "seed_correlation_z": "Fisher z of the connectivity map at the cortical point (nearest voxel).",
    "coil": "Coil pose, SimNIBS matsimnibs convention: coil_x/y/z the centre on the scalp; xaxis "
    "the coil's left-right axis (= yaxis x zaxis), yaxis the handle direction (the head's "
    "posterior direction, inion - nasion, projected onto the scalp and turned by the handle angle "
    "laterally away from the midline), zaxis into the head (minus the outward scalp normal); "
    "right-handed, unit vectors in world mm RAS of the space.",
    "depth_adjustment_pct_mso": "Stokes et al. 2007: 2.8 % of maximum stimulator output per mm "
    "of scalp_distance_mm beyond that of motor_hand, to add to the motor threshold.",
    "distance_to_connectivity_mm": "Euclidean distance between the row's cortical point and the "
    "connectivity target.",
}


def scalp_comparators(table, surface, gm_points, z_map, landmarks_mm, *,
                      handle_angle_deg: float = 45.0, coil_offset_mm: float = 0.0):
    """Add the scalp-based comparator rows, coil poses, distances and doses to a targets table.

    Parameters
    ----------
    table : pandas.DataFrame of str
        The targets table of ScalpProjection as text (columns ``name``, ``x``, ``y``, ``z`` at
        least; values kept verbatim).
    surface : tmstarget.workflows.surface.Surface
        The scalp mesh, world mm (RAS) of the computation space.
    gm_points : ndarray (G, 3)
        Grey-matter voxel centres (:func:`tmstarget.workflows.greymatter.grey_matter_points`).
    z_map : tuple (ndarray, ndarray (4, 4))
        The Fisher-z connectivity map (3-D) and its affine.
    landmarks_mm : ndarray (5, 3)
        :data:`MNI_LANDMARKS` mapped into the computation space, mm.
    handle_angle_deg, coil_offset_mm : float
        Coil handle angle from the posterior direction (degrees, positive laterally) and centre
        offset above the scalp (mm).

    Returns
    -------
    table : pandas.DataFrame of str
        The input rows, then :data:`COMPARATOR_ROWS`; the pose and comparison columns appended.
        Numbers as text, 2 decimals (direction cosines 4), ``n/a`` where undefined.
    measurements : dict
        Head measurements, Beam's X and Y, the fiducials, 10-20 points, motor and 5 cm points.
    warnings : list of str
        One line each.
    """
    if len(gm_points) == 0:
        raise ValueError("the grey-matter map holds no voxel")
    warnings = []
    mapped = np.asarray(landmarks_mm, dtype=float)
    fiducials, snap_distance, snapped = place_fiducials(mapped[:4], surface, None)
    for name, distance, on_scalp in zip(MNI_LANDMARKS, snap_distance, snapped):
        if not on_scalp:
            warnings.append(f"Fiducial {name} maps {distance:.1f} mm outside the scalp (a face "
                            "removed by defacing, a field of view cutting the head, or a head "
                            "unlike the template?): the tape is anchored there, in the air.")
        elif distance > 10.0:
            warnings.append(f"Fiducial {name} maps {distance:.1f} mm inside the scalp: check "
                            "the transform.")
    nz, iz, lpa, rpa = fiducials

    construction = ten_twenty_construction(surface, nz, iz, lpa, rpa)
    points = construction.points
    warnings += construction.warnings
    beam = place_beam_f3(surface, None, nz, iz, lpa, rpa, construction=construction,
                         details=True)
    warnings += beam["warnings"]
    gm_tree = cKDTree(gm_points)

    # The motor hot spot: the scalp point nearest the M1 hand coordinate; the cortex under
    # the coil there (as for every scalp-based row) gives the reference depth.
    motor_scalp = project_to_scalp(mapped[4], surface.vertices, surface.normals,
                                   surface.faces)["scalp_xyz"][0]
    motor_cortex = cortical_point_beneath(motor_scalp, gm_points, tree=gm_tree)
    five_cm = five_cm_rule(surface, None, motor_scalp, nz, iz, left_right=rpa - lpa)

    z_data, z_affine = z_map
    z_inverse = np.linalg.inv(z_affine)

    def z_at(xyz):
        ijk = np.round(apply_affine(z_inverse, xyz)).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= z_data.shape[:3]):
            return float("nan")
        return float(z_data[tuple(ijk)])

    table = table.copy()
    for column in ("seed_correlation_z", *SCALP_COLUMNS):
        if column not in table.columns:
            table[column] = "n/a"

    def numbers(frame, columns):
        return frame[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(float)

    # Rows of the input: cortical point given; the scalp point from ScalpProjection, or the
    # nearest scalp point when absent.
    cortex_in = numbers(table, ("x", "y", "z"))
    scalp_in = numbers(table, ("scalp_x", "scalp_y", "scalp_z"))
    redo = ~np.isfinite(scalp_in).all(axis=1) & np.isfinite(cortex_in).all(axis=1)
    if redo.any():
        projected = project_to_scalp(cortex_in[redo], surface.vertices, surface.normals,
                                     surface.faces)
        scalp_in[redo] = projected["scalp_xyz"]
        for column, values in zip(SCALP_COLUMNS,
                                  np.column_stack([projected["scalp_xyz"],
                                                   projected["distance_mm"],
                                                   projected["angle_deg"]]).T):
            table.loc[redo, column] = [format_table_number(v) for v in values]

    # New rows: scalp point -> cortical point beneath.
    new_scalp = np.array([points["F3"], beam["F3"], five_cm, motor_scalp])
    new_cortex = np.array([cortical_point_beneath(p, gm_points, tree=gm_tree)
                           for p in new_scalp])
    rows = []
    for name, scalp, cortex in zip(COMPARATOR_ROWS, new_scalp, new_cortex):
        row = {column: "n/a" for column in table.columns}
        row.update(name=name, x=format_table_number(cortex[0]),
                   y=format_table_number(cortex[1]), z=format_table_number(cortex[2]),
                   seed_correlation_z=format_table_number(z_at(cortex)))
        rows.append(row)
    table = pd.concat([table, pd.DataFrame(rows, columns=table.columns)], ignore_index=True)
    cortex_all = np.vstack([cortex_in, new_cortex])
    scalp_all = np.vstack([scalp_in, new_scalp])
    n_in = len(cortex_in)

    # Normal at every scalp point; depth and angle for the new rows.
    valid = np.isfinite(scalp_all).all(axis=1)
    normal_all = np.full_like(scalp_all, np.nan)
    if valid.any():
        normal_all[valid] = project_to_scalp(scalp_all[valid], surface.vertices,
                                             surface.normals, surface.faces)["normal"]
    offset = cortex_all - scalp_all
    depth = np.linalg.norm(offset, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.einsum("ij,ij->i", offset, -normal_all) / depth
    angle = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
    for k in range(n_in, len(table)):
        for column, value in zip(SCALP_COLUMNS, (*scalp_all[k], depth[k], angle[k])):
            table.loc[k, column] = format_table_number(value)

    poses = np.full((len(table), len(POSE_COLUMNS)), np.nan)
    for k in np.flatnonzero(valid & np.isfinite(normal_all).all(axis=1)):
        pose = coil_pose(scalp_all[k], normal_all[k], handle_angle_deg, coil_offset_mm,
                         posterior=iz - nz, left_right=rpa - lpa)
        poses[k] = np.concatenate([pose[:3, 3], pose[:3, 0], pose[:3, 1], pose[:3, 2]])
    for column, values in zip(POSE_COLUMNS, poses.T):
        digits = 4 if "axis" in column else 2  # direction cosines: 4 decimals
        table[column] = [format_table_number(v, digits) for v in values]

    # The depth reported in the table is what every row's dose adjustment uses.
    depth_table = numbers(table, ("scalp_distance_mm",))[:, 0]
    distance, dose = plan_distances(table["name"], cortex_all, depth_table)
    table["distance_to_connectivity_mm"] = [format_table_number(d) for d in distance]
    table["depth_adjustment_pct_mso"] = [format_table_number(d) for d in dose]
    motor_depth = depth_table[-1]

    # Column order: the input's, then the pose and comparison columns.
    added = [*POSE_COLUMNS, "distance_to_connectivity_mm", "depth_adjustment_pct_mso"]
    table = table[list(dict.fromkeys([*table.columns.drop(added), *added]))]

    def listed(point):
        return [round(float(v), 2) for v in point]

    fiducial_names = MNI_LANDMARKS[:4]
    measurements = {
        "HeadMeasurements_cm": {key: round(beam[key], 2) for key in ("NI", "TT", "HC")},
        "HeadMeasurementsDescription": {
            "NI": "nasion to inion over the vertex along the scalp (plane section Nz-Cz-Iz)",
            "TT": "left to right preauricular point over the vertex along the scalp (plane "
            "section LPA-Cz-RPA; the preauricular points stand for the tragi)",
            "HC": "head circumference through Fpz, T7, Oz, T8 (10 % level) along the scalp",
        },
        "BeamF3": {"X_cm": round(beam["X_cm"], 2), "Y_cm": round(beam["Y_cm"], 2),
                   "PointX": listed(beam["P"]), "F3": listed(beam["F3"]),
                   "Formula": BEAM_FORMULA, "Source": LANDMARK_REFERENCES["Beam2009"]},
        "Fiducials": {
            "Source": FIDUCIALS_SOURCE,
            "References": [LANDMARK_REFERENCES["Jurcak2007"], LANDMARK_REFERENCES["SimNIBSCaps"]],
            "MNI152NLin2009cAsym_mm": {k: list(FIDUCIALS_MNI[k]) for k in fiducial_names},
            "Mapped_mm": {k: listed(p) for k, p in zip(fiducial_names, mapped[:4])},
            "Used_mm": {k: listed(p) for k, p in zip(fiducial_names, fiducials)},
            "SnappedToScalp": {k: bool(s) for k, s in zip(fiducial_names, snapped)},
            "DistanceToScalp_mm": {k: round(float(d), 2)
                                   for k, d in zip(fiducial_names, snap_distance)},
        },
        "TenTwenty_mm": {k: listed(p) for k, p in points.items()},
        "MotorHand": {"MNI152NLin2009cAsym_mm": list(MOTOR_HAND_MNI),
                      "Mapped_mm": listed(mapped[4]), "Cortex_mm": listed(motor_cortex),
                      "Scalp_mm": listed(motor_scalp),
                      "Source": LANDMARK_REFERENCES["Mayka2006"]},
        "FiveCm": {"Distance_mm": FIVE_CM_MM, "Scalp_mm": listed(five_cm)},
        "Coil": {"HandleAngle_deg": handle_angle_deg, "Offset_mm": coil_offset_mm,
                 "Convention": METHODS["coil"], "Source": LANDMARK_REFERENCES["SimNIBS"]},
        "DepthAdjustment": {"Slope_pct_MSO_per_mm": STOKES_SLOPE_PCT_PER_MM,
                            "ReferenceRow": "motor_hand",
                            "ReferenceDepth_mm": round(float(motor_depth), 2),
                            "Source": LANDMARK_REFERENCES["Stokes2007"]},
        "Methods": METHODS,
        "References": LANDMARK_REFERENCES,
    }
    return table, measurements, warnings


# --------------------------------------------------------------------------------------------
# Nipype interface
# --------------------------------------------------------------------------------------------
class _ScalpTargetsInputSpec(BaseInterfaceInputSpec):
    targets_file = File(exists=True, mandatory=True,
                        desc="TSV of ScalpProjection: name, x, y, z, seed_correlation_z, ..., "
                        "scalp_x ... scalp_normal_angle_deg (row 'connectivity')")
    mesh_file = File(exists=True, mandatory=True,
                     desc="scalp_mesh.npz of ScalpProjection (vertices, faces, normals, affine)")
    z_file = File(exists=True, mandatory=True,
                  desc="Fisher-z connectivity map in the computation space")
    gm_file = File(exists=True, mandatory=True,
                   desc="grey matter in the computation space (any grid): GM probseg, or an "
                   "fMRIPrep dseg (label 1 = GM)")
    from_mni_xfm = File(exists=True,
                        desc="transform mapping MNI152NLin2009cAsym points into the computation "
                        "space (tmstarget.workflows.transforms.map_points); absent: the space is MNI")
    handle_angle_deg = traits.Float(45.0, usedefault=True,
                                    desc="coil handle angle from the posterior direction, "
                                    "positive laterally")
    coil_offset_mm = traits.Float(0.0, usedefault=True,
                                  desc="coil centre distance above the scalp (mm)")
    gm_threshold = traits.Float(0.5, usedefault=True,
                                desc="grey-matter probability threshold (probseg)")


class _ScalpTargetsOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="targets TSV: the input rows plus the scalp-based rows, "
                    "coil poses, distances and dose adjustments")
    measurements_file = File(exists=True, desc="JSON: head measurements, Beam X/Y, fiducials and "
                             "10-20 points used, methods and sources")


class ScalpTargets(SimpleInterface):
    """Scalp-based comparators (10-20 F3, Beam F3, 5 cm rule, motor hand area) on this head.

    Reads the targets table of :class:`tmstarget.workflows.scalp.ScalpProjection` and its scalp mesh and
    writes ``scalp_targets.tsv``: the input rows with their columns unchanged (the connectivity
    row's x, y, z, seed_correlation_z, cluster_size kept verbatim), then the rows ``F3_1020``,
    ``F3_beam``, ``5cm`` and ``motor_hand``; columns added for all rows: the coil pose
    (``coil_*``), ``distance_to_connectivity_mm`` and ``depth_adjustment_pct_mso``. Values are
    rounded to 2 decimals, ``n/a`` where undefined. ``scalp_measurements.json`` records the head
    measurements, Beam's X and Y, the fiducials and 10-20 points, and each method with its source.
    """

    input_spec = _ScalpTargetsInputSpec
    output_spec = _ScalpTargetsOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        mesh = np.load(inputs.mesh_file)
        surface = Surface(mesh["vertices"], mesh["faces"],
                          mesh["normals"] if "normals" in mesh.files else None)
        mni = mni_landmarks()
        if inputs.from_mni_xfm:
            from tmstarget.workflows.transforms import map_points

            mapped = map_points(mni, inputs.from_mni_xfm)
        else:
            mapped = mni.copy()
        if not np.isfinite(mapped).all():
            raise ValueError("the MNI landmarks did not map into the computation space")
        gm_img = nb.load(inputs.gm_file)
        gm_points = grey_matter_points(np.asanyarray(gm_img.dataobj), gm_img.affine,
                                       threshold=inputs.gm_threshold)
        if len(gm_points) == 0:
            raise ValueError(f"{inputs.gm_file} holds no grey-matter voxel")
        z_img = nb.load(inputs.z_file)
        z_data = np.asanyarray(z_img.dataobj, dtype=np.float32)
        if z_data.ndim == 4:
            z_data = z_data[..., 0]
        # Read as text to keep the input's values verbatim.
        table = pd.read_csv(inputs.targets_file, sep="\t", dtype=str, keep_default_na=False)
        missing = {"name", "x", "y", "z"} - set(table.columns)
        if missing:
            raise ValueError(f"{inputs.targets_file} lacks the column(s) {sorted(missing)}")

        table, measurements, warnings = scalp_comparators(
            table, surface, gm_points, (z_data, z_img.affine), mapped,
            handle_angle_deg=inputs.handle_angle_deg, coil_offset_mm=inputs.coil_offset_mm)
        for warning in warnings:
            LOGGER.warning(warning)
        out_file = Path(runtime.cwd) / "scalp_targets.tsv"
        table.to_csv(out_file, sep="\t", index=False)
        measurements_file = Path(runtime.cwd) / "scalp_measurements.json"
        measurements_file.write_text(json.dumps(measurements, indent=2))
        self._results["out_file"] = str(out_file)
        self._results["measurements_file"] = str(measurements_file)
        return runtime
