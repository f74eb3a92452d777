"""Scalp stage: head mask, scalp mesh and projection of cortical points, on synthetic heads whose
geometry is known in world millimetres.

The synthetic head is an ellipsoid (bright scalp shell, dark skull/CSF band, mid-grey brain, dark
ventricles) in Rician background noise, cut open at the neck by a plane. Intensities are computed
from the world coordinates of the voxel centres, so any grid (flipped, anisotropic, oblique) holds
the same head in world space and the analytic surface is the reference.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from nibabel.affines import apply_affine, voxel_sizes
from scipy.optimize import brentq

from tmstarget.workflows.head import head_mask
from tmstarget.workflows.scalp import (
    SCALP_COLUMNS,
    ScalpMesh,
    ScalpProjection,
    project_to_scalp,
    scalp_mesh,
    sorted_unique,
)

AXES = np.array([62.0, 78.0, 70.0])  # semi-axes (mm) along x (L-R), y (P-A), z (I-S)
CENTER = np.array([3.0, -12.0, 8.0])  # off the origin, to catch a dropped translation
SCALP_MM = 4.0  # bright scalp shell thickness
DARK_MM = 8.0  # dark skull + CSF band thickness
NECK_Z = CENTER[2] - 0.55 * AXES[2]  # the head is cut open below this plane (world z, mm)
# Face region removed by "defacing": anterior to this y and below this z (world mm).
FACE_Y = CENTER[1] + 0.35 * AXES[1]
FACE_Z = CENTER[2] - 0.3 * AXES[2]
# A left dorsolateral-prefrontal-like point 20-25 mm under the scalp.
PROBE = CENTER + np.array([-0.5, 0.45, 0.3]) * AXES * 0.82

MNI_T1W = (Path(__file__).resolve().parents[2] / "shared" / "data" / "templateflow"
           / "tpl-MNI152NLin2009cAsym" / "tpl-MNI152NLin2009cAsym_res-02_T1w.nii.gz")


# --------------------------------------------------------------------------------------------
# Analytic geometry
# --------------------------------------------------------------------------------------------
def _rho(xyz, axes=AXES):
    return np.linalg.norm((xyz - CENTER) / axes, axis=-1)


def signed_distance(xyz):
    """Signed distance (mm, positive outside) to the outer ellipsoid, to first order."""
    q = (np.asarray(xyz, float) - CENTER) / AXES
    rho = np.linalg.norm(q, axis=-1)
    gradient = np.linalg.norm(q / AXES, axis=-1) / rho
    return (rho - 1.0) / gradient


def outward_normal(xyz):
    """Unit outward normal of the ellipsoid level set through xyz."""
    g = (np.asarray(xyz, float) - CENTER) / AXES**2
    return g / np.linalg.norm(g, axis=-1, keepdims=True)


def nearest_on_ellipsoid(point):
    """Exact nearest point of the outer ellipsoid to an interior point (Lagrange multiplier t).

    The nearest point is a_i**2 y_i / (a_i**2 + t), with t the single root in (-min a**2, 0) of
    sum (a_i y_i / (a_i**2 + t))**2 = 1 (y = point - centre, all components non-zero).
    """
    y = np.asarray(point, float) - CENTER
    a2 = AXES**2

    def f(t):
        return np.sum((AXES * y / (a2 + t)) ** 2) - 1.0

    t = brentq(f, -a2.min() * (1 - 1e-12), 0.0, xtol=1e-12)
    nearest = a2 * y / (a2 + t)
    return nearest + CENTER


# --------------------------------------------------------------------------------------------
# Synthetic images
# --------------------------------------------------------------------------------------------
def _rotation(deg_z, deg_x):
    cz, sz = np.cos(np.radians(deg_z)), np.sin(np.radians(deg_z))
    cx, sx = np.cos(np.radians(deg_x)), np.sin(np.radians(deg_x))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ rx


def make_grid(zooms=(2.0, 2.0, 2.0), rotation=None):
    """Affine and shape of a grid holding the head (12 mm of air around it), starting at NECK_Z."""
    lo = CENTER - AXES - 12.0
    hi = CENTER + AXES + 12.0
    lo[2] = NECK_Z  # the field of view cuts the head open at the neck
    zooms = np.asarray(zooms, float)
    rotation = np.eye(3) if rotation is None else rotation
    # Box corners in the grid's own (rotated) frame.
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])])
    local = corners @ rotation  # = rotation.T @ corner
    start, stop = local.min(axis=0), local.max(axis=0)
    shape = tuple(int(n) for n in np.ceil((stop - start) / zooms) + 1)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(zooms)
    affine[:3, 3] = rotation @ start
    return affine, shape


def flip_x(data, affine):
    """The same image stored with the first voxel axis reversed (e.g. RAS -> LAS)."""
    flipped = affine.copy()
    flipped[:3, 0] = -affine[:3, 0]
    flipped[:3, 3] = affine[:3, 3] + affine[:3, 0] * (data.shape[0] - 1)
    return data[::-1].copy(), flipped


def make_head(affine, shape, *, dark_mm=DARK_MM, deface=False, specks=0, seed=0):
    """Synthetic T1w head on the given grid; returns the image and world coordinates of voxels."""
    xyz = apply_affine(affine, np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
    signal = np.zeros(shape)
    signal[_rho(xyz) <= 1] = 1.0  # scalp (fat: bright on T1w)
    signal[_rho(xyz, AXES - SCALP_MM) <= 1] = 0.04  # skull + CSF: as dark as the air
    signal[_rho(xyz, AXES - SCALP_MM - dark_mm) <= 1] = 0.55  # brain
    signal[_rho(xyz, np.array([10.0, 22.0, 10.0])) <= 1] = 0.08  # ventricles
    signal[xyz[..., 2] < NECK_Z] = 0.0
    if deface:
        signal[(xyz[..., 1] > FACE_Y) & (xyz[..., 2] < FACE_Z)] = 0.0
    rng = np.random.default_rng(seed)
    if specks:
        # Bright specks (1 voxel and 2x2x2 voxels) anywhere in the air, some touching the head.
        air = np.argwhere((signed_distance(xyz) > 1.0) | (xyz[..., 2] < NECK_Z))
        for n, ijk in enumerate(air[rng.choice(len(air), specks, replace=False)]):
            size = 1 + n % 2
            signal[tuple(slice(i, i + size) for i in ijk)] = rng.uniform(1.5, 3.0)
    noise = rng.normal(0.0, 0.03, (2, *shape))
    image = np.hypot(signal + noise[0], noise[1])  # magnitude image: Rician background
    return (1000 * image).astype(np.float32), xyz


@lru_cache(maxsize=None)
def case(name):
    """Image, affine, world coordinates, head mask and scalp mesh of a named synthetic head."""
    if name in ("ras", "las", "defaced", "specks", "thick-dark"):
        affine, shape = make_grid()
    elif name in ("aniso", "defaced-aniso"):
        affine, shape = make_grid((1.0, 1.0, 3.0))
    elif name == "oblique":
        affine, shape = make_grid((2.0, 2.0, 2.5), _rotation(20, -15))
    kwargs = {"defaced": {"deface": True}, "defaced-aniso": {"deface": True},
              "specks": {"specks": 400},
              "thick-dark": {"dark_mm": 18.0}}.get(name, {})
    data, xyz = make_head(affine, shape, **kwargs)
    if name in ("las", "oblique"):
        data, affine = flip_x(data, affine)
        xyz = xyz[::-1]
    mask = head_mask(data, tuple(voxel_sizes(affine)))
    mesh = scalp_mesh(mask, affine)
    return data, affine, xyz.astype(np.float32), mask, mesh


def project(points, mesh):
    """project_to_scalp on a (vertices, faces, normals) mesh."""
    vertices, faces, normals = mesh
    return project_to_scalp(points, vertices, normals, faces)


# --------------------------------------------------------------------------------------------
# Head mask
# --------------------------------------------------------------------------------------------
def _assert_solid_head(mask, xyz, zooms, inside=None, bumps_allowed=False):
    """The mask holds everything at least one voxel inside and nothing one voxel outside."""
    voxel = max(zooms)
    sd = signed_distance(xyz)
    above_neck = xyz[..., 2] > NECK_Z + voxel
    deep = (sd < -voxel) & above_neck
    if inside is not None:
        deep &= inside
    assert mask[deep].all(), f"{(~mask[deep]).sum()} voxels inside the head are missing"
    if not bumps_allowed:
        assert not mask[sd > voxel].any(), f"{mask[sd > voxel].sum()} voxels outside the head"


def test_head_mask_solid_ellipsoid():
    """Dark skull band, dark ventricles and the open neck are all filled; nothing outside."""
    _, affine, xyz, mask, _ = case("ras")
    _assert_solid_head(mask, xyz, voxel_sizes(affine))


def test_head_mask_fills_thick_dark_band_open_at_the_neck():
    """An 18 mm dark band is too wide for the closing and open at the neck for 3-D filling:
    only the slice-wise filling closes it."""
    _, affine, xyz, mask, _ = case("thick-dark")
    _assert_solid_head(mask, xyz, voxel_sizes(affine))


def test_head_mask_ignores_bright_specks():
    """Bright specks in the air are not head. Those touching the scalp can leave at most a
    one-voxel bump in the mask (the opening's discretization), which the mesh does not show."""
    data, affine, xyz, mask, (vertices, _, _) = case("specks")
    voxel = max(voxel_sizes(affine))
    sd = signed_distance(xyz)
    assert (data[sd > 2 * voxel] > 1400).sum() > 300  # the specks are there
    _assert_solid_head(mask, xyz, voxel_sizes(affine), bumps_allowed=True)
    assert not mask[sd > 2 * voxel].any()
    head = vertices[:, 2] > NECK_Z + 2 * voxel
    assert np.abs(signed_distance(vertices[head])).max() < voxel


@pytest.mark.parametrize("name", ["defaced", "defaced-aniso"])
def test_head_mask_defaced(name):
    """The lower face set to background: no leak into the removed region, no crater in the
    rest of the head (the exposed dark band is sealed by a closing sized in mm), the same top of
    the head."""
    _, affine, xyz, mask, mesh = case(name)
    zooms = voxel_sizes(affine)
    u, v = xyz[..., 1] - FACE_Y, FACE_Z - xyz[..., 2]  # > 0 both: removed region
    # Distance (mm) from the kept part of the head to the removed region.
    to_face = np.where((u <= 0) & (v <= 0), np.hypot(u, v), np.where(u > 0, -v, -u))
    in_face = (u > 0) & (v > 0)
    # No leak: nothing in the removed region beyond the closing's corner fillet (< 3 mm).
    assert not mask[in_face & (u > 4) & (v > 4)].any()
    # No crater: the exposed dark band and brain behind the cut are head.
    _assert_solid_head(mask, xyz, zooms, inside=~in_face & (to_face > max(zooms)))
    # The top of the head is unchanged.
    vertices = mesh[0]
    top = vertices[vertices[:, 2] > CENTER[2] + 0.3 * AXES[2]]
    assert np.abs(signed_distance(top)).max() < max(zooms)
    intact = case("aniso" if "aniso" in name else "ras")
    moved = project(PROBE, mesh)["scalp_xyz"] - project(PROBE, intact[4])["scalp_xyz"]
    assert np.linalg.norm(moved) < 0.5


def test_head_mask_empty_image():
    assert not head_mask(np.zeros((8, 9, 10)), (2.0, 2.0, 2.0)).any()


def _random_blobs(shape, seed, fraction=0.5):
    """A boolean mask of smooth random blobs: holes, tunnels, pieces touching the border."""
    from scipy import ndimage

    noise = np.random.default_rng(seed).standard_normal(shape)
    smooth = ndimage.gaussian_filter(noise, 2.0)
    return smooth > np.quantile(smooth, 1 - fraction)


@pytest.mark.parametrize("seed", range(4))
def test_fill_holes_is_scipys(seed):
    """The head mask's hole filling (one labelling of the background) fills what scipy's
    binary_fill_holes fills, on masks with many holes, some at the border, and a shell."""
    from scipy import ndimage

    from tmstarget.workflows.head import fill_holes

    mask = _random_blobs((40, 33, 27), seed, fraction=0.9)
    filled = fill_holes(mask)
    assert (filled != mask).sum() > 10  # there were holes
    np.testing.assert_array_equal(filled, ndimage.binary_fill_holes(mask))
    shell = np.zeros((20, 21, 22), dtype=bool)
    shell[3:17, 3:18, 3:19] = True
    shell[5:15, 5:16, 5:17] = False  # a closed cavity: filled
    np.testing.assert_array_equal(fill_holes(shell), ndimage.binary_fill_holes(shell))
    shell[10, 10, :5] = False  # a tunnel from the cavity to the border: not a hole any more
    np.testing.assert_array_equal(fill_holes(shell), ndimage.binary_fill_holes(shell))
    assert not fill_holes(shell)[10, 10, 10]


def test_sorted_unique_is_numpys_unique():
    """The mesh's unique vertices and edges (sorted_unique) are np.unique's, in its order and
    dtype: many repeats, negative values, one value, none, and a 2-D array flattened."""
    rng = np.random.default_rng(3)
    for values in (rng.integers(-50, 10**9, 20_000), rng.integers(0, 30, (400, 3)),
                   np.array([7]), np.array([], dtype=np.int64)):
        unique = sorted_unique(values)
        np.testing.assert_array_equal(unique, np.unique(values))
        assert unique.dtype == np.unique(values).dtype


@pytest.mark.parametrize("zooms", [(1.0, 1.0, 1.0), (0.9, 1.2, 2.5), (3.0, 1.0, 1.0)])
def test_ball_morphology_is_scipys_distance_transform(zooms):
    """Dilation and erosion by a ball in mm (the edt package) are scipy's exact Euclidean
    distance transform thresholded, with anisotropic voxels along the right axes (swapping the
    voxel sizes of two axes changes the answer)."""
    from scipy import ndimage

    from tmstarget.workflows.head import _dilate, _erode

    mask = _random_blobs((36, 30, 24), 7, fraction=0.3)
    for radius in (2.0, 3.5, 6.0):
        np.testing.assert_array_equal(
            _dilate(mask, radius, zooms), ndimage.distance_transform_edt(~mask, sampling=zooms) <= radius)
        np.testing.assert_array_equal(
            _erode(mask, radius, zooms), ndimage.distance_transform_edt(mask, sampling=zooms) > radius)
    if len(set(zooms)) > 1:
        assert not np.array_equal(_dilate(mask, 3.5, zooms), _dilate(mask, 3.5, zooms[::-1]))


# --------------------------------------------------------------------------------------------
# Scalp mesh
# --------------------------------------------------------------------------------------------
def _edge_keys(edges, n_vertices):
    """One integer per (first, second) vertex pair: fast uniqueness counts."""
    return edges[:, 0].astype(np.int64) * n_vertices + edges[:, 1]


def assert_watertight_outward(vertices, faces, normals, centre=CENTER):
    n = len(vertices)
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    # Watertight and consistently wound: each directed edge once, its reverse once.
    _, counts = np.unique(_edge_keys(directed, n), return_counts=True)
    assert (counts == 1).all()
    _, counts = np.unique(_edge_keys(np.sort(directed, axis=1), n), return_counts=True)
    assert (counts == 2).all()
    # A sphere-like closed surface: Euler characteristic 2.
    assert len(vertices) - len(directed) // 2 + len(faces) == 2
    # Outward: positive enclosed volume, and normals away from the head centre.
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    assert np.einsum("ij,ij->", v0, np.cross(v1, v2)) > 0
    radial = vertices - centre
    assert np.mean(np.einsum("ij,ij->i", normals, radial) > 0) > 0.99
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-9)


