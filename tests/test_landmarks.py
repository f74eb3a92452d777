"""Scalp-based comparators: geodesics, the 10-20 construction, Beam F3, the 5 cm rule and the
ScalpTargets interface, on synthetic heads of known geometry (world millimetres, RAS) and, where
../shared is present, on the MNI152NLin2009cAsym head.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from nibabel.affines import apply_affine, voxel_sizes

from tmstarget.workflows import landmarks
from tmstarget.workflows.comparators import ScalpLandmarks, ScalpTargets
from tmstarget.workflows.greymatter import (
    cortical_point_beneath,
    grey_matter_points,
    snap_to_grey_matter,
)
from tmstarget.workflows.head import head_mask
from tmstarget.workflows.landmarks import (
    F3_PUBLISHED_MNI,
    FIDUCIALS_MNI,
    MOTOR_HAND_MNI,
    beam_f3,
    five_cm_rule,
    head_measurements,
    place_beam_f3,
    place_fiducials,
    ten_twenty_f3,
)
from tmstarget.workflows.scalp import project_to_scalp, scalp_mesh
from tmstarget.workflows.surface import (
    geodesic_path,
    point_at_distance,
    point_at_fraction,
    polyline_length,
    section_curve,
    snap_to_scalp,
)

TEMPLATE_DIR = (Path(__file__).resolve().parents[2] / "shared" / "data" / "templateflow"
                / "tpl-MNI152NLin2009cAsym")
MNI_T1W = TEMPLATE_DIR / "tpl-MNI152NLin2009cAsym_res-02_T1w.nii.gz"

# --------------------------------------------------------------------------------------------
# Synthetic heads
# --------------------------------------------------------------------------------------------
RADIUS = 90.0
CENTRE = np.array([2.0, -10.0, 5.0])  # off the origin: a dropped translation shows


def grid(lo, hi, zoom):
    shape = tuple(int(n) for n in np.ceil((np.asarray(hi) - lo) / zoom) + 1)
    affine = np.diag([zoom, zoom, zoom, 1.0])
    affine[:3, 3] = lo
    return affine, shape


def world(affine, shape):
    return apply_affine(affine, np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)


def flip_x(data, affine):
    """The same image stored with the first voxel axis reversed (RAS -> LAS)."""
    flipped = affine.copy()
    flipped[:3, 0] = -affine[:3, 0]
    flipped[:3, 3] = affine[:3, 3] + affine[:3, 0] * (data.shape[0] - 1)
    return data[::-1].copy(), flipped


@lru_cache(maxsize=None)
def sphere(storage="ras"):
    """Scalp mesh of a ball of radius RADIUS (2 mm grid), its effective radius, fiducials."""
    affine, shape = grid(CENTRE - RADIUS - 8, CENTRE + RADIUS + 8, 2.0)
    mask = np.linalg.norm(world(affine, shape) - CENTRE, axis=-1) <= RADIUS
    if storage == "las":
        mask, affine = flip_x(mask, affine)
    vertices, faces, normals = scalp_mesh(mask, affine)
    radius = float(np.linalg.norm(vertices - CENTRE, axis=1).mean())
    fiducials = CENTRE + RADIUS * np.array([[0, 1, 0], [0, -1, 0], [-1, 0, 0], [1, 0, 0]], float)
    return vertices, faces, normals, radius, fiducials


def analytic_sphere_1020(radius):
    """10-20 points on a sphere (centre at the origin) with Nz, Iz, LPA, RPA on its equator.

    Midline and coronal curves are great circles through the top (Cz). Fpz and Fz lie 10 % and
    30 % of the half great circle (180 degrees) from Nz: 18 and 54 degrees of elevation; T7 18
    degrees above LPA. Fpz, T7 and Oz all lie at height R sin 18, so the left circumferential
    curve is the horizontal circle of radius R cos 18 there, and F7, 30 % of its half from Fpz,
    is at azimuth 90 + 0.3 * 180 = 144 degrees. The curve F7-Fz-F8 is the circle cut by the
    plane through those three points (centre: the sphere centre projected onto that plane); F3
    is the midpoint of its arc F7-Fz: along the bisector of the two radii.
    """
    s, c = np.sin(np.radians(18)), np.cos(np.radians(18))
    fz = radius * np.array([0.0, np.cos(np.radians(54)), np.sin(np.radians(54))])
    f7 = np.array([radius * c * np.cos(np.radians(144)), radius * c * np.sin(np.radians(144)),
                   radius * s])
    f8 = f7 * [-1, 1, 1]
    normal = np.cross(fz - f7, f8 - f7)
    normal /= np.linalg.norm(normal)
    centre = np.dot(f7, normal) * normal
    bisector = (f7 - centre) + (fz - centre)
    f3 = centre + np.linalg.norm(f7 - centre) * bisector / np.linalg.norm(bisector)
    return {"Cz": np.array([0.0, 0.0, radius]), "Fz": fz, "F7": f7, "F8": f8, "F3": f3,
            "F4": f3 * [-1, 1, 1], "Fpz": radius * np.array([0.0, c, s]),
            "T7": radius * np.array([-c, 0.0, s])}


# --------------------------------------------------------------------------------------------
# Beam F3 formula
# --------------------------------------------------------------------------------------------
def test_beam_worked_example():
    """Beam et al. 2009 web calculator: TT 36, NI 38, HC 60 cm -> X 6.95 cm, Y 9.79 cm."""
    x, y = beam_f3(36.0, 38.0, 60.0)
    assert x == pytest.approx(6.95, abs=0.01)
    assert y == pytest.approx(9.79, abs=0.01)
    with pytest.raises(ValueError):
        beam_f3(0.0, 38.0, 60.0)


# --------------------------------------------------------------------------------------------
# Polylines and geodesics
# --------------------------------------------------------------------------------------------
def test_polyline_helpers():
    line = np.array([[0.0, 0, 0], [10, 0, 0], [10, 20, 0]])
    assert polyline_length(line) == 30.0
    np.testing.assert_allclose(point_at_fraction(line, 0.5), [10, 5, 0])
    np.testing.assert_allclose(point_at_distance(line, 5.0), [5, 0, 0])
    np.testing.assert_allclose(point_at_distance(line, 99.0), [10, 20, 0])  # clamped
    np.testing.assert_allclose(point_at_fraction(line, 0.0), [0, 0, 0])


def test_geodesic_on_sphere_is_great_circle():
    """Length R x angle within 2 % (0.5 % in practice), on the surface, in the great-circle
    plane; the Dijkstra edge path alone is several per cent too long."""
    vertices, faces, _, radius, _ = sphere()
    rng = np.random.default_rng(1)
    for _ in range(4):
        a, b = (unit for unit in rng.normal(size=(2, 3)))
        a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
        angle = np.arccos(np.clip(a @ b, -1, 1))
        start = time.perf_counter()
        path, length = geodesic_path(vertices, faces, CENTRE + RADIUS * a, CENTRE + RADIUS * b)
        assert time.perf_counter() - start < 1.5
        assert length == pytest.approx(radius * angle, rel=0.02)
        assert length == pytest.approx(radius * angle, rel=0.005)
        assert length == pytest.approx(polyline_length(path))
        np.testing.assert_allclose(np.linalg.norm(path - CENTRE, axis=1), radius, atol=1.0)
        plane = np.cross(a, b) / np.linalg.norm(np.cross(a, b))
        assert np.abs((path - CENTRE) @ plane).max() < 1.5
        middle = point_at_fraction(path, 0.5)
        expected = CENTRE + radius * (a + b) / np.linalg.norm(a + b)
        assert np.linalg.norm(middle - expected) < 1.5
    _, rough = geodesic_path(vertices, faces, CENTRE + RADIUS * a, CENTRE + RADIUS * b,
                             refine=False)
    assert rough > length


def test_section_curve_on_sphere():
    """A plane section through three points of a great circle: a half great circle."""
    vertices, faces, _, radius, (nz, iz, lpa, rpa) = sphere()
    top = CENTRE + [0, 0, RADIUS]
    curve = section_curve(vertices, faces, nz, top, iz)
    assert polyline_length(curve) == pytest.approx(np.pi * radius, rel=0.01)
    assert (curve[:, 2] > CENTRE[2] - 2).all()  # over the top, not under the chin
    np.testing.assert_allclose(curve[:, 0], CENTRE[0], atol=0.5)
    # Through the other side when asked.
    bottom = section_curve(vertices, faces, nz, CENTRE - [0, 0, RADIUS], iz)
    assert (bottom[:, 2] < CENTRE[2] + 2).all()


# --------------------------------------------------------------------------------------------
# 10-20 construction
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["ras", "las"])
def test_ten_twenty_on_sphere_matches_analytic(storage):
    """F3 within a few mm of the analytic sphere position, on the LEFT (x < 0) and anterior;
    F4 its mirror; the same world answer whatever the voxel order of the image (LAS)."""
    vertices, faces, _, radius, fiducials = sphere(storage)
    placed, distance, snapped = place_fiducials(fiducials, vertices, faces)
    assert snapped.all() and distance.max() < 2.0
    start = time.perf_counter()
    points = ten_twenty_f3(vertices, faces, *placed)
    assert time.perf_counter() - start < 3.0
    expected = analytic_sphere_1020(radius)
    for name, position in expected.items():
        assert np.linalg.norm(points[name] - CENTRE - position) < 2.5, name
    f3 = points["F3"] - CENTRE
    assert f3[0] < -30 and f3[1] > 30 and f3[2] > 30
    assert points["F4"][0] - CENTRE[0] > 30
    assert points["F7"][0] < CENTRE[0] < points["F8"][0]
    assert points["T7"][0] < CENTRE[0] < points["T8"][0]
    assert points["C3"][0] < CENTRE[0] < points["C4"][0]


def test_head_measurements_on_sphere():
    """NI and TT: half great circles (pi R); HC: the circle at the 10 % level (2 pi R cos 18)."""
    vertices, faces, _, radius, fiducials = sphere()
    placed, _, _ = place_fiducials(fiducials, vertices, faces)
    measures = head_measurements(vertices, faces, *placed)
    assert measures["NI"] == pytest.approx(np.pi * radius / 10, rel=0.01)
    assert measures["TT"] == pytest.approx(np.pi * radius / 10, rel=0.01)
    assert measures["HC"] == pytest.approx(2 * np.pi * radius * np.cos(np.radians(18)) / 10,
                                           rel=0.01)


def test_beam_placement_on_sphere():
    """Point X at arc X from Fpz on the left circumference; F3 at geodesic distance Y from Cz
    towards it; both on the left, F3 anterior."""
    vertices, faces, _, radius, fiducials = sphere()
    placed, _, _ = place_fiducials(fiducials, vertices, faces)
    beam = place_beam_f3(vertices, faces, *placed, details=True)
    np.testing.assert_allclose(place_beam_f3(vertices, faces, *placed), beam["F3"])
    x_cm, y_cm = beam_f3(beam["TT"], beam["NI"], beam["HC"])
    assert (beam["X_cm"], beam["Y_cm"]) == (x_cm, y_cm)
    # P on the 10 % circle, at azimuth 90 + X / (R cos 18) (radians) from the front.
    rho, height = radius * np.cos(np.radians(18)), radius * np.sin(np.radians(18))
    azimuth = np.pi / 2 + 10 * x_cm / rho
    expected_p = [rho * np.cos(azimuth), rho * np.sin(azimuth), height]
    assert np.linalg.norm(beam["P"] - CENTRE - expected_p) < 2.0
    f3 = beam["F3"] - CENTRE
    cz = np.array([0.0, 0.0, radius])
    angle = np.arccos(np.clip(f3 @ cz / np.linalg.norm(f3) / radius, -1, 1))
    assert radius * angle == pytest.approx(10 * y_cm, rel=0.02)
    assert f3[0] < -20 and f3[1] > 20
    assert beam["P"][0] < CENTRE[0]


def test_five_cm_rule_on_sphere():
    """50 mm forwards along the parasagittal circle through the motor scalp point."""
    vertices, faces, _, radius, (nz, iz, _, _) = sphere()
    direction = np.array([-0.45, -0.1, 0.887])
    motor = CENTRE + radius * direction / np.linalg.norm(direction)
    motor = vertices[np.argmin(np.linalg.norm(vertices - motor, axis=1))]
    point = five_cm_rule(vertices, faces, motor, nz, iz)
    assert point[0] == pytest.approx(motor[0], abs=0.5)  # same lateral offset
    assert point[1] > motor[1] + 40  # forwards
    rho = np.hypot(radius, 0) * np.sqrt(1 - ((motor[0] - CENTRE[0]) / radius) ** 2)
    u, w = motor[1:] - CENTRE[1:], point[1:] - CENTRE[1:]
    arc = rho * np.arccos(np.clip(u @ w / np.linalg.norm(u) / np.linalg.norm(w), -1, 1))
    assert arc == pytest.approx(50.0, abs=1.5)


def test_place_fiducials_keeps_points_in_the_air():
    """Near or inside the scalp: snapped to a vertex. Far outside (a removed face): kept."""
    vertices, faces, _, _, _ = sphere()
    points = CENTRE + np.array([[0, RADIUS + 3, 0], [0, RADIUS + 20, 0], [0, RADIUS - 20, 0.0]])
    placed, distance, snapped = place_fiducials(points, vertices, faces)
    assert snapped.tolist() == [True, False, True]
    np.testing.assert_allclose(placed[1], points[1])
    nearest, _ = snap_to_scalp(points, vertices)
    np.testing.assert_allclose(placed[[0, 2]], nearest[[0, 2]])
    assert distance[1] == pytest.approx(20.0, abs=1.5)


# --------------------------------------------------------------------------------------------
# Cortex beneath
# --------------------------------------------------------------------------------------------
def test_grey_matter_probseg_and_dseg():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-10, -10, -10)
    prob = np.zeros((11, 11, 11), np.float32)
    prob[2, 3, 4], prob[8, 8, 8], prob[5, 5, 5] = 0.6, 0.5, 0.49
    points = grey_matter_points(prob, affine)
    assert sorted(map(tuple, points)) == [(-6.0, -4.0, -2.0), (6.0, 6.0, 6.0)]
    dseg = np.zeros((11, 11, 11), np.int16)
    dseg[1, 1, 1], dseg[2, 2, 2], dseg[3, 3, 3] = 1, 2, 3
    np.testing.assert_allclose(grey_matter_points(dseg, affine), [[-8.0, -8.0, -8.0]])
    assert cortical_point_beneath([5.0, 5.0, 9.0], points).tolist() == [6.0, 6.0, 6.0]
    with pytest.raises(ValueError):
        cortical_point_beneath([0, 0, 0], np.empty((0, 3)))



def test_snap_to_grey_matter_moves_only_points_outside_it():
    """A point inside a grey-matter voxel keeps its sub-voxel position; one outside moves to the
    nearest grey-matter voxel centre, in world mm, whatever the orientation of the grid (LAS)."""
    for flip in (1.0, -1.0):
        affine = np.diag([flip, 1.0, 1.0, 1.0])
        affine[:3, 3] = (-20.0 * flip, -20.0, -20.0)
        prob = np.zeros((41, 41, 41), np.float32)
        prob[:, :, 25:28] = 0.9  # a ribbon 3 mm thick: world z from 5 to 7 mm
        world_ribbon_x = lambda i: affine[0, 0] * i + affine[0, 3]  # noqa: E731
        inside, below, nan = [3.3, -2.2, 6.4], [3.3, -2.2, 1.2], [np.nan] * 3
        snapped, moved = snap_to_grey_matter([inside, below, nan], prob, affine)
        np.testing.assert_array_equal(snapped[0], inside)  # sub-voxel, untouched
        assert moved[0] == 0.0
        assert snapped[1][2] == 5.0 and abs(snapped[1][0] - 3.3) <= 0.5  # up onto the ribbon
        assert world_ribbon_x(np.round((snapped[1][0] - affine[0, 3]) / affine[0, 0])) == snapped[1][0]
        assert moved[1] == pytest.approx(np.linalg.norm(snapped[1] - below))
        assert np.isnan(snapped[2]).all()
        # a dseg reads the same (label 1)
        dseg = np.where(prob > 0, 1, 2).astype(np.int16)
        np.testing.assert_array_equal(snap_to_grey_matter([inside, below], dseg, affine)[0],
                                      snapped[:2])
    with pytest.raises(ValueError):
        snap_to_grey_matter([inside], np.zeros((3, 3, 3)), np.eye(4))


# --------------------------------------------------------------------------------------------
# Interface on a synthetic head
# --------------------------------------------------------------------------------------------
# An ellipsoid head on which the published MNI fiducials lie within ~3 mm of the scalp.
HEAD_CENTRE = np.array([0.0, -17.0, -12.0])
HEAD_AXES = np.array([82.0, 101.0, 112.0])
GM_SHELL = (0.70, 0.80)  # grey matter between these fractions of the head's semi-axes


def rho(xyz, shift=0.0):
    return np.linalg.norm((np.asarray(xyz) - HEAD_CENTRE - shift) / HEAD_AXES, axis=-1)


def signed_distance(xyz, shift=0.0):
    q = (np.asarray(xyz, float) - HEAD_CENTRE - shift) / HEAD_AXES
    r = np.linalg.norm(q, axis=-1)
    return (r - 1.0) / (np.linalg.norm(q / HEAD_AXES, axis=-1) / r)


def outward(xyz, shift=0.0):
    g = (np.asarray(xyz, float) - HEAD_CENTRE - shift) / HEAD_AXES**2
    return g / np.linalg.norm(g, axis=-1, keepdims=True)


def write_head(folder, shift=np.zeros(3), gm_kind="probseg"):
    """Mesh, GM map (3 mm grid), Fisher-z map (2 mm grid) and ScalpProjection-like table of an
    ellipsoid head translated by ``shift`` (mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    lo, hi = HEAD_CENTRE + shift - HEAD_AXES - 6, HEAD_CENTRE + shift + HEAD_AXES + 6
    affine, shape = grid(lo, hi, 2.0)
    xyz = world(affine, shape)
    vertices, faces, normals = scalp_mesh(rho(xyz, shift) <= 1.0, affine)
    mesh_file = folder / "scalp_mesh.npz"
    np.savez_compressed(mesh_file, vertices=vertices, faces=faces.astype(np.int32),
                        normals=normals, affine=affine)

    z_file = folder / "z.nii.gz"
    z_map = 0.01 * (xyz[..., 0] - shift[0]) + 0.005 * (xyz[..., 1] - shift[1])
    nb.Nifti1Image(z_map.astype(np.float32), affine).to_filename(z_file)

    gm_affine, gm_shape = grid(lo, hi, 3.0)
    gm_rho = rho(world(gm_affine, gm_shape), shift)
    shell = (gm_rho >= GM_SHELL[0]) & (gm_rho <= GM_SHELL[1])
    if gm_kind == "dseg":
        gm = np.where(shell, 1, np.where(gm_rho < GM_SHELL[0], 2, 0)).astype(np.int16)
        gm_file = folder / "sub-01_dseg.nii.gz"
    else:
        gm = shell.astype(np.float32)
        gm_file = folder / "sub-01_label-GM_probseg.nii.gz"
    nb.Nifti1Image(gm, gm_affine).to_filename(gm_file)

    # The connectivity target: the GM voxel nearest a left-DLPFC-like point.
    gm_points = apply_affine(gm_affine, np.argwhere(shell))
    target = gm_points[np.argmin(np.linalg.norm(gm_points - ([-40, 38, 30] + shift), axis=1))]
    projected = project_to_scalp(target, vertices, normals, faces)
    scalp = projected["scalp_xyz"][0]
    table_file = folder / "scalp_projection.tsv"
    table_file.write_text(
        "name\tx\ty\tz\tseed_correlation_z\tcluster_size\tscalp_x\tscalp_y\tscalp_z\t"
        "scalp_distance_mm\tscalp_normal_angle_deg\n"
        f"connectivity\t{target[0]:.4f}\t{target[1]:.4f}\t{target[2]:.4f}\t-0.4321\t37\t"
        f"{scalp[0]:.2f}\t{scalp[1]:.2f}\t{scalp[2]:.2f}\t{projected['distance_mm'][0]:.2f}\t"
        f"{projected['angle_deg'][0]:.2f}\n")
    return {"targets_file": str(table_file), "mesh_file": str(mesh_file), "z_file": str(z_file),
            "gm_file": str(gm_file)}, gm_points, target


def xyz_of(row, prefix=""):
    return np.array([row[f"{prefix}x"], row[f"{prefix}y"], row[f"{prefix}z"]], dtype=float)


#: Inputs of ScalpLandmarks; ScalpTargets takes the others (and the mesh, grey matter, threshold).
LANDMARK_INPUTS = ("mesh_file", "gm_file", "gm_threshold", "from_mni_xfm")


def run_interface(tmp_path, **kwargs):
    """ScalpLandmarks then ScalpTargets, as the graph runs them."""
    landmarks = ScalpLandmarks(**{key: value for key, value in kwargs.items()
                                  if key in LANDMARK_INPUTS}).run(cwd=str(tmp_path))
    result = ScalpTargets(landmarks_file=landmarks.outputs.landmarks_file,
                          **{key: value for key, value in kwargs.items()
                             if key not in ("from_mni_xfm", "gm_file")}).run(cwd=str(tmp_path))
    table = pd.read_csv(result.outputs.out_file, sep="\t", dtype=str, keep_default_na=False)
    measurements = json.loads(Path(result.outputs.measurements_file).read_text())
    return table, measurements


@pytest.mark.parametrize("gm_kind", ["probseg", "dseg"])
def test_interface_on_synthetic_head(tmp_path, gm_kind):
    files, gm_points, target = write_head(tmp_path / "inputs", gm_kind=gm_kind)
    start = time.perf_counter()
    table, measurements = run_interface(tmp_path, **files)
    assert time.perf_counter() - start < 6.0
    assert table["name"].tolist() == ["connectivity", "F3_1020", "F3_beam", "5cm", "motor_hand"]

    # The connectivity row keeps its input values verbatim.
    original = pd.read_csv(files["targets_file"], sep="\t", dtype=str, keep_default_na=False)
    pd.testing.assert_series_equal(table.loc[0, original.columns], original.loc[0],
                                   check_names=False)
    assert (table.loc[1:, "cluster_size"] == "n/a").all()

    numeric = table.set_index("name").apply(pd.to_numeric, errors="coerce")
    motor_depth = numeric.loc["motor_hand", "scalp_distance_mm"]
    for name, row in numeric.iterrows():
        cortex, scalp, centre = xyz_of(row), xyz_of(row, "scalp_"), xyz_of(row, "coil_")
        # Scalp point on the head, coil centre on it, coil z into the head, orthonormal frame.
        assert abs(signed_distance(scalp)) < 1.5, name
        np.testing.assert_allclose(centre, scalp, atol=0.011)
        axes = np.array([[row[f"coil_{a}axis_{c}"] for c in "xyz"] for a in "xyz"])
        np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=0.03)
        assert np.linalg.det(axes) > 0.95
        assert np.dot(axes[2], -outward(scalp)) > 0.98, name
        assert axes[1][1] < 0 and axes[1][0] < 0, name  # handle posterior and lateral (left)
        # Depth and distances follow from the columns.
        assert row["scalp_distance_mm"] == pytest.approx(np.linalg.norm(cortex - scalp), abs=0.02)
        assert row["distance_to_connectivity_mm"] == pytest.approx(
            np.linalg.norm(cortex - target), abs=0.02)
        assert row["depth_adjustment_pct_mso"] == pytest.approx(
            2.8 * (row["scalp_distance_mm"] - motor_depth), abs=0.03)
        if name != "connectivity":  # (the connectivity row's value is the input's)
            assert row["seed_correlation_z"] == pytest.approx(
                0.01 * cortex[0] + 0.005 * cortex[1], abs=0.02)
        assert row["scalp_normal_angle_deg"] < 20.0
        assert 8.0 < row["scalp_distance_mm"] < 35.0

    assert numeric.loc["connectivity", "distance_to_connectivity_mm"] == 0.0
    assert numeric.loc["motor_hand", "depth_adjustment_pct_mso"] == 0.0
    for name in ("F3_1020", "F3_beam", "5cm", "motor_hand"):
        row = numeric.loc[name]
        cortex, scalp = xyz_of(row), xyz_of(row, "scalp_")
        # The cortical point is the grey-matter voxel nearest the scalp point.
        nearest = gm_points[np.argmin(np.linalg.norm(gm_points - scalp, axis=1))]
        np.testing.assert_allclose(cortex, nearest, atol=0.011)
        assert GM_SHELL[0] - 0.02 <= rho(cortex) <= GM_SHELL[1] + 0.02
    for name in ("F3_1020", "F3_beam"):
        scalp = xyz_of(numeric.loc[name], "scalp_")
        assert scalp[0] < -30 and scalp[1] > 20, name  # left, anterior
    # The motor hot spot: the scalp point nearest the M1 hand coordinate, the cortex beneath.
    motor = numeric.loc["motor_hand"]
    motor_scalp = xyz_of(motor, "scalp_")
    mesh = np.load(files["mesh_file"])
    expected = project_to_scalp(MOTOR_HAND_MNI, mesh["vertices"], mesh["normals"], mesh["faces"])
    np.testing.assert_allclose(motor_scalp, expected["scalp_xyz"][0], atol=0.011)
    nearest = gm_points[np.argmin(np.linalg.norm(gm_points - motor_scalp, axis=1))]
    np.testing.assert_allclose(xyz_of(motor), nearest, atol=0.011)
    five = xyz_of(numeric.loc["5cm"], "scalp_")
    assert five[0] == pytest.approx(motor_scalp[0], abs=2.0)
    assert 42.0 < five[1] - motor_scalp[1] and np.linalg.norm(five - motor_scalp) < 50.5

    head = measurements["HeadMeasurements_cm"]
    x_cm, y_cm = beam_f3(head["TT"], head["NI"], head["HC"])
    assert measurements["BeamF3"]["X_cm"] == pytest.approx(x_cm, abs=0.02)
    assert measurements["BeamF3"]["Y_cm"] == pytest.approx(y_cm, abs=0.02)
    assert 30 < head["NI"] < 45 and 30 < head["TT"] < 45 and 50 < head["HC"] < 70
    assert all(measurements["Fiducials"]["SnappedToScalp"].values())
    assert measurements["Fiducials"]["MNI152NLin2009cAsym_mm"]["Nz"] == list(FIDUCIALS_MNI["Nz"])
    assert set(measurements["TenTwenty_mm"]) >= {"Cz", "Fpz", "Fz", "F7", "F3", "T7"}
    assert "Beam" in measurements["BeamF3"]["Source"]
    np.testing.assert_allclose(measurements["TenTwenty_mm"]["F3"],
                               xyz_of(numeric.loc["F3_1020"], "scalp_"), atol=0.011)


