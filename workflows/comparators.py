"""The scalp-based comparators of the connectivity target, as rows of the targets table.

:func:`scalp_comparators` takes the targets table of
:class:`tmstarget.workflows.scalp.ScalpProjection` (the connectivity row and its scalp point), the
scalp mesh, the methods' points on it and the connectivity map, and adds the rows ``F3_1020``
(10-20 F3), ``F3_beam`` (Beam F3), ``5cm`` (the 5 cm rule) and ``motor_hand`` (the motor hot
spot), each as its scalp point and the cortex beneath it (the grey-matter voxel nearest it),
with for every row the coil pose (:func:`tmstarget.workflows.coil.coil_pose`), the distance to
the connectivity target and the depth-adjusted dose
(:func:`tmstarget.workflows.coil.plan_distances`). The
constructions are those of :mod:`tmstarget.workflows.landmarks`; they need the head alone, so
:func:`scalp_landmarks` (the step :class:`ScalpLandmarks`) places them beside the steps that lead
to the target, and :class:`ScalpTargets` adds them to its table. The interfaces only read the
files, call the functions and write their results.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from nibabel.affines import apply_affine
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from scipy.spatial import cKDTree

from tmstarget.workflows.coil import STOKES_SLOPE_PCT_PER_MM, coil_pose, plan_distances
from tmstarget.workflows.greymatter import cortical_point_beneath, grey_matter_points
from tmstarget.workflows.head import (
    HEAD_REFERENCES,
    SCALP_DEPTH_RANGE_MM,
    on_image_border,
    point_checks,
)
from tmstarget.workflows.landmarks import (
    BEAM_FORMULA,
    FIDUCIALS_MNI,
    FIDUCIALS_SOURCE,
    FIVE_CM_MM,
    LANDMARK_REFERENCES,
    MOTOR_HAND_MNI,
    fiducial_checks,
    five_cm_rule,
    place_beam_f3,
    place_fiducials,
    ten_twenty_construction,
)
from tmstarget.workflows.scalp import (
    SCALP_COLUMNS,
    format_table_number,
    load_mask_union,
    project_to_scalp,
)
from tmstarget.workflows.surface import Surface
from tmstarget.workflows.transforms import map_points, points_mapping

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

HEAD_MEASUREMENTS_DESCRIPTION = {
    "NI": "nasion to inion over the vertex along the scalp (plane section Nz-Cz-Iz)",
    "TT": "left to right preauricular point over the vertex along the scalp (plane section "
    "LPA-Cz-RPA; the preauricular points stand for the tragi)",
    "HC": "head circumference through Fpz, T7, Oz, T8 (10 % level) along the scalp",
}

#: When a row's scalp point is trusted (column scalp_trusted): what is planned on it.
SCALP_TRUST_RULES = (
    "A row's scalp point is trusted, and carries a coil pose and a dose, when the head T1w is a "
    "whole head (its head mask at least 1.3 times the brain mask: not skull-stripped), the point "
    "does not lie on the border of the image (where a cut head is closed by a flat cap), and its "
    "depth above its cortical point lies within {:g}-{:g} mm; 10-20 F3 and Beam F3 also need "
    "fiducials inside the image and on the scalp (the nasion alone may be in the air: defacing), "
    "the 5 cm rule and every dose a trusted motor hot spot. A row not trusted has no coil pose "
    "and no dose; a comparator row not trusted has no values.".format(*SCALP_DEPTH_RANGE_MM))

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


def _on_border(points, field_of_view):
    """:func:`tmstarget.workflows.head.on_image_border`; never, when the grid is unknown."""
    if field_of_view is None:
        return np.zeros(len(np.atleast_2d(points)), dtype=bool)
    return on_image_border(points, *field_of_view)


def scalp_landmarks(surface, landmarks_mm, gm_points, *, field_of_view=None,
                    head_trusted: bool = True, t1w_name: str = "the head T1w") -> dict:
    """The scalp points of the scalp-based methods on this head, and which are trusted.

    The fiducials, 10-20 F3, Beam F3, the motor hot spot and the 5 cm rule depend on the anatomy
    alone (the scalp, the grey matter, the MNI landmarks mapped into the space), so the graph
    places them (:class:`ScalpLandmarks`) beside the steps that lead to the target;
    :func:`scalp_comparators` then adds them to the targets table.

    Parameters
    ----------
    surface : tmstarget.workflows.surface.Surface
        The scalp mesh, world mm (RAS) of the space.
    landmarks_mm : ndarray (5, 3)
        :data:`MNI_LANDMARKS` mapped into the space, mm.
    gm_points : ndarray (G, 3)
        Grey-matter voxel centres (the cortex beneath each method's scalp point).
    field_of_view : tuple (ndarray (4, 4), tuple), optional
        Affine and shape of the head T1w (its border is where a cut head ends); unknown: no
        border is checked.
    head_trusted : bool
        False for a head that cannot carry a plan (skull-stripped): nothing is placed.
    t1w_name : str
        The head T1w, named in the warnings.

    Returns
    -------
    dict
        ``points`` maps each of :data:`COMPARATOR_ROWS` to its scalp point (NaN where not
        placed), ``cortex`` to the grey matter beneath it (NaN where not trusted) and
        ``trusted`` to a bool; ``head_axes`` are the posterior and left-to-right
        directions from the fiducials (None without a trusted head); ``measurements`` holds what
        was measured on the head; ``warnings`` one line each.
    """
    if len(gm_points) == 0:
        raise ValueError("the grey-matter map holds no voxel")
    if not head_trusted:  # ScalpMesh said why
        return {"points": dict.fromkeys(COMPARATOR_ROWS, np.full(3, np.nan)),
                "cortex": dict.fromkeys(COMPARATOR_ROWS, np.full(3, np.nan)),
                "trusted": dict.fromkeys(COMPARATOR_ROWS, False), "head_axes": None,
                "measurements": {}, "warnings": []}
    mapped = np.asarray(landmarks_mm, dtype=float)
    gm_tree = cKDTree(gm_points)
    warnings = []
    fiducials, snap_distance, snapped = place_fiducials(mapped[:4], surface, None)
    border = _on_border(mapped[:4], field_of_view) | _on_border(fiducials, field_of_view)
    fiducials_trusted, fiducial_warnings = fiducial_checks(
        mapped[:4], fiducials, snap_distance, snapped, border, t1w_name=t1w_name)
    warnings += fiducial_warnings
    nz, iz, lpa, rpa = fiducials

    def listed(point):
        return [round(float(v), 2) for v in point]

    names = MNI_LANDMARKS[:4]
    measurements = {"Fiducials": {
        "Source": FIDUCIALS_SOURCE,
        "References": [LANDMARK_REFERENCES["Jurcak2007"], LANDMARK_REFERENCES["SimNIBSCaps"]],
        "MNI152NLin2009cAsym_mm": {k: list(FIDUCIALS_MNI[k]) for k in names},
        "Mapped_mm": {k: listed(p) for k, p in zip(names, mapped[:4])},
        "Used_mm": {k: listed(p) for k, p in zip(names, fiducials)},
        "SnappedToScalp": {k: bool(x) for k, x in zip(names, snapped)},
        "DistanceToScalp_mm": {k: round(float(d), 2) for k, d in zip(names, snap_distance)},
    }}
    nan = np.full(3, np.nan)
    points = dict.fromkeys(COMPARATOR_ROWS, nan)
    if fiducials_trusted:
        construction = ten_twenty_construction(surface, nz, iz, lpa, rpa)
        warnings += construction.warnings
        beam = place_beam_f3(surface, None, nz, iz, lpa, rpa, construction=construction,
                             details=True)
        warnings += beam["warnings"]
        points["F3_1020"], points["F3_beam"] = construction.points["F3"], beam["F3"]
        measurements = {
            "HeadMeasurements_cm": {key: round(beam[key], 2) for key in ("NI", "TT", "HC")},
            "HeadMeasurementsDescription": HEAD_MEASUREMENTS_DESCRIPTION,
            "BeamF3": {"X_cm": round(beam["X_cm"], 2), "Y_cm": round(beam["Y_cm"], 2),
                       "PointX": listed(beam["P"]), "F3": listed(beam["F3"]),
                       "Formula": BEAM_FORMULA, "Source": LANDMARK_REFERENCES["Beam2009"]},
            **measurements,
            "TenTwenty_mm": {k: listed(p) for k, p in construction.points.items()},
        }

    # The motor hot spot: the scalp point nearest the M1 hand coordinate; the cortex under the
    # coil there (as for every scalp-based row) gives the reference depth of the dose.
    motor_scalp = project_to_scalp(mapped[4], surface.vertices, surface.normals,
                                   surface.faces)["scalp_xyz"][0]
    motor_cortex = cortical_point_beneath(motor_scalp, gm_points, tree=gm_tree)
    motor_trusted, motor_warnings = point_checks(
        ["motor_hand"], [motor_scalp], [np.linalg.norm(motor_cortex - motor_scalp)],
        field_of_view, t1w_name, what="motor hot spot (the reference of the dose adjustment)",
        consequence="no dose adjustment for any row (depth_adjustment_pct_mso n/a) and no 5 cm "
        "rule; a dose may be adjusted from a measured scalp-to-cortex distance instead")
    motor_trusted = bool(motor_trusted[0])
    warnings += motor_warnings
    measurements["MotorHand"] = {"MNI152NLin2009cAsym_mm": list(MOTOR_HAND_MNI),
                                 "Mapped_mm": listed(mapped[4]),
                                 "Cortex_mm": listed(motor_cortex),
                                 "Scalp_mm": listed(motor_scalp),
                                 "Source": LANDMARK_REFERENCES["Mayka2006"]}
    if motor_trusted:
        points["motor_hand"] = motor_scalp
        # Nasion and inion give the anterior direction only: mapped positions serve.
        points["5cm"] = five_cm_rule(surface, None, motor_scalp, nz, iz, left_right=rpa - lpa)
        measurements["FiveCm"] = {"Distance_mm": FIVE_CM_MM, "Scalp_mm": listed(points["5cm"])}
    trusted = {"F3_1020": fiducials_trusted, "F3_beam": fiducials_trusted,
               "5cm": motor_trusted, "motor_hand": motor_trusted}
    # The cortical point of each method's row: the grey matter beneath its scalp point (the
    # motor hot spot's is the one found above).
    cortex = {name: (cortical_point_beneath(points[name], gm_points, tree=gm_tree)
                     if trusted[name] else nan) for name in COMPARATOR_ROWS if name != "motor_hand"}
    cortex["motor_hand"] = motor_cortex if motor_trusted else nan
    # The head's own axes for the coil handle: posterior (inion - nasion) and left to right.
    return {"points": points, "cortex": cortex, "trusted": trusted,
            "head_axes": (iz - nz, rpa - lpa), "measurements": measurements,
            "warnings": warnings}


def write_landmarks(path, landmarks) -> None:
    """:func:`scalp_landmarks`'s result as JSON (floats written to the last bit: Python's
    ``repr``, NaN as ``NaN``)."""
    def listed(point):
        return [float(v) for v in point]

    axes = landmarks["head_axes"]
    Path(path).write_text(json.dumps({
        "Points_mm": {name: listed(p) for name, p in landmarks["points"].items()},
        "Cortex_mm": {name: listed(p) for name, p in landmarks["cortex"].items()},
        "Trusted": {name: bool(t) for name, t in landmarks["trusted"].items()},
        "HeadAxes": None if axes is None else [listed(a) for a in axes],
        "Measurements": landmarks["measurements"],
        "QualityWarnings": landmarks["warnings"],
    }, indent=2))


def read_landmarks(path) -> dict:
    """:func:`write_landmarks`'s file as :func:`scalp_landmarks` returned it."""
    saved = json.loads(Path(path).read_text())
    axes = saved["HeadAxes"]
    return {"points": {name: np.array(p, dtype=float) for name, p in saved["Points_mm"].items()},
            "cortex": {name: np.array(p, dtype=float) for name, p in saved["Cortex_mm"].items()},
            "trusted": saved["Trusted"],
            "head_axes": None if axes is None else tuple(np.array(a, dtype=float) for a in axes),
            "measurements": saved["Measurements"], "warnings": saved["QualityWarnings"]}