@pytest.mark.parametrize("name", ["ras", "las", "aniso", "oblique"])
def test_scalp_mesh_on_ellipsoid(name):
    """Vertices within one voxel of the analytic surface, normals outward, watertight."""
    _, affine, _, _, (vertices, faces, normals) = case(name)
    voxel = max(voxel_sizes(affine))
    assert_watertight_outward(vertices, faces, normals)
    # Away from the neck cap the mesh is the ellipsoid.
    head = vertices[:, 2] > NECK_Z + 2 * voxel
    sd = signed_distance(vertices[head])
    assert np.abs(sd).max() < voxel
    assert np.abs(sd).mean() < 0.35 * voxel
    cosine = np.einsum("ij,ij->i", normals[head], outward_normal(vertices[head]))
    assert np.median(cosine) > np.cos(np.radians(3))
    assert np.mean(cosine > np.cos(np.radians(15))) > 0.99


def test_scalp_mesh_normals_outward_for_reflecting_affine():
    """A mask whose affine reflects x (det < 0) still gives outward normals."""
    mask = np.zeros((20, 22, 24), bool)
    mask[5:15, 6:16, 7:17] = True
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    vertices, faces, normals = scalp_mesh(mask, affine)
    centre = vertices.mean(axis=0)
    assert np.all(np.einsum("ij,ij->i", normals, vertices - centre) > 0)
    with pytest.raises(ValueError, match="empty"):
        scalp_mesh(np.zeros_like(mask), affine)


