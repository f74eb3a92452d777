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
import os
import tempfile
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
    DEFAULT_DIDT_A_PER_US,
    EFIELD_REFERENCES,
    SPHERE_FIT_RADIUS_MM,
    efield_at_poses,
    efield_dose,
    efield_map,
    local_sphere,
    sweep_handle_angle,
)
from tmstarget.workflows.comparators import POSE_COLUMNS
from tmstarget.workflows.scalp import project_to_scalp

#: Columns :class:`EfieldPlan` adds to the targets table.
EFIELD_COLUMNS = ("handle_angle_deg", "efield_target_v_per_m", "efield_clinical_v_per_m",
                  "efield_optimal_angle_deg", "efield_optimal_v_per_m", "efield_dose_pct_mt",
                  "efield_dose_pct_mso")
#: The row whose field sets the dose: the motor hotspot, where the motor threshold is measured.
MOTOR_ROW = "motor_hand"
#: Dipole spacing (mm) of the coil model drawing the map: 8 mm keeps a map on a BOLD grid to
#: ~1-3 s and stays within 0.6 % of the 4 mm model 15 mm or more below the casing
#: (tmstarget.workflows.coil_models.figure8_dipoles); the table uses the 4 mm model.
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
                motor_threshold_pct_mso: float | None = None) -> dict:
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
    spheres, warnings = [None] * n_rows, []

    for k, name in enumerate(names):
        if not (np.isfinite(cortex[k]).all() and np.isfinite(scalp[k]).all()):
            continue
        normal = project_to_scalp(scalp[k], vertices, normals, faces)["normal"][0]
        sphere = local_sphere(vertices, scalp[k], sphere_fit_radius_mm)
        spheres[k] = sphere
        if sphere["rms_mm"] > MAX_SPHERE_RMS_MM:
            warnings.append(f"E-field: the scalp under the coil of row {name!r} is far from a "
                            f"sphere (fit RMS {sphere['rms_mm']:.1f} mm > {MAX_SPHERE_RMS_MM} "
                            "mm): its field is less certain.")
        if np.linalg.norm(cortex[k] - sphere["centre_mm"]) >= sphere["radius_mm"]:
            warnings.append(f"E-field: the cortical point of row {name!r} lies outside the "
                            "sphere fitted to the scalp under its coil: its field is not valid.")
        clinical = coil_pose(scalp[k], normal, handle_angle_deg, coil_offset_mm,
                             posterior=posterior, left_right=left_right)
        e_clinical = float(np.linalg.norm(efield_at_poses(
            model, clinical, cortex[k], sphere["centre_mm"], didt_a_per_us)))
        best = sweep_handle_angle(model, scalp[k], normal, cortex[k], sphere["centre_mm"],
                                  coil_offset_mm=coil_offset_mm, posterior=posterior,
                                  left_right=left_right, didt_a_per_us=didt_a_per_us,
                                  prefer_angle_deg=handle_angle_deg,
                                  tolerance=ORIENTATION_TOLERANCE)
        use_best = orientation == "efield" and name != MOTOR_ROW
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
class _EfieldPlanInputSpec(BaseInterfaceInputSpec):
    targets_file = File(exists=True, mandatory=True,
                        desc="targets TSV of ScalpTargets: name, x, y, z, scalp_x, scalp_y, "
                        "scalp_z (world mm), coil_* (optional)")
    mesh_file = File(exists=True, mandatory=True,
                     desc="scalp_mesh.npz of ScalpProjection (vertices, faces, normals)")
    reference_file = File(exists=True, mandatory=True,
                          desc="NIfTI whose grid the field map is written on (e.g. the BOLD "
                          "reference or the z map), same space as the table")
    mask_file = File(exists=True, desc="mask on the reference grid where the map is computed "
                     "(e.g. the brain mask); default the whole grid")
    measurements_file = File(exists=True, desc="scalp_measurements.json of ScalpTargets: its "
                             "fiducials give the head's posterior and left-right axes (default "
                             "the RAS axes)")
    coil = traits.Enum(*sorted(COIL_GEOMETRIES), usedefault=True, desc="coil model")
    didt_a_per_us = traits.Float(DEFAULT_DIDT_A_PER_US, usedefault=True,
                                 desc="coil current slope the fields are given for, A/us")
    orientation = traits.Enum("clinical", "efield", usedefault=True,
                              desc="pose used: the clinical handle angle, or the field's")
    handle_angle_deg = traits.Float(45.0, usedefault=True, desc="clinical handle angle (deg)")
    coil_offset_mm = traits.Float(0.0, usedefault=True, desc="coil centre above the scalp (mm)")
    sphere_fit_radius_mm = traits.Float(SPHERE_FIT_RADIUS_MM, usedefault=True,
                                        desc="radius of the scalp patch the sphere is fitted to")
    motor_threshold_pct_mso = traits.Float(desc="resting motor threshold (% MSO), optional")
    map_row = traits.Str("connectivity", usedefault=True, desc="row whose pose is mapped")
    map_max_distance_mm = traits.Float(80.0, usedefault=True,
                                       desc="map computed within this distance of the coil")


class _EfieldPlanOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="targets TSV plus " + ", ".join(EFIELD_COLUMNS))
    sidecar_file = File(exists=True, desc="JSON: coil, dI/dt, units, spheres, methods, "
                        "references, QualityWarnings")
    map_file = File(exists=True, desc="NIfTI: |E| (V/m) of map_row's pose on the reference grid")


def _head_axes(measurements_file):
    if not measurements_file:
        return np.array(POSTERIOR), np.array(LEFT_TO_RIGHT)
    used = json.loads(Path(measurements_file).read_text())["Fiducials"]["Used_mm"]
    return (np.subtract(used["Iz"], used["Nz"]), np.subtract(used["RPA"], used["LPA"]))