def scalp_comparators(table, surface, z_map, landmarks, *,
                      field_of_view=None, head_trusted: bool = True, t1w_name: str = "the head T1w",
                      brain_mask=None, to_map_space=None, handle_angle_deg: float = 45.0,
                      coil_offset_mm: float = 0.0, gm_threshold: float = 0.5,
                      space: str = "the computation space"):
    """Add the scalp-based comparator rows, coil poses, distances and doses to a targets table.

    Nothing is planned on a point that is not on the skin: a row whose scalp point is not
    trusted (``scalp_trusted`` false: a skull-stripped head, a point on the cut of the field of
    view, an implausible depth; for the comparators also fiducials or the motor reference cut
    off or off the scalp) has no coil pose and no dose, and a comparator row that is not trusted
    has no values at all; the warnings say why.

    Parameters
    ----------
    table : pandas.DataFrame of str
        The targets table of ScalpProjection as text (columns ``name``, ``x``, ``y``, ``z`` at
        least, ``scalp_trusted`` if judged; values kept verbatim).
    surface : tmstarget.workflows.surface.Surface
        The scalp mesh, world mm (RAS) of the computation space.
    z_map : tuple (ndarray, ndarray (4, 4))
        The Fisher-z connectivity map (3-D) and its affine.
    landmarks : dict
        The scalp-based methods' points on this scalp and the cortex beneath them
        (:func:`scalp_landmarks`).
    field_of_view : tuple (ndarray (4, 4), tuple), optional
        Affine and shape of the head T1w (its border is where a cut head ends); unknown: no
        border is checked.
    head_trusted : bool
        False for a head that cannot carry a plan (skull-stripped): every comparator is skipped.
    t1w_name : str
        The head T1w, named in the warnings.
    brain_mask : tuple (ndarray, ndarray (4, 4)), optional
        The BOLD brain mask and its affine: a cortical point outside it has no
        ``seed_correlation_z`` (n/a, with a warning) instead of the map's 0 there.
    to_map_space : callable, optional
        Maps points (K, 3) of the table's space into the space of ``z_map`` and ``brain_mask``
        (a plan on the native head, a map in MNI); None: the same space.
    handle_angle_deg, coil_offset_mm : float
        Coil handle angle from the posterior direction (degrees, positive laterally) and centre
        offset above the scalp (mm).
    gm_threshold : float
        Grey-matter probability threshold of the cortical points (for the methods text).
    space : str
        The table's space, named with the coordinates a warning gives.

    Returns
    -------
    table : pandas.DataFrame of str
        The input rows, then :data:`COMPARATOR_ROWS`; ``scalp_trusted`` and the pose and
        comparison columns appended. Numbers as text, 2 decimals (direction cosines 4), ``n/a``
        where undefined.
    measurements : dict
        Head measurements, Beam's X and Y, the fiducials, 10-20 points, motor and 5 cm points,
        methods and sources, ``ScalpTrusted`` (row -> bool) and ``QualityWarnings``.
    warnings : list of str
        One line each.
    """
    new_points, new_trusted = landmarks["points"], landmarks["trusted"]
    head_axes = landmarks["head_axes"]
    measurements, warnings = dict(landmarks["measurements"]), list(landmarks["warnings"])

    z_data, z_affine = z_map
    z_inverse = np.linalg.inv(z_affine)
    if brain_mask is not None:
        mask_data, mask_affine = brain_mask
        mask_inverse = np.linalg.inv(mask_affine)

    def z_at(names, points):
        """Fisher z of the map at each point (nearest voxel); NaN off the map or the brain."""
        values = np.full(len(points), np.nan)
        finite = np.isfinite(points).all(axis=1)
        where = points.copy()  # the points in the map's space
        if to_map_space is not None and finite.any():
            where[finite] = to_map_space(points[finite])
        for k in np.flatnonzero(finite):
            if brain_mask is not None:
                ijk = np.round(apply_affine(mask_inverse, where[k])).astype(int)
                inside = (np.all(ijk >= 0) and np.all(ijk < mask_data.shape[:3])
                          and bool(mask_data[tuple(ijk)]))
                if not inside:
                    warnings.append(
                        f"{names[k]}: its cortical point ({', '.join(f'{v:.1f}' for v in points[k])}"
                        f" mm, {space}) lies outside the BOLD brain mask, where there is no connectivity: "
                        "seed_correlation_z is n/a (not 0); give BOLD data that cover it to compare "
                        "it with the connectivity target.")
                    continue
            ijk = np.round(apply_affine(z_inverse, where[k])).astype(int)
            if np.all(ijk >= 0) and np.all(ijk < z_data.shape[:3]):
                values[k] = z_data[tuple(ijk)]
        return values

    table = table.copy()
    for column in ("seed_correlation_z", *SCALP_COLUMNS):
        if column not in table.columns:
            table[column] = "n/a"

    def numbers(frame, columns):
        return frame[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(float)

    # Rows of the input: cortical point given; the scalp point from ScalpProjection, or the
    # nearest scalp point when absent (and not judged untrusted).
    cortex_in = numbers(table, ("x", "y", "z"))
    scalp_in = numbers(table, ("scalp_x", "scalp_y", "scalp_z"))
    judged = "scalp_trusted" in table.columns
    trusted_in = ((table["scalp_trusted"] == "true").to_numpy() if judged
                  else np.full(len(table), head_trusted))
    redo = ~np.isfinite(scalp_in).all(axis=1) & np.isfinite(cortex_in).all(axis=1) & trusted_in
    if redo.any():
        projected = project_to_scalp(cortex_in[redo], surface.vertices, surface.normals,
                                     surface.faces)
        scalp_in[redo] = projected["scalp_xyz"]
        for column, values in zip(SCALP_COLUMNS,
                                  np.column_stack([projected["scalp_xyz"],
                                                   projected["distance_mm"],
                                                   projected["angle_deg"]]).T):
            table.loc[redo, column] = [format_table_number(v) for v in values]
    if not judged:
        checked, check_warnings = point_checks(
            table["name"], scalp_in, np.linalg.norm(cortex_in - scalp_in, axis=1),
            field_of_view, t1w_name)
        trusted_in &= checked
        warnings += check_warnings
        table["scalp_trusted"] = ["true" if t else "false" for t in trusted_in]

    # New rows: scalp point and the cortical point beneath (trusted rows only).
    new_scalp = np.array([new_points[name] for name in COMPARATOR_ROWS])
    new_ok = np.array([new_trusted[name] for name in COMPARATOR_ROWS])
    new_cortex = np.array([landmarks["cortex"][name] if new_trusted[name] else np.full(3, np.nan)
                           for name in COMPARATOR_ROWS])
    rows = []
    new_z = z_at(COMPARATOR_ROWS, new_cortex)
    for name, cortex, ok, z_value in zip(COMPARATOR_ROWS, new_cortex, new_ok, new_z):
        row = {column: "n/a" for column in table.columns}
        row.update(name=name, x=format_table_number(cortex[0]),
                   y=format_table_number(cortex[1]), z=format_table_number(cortex[2]),
                   seed_correlation_z=format_table_number(z_value),
                   scalp_trusted="true" if ok else "false")
        rows.append(row)
    table = pd.concat([table, pd.DataFrame(rows, columns=table.columns)], ignore_index=True)
    cortex_all = np.vstack([cortex_in, new_cortex])
    scalp_all = np.vstack([scalp_in, new_scalp])
    trusted_all = np.concatenate([trusted_in, new_ok])
    n_in = len(cortex_in)

    # Normal at every trusted scalp point; depth and angle for the new rows.
    valid = np.isfinite(scalp_all).all(axis=1) & trusted_all
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
    if head_trusted:
        posterior, left_right = head_axes
        for k in np.flatnonzero(valid & np.isfinite(normal_all).all(axis=1)):
            pose = coil_pose(scalp_all[k], normal_all[k], handle_angle_deg, coil_offset_mm,
                             posterior=posterior, left_right=left_right)
            poses[k] = np.concatenate([pose[:3, 3], pose[:3, 0], pose[:3, 1], pose[:3, 2]])
    for column, values in zip(POSE_COLUMNS, poses.T):
        digits = 4 if "axis" in column else 2  # direction cosines: 4 decimals
        table[column] = [format_table_number(v, digits) for v in values]

    # The depth reported in the table is what every row's dose adjustment uses; no dose from a
    # scalp point that is not trusted.
    depth_table = numbers(table, ("scalp_distance_mm",))[:, 0].copy()
    depth_table[~trusted_all] = np.nan
    distance, dose = plan_distances(table["name"], cortex_all, depth_table)
    table["distance_to_connectivity_mm"] = [format_table_number(d) for d in distance]
    table["depth_adjustment_pct_mso"] = [format_table_number(d) for d in dose]
    motor_depth = depth_table[-1]

    # Column order: the input's, then the pose and comparison columns.
    added = [*POSE_COLUMNS, "distance_to_connectivity_mm", "depth_adjustment_pct_mso"]
    table = table[list(dict.fromkeys([*table.columns.drop(added), *added]))]

    methods = {**METHODS, "cortical_point": METHODS["cortical_point"].replace(
        "probability >= 0.5", f"probability >= {gm_threshold:g}")}
    measurements.update({
        "Coil": {"HandleAngle_deg": handle_angle_deg, "Offset_mm": coil_offset_mm,
                 "Convention": METHODS["coil"], "Source": LANDMARK_REFERENCES["SimNIBS"]},
        "DepthAdjustment": {"Slope_pct_MSO_per_mm": STOKES_SLOPE_PCT_PER_MM,
                            "ReferenceRow": "motor_hand",
                            "ReferenceDepth_mm": (round(float(motor_depth), 2)
                                                  if np.isfinite(motor_depth) else None),
                            "Source": LANDMARK_REFERENCES["Stokes2007"]},
        "GreyMatterThreshold": gm_threshold,
        "ScalpTrusted": {name: bool(t) for name, t in zip(table["name"], trusted_all)},
        "ScalpTrustRules": SCALP_TRUST_RULES,
        "Methods": methods,
        "References": {**LANDMARK_REFERENCES, **HEAD_REFERENCES},
        "QualityWarnings": warnings,
    })
    return table, measurements, warnings


# --------------------------------------------------------------------------------------------
# Nipype interface
# --------------------------------------------------------------------------------------------
def _read_mesh(mesh_file):
    """The scalp of :class:`tmstarget.workflows.scalp.ScalpMesh`'s file: its surface, the field
    of view of its T1w (None when not recorded), whether the head is trusted, and its name."""
    with np.load(mesh_file) as mesh:
        surface = Surface(mesh["vertices"], mesh["faces"],
                          mesh["normals"] if "normals" in mesh.files else None)
        field_of_view = ((mesh["affine"], tuple(int(n) for n in mesh["shape"]))
                         if "shape" in mesh.files else None)
        head_trusted = bool(mesh["head_trusted"]) if "head_trusted" in mesh.files else True
        t1w_name = str(mesh["t1w_file"]) if "t1w_file" in mesh.files else "the head T1w"
    return surface, field_of_view, head_trusted, t1w_name


def _read_grey_matter(gm_file, threshold):
    gm_img = nb.load(gm_file)
    gm_points = grey_matter_points(np.asanyarray(gm_img.dataobj), gm_img.affine,
                                   threshold=threshold)
    if len(gm_points) == 0:
        raise ValueError(f"{gm_file} holds no grey-matter voxel")
    return gm_points


class _HeadInputSpec(BaseInterfaceInputSpec):
    """The head both steps work on: its scalp mesh, and the grey matter's threshold."""

    mesh_file = File(exists=True, mandatory=True,
                     desc="scalp_mesh.npz of ScalpMesh (vertices, faces, normals, affine)")
    gm_threshold = traits.Float(0.5, usedefault=True,
                                desc="grey-matter probability threshold (probseg; --gm-threshold)")


class _ScalpLandmarksInputSpec(_HeadInputSpec):
    gm_file = File(exists=True, mandatory=True,
                   desc="grey matter in the mesh's space (any grid): GM probseg, or an fMRIPrep "
                   "dseg (label 1 = GM)")
    from_mni_xfm = File(exists=True,
                        desc="transform mapping MNI152NLin2009cAsym points into the mesh's space "
                        "(tmstarget.workflows.transforms.map_points); absent: the space is MNI")


class _ScalpLandmarksOutputSpec(TraitedSpec):
    landmarks_file = File(exists=True, desc="JSON: the scalp-based methods' scalp points, "
                          "whether each is trusted, the head's axes, measurements and warnings")


class ScalpLandmarks(SimpleInterface):
    """The scalp-based methods' points on this head (:func:`scalp_landmarks`), for
    :class:`ScalpTargets`: ``scalp_landmarks.json`` (:func:`write_landmarks`) in the node's
    working directory."""

    input_spec = _ScalpLandmarksInputSpec
    output_spec = _ScalpLandmarksOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        surface, field_of_view, head_trusted, t1w_name = _read_mesh(inputs.mesh_file)
        mni = mni_landmarks()
        mapped = map_points(mni, inputs.from_mni_xfm) if inputs.from_mni_xfm else mni.copy()
        if not np.isfinite(mapped).all():
            raise ValueError("the MNI landmarks did not map into the computation space")
        landmarks = scalp_landmarks(surface, mapped,
                                    _read_grey_matter(inputs.gm_file, inputs.gm_threshold),
                                    field_of_view=field_of_view, head_trusted=head_trusted,
                                    t1w_name=t1w_name)
        out_file = Path(runtime.cwd) / "scalp_landmarks.json"
        write_landmarks(out_file, landmarks)
        self._results["landmarks_file"] = str(out_file)
        return runtime


class _ScalpTargetsInputSpec(_HeadInputSpec):
    targets_file = File(exists=True, mandatory=True,
                        desc="TSV of ScalpProjection: name, x, y, z, seed_correlation_z, ..., "
                        "scalp_x ... scalp_normal_angle_deg (row 'connectivity')")
    landmarks_file = File(exists=True, mandatory=True,
                          desc="scalp_landmarks.json of ScalpLandmarks on the same mesh")
    z_file = File(exists=True, mandatory=True,
                  desc="Fisher-z connectivity map in the computation space")
    handle_angle_deg = traits.Float(45.0, usedefault=True,
                                    desc="coil handle angle from the posterior direction, "
                                    "positive laterally")
    coil_offset_mm = traits.Float(0.0, usedefault=True,
                                  desc="coil centre distance above the scalp (mm)")
    mask_files = InputMultiObject(
        File(exists=True), desc="BOLD brain masks (one grid; their union is used): a cortical "
        "point outside has no seed_correlation_z")
    to_map_xfm = File(exists=True,
                      desc="transform mapping points of the table's space into the space of the "
                      "z map and masks (map_points); absent: the same space")
    space = traits.Str("the computation space", usedefault=True,
                       desc="the table's space (T1w, MNI152NLin2009cAsym, ...), named with the "
                       "coordinates of its warnings")


class _ScalpTargetsOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="targets TSV: the input rows plus the scalp-based rows, "
                    "coil poses, distances and dose adjustments")
    measurements_file = File(exists=True, desc="JSON: head measurements, Beam X/Y, fiducials and "
                             "10-20 points used, methods and sources, ScalpTrusted, and "
                             "QualityWarnings (list of one-line strings)")