# --------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------
def test_project_to_scalp_exact_on_octahedron():
    """Face interior, edge and vertex regions of the nearest-point search, with exact answers."""
    vertices = 10.0 * np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1],
                                [0, 0, -1]])
    faces = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4],
                      [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    normals = vertices / 10.0
    points = np.array([[1.0, 1.0, 1.0],  # inside: foot on the face x + y + z = 10
                       [7.0, 7.0, 0.0],  # outside, nearest on the edge (10,0,0)-(0,10,0)
                       [12.0, 0.5, -0.5],  # outside, nearest the vertex (10, 0, 0)
                       [np.nan, 0.0, 0.0]])
    out = project_to_scalp(points, vertices, normals, faces)
    np.testing.assert_allclose(out["scalp_xyz"][:3],
                               [[10 / 3] * 3, [5.0, 5.0, 0.0], [10.0, 0.0, 0.0]], atol=1e-9)
    np.testing.assert_allclose(out["distance_mm"][:3],
                               [7 / np.sqrt(3), 2 * np.sqrt(2), np.sqrt(4.5)], atol=1e-9)
    np.testing.assert_allclose(out["normal"][0], [1 / np.sqrt(3)] * 3, atol=1e-9)
    assert out["angle_deg"][0] == pytest.approx(0.0, abs=1e-6)
    assert out["angle_deg"][2] > 90  # outside the head
    assert np.isnan(out["scalp_xyz"][3]).all() and out["vertex"][3] == -1
    # Without faces: the nearest vertex.
    rough = project_to_scalp(points[:3], vertices, normals)
    np.testing.assert_allclose(rough["scalp_xyz"][2], [10.0, 0.0, 0.0])
    assert rough["vertex"][2] == 0


def test_project_known_depth_under_the_vertex():
    """20 mm under the top of the head: the top, 20 mm, along the normal."""
    _, _, _, _, (vertices, faces, normals) = case("ras")
    point = CENTER + np.array([0.0, 0.0, AXES[2] - 20.0])
    out = project_to_scalp(point, vertices, normals, faces)
    np.testing.assert_allclose(out["scalp_xyz"][0], CENTER + [0, 0, AXES[2]], atol=2.0)
    assert out["distance_mm"][0] == pytest.approx(20.0, abs=1.0)
    assert out["angle_deg"][0] < 5.0


@pytest.mark.parametrize("name", ["ras", "las", "aniso", "oblique"])
def test_project_probe_matches_analytic_and_keeps_hemisphere(name):
    """The left-frontal probe: analytic nearest point and distance within one voxel, whatever
    the storage of the image (x flipped, anisotropic, oblique); never mirrored."""
    _, affine, _, _, (vertices, faces, normals) = case(name)
    voxel = max(voxel_sizes(affine))
    expected = nearest_on_ellipsoid(PROBE)
    out = project_to_scalp(PROBE, vertices, normals, faces)
    scalp = out["scalp_xyz"][0]
    assert np.linalg.norm(scalp - expected) < voxel
    assert out["distance_mm"][0] == pytest.approx(np.linalg.norm(PROBE - expected), abs=voxel / 2)
    assert out["angle_deg"][0] < 5.0
    assert scalp[0] < CENTER[0] - 20  # left hemisphere
    reference = project(PROBE, case("ras")[4])["scalp_xyz"][0]
    assert np.linalg.norm(scalp - reference) < voxel


# --------------------------------------------------------------------------------------------
# Interface
# --------------------------------------------------------------------------------------------
def test_interface_round_trip(tmp_path):
    data, affine, _, _, _ = case("las")
    t1w = tmp_path / "head_T1w.nii.gz"
    nb.Nifti1Image(data, affine).to_filename(t1w)
    points = tmp_path / "targets.tsv"
    points.write_text("name\tx\ty\tz\tseed_correlation_z\n"
                      f"connectivity\t{PROBE[0]:.4f}\t{PROBE[1]:.4f}\t{PROBE[2]:.4f}\t-0.3141\n"
                      "top\t3\t-12\t58\tn/a\n"  # CENTER + (0, 0, 50): 20 mm deep
                      "unknown\tn/a\tn/a\tn/a\tn/a\n")
    mesh_result = ScalpMesh(t1w_file=str(t1w)).run(cwd=str(tmp_path))
    result = ScalpProjection(mesh_file=mesh_result.outputs.mesh_file,
                             points_file=str(points)).run(cwd=str(tmp_path))
    out_file = Path(result.outputs.out_file)
    assert out_file.parent == tmp_path

    table = pd.read_csv(out_file, sep="\t", dtype=str, keep_default_na=False)
    original = pd.read_csv(points, sep="\t", dtype=str, keep_default_na=False)
    assert list(table.columns) == list(original.columns) + list(SCALP_COLUMNS) + ["scalp_trusted"]
    assert table["scalp_trusted"].tolist() == ["true", "true", "false"]  # unknown: no point
    pd.testing.assert_frame_equal(table[original.columns], original)  # input kept verbatim
    written = table.loc[:1, list(SCALP_COLUMNS)].to_numpy().ravel()
    assert all(len(value.split(".")[1]) == 2 for value in written)  # 2 decimals
    assert (table.loc[2, list(SCALP_COLUMNS)] == "n/a").all()

    numbers = table.loc[:1, list(SCALP_COLUMNS)].astype(float).to_numpy()
    np.testing.assert_allclose(numbers[0, :3], nearest_on_ellipsoid(PROBE), atol=2.0)
    np.testing.assert_allclose(numbers[1, :3], CENTER + [0, 0, AXES[2]], atol=2.0)
    np.testing.assert_allclose(numbers[1, 3], AXES[2] - 50.0, atol=1.0)

    mesh = np.load(mesh_result.outputs.mesh_file)
    assert {"vertices", "faces", "normals", "affine"} <= set(mesh.files)
    assert_watertight_outward(mesh["vertices"], mesh["faces"], mesh["normals"])
    again = project_to_scalp(PROBE, mesh["vertices"], mesh["normals"], mesh["faces"])
    np.testing.assert_allclose(numbers[0, :3], again["scalp_xyz"][0], atol=0.006)


# --------------------------------------------------------------------------------------------
# Real template (only where ../shared is present)
# --------------------------------------------------------------------------------------------
@pytest.mark.shared_data
@pytest.mark.skipif(not MNI_T1W.exists(), reason="../shared/data (MNI152NLin2009cAsym) absent")
def test_mni_template_head():
    """The MNI152NLin2009cAsym 2 mm head: fast, watertight, and the scalp above the left DLPFC
    lies on the left forehead near the published F3 positions."""
    img = nb.load(MNI_T1W)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    start = time.perf_counter()
    mask = head_mask(data, tuple(voxel_sizes(img.affine)))
    vertices, faces, normals = scalp_mesh(mask, img.affine)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0
    assert_watertight_outward(vertices, faces, normals, centre=np.array([0.0, -20.0, 10.0]))

    out = project_to_scalp([-40.0, 40.0, 30.0], vertices, normals, faces)
    scalp = out["scalp_xyz"][0]
    assert scalp[0] < -40  # left, lateral to the target
    assert 12.0 < out["distance_mm"][0] < 25.0
    assert out["angle_deg"][0] < 5.0
    fieldtrip_f3 = np.array([-50.2, 53.1, 42.2])
    assert np.linalg.norm(scalp - fieldtrip_f3) < 15.0


# --------------------------------------------------------------------------------------------
# No plan on a wrong head: skull-stripped, cut by the field of view, implausible depths
# --------------------------------------------------------------------------------------------
def test_border_and_depth_checks():
    from tmstarget.workflows.head import on_image_border, point_checks

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-20.0, -20.0, -20.0)  # voxels 0..20 span -20..20 mm
    points = [[0, 0, 0], [0, 0, 18.5], [0, 0, -25], [-16.5, 0, 0], [np.nan, 0, 0]]
    np.testing.assert_array_equal(on_image_border(points, affine, (21, 21, 21)),
                                  [False, True, True, False, False])
    trusted, warnings = point_checks(["ok", "top", "below", "shallow", "none"], points,
                                     [15.0, 15.0, 15.0, 3.0, np.nan], (affine, (21, 21, 21)),
                                     "head.nii.gz")
    np.testing.assert_array_equal(trusted, [True, False, False, False, False])
    assert len(warnings) == 3 and all(w.startswith("head.nii.gz: ") for w in warnings)
    assert "'top'" in warnings[0] and "border" in warnings[0]
    assert "'shallow'" in warnings[2] and "3.0 mm" in warnings[2]
    assert point_checks(["deep"], [[0, 0, 0]], [45.0], None, "h")[0].tolist() == [False]