def test_interface_maps_mni_points_through_the_transform(tmp_path, monkeypatch):
    """With from_mni_xfm, the MNI landmarks go through map_points: a head translated by a shift
    (and the transform adding it) gives every answer translated by the shift."""
    shift = np.array([6.0, -6.0, 6.0])  # whole voxels of both grids: identical discretization
    files, _, _ = write_head(tmp_path / "mni")
    reference, _ = run_interface(tmp_path / "mni", **files)
    shifted_files, _, _ = write_head(tmp_path / "shifted", shift=shift)
    xfm = tmp_path / "from-T1w_to-MNI_xfm.h5"
    xfm.write_bytes(b"dummy")
    calls = []

    def fake_map_points(points, xfm_file):
        calls.append(str(xfm_file))
        return np.atleast_2d(points) + shift

    monkeypatch.setattr("tmstarget.workflows.comparators.map_points", fake_map_points)
    table, measurements = run_interface(tmp_path / "shifted", from_mni_xfm=str(xfm),
                                        **shifted_files)
    assert calls == [str(xfm)]
    ref = reference.set_index("name").apply(pd.to_numeric, errors="coerce")
    out = table.set_index("name").apply(pd.to_numeric, errors="coerce")
    for prefix in ("", "scalp_", "coil_"):
        np.testing.assert_allclose(out[[f"{prefix}{c}" for c in "xyz"]].to_numpy(),
                                   ref[[f"{prefix}{c}" for c in "xyz"]].to_numpy() + shift,
                                   atol=0.3)
    np.testing.assert_allclose(out["depth_adjustment_pct_mso"], ref["depth_adjustment_pct_mso"],
                               atol=0.5)
    np.testing.assert_allclose(measurements["Fiducials"]["Mapped_mm"]["Nz"],
                               np.array(FIDUCIALS_MNI["Nz"]) + shift, atol=0.01)


