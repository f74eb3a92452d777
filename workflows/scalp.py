"""Scalp projection: where the TMS coil goes on the head above a cortical target.

Two steps. From a head T1w (not skull-stripped) :class:`ScalpMesh` builds a head mask
(:func:`tmstarget.workflows.head.head_mask`) and a closed triangle mesh of the scalp; it needs
the anatomy alone, so the graph runs it beside the BOLD's steps, not after the target. Then, for
each cortical point, :class:`ScalpProjection` finds the nearest scalp point, the scalp-to-point
distance and the angle between that direction and the scalp normal. All coordinates are world
millimetres (RAS) of the image's own space: voxel indices only ever go through the image affine,
so x-flipped (LAS), oblique and anisotropic grids give the same world answer.

The numerical functions (:func:`scalp_surface`, :func:`scalp_mesh`, :func:`project_to_scalp`,
:func:`scalp_points`) take and return arrays only; the interfaces adapt files to them.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from nibabel.affines import apply_affine, voxel_sizes
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
)
from scipy import ndimage, sparse
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes

from tmstarget.workflows.head import (
    fill_holes,
    head_check,
    head_mask,
    largest_component,
    point_checks,
)

#: Columns :class:`ScalpProjection` appends to the points table.
SCALP_COLUMNS = ("scalp_x", "scalp_y", "scalp_z", "scalp_distance_mm", "scalp_normal_angle_deg")


def format_table_number(value, digits: int = 2) -> str:
    """A number as the targets tables write it: ``digits`` decimals, ``n/a`` when not finite."""
    value = float(value)
    return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"


# --------------------------------------------------------------------------------------------
# Scalp mesh
# --------------------------------------------------------------------------------------------
def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals: area-weighted mean of the incident faces' normals (right-hand rule)."""
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    face_normals = np.cross(v1 - v0, v2 - v0)  # length = 2 x area: area weighting for free
    normals = np.zeros_like(vertices)
    for i in range(3):
        for axis in range(3):
            normals[:, axis] += np.bincount(faces[:, i], weights=face_normals[:, axis],
                                            minlength=len(vertices))
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.where(length > 0, length, 1.0)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """The sorted unique values of an integer array, as ``np.unique(values)`` gives them.

    By sorting: numpy 2.3 and later find the values of a plain ``np.unique`` with a hash table,
    which took 0.8 s for the million edges of a 1 mm head's mesh where a sort takes 0.01 s
    (numpy 2.4, the 2-core test machine).
    """
    values = np.sort(np.ravel(values))
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if values.size else values