def _masked_copy(t1w_file, mask_file, out_file):
    """The head T1w multiplied by its brain mask: what a skull-stripped image is."""
    img = nb.load(t1w_file)
    mask = np.asanyarray(nb.load(mask_file).dataobj) > 0
    data = np.asanyarray(img.dataobj, dtype=np.float32) * mask
    nb.Nifti1Image(data, img.affine).to_filename(out_file)
    return out_file


def _scalp_stage(work, t1w, points, truth_gm, mask_files, z_like):
    """ScalpMesh, ScalpProjection, ScalpLandmarks then ScalpTargets, as the graph runs them; the
    warnings of the first two (the head's, then the points')."""
    from tmstarget.workflows.comparators import ScalpLandmarks, ScalpTargets

    work.mkdir(parents=True, exist_ok=True)
    mesh = ScalpMesh(t1w_file=str(t1w), brain_mask_files=mask_files).run(cwd=str(work))
    projection = ScalpProjection(mesh_file=mesh.outputs.mesh_file,
                                 points_file=str(points)).run(cwd=str(work))
    z_file = work / "z.nii.gz"
    nb.Nifti1Image(np.full(z_like.shape[:3], -0.2, np.float32), z_like.affine).to_filename(z_file)
    landmarks = ScalpLandmarks(mesh_file=mesh.outputs.mesh_file,
                               gm_file=str(truth_gm)).run(cwd=str(work))
    comparators = ScalpTargets(targets_file=projection.outputs.out_file,
                               mesh_file=mesh.outputs.mesh_file, z_file=str(z_file),
                               landmarks_file=landmarks.outputs.landmarks_file,
                               mask_files=mask_files).run(cwd=str(work))
    import json

    first = pd.read_csv(projection.outputs.out_file, sep="\t", dtype=str, keep_default_na=False)
    table = pd.read_csv(comparators.outputs.out_file, sep="\t", dtype=str, keep_default_na=False)
    warnings = [w for step in (mesh, projection)
                for w in json.loads(Path(step.outputs.warnings_file).read_text())]
    return (first, warnings, table,
            json.loads(Path(comparators.outputs.measurements_file).read_text()))


