"""Coil placement: the pose of a figure-of-eight TMS coil on the scalp, and the depth-adjusted dose.

Pure functions on arrays; world millimetres, RAS, of whatever space the points are in.

Pose convention (SimNIBS ``matsimnibs``; SimNIBS documents it in ``Msh.calc_matsimnibs``: "y' is
the direction of the coil, z' is a direction normal to the coil, points inside the head"), a 4x4
matrix whose columns are

====  =======================================================================================
col   meaning
====  =======================================================================================
0     ``x``: the coil's left-right axis, ``x = y x z`` (right-handed frame)
1     ``y``: the direction the coil HANDLE points, tangent to the scalp
2     ``z``: the coil normal pointing INTO the head (minus the outward scalp normal)
3     the coil centre (on the scalp, or ``coil_offset_mm`` outside it along the outward normal)
====  =======================================================================================

Handle orientation: the conventional orientation of a figure-of-eight coil over the left DLPFC in
depression rTMS is the handle pointing backwards and about 45 degrees laterally away from the
midline (the sagittal plane). Here: the posterior direction (0, -1, 0) is projected onto the
tangent plane of the scalp, then turned by ``handle_angle_deg`` in the tangent plane towards the
lateral side, the side the outward scalp normal points to (negative x on the left hemisphere,
positive x on the right one). A left-hemisphere point thus gets a handle with negative y and
negative x components; its mirror point on the right hemisphere gets the mirrored handle. Heads
tilted in their space can pass their own posterior and left-right axes (e.g. from the
fiducials; :func:`tmstarget.workflows.comparators.scalp_comparators` passes inion - nasion and RPA - LPA).
"""

from __future__ import annotations

import numpy as np

#: Posterior and left-to-right directions of RAS spaces.
POSTERIOR = (0.0, -1.0, 0.0)
LEFT_TO_RIGHT = (1.0, 0.0, 0.0)

#: Stokes et al. 2007: motor threshold rises by 2.8 % of maximum stimulator output per mm of extra
#: coil-to-cortex distance.
STOKES_SLOPE_PCT_PER_MM = 2.8

COIL_REFERENCES = {
    "SimNIBS": "Thielscher A, Antunes A, Saturnino GB. Field modeling for transcranial magnetic "
    "stimulation: a useful tool to understand the physiological effects of TMS? Conf Proc IEEE Eng "
    "Med Biol Soc. 2015:222-225. doi:10.1109/EMBC.2015.7318340 (SimNIBS; coil pose 'matsimnibs' "
    "convention)",
    "Stokes2007": "Stokes MG, Chambers CD, Gould IC, et al. Distance-adjusted motor threshold for "
    "transcranial magnetic stimulation. Clin Neurophysiol. 2007;118(7):1617-1625. "
    "doi:10.1016/j.clinph.2007.04.004",
}


def _unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=float)
    norm = np.linalg.norm(vector)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError(f"cannot normalize the vector {vector}")
    return vector / norm


def coil_frame(inward, handle):
    """The coil's right-handed orthonormal axes from its normal and its handle direction.

    The one builder of a coil frame (the scalp stage, the mapping of poses between spaces and the
    navigation exports all use it): ``z`` is ``inward`` made unit, ``y`` is ``handle`` made
    orthogonal to ``z`` (Gram-Schmidt: the handle is projected onto the coil plane) and unit,
    ``x = y x z``.

    Parameters
    ----------
    inward : array-like (..., 3)
        Coil normal pointing into the head (any length > 0).
    handle : array-like (..., 3)
        Direction the handle points (need not be tangent); leading dimensions broadcast, so whole
        tables of poses go at once.

    Returns
    -------
    x_axis, y_axis, z_axis : ndarray (..., 3)

    Raises
    ------
    ValueError
        If ``inward`` is zero or ``handle`` parallel to it (no coil plane direction is left).
    """
    inward = np.asarray(inward, dtype=float)
    handle = np.asarray(handle, dtype=float)
    norm = np.linalg.norm(inward, axis=-1, keepdims=True)
    if not np.all(norm > 0):  # also refuses NaN
        raise ValueError(f"the coil normal must be a finite non-zero vector, got {inward}")
    z_axis = inward / norm
    y_axis = handle - (handle * z_axis).sum(-1, keepdims=True) * z_axis
    length = np.linalg.norm(y_axis, axis=-1, keepdims=True)
    scale = np.maximum(1.0, np.linalg.norm(handle, axis=-1, keepdims=True))
    if np.any(length < 1e-6 * scale):
        raise ValueError("the handle direction is parallel to the coil normal")
    y_axis = y_axis / length
    return np.cross(y_axis, z_axis), y_axis, z_axis


def pose_matrix(centre, inward, handle) -> np.ndarray:
    """4x4 coil pose (SimNIBS ``matsimnibs`` convention) at ``centre`` (mm) from its inward
    normal and handle direction (:func:`coil_frame`)."""
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2] = coil_frame(inward, handle)
    pose[:3, 3] = np.asarray(centre, dtype=float).reshape(3)
    return pose


