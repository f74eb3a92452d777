"""E-field plan: the field at each target, the handle angle the field chooses, the field-based dose.

:func:`plan_efield` takes the rows of the targets table (cortical point, scalp point) and the scalp
mesh; :class:`EfieldPlan` adapts the files of :class:`tmstarget.workflows.scalp.ScalpProjection`
(``scalp_mesh.npz``) and :class:`tmstarget.workflows.comparators.ScalpTargets`
(``scalp_targets.tsv``, ``scalp_measurements.json``) to it and writes the table with the E-field
columns, a JSON sidecar and a map of |E| on a reference grid. Physics and units:
:mod:`tmstarget.workflows.efield` (world mm, V/m, dI/dt in A/us).
"""

from __future__ import annotations

import json
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

from tmstarget.workflows.coil import LEFT_TO_RIGHT, POSTERIOR, coil_pose
from tmstarget.workflows.coil_models import COIL_GEOMETRIES, DEFAULT_COIL, coil_model
from tmstarget.workflows.efield import (
    MAP_LATTICE_MM,
    SPHERE_FIT_RADIUS_MM,
    efield_at_poses,
    efield_dose,
    efield_map_interpolated,
    local_sphere,
    sweep_handle_angle,
)
from tmstarget.workflows.comparators import POSE_COLUMNS
from tmstarget.workflows.defaults import DEFAULT_DIDT_A_PER_US, EFIELD_REFERENCES
from tmstarget.workflows.scalp import format_table_number, project_to_scalp
from tmstarget.workflows.transforms import points_mapping, transform_source

#: Columns :class:`EfieldPlan` adds to the targets table.
EFIELD_COLUMNS = ("handle_angle_deg", "efield_target_v_per_m", "efield_clinical_v_per_m",
                  "efield_optimal_angle_deg", "efield_optimal_v_per_m", "efield_dose_pct_mt",
                  "efield_dose_pct_mso")
#: The row whose field sets the dose: the motor hotspot, where the motor threshold is measured.
MOTOR_ROW = "motor_hand"
#: Dipole spacing (mm) of the coil model drawing the map: 8 mm (630 dipoles, above the ~200 that
#: Gomez et al. 2020 find needed for 2 % errors) stays within 0.6 % of the 4 mm model 15 mm or
#: more below the casing (tmstarget.workflows.coil_models.figure8_dipoles); the table uses the
#: 4 mm model.
MAP_DIPOLE_SPACING_MM = 8.0
#: The field's pose replaces the clinical angle only if it gives more than 1 % more |E|: below
#: that the difference is far inside the model's own error against realistic heads, and the
#: angle closest to the clinical one within 1 % of the maximum is kept.
ORIENTATION_TOLERANCE = 0.01
#: A local sphere fitting the scalp worse than this (RMS, mm) is reported.
MAX_SPHERE_RMS_MM = 2.0

COLUMN_DESCRIPTIONS = {
    "handle_angle_deg": "Handle angle of the coil pose used (coil_* columns), degrees from the "
    "head's posterior direction in the scalp's tangent plane, positive laterally.",
    "efield_target_v_per_m": "|E| at the row's cortical point (x, y, z) for the pose used, V/m "
    "at the stated dI/dt (sidecar), in a sphere fitted to the scalp under the coil.",
    "efield_clinical_v_per_m": "|E| at the cortical point with the clinical handle angle, V/m.",
    "efield_optimal_angle_deg": "Handle angle (-90 to 89 degrees, 1 degree steps) giving the "
    "largest |E| at the cortical point; among angles within 1 % of the largest, the one closest "
    "to the clinical angle (below 1 % the field does not prefer an angle).",
    "efield_optimal_v_per_m": "|E| at the cortical point at efield_optimal_angle_deg, V/m.",
    "efield_dose_pct_mt": "Stimulator output giving the cortical point the |E| the motor_hand "
    "row's cortex gets at motor threshold, in % of the motor threshold (100 x E_motor / "
    "E_target; each with its own pose; the motor_hand pose is always the clinical one).",
    "efield_dose_pct_mso": "The same in % of maximum stimulator output, for the motor threshold "
    "given (sidecar MotorThreshold_pct_MSO); n/a without one.",
}