@pytest.fixture(scope="module")
def mni_inputs(one_run_dataset, tmp_path_factory):
    root, truth = one_run_dataset
    anat, func = Path(root) / "sub-01" / "anat", Path(root) / "sub-01" / "func"
    space = "space-MNI152NLin2009cAsym"
    folder = tmp_path_factory.mktemp("wrong_heads")
    points = folder / "targets.tsv"
    points.write_text("name\tx\ty\tz\tseed_correlation_z\tcluster_size\n"
                      "connectivity\t{:.2f}\t{:.2f}\t{:.2f}\t-0.3\t10\n".format(*truth["target_mni"]))
    bold_mask = sorted(func.glob(f"*{space}_desc-brain_mask.nii.gz"))[0]
    return {"t1w": anat / f"sub-01_{space}_desc-preproc_T1w.nii.gz",
            "brain": anat / f"sub-01_{space}_desc-brain_mask.nii.gz",
            "gm": anat / f"sub-01_{space}_label-GM_probseg.nii.gz",
            "bold_mask": bold_mask, "points": points, "folder": folder}


def test_whole_head_is_trusted(mni_inputs):
    first, warnings, table, measurements = _scalp_stage(
        mni_inputs["folder"] / "whole", mni_inputs["t1w"], mni_inputs["points"], mni_inputs["gm"],
        [str(mni_inputs["bold_mask"])], nb.load(mni_inputs["bold_mask"]))
    assert warnings == []
    assert first["scalp_trusted"].tolist() == ["true"]
    row = table.set_index("name").loc["connectivity"]
    assert row["scalp_trusted"] == "true" and row["coil_zaxis_x"] != "n/a"
    assert 8.0 < float(row["scalp_distance_mm"]) < 40.0
    assert measurements["ScalpTrusted"]["connectivity"] is True
    assert (table["scalp_trusted"] == "true").sum() >= 1