def test_comparator_outside_the_bold_mask_has_no_seed_correlation(tmp_path):
    """A comparator whose cortical point lies outside the BOLD brain mask gets
    seed_correlation_z n/a and a warning naming it, not the map's value there (0 in a real
    combined map); the others keep theirs."""
    files, _, _ = write_head(tmp_path / "inputs")
    reference, _ = run_interface(tmp_path / "inputs", **files)
    ref = reference.set_index("name")
    beam = ref.loc["F3_beam", ["x", "y", "z"]].astype(float).to_numpy()
    z_img = nb.load(files["z_file"])
    xyz = world(z_img.affine, z_img.shape)
    mask = (np.linalg.norm(xyz - beam, axis=-1) > 6.0).astype(np.uint8)  # a hole at Beam F3
    mask_file = tmp_path / "inputs" / "brain_mask.nii.gz"
    nb.Nifti1Image(mask, z_img.affine).to_filename(mask_file)
    work = tmp_path / "masked"
    work.mkdir()
    table, measurements = run_interface(work, mask_files=[str(mask_file)], space="T1w", **files)
    out = table.set_index("name")
    assert out.loc["F3_beam", "seed_correlation_z"] == "n/a"
    for name in ("connectivity", "F3_1020", "5cm", "motor_hand"):
        assert out.loc[name, "seed_correlation_z"] == ref.loc[name, "seed_correlation_z"] != "n/a"
    # Everything else is unchanged: the point is still there, only its connectivity is unknown.
    pd.testing.assert_frame_equal(out.drop(columns="seed_correlation_z"),
                                  ref.drop(columns="seed_correlation_z"))
    masked = [w for w in measurements["QualityWarnings"] if "BOLD brain mask" in w]
    assert len(masked) == 1 and "F3_beam" in masked[0] and "n/a" in masked[0]
    # its point's millimetres say which space they are of
    assert "mm, T1w) lies outside the BOLD brain mask" in masked[0]