def plan_efield(names, cortex_mm, scalp_mm, vertices, faces, normals, *,
                coil: str = DEFAULT_COIL, didt_a_per_us: float = DEFAULT_DIDT_A_PER_US,
                orientation: str = "clinical", handle_angle_deg: float = 45.0,
                coil_offset_mm: float = 0.0, posterior=POSTERIOR, left_right=LEFT_TO_RIGHT,
                sphere_fit_radius_mm: float = SPHERE_FIT_RADIUS_MM,
                motor_threshold_pct_mso: float | None = None, clinical_poses=None) -> dict:
    """Field, handle angle and dose for each target row.

    Parameters
    ----------
    names : sequence of str
        Row names (``motor_hand`` is the dose reference, always at the clinical angle).
    cortex_mm, scalp_mm : array-like (K, 3)
        Cortical point and coil centre on the scalp of each row, world mm; rows with NaN are
        skipped (their results NaN).
    vertices, faces, normals : ndarray
        Scalp mesh (world mm, outward unit normals).
    coil : str
        Name in :data:`tmstarget.workflows.coil_models.COIL_GEOMETRIES`.
    didt_a_per_us : float
        Coil current slope (A/us) the fields are given for.
    orientation : {"clinical", "efield"}
        Pose used: the clinical ``handle_angle_deg``, or the angle maximising |E|.
    posterior, left_right : array-like (3,)
        Head axes (see :func:`tmstarget.workflows.coil.coil_pose`).
    sphere_fit_radius_mm : float
        Scalp patch radius of the local sphere (:func:`tmstarget.workflows.efield.local_sphere`).
    motor_threshold_pct_mso : float, optional
        Measured resting motor threshold (% MSO) for the absolute dose.
    clinical_poses : array-like (K, 4, 4), optional
        The clinical pose of each row as planned already (the ``coil_*`` columns of
        :class:`tmstarget.workflows.comparators.ScalpTargets`, made with ``handle_angle_deg``):
        the clinical field is that pose's, and the sweep turns the handle about its normal.
        Rows whose pose is NaN are computed from ``coil_pose`` (default: every row).

    Returns
    -------
    dict
        ``columns``: {column: ndarray (K,)} for :data:`EFIELD_COLUMNS`; ``poses``: (K, 4, 4)
        used (NaN rows skipped); ``spheres``: list of dicts (centre_mm, radius_mm, rms_mm) or
        None; ``warnings``: list of one-line strings.
    """
    if orientation not in ("clinical", "efield"):
        raise ValueError(f"orientation must be 'clinical' or 'efield', not {orientation!r}")
    model = coil_model(coil)
    names = [str(n) for n in names]
    cortex = np.atleast_2d(np.asarray(cortex_mm, dtype=float))
    scalp = np.atleast_2d(np.asarray(scalp_mm, dtype=float))
    n_rows = len(names)
    columns = {column: np.full(n_rows, np.nan) for column in EFIELD_COLUMNS}
    poses = np.full((n_rows, 4, 4), np.nan)
    given = (np.full((n_rows, 4, 4), np.nan) if clinical_poses is None
             else np.asarray(clinical_poses, dtype=float).reshape(n_rows, 4, 4))
    spheres, warnings = [None] * n_rows, []

    for k, name in enumerate(names):
        if not (np.isfinite(cortex[k]).all() and np.isfinite(scalp[k]).all()):
            continue
        planned = np.isfinite(given[k]).all()
        normal = (-given[k][:3, 2] if planned
                  else project_to_scalp(scalp[k], vertices, normals, faces)["normal"][0])
        sphere = local_sphere(vertices, scalp[k], sphere_fit_radius_mm)
        spheres[k] = sphere
        if sphere["rms_mm"] > MAX_SPHERE_RMS_MM:
            warnings.append(f"E-field: the scalp under the coil of row {name!r} is far from a "
                            f"sphere (fit RMS {sphere['rms_mm']:.1f} mm > {MAX_SPHERE_RMS_MM} "
                            "mm): its field is less certain.")
        if np.linalg.norm(cortex[k] - sphere["centre_mm"]) >= sphere["radius_mm"]:
            warnings.append(f"E-field: the cortical point of row {name!r} lies outside the "
                            "sphere fitted to the scalp under its coil: its field is not valid.")
        clinical = given[k] if planned else coil_pose(
            scalp[k], normal, handle_angle_deg, coil_offset_mm, posterior=posterior,
            left_right=left_right)
        e_clinical = float(np.linalg.norm(efield_at_poses(
            model, clinical, cortex[k], sphere["centre_mm"], didt_a_per_us)))
        best = sweep_handle_angle(model, scalp[k], normal, cortex[k], sphere["centre_mm"],
                                  coil_offset_mm=coil_offset_mm, posterior=posterior,
                                  left_right=left_right, didt_a_per_us=didt_a_per_us,
                                  prefer_angle_deg=handle_angle_deg,
                                  tolerance=ORIENTATION_TOLERANCE)
        # the field's pose only where it turns the handle (and never at the motor hot spot)
        use_best = (orientation == "efield" and name != MOTOR_ROW
                    and best["handle_angle_deg"] != handle_angle_deg)
        poses[k] = best["pose"] if use_best else clinical
        columns["handle_angle_deg"][k] = best["handle_angle_deg"] if use_best else handle_angle_deg
        columns["efield_target_v_per_m"][k] = best["efield_v_per_m"] if use_best else e_clinical
        columns["efield_clinical_v_per_m"][k] = e_clinical
        columns["efield_optimal_angle_deg"][k] = best["handle_angle_deg"]
        columns["efield_optimal_v_per_m"][k] = best["efield_v_per_m"]

    motor = [k for k, name in enumerate(names) if name == MOTOR_ROW]
    e_motor = columns["efield_target_v_per_m"][motor[0]] if motor else np.nan
    if not np.isfinite(e_motor):
        warnings.append(f"E-field: no field at a {MOTOR_ROW!r} row: no field-based dose.")
    for k, name in enumerate(names):
        dose = efield_dose(columns["efield_target_v_per_m"][k], e_motor, motor_threshold_pct_mso)
        columns["efield_dose_pct_mt"][k], columns["efield_dose_pct_mso"][k] = (dose["pct_mt"],
                                                                               dose["pct_mso"])
        if dose["pct_mso"] > 100.0:
            warnings.append(f"E-field: row {name!r} needs {dose['pct_mso']:.0f} % of maximum "
                            "stimulator output for the motor-threshold field: beyond the device.")
    return {"columns": columns, "poses": poses, "spheres": spheres, "warnings": warnings}