def test_skull_stripped_head_gives_no_plan(mni_inputs):
    """The head T1w masked by the brain mask: a warning naming the file and what to give, the
    cortical target kept, and no scalp point, coil pose, comparator or dose."""
    stripped = _masked_copy(mni_inputs["t1w"], mni_inputs["brain"],
                            mni_inputs["folder"] / "stripped_T1w.nii.gz")
    first, warnings, table, measurements = _scalp_stage(
        mni_inputs["folder"] / "stripped", stripped, mni_inputs["points"], mni_inputs["gm"],
        [str(mni_inputs["bold_mask"])], nb.load(mni_inputs["bold_mask"]))
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{stripped}: ") and "skull-stripped" in warnings[0]
    assert "desc-preproc_T1w" in warnings[0]  # what to give instead
    assert first["scalp_trusted"].tolist() == ["false"]
    assert (first.loc[0, list(SCALP_COLUMNS)] == "n/a").all()
    assert not np.load(mni_inputs["folder"] / "stripped" / "scalp_mesh.npz")["head_trusted"]

    original = pd.read_csv(mni_inputs["points"], sep="\t", dtype=str, keep_default_na=False)
    pd.testing.assert_series_equal(table.loc[0, original.columns], original.loc[0],
                                   check_names=False)  # the cortical target is still written
    assert table["name"].tolist() == ["connectivity", "F3_1020", "F3_beam", "5cm", "motor_hand"]
    assert (table["scalp_trusted"] == "false").all()
    plan = [c for c in table.columns if c.startswith(("scalp_", "coil_"))
            and c != "scalp_trusted"] + ["depth_adjustment_pct_mso"]
    assert (table[plan] == "n/a").all().all()
    assert (table.loc[1:, ["x", "y", "z", "seed_correlation_z"]] == "n/a").all().all()
    assert measurements["QualityWarnings"] == []  # said once, by ScalpMesh
    assert not any(measurements["ScalpTrusted"].values())