class ScalpTargets(SimpleInterface):
    """Scalp-based comparators (10-20 F3, Beam F3, 5 cm rule, motor hand area) on this head.

    Reads the targets table of :class:`tmstarget.workflows.scalp.ScalpProjection`, the scalp
    mesh and the methods' points on it (:class:`ScalpLandmarks`) and writes ``scalp_targets.tsv``: the input rows with their columns unchanged (the connectivity
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
        surface, field_of_view, head_trusted, t1w_name = _read_mesh(inputs.mesh_file)
        to_map_space = points_mapping(inputs.to_map_xfm) if isdefined(inputs.to_map_xfm) else None
        z_img = nb.load(inputs.z_file)
        z_data = np.asanyarray(z_img.dataobj, dtype=np.float32)
        if z_data.ndim == 4:
            z_data = z_data[..., 0]
        # Read as text to keep the input's values verbatim.
        table = pd.read_csv(inputs.targets_file, sep="\t", dtype=str, keep_default_na=False)
        missing = {"name", "x", "y", "z"} - set(table.columns)
        if missing:
            raise ValueError(f"{inputs.targets_file} lacks the column(s) {sorted(missing)}")

        brain_mask = (load_mask_union(inputs.mask_files)
                      if isdefined(inputs.mask_files) and inputs.mask_files else None)
        table, measurements, _ = scalp_comparators(
            table, surface, (z_data, z_img.affine), read_landmarks(inputs.landmarks_file),
            field_of_view=field_of_view, head_trusted=head_trusted, t1w_name=t1w_name,
            brain_mask=brain_mask, to_map_space=to_map_space,
            handle_angle_deg=inputs.handle_angle_deg,
            coil_offset_mm=inputs.coil_offset_mm, gm_threshold=inputs.gm_threshold,
            space=inputs.space)
        out_file = Path(runtime.cwd) / "scalp_targets.tsv"
        table.to_csv(out_file, sep="\t", index=False)
        measurements_file = Path(runtime.cwd) / "scalp_measurements.json"
        measurements_file.write_text(json.dumps(measurements, indent=2))
        self._results["out_file"] = str(out_file)
        self._results["measurements_file"] = str(measurements_file)
        return runtime