# --------------------------------------------------------------------------------------------
# Nipype interface
# --------------------------------------------------------------------------------------------
#: What the field model assumes and where it stops being valid, for the sidecars and the report.
ASSUMPTIONS = (
    "The head under each coil position is a spherically symmetric conductor whose centre is "
    "fitted to the scalp within the stated radius of the coil centre; inside it the field is "
    "the closed form of Eaton (1992) and Heller & van Hulsteyn (1992): tangential, independent "
    "of the tissues' conductivities and of the sphere's radius.",
    "Not modelled: the folding of the cortex, the cerebrospinal fluid, the skull's shape and "
    "thickness. Realistic head models concentrate the field on gyral crowns and raise it by up "
    "to ~50 % where the current runs across a gyrus (Thielscher et al. 2011); read "
    "efield_target_v_per_m as the field of a smooth head at the target's depth, and prefer its "
    "ratios (dose, orientation gain, comparator against comparator) to its absolute value.",
    "The handle angle is chosen by the field MAGNITUDE at the cortical point (no cortical "
    "normal is used), among 1-degree steps, keeping the clinical angle unless another gains more "
    "than 1 %.",
    "The field-based dose assumes the same threshold field at the target as at the motor hot "
    "spot (motor_hand row, clinical pose); it is not validated clinically for the DLPFC.",
    "Coil: concentric circular turns of published dimensions (no spiral pitch, leads, iron or "
    "eddy currents); fields are linear in dI/dt and given for the stated dI/dt.",
)