def test_head_cut_above_the_motor_cortex_gives_no_dose(mni_inputs):
    """A head whose image ends a little above the motor hand area: the motor hot spot lies on
    the cut, so no dose is given from it (and no 5 cm rule), while the connectivity row keeps
    its scalp point and coil pose."""
    img = nb.load(mni_inputs["t1w"])
    data = np.asanyarray(img.dataobj)
    # Keep the voxels whose world z is below 62 mm (the motor scalp lies at about 75 mm).
    k_world = apply_affine(img.affine, np.column_stack([np.zeros(data.shape[2]),
                                                        np.zeros(data.shape[2]),
                                                        np.arange(data.shape[2])]))[:, 2]
    keep = k_world < 62.0
    assert 0 < keep.sum() < len(keep) and img.affine[2, 2] > 0
    cut = mni_inputs["folder"] / "cut_T1w.nii.gz"
    nb.Nifti1Image(data[:, :, keep], img.affine).to_filename(cut)
    first, warnings, table, measurements = _scalp_stage(
        mni_inputs["folder"] / "cut", cut, mni_inputs["points"], mni_inputs["gm"],
        [str(mni_inputs["bold_mask"])], nb.load(mni_inputs["bold_mask"]))
    rows = table.set_index("name")
    assert rows.loc["motor_hand", "scalp_trusted"] == "false"
    assert rows.loc["5cm", "scalp_trusted"] == "false"
    assert (table["depth_adjustment_pct_mso"] == "n/a").all()
    assert rows.loc["connectivity", "scalp_trusted"] == "true"
    assert rows.loc["connectivity", "coil_zaxis_z"] != "n/a"
    assert measurements["DepthAdjustment"]["ReferenceDepth_mm"] is None
    motor = [w for w in measurements["QualityWarnings"] if "motor hot spot" in w]
    assert len(motor) == 1 and str(cut) in motor[0] and "no dose" in motor[0]
    assert "border" in motor[0]