def _write_atomically(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix if path.suffix != ".gz"
                               else ".nii.gz")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fmt(value, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"


class EfieldPlan(SimpleInterface):
    """E-field at each target, the field-chosen handle angle and the field-based dose.

    Writes ``efield_targets.tsv`` (input columns verbatim, plus :data:`EFIELD_COLUMNS`; with
    ``orientation='efield'`` the ``coil_*`` columns of the non-motor rows hold the field's pose),
    ``efield.json`` (sidecar with ``QualityWarnings``) and ``efield_map.nii.gz``.
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
        posterior, left_right = _head_axes(inputs.measurements_file)
        threshold = (inputs.motor_threshold_pct_mso
                     if isdefined(inputs.motor_threshold_pct_mso) else None)

        def numbers(columns):
            return table[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(float)

        plan = plan_efield(
            table["name"].tolist(), numbers(("x", "y", "z")),
            numbers(("scalp_x", "scalp_y", "scalp_z")), mesh["vertices"], mesh["faces"],
            mesh["normals"], coil=inputs.coil, didt_a_per_us=inputs.didt_a_per_us,
            orientation=inputs.orientation, handle_angle_deg=inputs.handle_angle_deg,
            coil_offset_mm=inputs.coil_offset_mm, posterior=posterior, left_right=left_right,
            sphere_fit_radius_mm=inputs.sphere_fit_radius_mm, motor_threshold_pct_mso=threshold)

        for column, values in plan["columns"].items():
            table[column] = [_fmt(v, 1 if "angle" in column else 2) for v in values]
        if inputs.orientation == "efield":
            for k in np.flatnonzero(np.isfinite(plan["poses"][:, 0, 0])):
                pose = plan["poses"][k]
                values = np.concatenate([pose[:3, 3], pose[:3, 0], pose[:3, 1], pose[:3, 2]])
                for column, value in zip(POSE_COLUMNS, values):
                    table.loc[k, column] = _fmt(value, 4 if "axis" in column else 2)

        reference = nb.load(inputs.reference_file)
        mask = None
        if inputs.mask_file:
            mask_img = nb.load(inputs.mask_file)
            if (mask_img.shape[:3] != reference.shape[:3]
                    or not np.allclose(mask_img.affine, reference.affine, atol=1e-3)):
                raise ValueError(f"{inputs.mask_file} is not on the grid of "
                                 f"{inputs.reference_file}: resample it first")
            mask = np.asanyarray(mask_img.dataobj).reshape(mask_img.shape[:3]) > 0
        rows = np.flatnonzero((table["name"] == inputs.map_row).to_numpy())
        warnings = list(plan["warnings"])
        field_map = np.zeros(reference.shape[:3], dtype=np.float32)
        sphere = plan["spheres"][rows[0]] if len(rows) else None
        if sphere is None:
            warnings.append(f"E-field: no row {inputs.map_row!r} with a coil pose: the field "
                            "map is empty.")
        else:
            field_map = efield_map(reference.shape, reference.affine,
                                   coil_model(inputs.coil, MAP_DIPOLE_SPACING_MM),
                                   plan["poses"][rows[0]], sphere["centre_mm"], mask=mask,
                                   max_distance_mm=inputs.map_max_distance_mm,
                                   didt_a_per_us=inputs.didt_a_per_us)

        out_dir = Path(runtime.cwd)
        out_file, sidecar_file = out_dir / "efield_targets.tsv", out_dir / "efield.json"
        map_file = out_dir / "efield_map.nii.gz"
        _write_atomically(out_file, lambda p: table.to_csv(p, sep="\t", index=False))
        image = nb.Nifti1Image(field_map, reference.affine)
        image.header.set_xyzt_units("mm")
        _write_atomically(map_file, lambda p: image.to_filename(p))
        sidecar = _sidecar(inputs, table["name"].tolist(), plan, threshold, warnings)
        _write_atomically(sidecar_file,
                          lambda p: Path(p).write_text(json.dumps(sidecar, indent=2)))
        self._results.update(out_file=str(out_file), sidecar_file=str(sidecar_file),
                             map_file=str(map_file))
        return runtime


def _sidecar(inputs, names, plan, threshold, warnings) -> dict:
    model = coil_model(inputs.coil)
    spheres = {name: ({"Centre_mm": [round(float(v), 2) for v in s["centre_mm"]],
                       "Radius_mm": round(float(s["radius_mm"]), 2),
                       "FitRMS_mm": round(float(s["rms_mm"]), 3)} if s else None)
               for name, s in zip(names, plan["spheres"])}
    return {
        "Coil": {"Name": model.name, "Description": model.description, "Source": model.source},
        "dIdt_A_per_us": inputs.didt_a_per_us,
        "Units": {"efield": "V/m", "angles": "degrees", "dose": "% of motor threshold, % MSO"},
        "Orientation": inputs.orientation,
        "ClinicalHandleAngle_deg": inputs.handle_angle_deg,
        "OrientationCriterion": "largest |E| at the cortical point (magnitude, not the "
        "component normal to the cortex)",
        "MotorThreshold_pct_MSO": threshold,
        "DoseReferenceRow": MOTOR_ROW,
        "HeadModel": "spherically symmetric conductor (Eaton 1992; Heller & van Hulsteyn "
        f"1992), centre fitted to the scalp within {inputs.sphere_fit_radius_mm} mm of each "
        "coil centre",
        "Spheres": spheres,
        "Map": {"Row": inputs.map_row, "Quantity": "|E| (V/m)",
                "MaxDistanceFromCoil_mm": inputs.map_max_distance_mm},
        "Columns": COLUMN_DESCRIPTIONS,
        "References": EFIELD_REFERENCES,
        "QualityWarnings": warnings,
    }