def _largest_mesh_component(vertices: np.ndarray, faces: np.ndarray):
    """Keep the connected piece of the mesh with the most faces; renumber its vertices."""
    n = len(vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    graph = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    n_comp, labels = sparse.csgraph.connected_components(graph, directed=False)
    if n_comp > 1:
        face_label = labels[faces[:, 0]]
        keep_label = np.argmax(np.bincount(face_label))
        faces = faces[face_label == keep_label]
    used = sorted_unique(faces)
    renumber = np.full(n, -1, dtype=np.int64)
    renumber[used] = np.arange(len(used))
    return vertices[used], renumber[faces]


def scalp_mesh(
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    smooth_mm: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Watertight triangle mesh of the head boundary, in world mm, normals pointing outward.

    The mask's holes are filled and its largest component kept, it is zero-padded (so a head
    touching the field of view still gives a closed surface, capped at the border) and lightly
    smoothed, and ``skimage.measure.marching_cubes`` extracts the 0.5 level. Vertices go through
    ``affine``; the triangle winding is then set from the sign of the enclosed volume, so normals
    point away from the head for any affine, including ``det(affine) < 0`` (LAS) and oblique ones.

    Parameters
    ----------
    mask : ndarray of bool, 3-D
        Head mask (see :func:`head_mask`).
    affine : ndarray (4, 4)
        Voxel-to-world (RAS mm) affine of ``mask``.
    smooth_mm : float, optional
        Sigma (mm) of the isotropic Gaussian applied to the mask before the iso-surface; default
        twice the largest voxel size. It removes the voxel staircase, whose terraces tilt the
        normals and make the nearest scalp point of a target ~25 mm deep jump between them: on
        an ellipsoid on a 2 mm grid, 2 mm of smoothing leaves errors of that point up to 5 mm,
        4 mm up to 3 mm (median 0.7 mm). Smoothing moves a surface of curvature radius R
        inward by about smooth_mm**2 / R (0.2 mm on a forehead with 4 mm).

    Returns
    -------
    vertices : ndarray (N, 3) float
        World coordinates (mm, RAS).
    faces : ndarray (M, 3) int
        Vertex indices, counter-clockwise seen from outside (right-hand rule gives the outward
        normal). Every edge is shared by exactly two faces.
    normals : ndarray (N, 3) float
        Unit outward vertex normals (area-weighted mean of the incident face normals).

    Raises
    ------
    ValueError
        If the mask is empty.
    """
    mask = np.asarray(mask, dtype=bool)
    affine = np.asarray(affine, dtype=float)
    if not mask.any():
        raise ValueError("the head mask is empty: no scalp surface to build")
    solid = fill_holes(largest_component(mask))

    zooms = voxel_sizes(affine)
    if smooth_mm is None:
        smooth_mm = 2.0 * zooms.max()
    sigma = smooth_mm / zooms  # voxels
    # Padding closes the surface where the head meets the image edge (a flat cap) and keeps the
    # smoothing from being clipped there.
    pad = np.ceil(3 * sigma).astype(int) + 2
    volume = np.pad(solid.astype(np.float32), tuple((p, p) for p in pad))
    volume = ndimage.gaussian_filter(volume, sigma=sigma, mode="constant")
    if volume.max() <= 0.5:
        raise ValueError(f"the head mask is too small for {smooth_mm:.1f} mm of smoothing")

    vertices, faces, _, _ = marching_cubes(volume, level=0.5, allow_degenerate=False)
    vertices, faces = _largest_mesh_component(vertices.astype(float) - pad, faces.astype(np.int64))
    vertices = apply_affine(affine, vertices)

    # Signed volume of a closed mesh (divergence theorem) is positive when the winding is
    # outward. Marching cubes winds in voxel space; a reflecting affine reverses it.
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    if np.einsum("ij,ij->", v0, np.cross(v1, v2)) < 0:
        faces = faces[:, ::-1].copy()
    return vertices, faces, vertex_normals(vertices, faces)


# --------------------------------------------------------------------------------------------
# Projection of cortical points onto the scalp
# --------------------------------------------------------------------------------------------
def _closest_on_triangles(p, a, b, c):
    """Closest point on triangles (a, b, c) to points p, as barycentric weights (n, 3).

    Vectorized form of Ericson, *Real-Time Collision Detection* (2005), section 5.1.5: the Voronoi
    regions of the vertices, then of the edges, then the face interior.
    """
    ab, ac, ap = b - a, c - a, p - a
    bp, cp = p - b, p - c
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2

    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        v_in, w_in = vb / denom, vc / denom
        t_ab = d1 / (d1 - d3)
        t_ac = d2 / (d2 - d6)
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))

    bary = np.stack([1 - v_in - w_in, v_in, w_in], axis=1)
    # Assign from the lowest to the highest precedence so the first matching region wins.
    cases = [
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), np.stack([0 * t_bc, 1 - t_bc, t_bc], 1)),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), np.stack([1 - t_ac, 0 * t_ac, t_ac], 1)),
        ((d6 >= 0) & (d5 <= d6), np.array([0.0, 0.0, 1.0])),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), np.stack([1 - t_ab, t_ab, 0 * t_ab], 1)),
        ((d3 >= 0) & (d4 <= d3), np.array([0.0, 1.0, 0.0])),
        ((d1 <= 0) & (d2 <= 0), np.array([1.0, 0.0, 0.0])),
    ]
    for where, weights in cases:
        bary = np.where(where[:, None], weights, bary)
    # Degenerate (zero-area) triangles can leave NaN: fall back to their first vertex.
    bad = ~np.isfinite(bary).all(axis=1)
    bary[bad] = (1.0, 0.0, 0.0)
    return bary


def project_to_scalp(
    points: np.ndarray,
    vertices: np.ndarray,
    normals: np.ndarray,
    faces: np.ndarray | None = None,
    *,
    n_candidates: int = 16,
    chunk: int = 4096,
) -> dict:
    """Nearest scalp point, distance and scalp-normal angle for each cortical point.

    With ``faces`` the nearest point is exact on the triangles incident to the ``n_candidates``
    nearest vertices (sub-vertex precision) and the normal there is the barycentric interpolation
    of the vertex normals. Without ``faces`` it is the nearest vertex and its normal (precision:
    about half an edge, ~1 mm for a mesh from a 2 mm grid).

    Parameters
    ----------
    points : array-like (K, 3) or (3,)
        Cortical points, world mm (same space as the mesh).
    vertices : ndarray (N, 3)
        Scalp mesh vertices, world mm.
    normals : ndarray (N, 3)
        Unit outward vertex normals.
    faces : ndarray (M, 3) of int, optional
        Mesh triangles; recommended (see above).
    n_candidates : int
        Number of nearest vertices whose incident triangles are searched.
    chunk : int
        Points processed at once (bounds memory).

    Returns
    -------
    dict
        ``scalp_xyz`` : ndarray (K, 3), nearest scalp point, world mm.
        ``distance_mm`` : ndarray (K,), Euclidean scalp-to-point distance, mm.
        ``normal`` : ndarray (K, 3), unit outward scalp normal at ``scalp_xyz``.
        ``angle_deg`` : ndarray (K,), angle (degrees) between the direction scalp -> point and the
        inward normal: about 0 for a point under the scalp, above 90 for a point outside the head,
        NaN when the point lies on the scalp (distance < 1e-6 mm).
        ``vertex`` : ndarray (K,) int, index of the nearest mesh vertex.
        Rows of non-finite points are NaN (``vertex`` -1).
    """
    points = np.atleast_2d(np.asarray(points, dtype=float))
    vertices = np.asarray(vertices, dtype=float)
    normals = np.asarray(normals, dtype=float)
    n_points = len(points)
    scalp = np.full((n_points, 3), np.nan)
    normal = np.full((n_points, 3), np.nan)
    vertex = np.full(n_points, -1, dtype=np.int64)
    valid = np.isfinite(points).all(axis=1)

    tree = cKDTree(vertices)
    if faces is None:
        _, nearest = tree.query(points[valid])
        scalp[valid], normal[valid], vertex[valid] = vertices[nearest], normals[nearest], nearest
    else:
        faces = np.asarray(faces, dtype=np.int64)
        # Faces incident to each vertex, one row per vertex, padded with -1.
        flat = faces.ravel()
        order = np.argsort(flat, kind="stable")
        degree = np.bincount(flat, minlength=len(vertices))
        slot = np.arange(flat.size) - (np.cumsum(degree) - degree)[flat[order]]
        table = np.full((len(vertices), max(int(degree.max()), 1)), -1, dtype=np.int64)
        table[flat[order], slot] = order // 3

        k = min(n_candidates, len(vertices))
        index = np.flatnonzero(valid)
        for start in range(0, len(index), chunk):
            rows = index[start:start + chunk]
            p = points[rows]
            _, near = tree.query(p, k=k)
            near = near.reshape(len(rows), k)
            cand = table[near].reshape(len(rows), -1)  # (n, k * degree), -1 = none
            owner = np.repeat(np.arange(len(rows)), cand.shape[1])
            cand_flat = cand.ravel()
            ok = cand_flat >= 0
            owner, cand_flat = owner[ok], cand_flat[ok]
            tri = faces[cand_flat]
            a, b, c = vertices[tri[:, 0]], vertices[tri[:, 1]], vertices[tri[:, 2]]
            bary = _closest_on_triangles(p[owner], a, b, c)
            closest = bary[:, :1] * a + bary[:, 1:2] * b + bary[:, 2:] * c
            dist2 = ((closest - p[owner]) ** 2).sum(1)
            # Per point, the candidate with the smallest distance.
            order = np.lexsort((dist2, owner))
            first = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
            scalp[rows] = closest[first]
            interp = np.einsum("ij,ijk->ik", bary[first], normals[tri[first]])
            normal[rows] = interp / np.linalg.norm(interp, axis=1, keepdims=True)
            vertex[rows] = near[:, 0]

    offset = points - scalp
    distance = np.linalg.norm(offset, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.einsum("ij,ij->i", offset, -normal) / distance
    angle = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
    angle[~(distance > 1e-6)] = np.nan
    return {"scalp_xyz": scalp, "distance_mm": distance, "normal": normal, "angle_deg": angle,
            "vertex": vertex}


def scalp_surface(t1w, affine, *, t1w_name: str, brain_volume_mm3=None) -> dict:
    """The scalp mesh of a head T1w, and whether the head can carry a coil.

    It depends on the anatomy alone, so the graph builds it beside the BOLD's steps
    (:class:`ScalpMesh`), and :func:`scalp_points` projects onto it once the target is known.

    Parameters
    ----------
    t1w : ndarray, 3-D
        Head T1w (not skull-stripped).
    affine : ndarray (4, 4)
        Its voxel-to-world (RAS mm) affine.
    t1w_name : str
        The T1w file, named in the warnings.
    brain_volume_mm3 : float, optional
        Volume of the brain mask; with it a skull-stripped image is recognised
        (:func:`tmstarget.workflows.head.head_check`).

    Returns
    -------
    dict
        ``vertices``, ``faces``, ``normals`` (the mesh, :func:`scalp_mesh`, world mm); ``affine``
        and ``shape`` (the T1w grid: its border is where a cut head ends); ``head_trusted``
        (bool: a whole head); ``warnings`` (list of one-line strings).
    """
    zooms = tuple(voxel_sizes(affine))
    mask = head_mask(t1w, zooms)
    vertices, faces, normals = scalp_mesh(mask, affine)
    head_volume = float(mask.sum() * np.prod(zooms))
    head_trusted, warnings = head_check(head_volume, brain_volume_mm3, t1w_name)
    return {"vertices": vertices, "faces": faces, "normals": normals,
            "affine": np.asarray(affine, dtype=float), "shape": mask.shape,
            "head_trusted": head_trusted, "warnings": warnings}


def scalp_points(surface, points, names, *, t1w_name: str) -> dict:
    """The scalp point above each cortical point, and whether each can carry a coil.

    Parameters
    ----------
    surface : dict or numpy.lib.npyio.NpzFile
        :func:`scalp_surface`'s ``vertices``, ``faces``, ``normals``, ``affine``, ``shape`` and
        ``head_trusted`` (or :class:`ScalpMesh`'s ``scalp_mesh.npz``, which holds them).
    points : array-like (K, 3)
        Cortical points, world mm of the mesh's space.
    names : sequence of str
        Their names (for the warnings).
    t1w_name : str
        The T1w file, named in the warnings.

    Returns
    -------
    dict
        ``projection`` (the result of :func:`project_to_scalp`); ``trusted`` (ndarray (K,) of
        bool: head trusted, scalp point off the border of the field of view, plausible depth);
        ``warnings`` (list of one-line strings; the head's own are :func:`scalp_surface`'s).
    """
    projection = project_to_scalp(points, surface["vertices"], surface["normals"], surface["faces"])
    if bool(surface["head_trusted"]):
        field_of_view = (surface["affine"], tuple(int(n) for n in surface["shape"]))
        trusted, warnings = point_checks(names, projection["scalp_xyz"], projection["distance_mm"],
                                         field_of_view, t1w_name)
    else:  # scalp_surface said why
        trusted, warnings = np.zeros(len(projection["distance_mm"]), dtype=bool), []
    return {"projection": projection, "trusted": trusted, "warnings": warnings}


def load_mask_union(mask_files):
    """The union of brain masks on one grid (the BOLD runs' masks) and its affine."""
    reference = nb.load(mask_files[0])
    union = np.zeros(reference.shape[:3], dtype=bool)
    for mask_file in mask_files:
        union |= np.asanyarray(nb.load(mask_file).dataobj).reshape(union.shape) > 0
    return union, reference.affine


def brain_volume(mask_files) -> float:
    """Volume (mm3) of the union of brain masks on one grid."""
    union, affine = load_mask_union(mask_files)
    return float(union.sum() * np.prod(voxel_sizes(affine)))


# --------------------------------------------------------------------------------------------
# Nipype interface
# --------------------------------------------------------------------------------------------
class _ScalpMeshInputSpec(BaseInterfaceInputSpec):
    t1w_file = File(exists=True, mandatory=True, desc="head T1w (not skull-stripped)")
    brain_mask_files = InputMultiObject(
        File(exists=True), desc="brain masks in the same space, one grid (the BOLD runs' masks): "
        "a head mask close to their volume means a skull-stripped image")


class _ScalpMeshOutputSpec(TraitedSpec):
    mesh_file = File(exists=True, desc="NPZ: vertices, faces, normals (world mm), affine, shape "
                     "of the T1w grid, head_trusted, t1w_file")
    warnings_file = File(exists=True, desc="JSON list of one-line warnings (the head's)")


class ScalpMesh(SimpleInterface):
    """The scalp mesh of a head T1w (:func:`scalp_surface`), for :class:`ScalpProjection`.

    Writes ``scalp_mesh.npz`` (``vertices`` and ``normals`` (N, 3) in world mm, ``faces``
    (M, 3), the T1w ``affine`` and ``shape``, ``head_trusted`` and ``t1w_file``) and
    ``head_warnings.json`` in the node's working directory.
    """

    input_spec = _ScalpMeshInputSpec
    output_spec = _ScalpMeshOutputSpec

    def _run_interface(self, runtime):
        img = nb.load(self.inputs.t1w_file)
        data = np.asanyarray(img.dataobj, dtype=np.float32)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        brain = (brain_volume(self.inputs.brain_mask_files)
                 if isdefined(self.inputs.brain_mask_files) and self.inputs.brain_mask_files
                 else None)
        surface = scalp_surface(data, img.affine, t1w_name=self.inputs.t1w_file,
                                brain_volume_mm3=brain)
        out = Path(runtime.cwd)
        # not compressed: a file of the work folder, read by the steps after it (compressing: 0.2 s)
        np.savez(out / "scalp_mesh.npz", vertices=surface["vertices"],
                 faces=surface["faces"].astype(np.int32), normals=surface["normals"],
                 affine=img.affine, shape=np.array(surface["shape"]),
                 head_trusted=surface["head_trusted"], t1w_file=str(self.inputs.t1w_file))
        (out / "head_warnings.json").write_text(json.dumps(surface["warnings"], indent=2))
        self._results.update(mesh_file=str(out / "scalp_mesh.npz"),
                             warnings_file=str(out / "head_warnings.json"))
        return runtime


class _ScalpProjectionInputSpec(BaseInterfaceInputSpec):
    mesh_file = File(exists=True, mandatory=True, desc="scalp_mesh.npz of ScalpMesh")
    points_file = File(exists=True, mandatory=True,
                       desc="TSV with at least the columns name, x, y, z (world mm, the mesh's "
                       "space)")


class _ScalpProjectionOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="input TSV plus " + ", ".join(SCALP_COLUMNS)
                    + ", scalp_trusted")
    warnings_file = File(exists=True, desc="JSON list of one-line warnings (the points')")


class ScalpProjection(SimpleInterface):
    """Project the points of a table onto the scalp mesh of :class:`ScalpMesh`.

    Writes ``scalp_projection.tsv`` (the input columns unchanged, plus ``scalp_x``, ``scalp_y``,
    ``scalp_z`` (mm), ``scalp_distance_mm`` and ``scalp_normal_angle_deg``, rounded to 2 decimals,
    ``n/a`` where undefined or not trusted, and ``scalp_trusted``, ``true`` or ``false``) and
    ``warnings.json`` in the node's working directory.
    """

    input_spec = _ScalpProjectionInputSpec
    output_spec = _ScalpProjectionOutputSpec

    def _run_interface(self, runtime):
        # Read as text so the input columns are written back byte for byte.
        table = pd.read_csv(self.inputs.points_file, sep="\t", dtype=str, keep_default_na=False)
        missing = {"name", "x", "y", "z"} - set(table.columns)
        if missing:
            raise ValueError(f"{self.inputs.points_file} lacks the column(s) {sorted(missing)}")
        points = table[["x", "y", "z"]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        with np.load(self.inputs.mesh_file) as mesh:
            result = scalp_points(mesh, points, table["name"].tolist(),
                                  t1w_name=str(mesh["t1w_file"]))

        projection, trusted = result["projection"], result["trusted"]
        values = np.column_stack([projection["scalp_xyz"], projection["distance_mm"],
                                  projection["angle_deg"]])
        values[~trusted] = np.nan  # no plan on a point that is not on the skin
        for column, value in zip(SCALP_COLUMNS, values.T):
            table[column] = [format_table_number(v) for v in value]
        table["scalp_trusted"] = ["true" if t else "false" for t in trusted]
        out = Path(runtime.cwd)
        table.to_csv(out / "scalp_projection.tsv", sep="\t", index=False)
        (out / "warnings.json").write_text(json.dumps(result["warnings"], indent=2))
        self._results.update(out_file=str(out / "scalp_projection.tsv"),
                             warnings_file=str(out / "warnings.json"))
        return runtime