class _EfieldPlanInputSpec(BaseInterfaceInputSpec):
    targets_file = File(exists=True, mandatory=True,
                        desc="targets TSV of ScalpTargets (the plan's space): name, x, y, z, "
                        "scalp_x, scalp_y, scalp_z (world mm), scalp_trusted, coil_* (optional)")
    mesh_file = File(exists=True, mandatory=True,
                     desc="scalp_mesh.npz of ScalpProjection (vertices, faces, normals), the "
                     "plan's space")
    measurements_file = File(exists=True, desc="scalp_measurements.json of ScalpTargets: its "
                             "fiducials give the head's posterior and left-right axes (default "
                             "the RAS axes), its Coil the clinical handle angle and offset")
    reference_file = File(exists=True, mandatory=True,
                          desc="image defining the grid of the field map, its non-zero voxels "
                          "the ones computed (the BOLD brain mask of the computation space)")
    grid_to_plan_xfm = File(exists=True, desc="ITK .h5 transform (or its ReadTransform mapping) "
                            "mapping world points of the reference grid into the plan's space "
                            "(transforms.points_mapping); "
                            "absent: the grid is in the plan's space")
    coil = traits.Enum(*sorted(COIL_GEOMETRIES), usedefault=True, desc="coil model")
    didt_a_per_us = traits.Float(DEFAULT_DIDT_A_PER_US, usedefault=True,
                                 desc="coil current slope the fields are given for, A/us")
    orientation = traits.Enum("clinical", "efield", usedefault=True,
                              desc="pose used: the clinical handle angle, or the field's")
    handle_angle_deg = traits.Float(desc="clinical handle angle (deg) the coil_* columns were "
                                    "made with; default the measurements' Coil.HandleAngle_deg, "
                                    "else 45")
    coil_offset_mm = traits.Float(desc="coil centre above the scalp (mm); default the "
                                  "measurements' Coil.Offset_mm, else 0")
    sphere_fit_radius_mm = traits.Float(SPHERE_FIT_RADIUS_MM, usedefault=True,
                                        desc="radius of the scalp patch the sphere is fitted to")
    motor_threshold_pct_mso = traits.Float(desc="resting motor threshold (% MSO), optional")
    map_row = traits.Str("connectivity", usedefault=True, desc="row whose pose is mapped")
    map_max_distance_mm = traits.Float(desc="map computed within this distance (mm) of the "
                                       "coil only; default the whole mask (|E| is still ~20 % "
                                       "of its maximum 80 mm from the coil centre, under the "
                                       "wings: a cut there would show)")
    processes = traits.Int(1, usedefault=True, nohash=True,
                           desc="processes the map's field is computed with (the same map for any number)")


class _EfieldPlanOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="targets TSV plus " + ", ".join(EFIELD_COLUMNS) + "; with "
                    "orientation 'efield' the coil_* columns hold the field's pose")
    efield_file = File(exists=True, desc="NIfTI float32: |E| (V/m) of map_row's pose on the "
                       "reference grid, 0 outside its mask")
    info_file = File(exists=True, desc="JSON: model, coil and source, dI/dt and units, "
                     "orientation rule, assumptions, spheres, references, QualityWarnings")


def _measurements(measurements_file) -> dict:
    return json.loads(Path(measurements_file).read_text()) if measurements_file else {}


