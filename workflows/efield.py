"""E-field of a TMS coil in a locally fitted sphere: field, sphere fit, orientation, dose, map.

Pure numpy/scipy functions on arrays. Positions are world millimetres (RAS) of whatever space the
head is in; inside, the physics runs in SI (metres, A/s, V/m). Fields are in V/m for a coil
current changing at ``didt_a_per_us`` amperes per microsecond (1 A/us = 1e6 A/s, the SimNIBS
default ``didt``); every field is linear in it.

Model
-----
The head is a spherically symmetric conductor (any radial conductivity profile) with its centre
fitted to the head under the coil (:func:`local_sphere`). Outside sources (the coil's magnetic
dipoles, :mod:`tmstarget.workflows.coil_models`) then induce inside it the field of Eaton (1992)
and Heller & van Hulsteyn (1992): the primary field ``-dA/dt`` plus the field of the charges
that build up on the boundary, in closed form (the formula of SimNIBS's analytic tests,
``simnibs.simulation.analytical_solutions.tms_E_field``). It is tangential (no radial component),
independent of conductivity and of the sphere's radius, and depends only on its centre.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.optimize import least_squares

from tmstarget.workflows.coil import LEFT_TO_RIGHT, POSTERIOR, coil_pose
from tmstarget.workflows.coil_models import MU0_OVER_4PI, CoilModel
from tmstarget.workflows.defaults import DEFAULT_DIDT_A_PER_US
from tmstarget.workflows.parallel import run_parts, shared_array

#: Radius (mm) of the scalp patch around the coil centre the local sphere is fitted to: about
#: the extent of a figure-of-eight's field on the cortex (half-value region ~ 4 x 6 cm).
SPHERE_FIT_RADIUS_MM = 40.0
#: Handle angles searched by :func:`sweep_handle_angle`: -90 to 89 degrees in 1 degree steps (the
#: magnitude of a symmetric figure-of-eight's field repeats every 180 degrees).
SWEEP_ANGLES_DEG = np.arange(-90.0, 90.0, 1.0)
#: Spacing (mm) of the lattice on which :func:`efield_map_interpolated` evaluates the field
#: before interpolating it onto the voxels: the field in the brain varies over centimetres (its
#: half-value depth is ~1.4 cm for a figure-of-eight, Deng et al. 2013), so 4 mm nodes keep the
#: trilinear error within ~1 % of the map's maximum (tests/test_efield_plan.py).
MAP_LATTICE_MM = 4.0
#: Point-dipole pairs evaluated at once: ~50 000 keeps the temporaries in the CPU cache (about
#: 4 times faster than 10^6 pairs at once, measured on the 2-core test machine).
CHUNK_PAIRS = 50_000

#: References of :data:`tmstarget.workflows.defaults.EFIELD_REFERENCES` whose DOI could not be checked against a published
#: record while writing (title, authors and journal were; the DOI string was not). Checked:
#: Deng2013, Thielscher2015, Gomez2020 (PubMed), and in coil_models ThielscherKammer2002/2004,
#: Petrov2017, StenroosKoponen2019.
UNVERIFIED_DOIS = ("Eaton1992", "HellerVanHulsteyn1992", "Thielscher2011", "Stokes2007",
                   "Nummenmaa2013")


# --------------------------------------------------------------------------------------------
# The field in a sphere
# --------------------------------------------------------------------------------------------
def _sphere_kernel(r, r0, m):
    """Heller & van Hulsteyn (1992) field per unit (-mu0/4pi dI/dt), summed over dipoles.

    Component-first arrays broadcast against each other, the last axis running over dipoles:
    ``r`` (3, ..., 1) field points and ``r0`` (3, ..., D) dipole positions, both relative to
    the sphere centre (m); ``m`` (3, ..., D) moments (m^2). With ``a = r0 - r`` and
    ``F = |a| (|r0| |a| + r0.a)``: ``E = (F r x m - (m . grad F) r x r0) / F^2``, where
    ``grad F = (|a|^2/|r0| + 2|a| + 2|r0| + r0.a/|a|) r0 - (|a| + 2|r0| + r0.a/|a|) r``;
    computed as ``r x sum_dipoles(m / F - (m . grad F) r0 / F^2)``. Returns (3, ...).
    """
    ax, ay, az = r0[0] - r[0], r0[1] - r[1], r0[2] - r[2]
    norm_a = np.sqrt(ax * ax + ay * ay + az * az)
    norm_r0 = np.sqrt(r0[0] * r0[0] + r0[1] * r0[1] + r0[2] * r0[2])
    r0_dot_a = r0[0] * ax + r0[1] * ay + r0[2] * az
    inv_f = 1.0 / (norm_a * (norm_r0 * norm_a + r0_dot_a))
    c_r = norm_a + 2.0 * norm_r0 + r0_dot_a / norm_a
    c_r0 = norm_a * norm_a / norm_r0 + norm_a + c_r
    m_dot_grad = (c_r0 * (m[0] * r0[0] + m[1] * r0[1] + m[2] * r0[2])
                  - c_r * (m[0] * r[0] + m[1] * r[1] + m[2] * r[2]))
    scale = m_dot_grad * inv_f * inv_f
    wx = (m[0] * inv_f - scale * r0[0]).sum(-1)
    wy = (m[1] * inv_f - scale * r0[1]).sum(-1)
    wz = (m[2] * inv_f - scale * r0[2]).sum(-1)
    rx, ry, rz = r[0][..., 0], r[1][..., 0], r[2][..., 0]
    return np.stack([ry * wz - rz * wy, rz * wx - rx * wz, rx * wy - ry * wx])


def sphere_efield(points_mm, dipole_positions_mm, dipole_moments_m2, centre_mm,
                  didt_a_per_us: float = DEFAULT_DIDT_A_PER_US, *,
                  chunk_pairs: int = CHUNK_PAIRS, processes: int = 1) -> np.ndarray:
    """Total E-field (V/m) inside a spherically symmetric conductor from outside magnetic dipoles.

    Parameters
    ----------
    points_mm : array-like (P, 3) or (3,)
        Field points inside the conductor, world mm.
    dipole_positions_mm : array-like (D, 3)
        Dipole positions (outside the conductor), world mm.
    dipole_moments_m2 : array-like (D, 3)
        Moments per ampere of coil current, m^2.
    centre_mm : array-like (3,)
        Centre of the sphere, world mm.
    didt_a_per_us : float
        Rate of change of the coil current, A/us.
    chunk_pairs : int
        Point-dipole pairs evaluated at once (bounds memory: ~100 bytes a pair).
    processes : int
        Processes the chunks of points are shared out among (forked copies of this one,
        :func:`tmstarget.workflows.parallel.run_parts`); each point's field is the same bits
        whichever process computes it.

    Returns
    -------
    ndarray (P, 3)
        E in V/m.
    """
    points = np.atleast_2d(np.asarray(points_mm, dtype=float))
    centre = np.asarray(centre_mm, dtype=float)
    r0 = (np.asarray(dipole_positions_mm, dtype=float) - centre) * 1e-3
    moments = np.asarray(dipole_moments_m2, dtype=float)
    r = ((points - centre) * 1e-3).T[:, :, None]  # (3, P, 1)
    r0, moments = r0.T[:, None, :].copy(), moments.T[:, None, :].copy()  # (3, 1, D)
    step = max(1, chunk_pairs // max(r0.shape[-1], 1))
    starts = range(0, len(points), step)
    processes = max(1, min(int(processes), len(starts)))
    # written by every process: memory they share when there are several
    field = shared_array((len(points), 3), float) if processes > 1 else np.empty((len(points), 3))

    def compute(chunk_starts):
        for start in chunk_starts:
            rows = slice(start, start + step)
            field[rows] = _sphere_kernel(r[:, rows], r0, moments).T

    run_parts([functools.partial(compute, starts[part::processes]) for part in range(processes)])
    return -MU0_OVER_4PI * didt_a_per_us * 1e6 * field


def efield_at_poses(model: CoilModel, poses, point_mm, centre_mm,
                    didt_a_per_us: float = DEFAULT_DIDT_A_PER_US) -> np.ndarray:
    """E-field (V/m) at one point for each of K coil poses, vectorized over poses.

    Parameters
    ----------
    model : CoilModel
    poses : array-like (K, 4, 4)
        Coil poses (``matsimnibs`` layout), world mm.
    point_mm, centre_mm : array-like (3,)
        The point and the sphere centre, world mm.

    Returns
    -------
    ndarray (K, 3)
    """
    poses = np.asarray(poses, dtype=float).reshape(-1, 4, 4)
    centre = np.asarray(centre_mm, dtype=float)
    r = ((np.asarray(point_mm, dtype=float) - centre) * 1e-3)[:, None, None]
    field = np.empty((len(poses), 3))
    step = max(1, CHUNK_PAIRS // len(model.positions_mm))
    for start in range(0, len(poses), step):
        chunk = poses[start:start + step]
        rotation = chunk[:, :3, :3]
        # Component-first (3, K, D) arrays.
        positions = (np.einsum("kij,dj->ikd", rotation, model.positions_mm)
                     + (chunk[:, :3, 3] - centre).T[:, :, None]) * 1e-3
        moments = np.einsum("kij,dj->ikd", rotation, model.moments_m2)
        field[start:start + step] = _sphere_kernel(r, positions, moments).T
    return -MU0_OVER_4PI * didt_a_per_us * 1e6 * field


# --------------------------------------------------------------------------------------------
# The local sphere
# --------------------------------------------------------------------------------------------
def fit_sphere(points_mm) -> tuple[np.ndarray, float, float]:
    """Least-squares sphere through points: algebraic fit, refined geometrically.

    The algebraic fit solves ``|x|^2 = 2 c.x + (R^2 - |c|^2)`` linearly; it starts a
    Levenberg-Marquardt minimisation of the geometric residuals ``|x - c| - R``
    (``scipy.optimize.least_squares``).

    Returns
    -------
    centre_mm : ndarray (3,)
    radius_mm : float
    rms_mm : float
        Root mean square distance of the points from the sphere.
    """
    points = np.asarray(points_mm, dtype=float)
    if len(points) < 4:
        raise ValueError(f"a sphere needs at least 4 points, got {len(points)}")
    design = np.column_stack([2 * points, np.ones(len(points))])
    solution, *_ = np.linalg.lstsq(design, (points ** 2).sum(axis=1), rcond=None)
    centre = solution[:3]
    radius = np.sqrt(max(solution[3] + centre @ centre, 1e-12))

    def residuals(params):
        return np.linalg.norm(points - params[:3], axis=1) - params[3]

    result = least_squares(residuals, np.r_[centre, radius], method="lm")
    centre, radius = result.x[:3], abs(float(result.x[3]))
    rms = float(np.sqrt(np.mean(residuals(np.r_[centre, radius]) ** 2)))
    return centre, radius, rms


def local_sphere(vertices_mm, point_mm, radius_mm: float = SPHERE_FIT_RADIUS_MM,
                 min_vertices: int = 30) -> dict:
    """Sphere fitted to the surface vertices within ``radius_mm`` of ``point_mm``.

    Applied to the scalp mesh around the coil centre (what tmstarget has for every head). Under
    the coil the scalp, skull and inner skull are roughly parallel surfaces, and parallel
    surfaces of a sphere are concentric: their local centres of curvature agree, and only the
    centre enters the field (:func:`sphere_efield`). Pass the vertices of another surface (an
    inner-skull or brain-mask mesh) to fit to it instead.

    Returns
    -------
    dict
        ``centre_mm`` (3,), ``radius_mm``, ``rms_mm`` (fit residual), ``n_vertices``.

    Raises
    ------
    ValueError
        If fewer than ``min_vertices`` vertices lie within ``radius_mm``.
    """
    vertices = np.asarray(vertices_mm, dtype=float)
    near = vertices[np.linalg.norm(vertices - np.asarray(point_mm, dtype=float), axis=1)
                    <= radius_mm]
    if len(near) < min_vertices:
        raise ValueError(f"only {len(near)} surface vertices within {radius_mm} mm of "
                         f"{np.round(point_mm, 1).tolist()}: too few to fit a sphere")
    centre, radius, rms = fit_sphere(near)
    return {"centre_mm": centre, "radius_mm": radius, "rms_mm": rms, "n_vertices": len(near)}


# --------------------------------------------------------------------------------------------
# Orientation by the field
# --------------------------------------------------------------------------------------------
def _poses_for_angles(point, normal, angles_deg, coil_offset_mm, posterior, left_right):
    """:func:`coil_pose` for many handle angles at once (K, 4, 4).

    ``coil_pose`` turns the handle in the tangent plane, ``y = cos(t) y0 + sin(t) y90`` with y0
    and y90 its handles at 0 and 90 degrees, and sets ``x = y x z``; so do we.
    """
    at_0, at_90 = (coil_pose(point, normal, angle, coil_offset_mm, posterior=posterior,
                             left_right=left_right) for angle in (0.0, 90.0))
    theta = np.radians(np.asarray(angles_deg, dtype=float))[:, None]
    y_axis = np.cos(theta) * at_0[:3, 1] + np.sin(theta) * at_90[:3, 1]
    z_axis = np.broadcast_to(at_0[:3, 2], y_axis.shape)
    poses = np.broadcast_to(at_0, (len(theta), 4, 4)).copy()
    poses[:, :3, 0] = np.cross(y_axis, z_axis)
    poses[:, :3, 1] = y_axis
    return poses


def sweep_handle_angle(model: CoilModel, scalp_point, scalp_normal, target_mm, centre_mm, *,
                       angles_deg=SWEEP_ANGLES_DEG, coil_offset_mm: float = 0.0,
                       posterior=POSTERIOR, left_right=LEFT_TO_RIGHT,
                       didt_a_per_us: float = DEFAULT_DIDT_A_PER_US,
                       shift_centres=None, prefer_angle_deg: float | None = None,
                       tolerance: float = 0.0) -> dict:
    """The coil pose, among handle angles (and optional centre shifts), with the largest |E| at
    the target.

    The criterion is the field MAGNITUDE at the target: it needs no cortical normal, is what
    TANS and BOONStim maximise, and does not depend on the pulse's polarity (biphasic pulses
    reverse the field). Handle angles follow :func:`tmstarget.workflows.coil.coil_pose`
    (degrees from the head's posterior direction in the scalp's tangent plane, positive
    laterally); the magnitude of this symmetric coil repeats every 180 degrees, so -90 to 90
    covers all poses and the handle points backwards (the clinical side).

    Parameters
    ----------
    model : CoilModel
    scalp_point, scalp_normal : array-like (3,)
        Coil centre on the scalp (world mm) and the OUTWARD scalp normal there.
    target_mm : array-like (3,)
        Cortical target, world mm.
    centre_mm : array-like (3,)
        Centre of the local sphere (:func:`local_sphere`).
    angles_deg : array-like
        Handle angles searched.
    coil_offset_mm, posterior, left_right
        As :func:`tmstarget.workflows.coil.coil_pose`.
    didt_a_per_us : float
    shift_centres : sequence of (point (3,), normal (3,)), optional
        Further coil centres on the scalp to search (e.g. points within a few mm of
        ``scalp_point`` projected onto the scalp); each with all angles, the same sphere.
    prefer_angle_deg : float, optional
        Tie-break: among the poses within ``tolerance`` of the largest |E|, the one whose
        angle is closest (modulo 180 degrees) to this one (e.g. the clinical 45). For a target
        on the coil's axis the magnitude hardly depends on the angle in a sphere, and an argmax
        would pick an arbitrary one.
    tolerance : float
        Relative tolerance of that tie-break (0.01: within 1 % of the maximum).

    Returns
    -------
    dict
        ``handle_angle_deg`` (float), ``efield_v_per_m`` (|E| at the target, float),
        ``efield_vector_v_per_m`` (3,), ``pose`` (4, 4), ``scalp_point`` (3,) of the best pose;
        ``angles_deg`` and ``magnitude_v_per_m`` (|E| at the target for each angle at
        ``scalp_point``, the profile).
    """
    angles = np.asarray(angles_deg, dtype=float)
    centres = [(np.asarray(scalp_point, float), np.asarray(scalp_normal, float))]
    centres += [(np.asarray(p, float), np.asarray(n, float)) for p, n in (shift_centres or ())]
    fields, points, profile = [], [], None
    for point, normal in centres:
        poses = _poses_for_angles(point, normal, angles, coil_offset_mm, posterior, left_right)
        field = efield_at_poses(model, poses, target_mm, centre_mm, didt_a_per_us)
        fields.append((poses, field))
        points.append(point)
        if profile is None:
            profile = np.linalg.norm(field, axis=1)
    magnitude = np.concatenate([np.linalg.norm(field, axis=1) for _, field in fields])
    candidates = np.flatnonzero(magnitude >= (1.0 - tolerance) * magnitude.max())
    if prefer_angle_deg is None:
        k = int(np.argmax(magnitude))
    else:
        off = (np.tile(angles, len(centres))[candidates] - prefer_angle_deg + 90.0) % 180.0 - 90.0
        # closest angle first, then the larger field
        k = int(candidates[np.lexsort((-magnitude[candidates], np.abs(off)))[0]])
    which, index = divmod(k, len(angles))
    poses, field = fields[which]
    best = {"handle_angle_deg": float(angles[index]), "efield_v_per_m": float(magnitude[k]),
            "efield_vector_v_per_m": field[index], "pose": poses[index],
            "scalp_point": points[which]}
    best.update(angles_deg=angles, magnitude_v_per_m=profile)
    return best


# --------------------------------------------------------------------------------------------
# Dose
# --------------------------------------------------------------------------------------------
def efield_dose(efield_target_v_per_m: float, efield_motor_v_per_m: float,
                motor_threshold_pct_mso: float | None = None) -> dict:
    """Stimulator output giving the target the field the motor hotspot gets at motor threshold.

    The field is proportional to the output (dI/dt scales with the capacitor voltage), so the
    output at the target is ``MT * E_motor / E_target``, both fields computed per the same
    dI/dt, each with its own coil pose (E-field-based dosing; compare the Stokes et al. 2007
    depth adjustment, :func:`tmstarget.workflows.coil.depth_dose_adjustment`).

    Returns
    -------
    dict
        ``pct_mt``: the output at the target in % of the motor threshold (100 E_motor /
        E_target); ``pct_mso``: in % of maximum stimulator output when
        ``motor_threshold_pct_mso`` is given (else NaN). NaN where a field is not positive.
    """
    target, motor = float(efield_target_v_per_m), float(efield_motor_v_per_m)
    if not (np.isfinite(target) and np.isfinite(motor) and target > 0 and motor > 0):
        return {"pct_mt": float("nan"), "pct_mso": float("nan")}
    ratio = motor / target
    threshold = float("nan") if motor_threshold_pct_mso is None else float(motor_threshold_pct_mso)
    return {"pct_mt": 100.0 * ratio, "pct_mso": threshold * ratio}


# --------------------------------------------------------------------------------------------
# Field maps
# --------------------------------------------------------------------------------------------
def efield_magnitude(points_mm, model: CoilModel, pose, centre_mm,
                     didt_a_per_us: float = DEFAULT_DIDT_A_PER_US) -> np.ndarray:
    """|E| (V/m) at world points (P, 3) for a coil pose, in the sphere centred at ``centre_mm``."""
    positions, moments = model.in_world(pose)
    field = sphere_efield(points_mm, positions, moments, centre_mm, didt_a_per_us)
    return np.linalg.norm(field, axis=1)


def efield_map(shape, affine, model: CoilModel, pose, centre_mm, *, mask=None,
               max_distance_mm: float | None = None,
               didt_a_per_us: float = DEFAULT_DIDT_A_PER_US) -> np.ndarray:
    """|E| (V/m) on a voxel grid, float32, 0 where not computed.

    Parameters
    ----------
    shape : tuple of 3 int
    affine : ndarray (4, 4)
        Voxel-to-world (mm) affine of the grid.
    mask : ndarray of bool, optional
        Voxels to compute (e.g. the brain); default all.
    max_distance_mm : float, optional
        Compute only voxels within this distance of the coil centre (the sphere model holds
        near the coil, and far away the field is small).
    """
    shape = tuple(int(n) for n in shape[:3])
    selected = np.ones(shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    ijk = np.argwhere(selected)
    points = ijk @ np.asarray(affine, float)[:3, :3].T + np.asarray(affine, float)[:3, 3]
    if max_distance_mm is not None:
        keep = np.linalg.norm(points - np.asarray(pose)[:3, 3], axis=1) <= max_distance_mm
        ijk, points = ijk[keep], points[keep]
    out = np.zeros(shape, dtype=np.float32)
    out[tuple(ijk.T)] = efield_magnitude(points, model, pose, centre_mm, didt_a_per_us)
    return out


#: The 8 corners of a lattice cell, (8, 3) offsets in lattice steps.
_CELL_CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])


def efield_map_interpolated(shape, affine, model: CoilModel, pose, centre_mm, *, mask=None,
                            max_distance_mm: float | None = None,
                            didt_a_per_us: float = DEFAULT_DIDT_A_PER_US,
                            stride: int | None = None, to_field_space=None,
                            processes: int = 1) -> np.ndarray:
    """|E| (V/m) on a voxel grid, float32, 0 where not computed: the field evaluated on a coarser
    lattice of the grid and interpolated onto the voxels.

    The same map as :func:`efield_map` at a fraction of the cost: the E-field VECTOR is computed
    on the nodes of every ``stride``-th voxel (only those of the lattice cells that hold a masked
    voxel) and each masked voxel gets the trilinear interpolation of its cell's eight node
    vectors, then the magnitude (interpolating the components, not |E|, keeps the map smooth
    where the field turns). The field in the head varies over centimetres, so nodes every
    :data:`MAP_LATTICE_MM` mm stay within about 1 % of the map's maximum of the voxel-by-voxel
    map (tests/test_efield_plan.py); on a 2 mm grid this evaluates ~8 times fewer points.

    Parameters
    ----------
    shape, affine, mask, max_distance_mm, didt_a_per_us
        As :func:`efield_map`; the distance to the coil is measured in the field's space.
    model : CoilModel
    pose : array-like (4, 4)
        Coil pose, world mm of the FIELD's space (that of ``to_field_space``'s output).
    centre_mm : array-like (3,)
        Sphere centre, world mm of the field's space.
    stride : int, optional
        Lattice step in voxels; default the largest whole number of the grid's smallest voxel
        size within :data:`MAP_LATTICE_MM` (2 on a 2 mm grid, 1 on a grid of 2.5 mm or more).
    to_field_space : callable, optional
        Maps world points (N, 3) of the grid into the space of ``pose`` and ``centre_mm`` (e.g.
        :func:`tmstarget.workflows.transforms.map_points` with a transform); default: the grid
        is in that space. Called once, on the lattice nodes; a voxel's position in the field's
        space is interpolated like its field.
    processes : int
        Processes the nodes' field is computed with (:func:`sphere_efield`); the same map for
        any number.

    Returns
    -------
    ndarray, float32, ``shape``
    """
    shape = tuple(int(n) for n in shape[:3])
    affine = np.asarray(affine, dtype=float)
    out = np.zeros(shape, dtype=np.float32)
    selected = np.ones(shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    ijk = np.argwhere(selected)
    if not len(ijk):
        return out
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if stride is None:
        stride = max(1, int(np.floor(MAP_LATTICE_MM / zooms.min() + 1e-6)))
    stride = int(stride)

    # Each voxel's cell (lattice index of its lower corner) and place in it (0 to <1 per axis);
    # the nodes are the corners of the cells holding a voxel, numbered through a dense lattice.
    cell = ijk // stride
    fraction = (ijk - cell * stride) / stride
    lattice_shape = tuple(n // stride + 2 for n in shape)
    needed = np.zeros(lattice_shape, dtype=bool)
    for corner in _CELL_CORNERS:
        needed[tuple((cell + corner).T)] = True
    node_ijk = np.argwhere(needed)
    number = np.zeros(lattice_shape, dtype=np.int64)
    number[needed] = np.arange(len(node_ijk))
    which = np.stack([number[tuple((cell + corner).T)] for corner in _CELL_CORNERS], axis=1)
    node_world = node_ijk * stride @ affine[:3, :3].T + affine[:3, 3]
    node_points = (node_world if to_field_space is None
                   else np.asarray(to_field_space(node_world), dtype=float))

    coil_centre = np.asarray(pose, dtype=float)[:3, 3]
    computed = np.isfinite(node_points).all(axis=1)
    if max_distance_mm is not None:
        # a node may serve a voxel up to one cell diagonal nearer the coil than itself
        reach = max_distance_mm + stride * zooms.max() * np.sqrt(3.0)
        computed &= np.linalg.norm(node_points - coil_centre, axis=1) <= reach
    node_field = np.zeros((len(node_ijk), 3))
    positions, moments = model.in_world(pose)
    node_field[computed] = sphere_efield(node_points[computed], positions, moments, centre_mm,
                                         didt_a_per_us, processes=processes)

    # Trilinear weights of the eight corners, in the order of _CELL_CORNERS.
    weights = np.prod(np.where(_CELL_CORNERS[None], fraction[:, None, :],
                               1.0 - fraction[:, None, :]), axis=2)
    field = np.einsum("pc,pcj->pj", weights, node_field[which])
    values = np.linalg.norm(field, axis=1)
    if max_distance_mm is not None:
        finite_points = np.where(computed[:, None], node_points, 0.0)
        points = np.einsum("pc,pcj->pj", weights, finite_points[which])
        values[np.linalg.norm(points - coil_centre, axis=1) > max_distance_mm] = 0.0
    values[~computed[which].all(axis=1)] = 0.0
    out[tuple(ijk.T)] = values
    return out


# --------------------------------------------------------------------------------------------
# Depth and focality (Deng et al. 2013)
# --------------------------------------------------------------------------------------------
def half_value_metrics(model: CoilModel, *, head_radius_mm: float = 85.0,
                       brain_radius_mm: float = 70.0, spacing_mm: float = 1.0,
                       didt_a_per_us: float = DEFAULT_DIDT_A_PER_US) -> dict:
    """Half-value depth d1/2 and tangential spread S1/2 of a coil on a sphere (Deng et al. 2013).

    Deng et al.'s set-up: a spherical head of radius 8.5 cm, the brain the concentric sphere
    1.5 cm below the scalp (radius 7 cm), the coil on the scalp at the vertex. ``E_max`` is the
    largest |E| in the brain, d1/2 the radial distance from the brain surface to the deepest
    point where |E| >= E_max / 2, V1/2 the brain volume where |E| >= E_max / 2 and
    S1/2 = V1/2 / d1/2. Here the deepest point is searched on the coil's axis (bisection; the
    symmetric figure-of-eight's field decays slowest there) and V1/2 is counted on a grid of
    ``spacing_mm`` over one quadrant (the field magnitude is symmetric in x and y).

    Returns
    -------
    dict
        ``e_max_v_per_m``, ``d_half_cm``, ``v_half_cm3``, ``s_half_cm2``.
    """
    pose = np.array([[-1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, -1.0, head_radius_mm],
                     [0, 0, 0, 1.0]])
    centre = np.zeros(3)
    positions, moments = model.in_world(pose)

    def magnitude(points):
        return np.linalg.norm(sphere_efield(points, positions, moments, centre, didt_a_per_us),
                              axis=1)

    e_max = float(magnitude([[0.0, 0.0, brain_radius_mm]])[0])
    low, high = 0.0, brain_radius_mm  # |E| on the axis at `low` < half, at `high` >= half
    for _ in range(40):
        middle = 0.5 * (low + high)
        if magnitude([[0.0, 0.0, middle]])[0] >= 0.5 * e_max:
            high = middle
        else:
            low = middle
    d_half = brain_radius_mm - high

    # One quadrant of cell centres, from the brain surface to just below the deepest point.
    xs = np.arange(0.5 * spacing_mm, brain_radius_mm, spacing_mm)
    zs = np.arange(brain_radius_mm - 0.5 * spacing_mm, high - 2 * spacing_mm, -spacing_mm)
    gx, gy, gz = np.meshgrid(xs, xs, zs, indexing="ij")
    points = np.column_stack([gx.ravel(), gy.ravel(), gz.ravel()])
    points = points[np.linalg.norm(points, axis=1) <= brain_radius_mm]
    values = magnitude(points)
    e_max = max(e_max, float(values.max()))
    volume_mm3 = 4.0 * np.count_nonzero(values >= 0.5 * e_max) * spacing_mm ** 3
    return {"e_max_v_per_m": e_max, "d_half_cm": d_half / 10.0,
            "v_half_cm3": volume_mm3 / 1000.0, "s_half_cm2": volume_mm3 / d_half / 100.0}