def coil_pose(scalp_point, scalp_normal, handle_angle_deg: float = 45.0,
              coil_offset_mm: float = 0.0, *, posterior=POSTERIOR,
              left_right=LEFT_TO_RIGHT) -> np.ndarray:
    """4x4 pose of a figure-of-eight coil touching the scalp (SimNIBS ``matsimnibs`` convention).

    Parameters
    ----------
    scalp_point : array-like (3,)
        Point on the scalp under the coil centre, world mm (RAS).
    scalp_normal : array-like (3,)
        OUTWARD scalp normal there (need not be unit length).
    handle_angle_deg : float
        Angle (degrees) between the handle and the posterior direction in the tangent plane,
        positive towards the lateral side (away from the midline): 45 gives the conventional
        posterior-lateral handle over the left DLPFC; 0 a handle pointing straight backwards;
        negative values turn the handle medially.
    coil_offset_mm : float
        Distance of the coil centre from the scalp along the outward normal (hair, coil casing).
    posterior : array-like (3,)
        The head's posterior direction in world coordinates; ``(0, -1, 0)`` in RAS spaces whose
        axes follow the head (MNI, an fMRIPrep T1w from a usual acquisition). A head tilted in
        its space can pass its own axis (e.g. inion - nasion).
    left_right : array-like (3,)
        The head's left-to-right direction; ``(1, 0, 0)`` in RAS spaces (or e.g. RPA - LPA). Only
        its sign relative to the scalp normal matters: it tells the lateral side.

    Returns
    -------
    ndarray (4, 4)
        Columns x (coil left-right), y (handle), z (into the head), centre; last row (0, 0, 0, 1).
        The 3x3 block is a rotation (orthonormal, determinant +1).

    Notes
    -----
    The lateral side is the side the outward normal points to (the sign of its component along
    ``left_right``); on the midline (no such component) the left side is taken, the hemisphere of
    the DLPFC target. Where the posterior direction is normal to the scalp (the back of the
    head) the inferior direction replaces it.
    """
    point = np.asarray(scalp_point, dtype=float)
    outward = _unit(scalp_normal)
    z_axis = -outward

    def tangent(direction):
        direction = np.asarray(direction, dtype=float)
        return direction - np.dot(direction, outward) * outward

    handle0 = tangent(posterior)
    if np.linalg.norm(handle0) < 1e-6:
        handle0 = tangent((0.0, 0.0, -1.0))
    handle0 = _unit(handle0)

    # Unit tangent perpendicular to the posterior handle, on the lateral side.
    right = _unit(left_right)
    lateral_component = float(np.dot(outward, right))
    side = np.sign(lateral_component) if abs(lateral_component) > 1e-9 else -1.0
    across = _unit(np.cross(z_axis, handle0))
    if np.dot(across, side * right) < 0:
        across = -across

    angle = np.radians(handle_angle_deg)
    handle = np.cos(angle) * handle0 + np.sin(angle) * across
    return pose_matrix(point + coil_offset_mm * outward, z_axis, handle)


def depth_dose_adjustment(target_depth_mm: float, motor_depth_mm: float,
                          slope: float = STOKES_SLOPE_PCT_PER_MM) -> float:
    """Stimulator output (% of maximum stimulator output, MSO) to ADD to the motor threshold.

    Stokes et al. (2007): the motor threshold rises by ``slope`` = 2.8 % MSO per mm of extra
    scalp-to-cortex distance. A target ``target_depth_mm`` deep, with the motor cortex (where the
    threshold was measured) ``motor_depth_mm`` deep, needs ``slope * (target - motor)`` % MSO more
    (negative when the target is shallower). NaN if either depth is not finite.
    """
    target, motor = float(target_depth_mm), float(motor_depth_mm)
    if not (np.isfinite(target) and np.isfinite(motor)):
        return float("nan")
    return float(slope * (target - motor))


def plan_distances(names, cortex, depth_mm):
    """Distance to the connectivity target and dose adjustment of every row of a targets table.

    The one place where these are computed (the scalp stage, and again after a table is mapped
    into another space).

    Parameters
    ----------
    names : sequence of str
        Row names; the row ``connectivity`` is the reference of the distances, the row
        ``motor_hand`` that of the dose (its depth is where the motor threshold was measured).
    cortex : array-like (K, 3)
        Cortical point of each row, world mm.
    depth_mm : array-like (K,)
        Scalp-to-cortex distance of each row (``scalp_distance_mm``) as reported.

    Returns
    -------
    distance_to_connectivity_mm, depth_adjustment_pct_mso : ndarray (K,)
        NaN where undefined (no such reference row, or a NaN input).
    """
    names = np.asarray(names, dtype=object)
    cortex = np.asarray(cortex, dtype=float).reshape(-1, 3)
    depth = np.asarray(depth_mm, dtype=float).reshape(-1)
    connectivity = np.flatnonzero(names == "connectivity")
    reference = cortex[connectivity[0]] if connectivity.size else np.full(3, np.nan)
    motor = np.flatnonzero(names == "motor_hand")
    motor_depth = depth[motor[0]] if motor.size else float("nan")
    distance = np.linalg.norm(cortex - reference, axis=1)
    dose = np.array([depth_dose_adjustment(d, motor_depth) for d in depth])
    return distance, dose