def _head_axes(measurements: dict):
    """Posterior (inion - nasion) and left-right (RPA - LPA) axes of ScalpTargets' fiducials."""
    used = measurements.get("Fiducials", {}).get("Used_mm", {})
    try:
        axes = (np.subtract(used["Iz"], used["Nz"]), np.subtract(used["RPA"], used["LPA"]))
    except (KeyError, TypeError):
        return np.array(POSTERIOR), np.array(LEFT_TO_RIGHT)
    if not all(np.isfinite(a).all() and np.linalg.norm(a) > 0 for a in axes):
        return np.array(POSTERIOR), np.array(LEFT_TO_RIGHT)
    return axes


def _table_poses(table: pd.DataFrame) -> np.ndarray | None:
    """(K, 4, 4) poses of the coil_* columns (NaN rows where n/a), or None without them."""
    if not set(POSE_COLUMNS) <= set(table.columns):
        return None
    values = table[list(POSE_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    poses = np.zeros((len(table), 4, 4))
    poses[:, 3, 3] = 1.0
    poses[:, :3, 3], poses[:, :3, 0] = values[:, 0:3], values[:, 3:6]
    poses[:, :3, 1], poses[:, :3, 2] = values[:, 6:9], values[:, 9:12]
    poses[~np.isfinite(values).all(axis=1)] = np.nan
    return poses


class EfieldPlan(SimpleInterface):
    """E-field at each target, the field-chosen handle angle, the field-based dose, the map.

    Placed right after the scalp stage (:class:`tmstarget.workflows.comparators.ScalpTargets`),
    in the plan's space (the participant's native T1w whenever there is one). A row is computed
    when its scalp point is trusted (``scalp_trusted`` true, where the column exists) and it has
    a coil pose (where the ``coil_*`` columns exist); its clinical pose is its ``coil_*``
    columns. Writes

    - ``efield_targets.tsv``: the input table verbatim plus :data:`EFIELD_COLUMNS` (``n/a`` where
      not computed); with ``orientation='efield'`` the ``coil_*`` columns of each computed row
      other than ``motor_hand`` hold the field's pose when its angle differs from the clinical
      one (the exports are written from these columns); with ``'clinical'`` they are unchanged;
    - ``efield_map.nii.gz``: |E| (V/m, float32) of ``map_row``'s pose used, on the reference grid,
      masked to its non-zero voxels (and to ``map_max_distance_mm`` of the coil when given;
      :func:`tmstarget.workflows.efield.efield_map_interpolated`, 8 mm dipoles);
    - ``efield.json``: what the sidecars need, with ``QualityWarnings``.
    """

    input_spec = _EfieldPlanInputSpec
    output_spec = _EfieldPlanOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        table = pd.read_csv(inputs.targets_file, sep="\t", dtype=str, keep_default_na=False)
        needed = {"name", "x", "y", "z", "scalp_x", "scalp_y", "scalp_z"}
        if needed - set(table.columns):
            raise ValueError(f"{inputs.targets_file} lacks the column(s) "
                             f"{sorted(needed - set(table.columns))}: pass ScalpTargets' table")
        mesh = np.load(inputs.mesh_file)
        measurements = _measurements(inputs.measurements_file)
        posterior, left_right = _head_axes(measurements)
        planned = measurements.get("Coil", {})
        handle_angle = (inputs.handle_angle_deg if isdefined(inputs.handle_angle_deg)
                        else float(planned.get("HandleAngle_deg", 45.0)))
        if "HandleAngle_deg" in planned and abs(handle_angle - planned["HandleAngle_deg"]) > 1e-9:
            raise ValueError(f"handle_angle_deg {handle_angle:g} differs from the angle the "
                             f"table's coil poses were made with ({planned['HandleAngle_deg']:g}, "
                             f"{inputs.measurements_file}): pass the same --handle-angle to both")
        offset = (inputs.coil_offset_mm if isdefined(inputs.coil_offset_mm)
                  else float(planned.get("Offset_mm", 0.0)))
        threshold = (inputs.motor_threshold_pct_mso
                     if isdefined(inputs.motor_threshold_pct_mso) else None)

        def numbers(columns):
            return np.array(table[list(columns)].apply(pd.to_numeric, errors="coerce"),
                            dtype=float)

        cortex, scalp = numbers(("x", "y", "z")), numbers(("scalp_x", "scalp_y", "scalp_z"))
        table_poses = _table_poses(table)
        skipped = np.zeros(len(table), dtype=bool)
        if "scalp_trusted" in table.columns:
            skipped |= (table["scalp_trusted"] != "true").to_numpy()
        if table_poses is not None:
            skipped |= ~np.isfinite(table_poses).all(axis=(1, 2))
        scalp[skipped] = np.nan
        plan = plan_efield(
            table["name"].tolist(), cortex, scalp, mesh["vertices"], mesh["faces"],
            mesh["normals"], coil=inputs.coil, didt_a_per_us=inputs.didt_a_per_us,
            orientation=inputs.orientation, handle_angle_deg=handle_angle,
            coil_offset_mm=offset, posterior=posterior, left_right=left_right,
            sphere_fit_radius_mm=inputs.sphere_fit_radius_mm, motor_threshold_pct_mso=threshold,
            clinical_poses=table_poses)

        # |E| is ~1 V/m per A/us: 3 decimals keep 0.1 % at the default dI/dt
        digits = {column: 1 if "angle" in column else 3 if "v_per_m" in column else 2
                  for column in EFIELD_COLUMNS}
        for column, values in plan["columns"].items():
            table[column] = [format_table_number(v, digits[column]) for v in values]
        angles = plan["columns"]["handle_angle_deg"]
        if inputs.orientation == "efield":
            moved = np.isfinite(angles) & (angles != handle_angle)
            if table_poses is None:  # no poses to keep: write every computed one
                moved = np.isfinite(plan["poses"][:, 0, 0])
                for column in POSE_COLUMNS:
                    table[column] = "n/a"
            for k in np.flatnonzero(moved):
                pose = plan["poses"][k]
                values = np.concatenate([pose[:3, 3], pose[:3, 0], pose[:3, 1], pose[:3, 2]])
                for column, value in zip(POSE_COLUMNS, values):
                    table.loc[k, column] = format_table_number(value, 4 if "axis" in column
                                                               else 2)

        reference = nb.load(inputs.reference_file)
        mask = np.asanyarray(reference.dataobj).reshape(reference.shape[:3]) > 0
        rows = np.flatnonzero((table["name"] == inputs.map_row).to_numpy())
        warnings = list(plan["warnings"])
        field_map = np.zeros(reference.shape[:3], dtype=np.float32)
        row = rows[0] if len(rows) else None
        if row is None or plan["spheres"][row] is None:
            warnings.append(f"E-field: no row {inputs.map_row!r} with a trusted coil pose: the "
                            "field map is empty.")
        else:
            to_plan = points_mapping(inputs.grid_to_plan_xfm) if inputs.grid_to_plan_xfm else None

            field_map = efield_map_interpolated(
                reference.shape, reference.affine, coil_model(inputs.coil, MAP_DIPOLE_SPACING_MM),
                plan["poses"][row], plan["spheres"][row]["centre_mm"], mask=mask,
                max_distance_mm=(inputs.map_max_distance_mm
                                 if isdefined(inputs.map_max_distance_mm) else None),
                didt_a_per_us=inputs.didt_a_per_us,
                to_field_space=to_plan, processes=inputs.processes)

        out_dir = Path(runtime.cwd)
        out_file, info_file = out_dir / "efield_targets.tsv", out_dir / "efield.json"
        efield_file = out_dir / "efield_map.nii.gz"
        # the step's own folder, as every step writes: Nipype records the outputs only once
        # the step has ended, and an interrupted step is run again
        table.to_csv(out_file, sep="\t", index=False)
        image = nb.Nifti1Image(field_map, reference.affine)
        image.set_sform(reference.affine, int(reference.header["sform_code"]))
        image.set_qform(reference.affine, int(reference.header["qform_code"]))
        image.header.set_xyzt_units("mm")
        image.header["descrip"] = b"tmstarget |E| V/m"
        image.to_filename(efield_file)
        info = _info(inputs, table["name"].tolist(), plan, handle_angle, offset, threshold,
                     warnings)
        info_file.write_text(json.dumps(info, indent=2))
        self._results.update(out_file=str(out_file), efield_file=str(efield_file),
                             info_file=str(info_file))
        return runtime


def _info(inputs, names, plan, handle_angle, offset, threshold, warnings) -> dict:
    model = coil_model(inputs.coil)
    spheres = {name: ({"Centre_mm": [round(float(v), 2) for v in s["centre_mm"]],
                       "Radius_mm": round(float(s["radius_mm"]), 2),
                       "FitRMS_mm": round(float(s["rms_mm"]), 3)} if s else None)
               for name, s in zip(names, plan["spheres"])}
    return {
        "Model": "E-field of a figure-of-eight coil (magnetic dipoles) in a spherically "
        "symmetric conductor fitted locally to the scalp under the coil",
        "Coil": {"Name": model.name, "Description": model.description, "Source": model.source,
                 "Dipoles": len(model.positions_mm), "DipolesOfTheMap": len(coil_model(
                     inputs.coil, MAP_DIPOLE_SPACING_MM).positions_mm),
                 "HandleAngleClinical_deg": handle_angle, "Offset_mm": offset},
        "dIdt_A_per_us": inputs.didt_a_per_us,
        "dIdtNote": "every field is linear in dI/dt: multiply by your stimulator's dI/dt (A/us) "
        "at the output used divided by this value",
        "Units": {"efield": "V/m", "angles": "degrees", "efield_dose_pct_mt": "% of the "
                  "resting motor threshold", "efield_dose_pct_mso": "% of maximum stimulator "
                  "output", "dIdt": "A/us"},
        "Orientation": inputs.orientation,
        "OrientationRule": "handle angles -90 to 89 degrees in 1 degree steps about the scalp "
        "normal, from the head's posterior direction, positive laterally; the criterion is the "
        f"largest |E| at the cortical point; among angles within {ORIENTATION_TOLERANCE:.0%} of "
        "the largest, the one closest to the clinical angle. 'clinical': the pose used is the "
        "clinical one; 'efield': the field's (motor_hand always clinical).",
        "MotorThreshold_pct_MSO": threshold,
        "DoseReferenceRow": MOTOR_ROW,
        "DoseRule": "efield_dose_pct_mt = 100 x E(motor_hand) / E(row); efield_dose_pct_mso = "
        "motor threshold x E(motor_hand) / E(row)",
        "HeadModel": "spherically symmetric conductor (Eaton 1992; Heller & van Hulsteyn "
        f"1992), centre fitted to the scalp within {inputs.sphere_fit_radius_mm} mm of each "
        "coil centre",
        "Assumptions": list(ASSUMPTIONS),
        "Spheres": spheres,
        "Map": {"Row": inputs.map_row, "Quantity": "|E| (V/m)", "Pose": inputs.orientation,
                "Grid": Path(inputs.reference_file).name,
                "GridToPlanTransform": (transform_source(inputs.grid_to_plan_xfm).name
                                        if inputs.grid_to_plan_xfm else None),
                "MaxDistanceFromCoil_mm": (inputs.map_max_distance_mm
                                           if isdefined(inputs.map_max_distance_mm) else None),
                "DipoleSpacing_mm": MAP_DIPOLE_SPACING_MM, "LatticeSpacing_mm": MAP_LATTICE_MM,
                "Accuracy": "within 1 % of the map's maximum of the voxel-by-voxel field of "
                "the table's 4 mm dipole model"},
        "Columns": COLUMN_DESCRIPTIONS,
        "References": EFIELD_REFERENCES,
        "QualityWarnings": warnings,
    }