def test_fiducial_checks_defacing_cut_and_air():
    from tmstarget.workflows.landmarks import fiducial_checks

    mapped = np.array([FIDUCIALS_MNI[k] for k in ("Nz", "Iz", "LPA", "RPA")])
    on_scalp = dict(distance_mm=[1.0, 1.5, 2.0, 0.5], snapped=[True] * 4, border=[False] * 4)
    assert fiducial_checks(mapped, mapped, **on_scalp, t1w_name="T1w.nii.gz") == (True, [])
    # The nasion alone in the air (defacing): trusted, with a warning.
    trusted, warnings = fiducial_checks(mapped, mapped, [25.0, 1.5, 2.0, 0.5],
                                        [False, True, True, True], [False] * 4, t1w_name="T1w.nii.gz")
    assert trusted and len(warnings) == 1 and "defacing" in warnings[0] and "T1w.nii.gz" in warnings[0]
    # Several in the air (a head unlike the template): not trusted.
    trusted, warnings = fiducial_checks(mapped, mapped, [25.0, 15.0, 2.0, 22.0],
                                        [False, False, True, False], [False] * 4, t1w_name="T1w.nii.gz")
    assert not trusted and len(warnings) == 1
    assert all(k in warnings[0] for k in ("Nz", "Iz", "RPA")) and "LPA" not in warnings[0]
    # One on the border of the image (a cut head): not trusted, even the nasion alone.
    trusted, warnings = fiducial_checks(mapped, mapped, [7.0, 1.5, 2.0, 0.5],
                                        [False, True, True, True], [True, False, False, False],
                                        t1w_name="T1w.nii.gz")
    assert not trusted and "cut off" in warnings[0] and "Nz" in warnings[0]