FACEREP = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-bold" / "facerep"


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.skipif(not FACEREP.is_dir(), reason="../shared/data/real-bold/facerep absent")
def test_real_cropped_head_gives_no_dose_from_a_cropped_reference(tmp_path):
    """SPM's face-repetition head is cut by SPM's bounding box (top z = 85, back, sides, face):
    the motor hot spot lies on the top edge (it gave +20 % MSO before), Iz, LPA, RPA on crop
    edges and Nz outside the image. No dose, no scalp-based comparator; the warnings say so;
    the connectivity target and its (frontal, uncut) scalp point and coil are still written."""
    import json

    from helpers import run_app

    out = tmp_path / "out"
    assert run_app(FACEREP, out, "--task-id", "facerep", "--space", "MNI152NLin6Asym",
                   work_dir=tmp_path / "work") == 0
    tms = out / "sub-facerep" / "tms"
    table = pd.read_csv(tms / "sub-facerep_space-MNI152NLin6Asym_targets.tsv", sep="\t",
                        dtype=str, keep_default_na=False).set_index("name")
    assert (table["depth_adjustment_pct_mso"] == "n/a").all()
    for name in ("F3_1020", "F3_beam", "5cm", "motor_hand"):
        assert table.loc[name, "scalp_trusted"] == "false"
        assert (table.loc[name, ["x", "scalp_x", "coil_x"]] == "n/a").all()
    connectivity = table.loc["connectivity"]
    assert connectivity["scalp_trusted"] == "true" and connectivity["coil_zaxis_x"] != "n/a"
    assert float(connectivity["x"]) < 0  # left
    sidecar = json.loads((tms / "sub-facerep_space-MNI152NLin6Asym_targets.json").read_text())
    assert "Whether the row's scalp point" in sidecar["scalp_trusted"]["Description"]
    # the one warnings list of the sidecar; the scalp stage's warnings name the head T1w
    t1w = "sub-facerep_space-MNI152NLin6Asym_res-2_desc-preproc_T1w.nii.gz"
    assert "QualityWarnings" not in sidecar["ScalpBasedTargets"]
    assert len(sidecar["QualityWarnings"]) == len(set(sidecar["QualityWarnings"]))
    warnings = [w for w in sidecar["QualityWarnings"] if t1w in w]
    fiducials = [w for w in warnings if "fiducial" in w]
    assert len(fiducials) == 1 and all(k in fiducials[0] for k in ("Nz", "Iz", "LPA", "RPA"))
    motor = [w for w in warnings if "motor hot spot" in w]
    assert len(motor) == 1 and "border" in motor[0] and "no dose" in motor[0]
    assert len(warnings) == len(set(warnings))  # nothing said twice