# --------------------------------------------------------------------------------------------
# The real MNI152NLin2009cAsym head (only where ../shared is present)
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def mni_head(deface=None):
    img = nb.load(MNI_T1W)
    data = np.asanyarray(img.dataobj, dtype=np.float32).copy()
    if deface is not None:
        xyz = world(img.affine, data.shape)
        y, z = xyz[..., 1], xyz[..., 2]
        if deface == "box":  # everything anterior to y = 60 mm and below z = 0 mm
            removed = (y > 60) & (z < 0)
        else:  # "plane": a quickshear/pydeface-like oblique cut, nasion, eyes, nose, mouth off
            removed = (y > 0) & (z < -80 + 0.6 * y)
        data[removed] = 0
    mask = head_mask(data, tuple(voxel_sizes(img.affine)))
    return scalp_mesh(mask, img.affine)


def mni_f3(deface=None):
    vertices, faces, normals = mni_head(deface)
    fiducials = np.array([FIDUCIALS_MNI[k] for k in ("Nz", "Iz", "LPA", "RPA")])
    placed, _, snapped = place_fiducials(fiducials, vertices, faces, normals)
    return ten_twenty_f3(vertices, faces, *placed), snapped


@pytest.mark.shared_data
@pytest.mark.skipif(not MNI_T1W.exists(), reason="../shared/data (MNI152NLin2009cAsym) absent")
def test_mni_template_f3_near_published_positions():
    """10-20 F3 built on the MNI152NLin2009cAsym 2 mm scalp lies within 10 mm of the published
    F3 positions on the MNI head (at least the nearest; all three distances reported)."""
    mni_head(None)  # mesh (cached) outside the timing
    start = time.perf_counter()
    points, snapped = mni_f3()
    elapsed = time.perf_counter() - start
    assert snapped.all()
    distances = {name: float(np.linalg.norm(points["F3"] - np.array(position)))
                 for name, position in F3_PUBLISHED_MNI.items()}
    print("F3", points["F3"].round(1), {k: round(v, 2) for k, v in distances.items()},
          f"{elapsed:.2f} s")
    assert min(distances.values()) < 10.0
    assert distances["FieldTrip standard_1020 (Oostenveld & Praamstra 2001)"] < 5.0
    assert distances["Jurcak 2007 UI 10-10"] < 5.0
    assert points["F3"][0] < -40 and points["F4"][0] > 40
    assert elapsed < 3.0


@pytest.mark.shared_data
@pytest.mark.skipif(not MNI_T1W.exists(), reason="../shared/data (MNI152NLin2009cAsym) absent")
@pytest.mark.parametrize("deface", ["box", "plane"])
def test_mni_template_f3_survives_defacing(deface):
    """Removing the face (nasion included: the nasion is then an anchor in the air) moves F3
    by less than 5 mm."""
    intact, _ = mni_f3()
    defaced, snapped = mni_f3(deface)
    assert not snapped[0]  # the nasion's skin is gone
    shift = float(np.linalg.norm(defaced["F3"] - intact["F3"]))
    print(f"defacing ({deface}) moves F3 by {shift:.2f} mm")
    assert shift < 5.0


def test_module_constants_are_cited():
    assert set(FIDUCIALS_MNI) == {"Nz", "Iz", "LPA", "RPA"}
    assert FIDUCIALS_MNI["LPA"][0] < 0 < FIDUCIALS_MNI["RPA"][0]  # RAS: left is negative x
    assert MOTOR_HAND_MNI[0] < 0
    for key in ("Beam2009", "Jurcak2007", "Mayka2006", "Stokes2007", "OostenveldPraamstra2001"):
        assert key in landmarks.LANDMARK_REFERENCES


# --------------------------------------------------------------------------------------------
# Integration: T1w space through fMRIPrep's ITK transforms, against MNI space
# --------------------------------------------------------------------------------------------
def test_t1w_space_matches_mni_space_through_real_transforms(one_run_dataset, tmp_path):
    """The synthetic participant's T1w space is a similarity transform of MNI space (rotation,
    scale ~0.95, translation of centimetres). ScalpMesh, ScalpProjection and ScalpTargets run in T1w space
    (fiducials and motor point mapped with the real ``from-T1w_to-MNI…_xfm.h5``, GM from the
    dseg) give scalp points that map back onto those of the MNI-space run: never mirrored."""
    from tmstarget.workflows.scalp import ScalpMesh, ScalpProjection
    from tmstarget.workflows.transforms import map_points

    root, truth = one_run_dataset
    anat = Path(root) / "sub-01" / "anat"
    mni_to_t1w = anat / "sub-01_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5"
    t1w_to_mni = anat / "sub-01_from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5"
    runs = {
        "MNI": (anat / "sub-01_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz",
                anat / "sub-01_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz",
                truth["target_mni"], None),
        "T1w": (anat / "sub-01_desc-preproc_T1w.nii.gz", anat / "sub-01_dseg.nii.gz",
                truth["participants"]["01"]["target_t1w"], mni_to_t1w),
    }
    scalp = {}
    for space, (t1w, gm, target, xfm) in runs.items():
        work = tmp_path / space
        work.mkdir()
        points = work / "targets.tsv"
        points.write_text("name\tx\ty\tz\tseed_correlation_z\tcluster_size\n"
                          "connectivity\t{:.4f}\t{:.4f}\t{:.4f}\t-0.3\t10\n".format(*target))
        gm_img = nb.load(gm)
        nb.Nifti1Image(np.zeros(gm_img.shape[:3], np.float32), gm_img.affine).to_filename(
            work / "z.nii.gz")
        mesh_file = ScalpMesh(t1w_file=str(t1w)).run(cwd=str(work)).outputs.mesh_file
        projection = ScalpProjection(mesh_file=mesh_file, points_file=str(points)).run(
            cwd=str(work))
        kwargs = {"from_mni_xfm": str(xfm)} if xfm else {}
        table, measurements = run_interface(
            work, targets_file=projection.outputs.out_file,
            mesh_file=mesh_file, z_file=str(work / "z.nii.gz"),
            gm_file=str(gm), **kwargs)
        frame = table.set_index("name").apply(pd.to_numeric, errors="coerce")
        scalp[space] = frame[["scalp_x", "scalp_y", "scalp_z"]]
        assert frame.loc["F3_1020", "scalp_x"] < frame.loc["F3_1020", "x"] + 1  # left, lateral
    back = map_points(scalp["T1w"].to_numpy(float), t1w_to_mni)
    for k, name in enumerate(scalp["MNI"].index):
        difference = np.linalg.norm(back[k] - scalp["MNI"].loc[name].to_numpy(float))
        # The 5 cm rule measures 50 mm on a head scaled by ~0.95: up to ~3 mm apart in MNI.
        assert difference < (4.0 if name == "5cm" else 2.5), (name, difference)
        assert back[k][0] < -30, name  # every row on the left in both spaces


def test_landmarks_file_keeps_every_bit(tmp_path):
    """ScalpLandmarks hands its points to ScalpTargets through a file: read back, they are the
    same float64 values (the tables' last digits must not depend on the graph's cut), NaN stays
    NaN, and a head without a plan stays without axes."""
    from tmstarget.workflows.comparators import COMPARATOR_ROWS, read_landmarks, write_landmarks

    rng = np.random.default_rng(7)
    points = {name: rng.normal(0, 50, 3) for name in COMPARATOR_ROWS}
    points["5cm"] = np.full(3, np.nan)
    cortex = {name: point + rng.normal(0, 10, 3) for name, point in points.items()}
    saved = {"points": points, "cortex": cortex,
             "trusted": {name: name != "5cm" for name in COMPARATOR_ROWS},
             "head_axes": (rng.normal(0, 1, 3), rng.normal(0, 1, 3)),
             "measurements": {"HeadMeasurements_cm": {"NI": 35.12}}, "warnings": ["a warning"]}
    write_landmarks(tmp_path / "landmarks.json", saved)
    back = read_landmarks(tmp_path / "landmarks.json")
    for name in COMPARATOR_ROWS:
        np.testing.assert_array_equal(back["points"][name], points[name])  # bits, NaN == NaN
        np.testing.assert_array_equal(back["cortex"][name], cortex[name])
    for axis, original in zip(back["head_axes"], saved["head_axes"]):
        assert axis.tobytes() == original.tobytes()
    assert back["trusted"] == saved["trusted"]
    assert back["measurements"] == saved["measurements"] and back["warnings"] == ["a warning"]
    write_landmarks(tmp_path / "none.json", {**saved, "head_axes": None})
    assert read_landmarks(tmp_path / "none.json")["head_axes"] is None
