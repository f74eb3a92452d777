"""Scalp-based comparators of the connectivity target, constructed on the participant's own scalp.

Three ways of aiming at the left DLPFC without imaging are placed on the scalp mesh of this head
(:func:`tmstarget.workflows.scalp.scalp_mesh`), as a technician would place them with a tape measure:

- **10-20 F3** (:func:`ten_twenty_f3`): the international 10-20 construction from the nasion,
  inion and preauricular points;
- **Beam F3** (:func:`beam_f3`, :func:`place_beam_f3`): the Beam et al. (2009) formula from three
  head measurements (:func:`head_measurements`);
- **the "5 cm rule"** (:func:`five_cm_rule`): 5 cm anterior of the motor hand area along the
  scalp.

For each, the cortical point beneath (:func:`cortical_point_beneath`, the nearest grey-matter
voxel) is what the coil would stimulate; :class:`ScalpTargets` writes them next to the
connectivity target with the coil pose (:mod:`tmstarget.workflows.coil`), the distance to the connectivity
target and the depth-adjusted dose.

All coordinates are world millimetres, RAS, of the computation space (the space of the mesh).
Published landmark positions are given in MNI152NLin2009cAsym millimetres and mapped into the
computation space by the caller (``from_mni_xfm``, :func:`tmstarget.workflows.transforms.map_points`).

Curves on the scalp
-------------------
The 10-20 lines are *plane sections* of the scalp: the curve where the plane through three points
(e.g. nasion, vertex, inion) cuts the surface, followed from the first point through the second
to the third. That is the construction of Oostenveld & Praamstra (2001; FieldTrip
``elec1020_locate``/``elec1020_follow``) and of Jurcak et al. (2007). Lengths along them are
those of a taut tape in that plane: the curve's convex envelope in the plane, which bridges
concavities (the nasion notch, the temples) as a tape measure does; marks are pressed onto the
skin beneath. On the convex cranium tape and skin coincide. Distances between two points without
a defining plane (Beam's Y from the vertex, towards a point) are geodesics
(:func:`geodesic_path`): the shortest path along the surface.

Defaced heads
-------------
A fiducial that maps into the air, away from the scalp (the nasion of a defaced T1w), is not
snapped onto the cut surface (that would move it by centimetres) but kept as the anchor of the
tape (:func:`place_fiducials`): the tape runs straight from it to the remaining skin. On the
MNI152NLin2009cAsym head, removing the face with the nasion moves the 10-20 F3 by about 1 mm.
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
from scipy import sparse
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import ConvexHull, QhullError, cKDTree

from tmstarget.workflows.coil import (
    COIL_REFERENCES,
    STOKES_SLOPE_PCT_PER_MM,
    coil_pose,
    depth_dose_adjustment,
)
from tmstarget.workflows.scalp import SCALP_COLUMNS, project_to_scalp, vertex_normals

LOGGER = logging.getLogger("nipype.interface")

# --------------------------------------------------------------------------------------------
# Published constants (MNI152 millimetres, RAS)
# --------------------------------------------------------------------------------------------
LANDMARK_REFERENCES = {
    "Jurcak2007": "Jurcak V, Tsuzuki D, Dan I. 10/20, 10/10, and 10/5 systems revisited: their "
    "validity as relative head-surface-based positioning systems. Neuroimage. 2007;34(4):1600-1611. "
    "doi:10.1016/j.neuroimage.2006.09.024",
    "SimNIBSCaps": "SimNIBS, simnibs/resources/ElectrodeCaps_MNI/EEG10-10_UI_Jurak_2007.csv "
    "(fiducial rows Nz, Iz, LPA, RPA; the same fiducials are in Fiducials.csv and "
    "EEG10-20_Okamoto_2004.csv of that folder), https://github.com/simnibs/simnibs",
    "OostenveldPraamstra2001": "Oostenveld R, Praamstra P. The five percent electrode system for "
    "high-resolution EEG and ERP measurements. Clin Neurophysiol. 2001;112(4):713-719. "
    "doi:10.1016/S1388-2457(00)00527-7; positions in FieldTrip template/electrode/standard_1020.elc",
    "Okamoto2004": "Okamoto M, Dan H, Sakamoto K, et al. Three-dimensional probabilistic anatomical "
    "cranio-cerebral correlation via the international 10-20 system oriented for transcranial "
    "functional brain mapping. Neuroimage. 2004;21(1):99-111. doi:10.1016/j.neuroimage.2003.08.026",
    "Jasper1958": "Jasper HH. The ten-twenty electrode system of the International Federation. "
    "Electroencephalogr Clin Neurophysiol. 1958;10:371-375",
    "Beam2009": "Beam W, Borckardt JJ, Reeves ST, George MS. An efficient and accurate new method "
    "for locating the F3 position for prefrontal TMS applications. Brain Stimul. 2009;2(1):50-54. "
    "doi:10.1016/j.brs.2008.09.006",
    "Mayka2006": "Mayka MA, Corcos DM, Leurgans SE, Vaillancourt DE. Three-dimensional locations "
    "and boundaries of motor and premotor cortices as defined by functional brain imaging: a "
    "meta-analysis. Neuroimage. 2006;31(4):1453-1474. doi:10.1016/j.neuroimage.2006.02.004",
    "PascualLeone1996": "Pascual-Leone A, Rubio B, Pallardo F, Catala MD. Rapid-rate transcranial "
    "magnetic stimulation of left dorsolateral prefrontal cortex in drug-resistant depression. "
    "Lancet. 1996;348(9022):233-237. doi:10.1016/S0140-6736(96)01219-6",
    "Herwig2001": "Herwig U, Padberg F, Unger J, Spitzer M, Schonfeldt-Lecuona C. Transcranial "
    "magnetic stimulation in therapy studies: examination of the reliability of 'standard' coil "
    "positioning by neuronavigation. Biol Psychiatry. 2001;50(1):58-61. "
    "doi:10.1016/S0006-3223(01)01153-2",
    "Yousry1997": "Yousry TA, Schmid UD, Alkadhi H, et al. Localization of the motor hand area "
    "to a knob on the precentral gyrus. A new landmark. Brain. 1997;120(Pt 1):141-157. "
    "doi:10.1093/brain/120.1.141",
    **COIL_REFERENCES,
}

#: Fiducials (nasion Nz, inion Iz, left/right preauricular points LPA/RPA) in MNI152 mm, RAS:
#: those of the UI 10-10 positions of Jurcak et al. (2007) as distributed with SimNIBS (see
#: ``LANDMARK_REFERENCES["SimNIBSCaps"]``). On the MNI152NLin2009cAsym 2 mm head (scalp mesh of
#: :func:`tmstarget.workflows.scalp.scalp_mesh`) they lie 0.2-1.9 mm from the scalp. The default.
FIDUCIALS_MNI_JURCAK2007 = {
    "Nz": (0.0, 82.9, -43.0),
    "Iz": (0.0, -116.2, -30.5),
    "LPA": (-79.6, -20.6, -48.6),
    "RPA": (80.6, -20.6, -48.1),
}
#: The fiducials of FieldTrip's ``standard_1020.elc`` (Oostenveld & Praamstra 2001), built on the
#: template head of FieldTrip's ``standard_bem``; 0.3-4.9 mm from the MNI152NLin2009cAsym scalp
#: (the preauricular points lie ~5 mm outside it). An alternative.
FIDUCIALS_MNI_FIELDTRIP = {
    "Nz": (0.0083, 86.8110, -39.9830),
    "Iz": (0.0045, -118.5650, -23.0780),
    "LPA": (-86.0761, -19.9897, -47.9860),
    "RPA": (85.7939, -20.0093, -48.0310),
}
FIDUCIALS_MNI = FIDUCIALS_MNI_JURCAK2007
FIDUCIALS_SOURCE = ("Jurcak et al. 2007 UI 10-10 fiducials as distributed with SimNIBS "
                    "(resources/ElectrodeCaps_MNI/EEG10-10_UI_Jurak_2007.csv)")

#: Published F3 scalp positions on the MNI head (mm, RAS), for reference and tests.
F3_PUBLISHED_MNI = {
    "FieldTrip standard_1020 (Oostenveld & Praamstra 2001)": (-50.2438, 53.1112, 42.1920),
    "Jurcak 2007 UI 10-10": (-49.0956, 52.4537, 39.2769),
    "Okamoto 2004": (-43.3, 58.3, 40.2),
}

#: Left primary motor cortex, MNI mm: the M1 centre of the meta-analysis of Mayka et al. (2006;
#: its Human Motor Area Template), which SimNIBS uses as the left M1 (hand) target in its
#: examples (``mni2subject_coords([-37, -21, 58], ...)``). It lies at the dorsal precentral
#: gyrus near the hand knob (Yousry et al. 1997 describe the knob anatomically, without
#: coordinates). The motor hot spot is the scalp point nearest it: the "5 cm rule" starts there
#: and the dose adjustment takes the depth of the cortex beneath as its reference.
MOTOR_HAND_MNI = (-37.0, -21.0, 58.0)

#: Distance (mm) of the 5 cm rule.
FIVE_CM_MM = 50.0


# --------------------------------------------------------------------------------------------
# Mesh helpers
# --------------------------------------------------------------------------------------------
class _Surface:
    """A triangle mesh with the look-up structures the constructions reuse."""

    def __init__(self, vertices, faces, normals=None):
        self.vertices = np.asarray(vertices, dtype=float)
        self.faces = np.asarray(faces, dtype=np.int64)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3 or len(self.vertices) < 4:
            raise ValueError("vertices must be an (N, 3) array of at least 4 points")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError("faces must be an (M, 3) array of vertex indices")
        self.normals = (vertex_normals(self.vertices, self.faces) if normals is None
                        else np.asarray(normals, dtype=float))
        self.tree = cKDTree(self.vertices)
        self._graph = None

    @property
    def graph(self):
        """Sparse symmetric edge graph weighted by edge length (mm)."""
        if self._graph is None:
            n = len(self.vertices)
            edges = np.concatenate([self.faces[:, [0, 1]], self.faces[:, [1, 2]],
                                    self.faces[:, [2, 0]]])
            edges = np.sort(edges, axis=1)
            keys = np.unique(edges[:, 0] * n + edges[:, 1])  # each undirected edge once
            edges = np.column_stack([keys // n, keys % n])
            length = np.linalg.norm(self.vertices[edges[:, 0]] - self.vertices[edges[:, 1]], axis=1)
            graph = sparse.coo_matrix((length, (edges[:, 0], edges[:, 1])), shape=(n, n))
            self._graph = (graph + graph.T).tocsr()
        return self._graph

    def nearest_vertex(self, points):
        """Index and position of the nearest vertex of each point."""
        points = np.atleast_2d(np.asarray(points, dtype=float))
        _, index = self.tree.query(points)
        return index, self.vertices[index]

    def to_surface(self, points):
        """Points moved onto the tangent plane of their nearest vertex (sub-voxel projection)."""
        points = np.atleast_2d(np.asarray(points, dtype=float))
        _, index = self.tree.query(points)
        normal = self.normals[index]
        offset = np.einsum("ij,ij->i", points - self.vertices[index], normal)
        return points - offset[:, None] * normal


def _as_surface(vertices, faces) -> _Surface:
    return vertices if isinstance(vertices, _Surface) else _Surface(vertices, faces)


def snap_to_scalp(points, vertices, faces=None):
    """Nearest scalp vertex of each point, and its distance (mm).

    Returns
    -------
    snapped : ndarray (K, 3)
    distance_mm : ndarray (K,)
    """
    points = np.atleast_2d(np.asarray(points, dtype=float))
    vertices = vertices.vertices if isinstance(vertices, _Surface) else np.asarray(vertices, float)
    distance, index = cKDTree(vertices).query(points)
    return vertices[index], distance


def place_fiducials(points, vertices, faces, normals=None, *, max_snap_mm: float = 6.0):
    """Put mapped fiducials on this scalp: snapped to the nearest scalp vertex, unless the face
    is missing there.

    A fiducial lying in the air more than ``max_snap_mm`` from the scalp (outside the head: the
    face was removed by defacing, or cut by the field of view) is kept where it is, as the anchor
    of the tape (the curves start with a straight step from it, as a tape held at the nasion of
    a head would). Fiducials inside the head, or close to the scalp, are snapped.

    Returns
    -------
    placed : ndarray (K, 3)
    distance_mm : ndarray (K,)
        Distance from each mapped point to its nearest vertex.
    snapped : ndarray (K,) of bool
    """
    surface = _as_surface(vertices, faces)
    points = np.atleast_2d(np.asarray(points, dtype=float))
    distance, index = surface.tree.query(points)
    nearest = surface.vertices[index]
    normals = surface.normals if normals is None else np.asarray(normals, dtype=float)
    outside = np.einsum("ij,ij->i", points - nearest, normals[index]) > 0
    snapped = ~(outside & (distance > max_snap_mm))
    placed = np.where(snapped[:, None], nearest, points)
    return placed, distance, snapped


# --------------------------------------------------------------------------------------------
# Polylines
# --------------------------------------------------------------------------------------------
def polyline_length(polyline) -> float:
    """Length (mm) of an open polyline (K, 3)."""
    polyline = np.asarray(polyline, dtype=float)
    return float(np.linalg.norm(np.diff(polyline, axis=0), axis=1).sum())


def point_at_distance(polyline, distance_mm: float) -> np.ndarray:
    """Point at arc length ``distance_mm`` from the start of a polyline (clamped to its ends)."""
    polyline = np.asarray(polyline, dtype=float)
    steps = np.linalg.norm(np.diff(polyline, axis=0), axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(steps)])
    if len(polyline) == 1 or cumulative[-1] == 0:
        return polyline[0].copy()
    distance = float(np.clip(distance_mm, 0.0, cumulative[-1]))
    i = int(np.clip(np.searchsorted(cumulative, distance, side="right") - 1, 0, len(steps) - 1))
    t = (distance - cumulative[i]) / steps[i] if steps[i] > 0 else 0.0
    return polyline[i] + t * (polyline[i + 1] - polyline[i])


def point_at_fraction(polyline, fraction: float) -> np.ndarray:
    """Point at ``fraction`` (0 = start, 1 = end) of the arc length of a polyline."""
    return point_at_distance(polyline, float(fraction) * polyline_length(polyline))


def _nearest_on_segments(a, b, point):
    """The segment (a[i], b[i]) nearest ``point``: its index, the fraction along it, the distance
    (mm) and every segment's length."""
    ab = b - a
    denom = np.einsum("ij,ij->i", ab, ab)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.clip(np.einsum("ij,ij->i", np.asarray(point) - a, ab) / denom, 0.0, 1.0)
    t = np.nan_to_num(t)
    distance = np.linalg.norm(a + t[:, None] * ab - point, axis=1)
    i = int(np.argmin(distance))
    return i, t[i], float(distance[i]), np.sqrt(denom)


def _split_at(polyline, point):
    """Arc length from the start of a polyline to its point nearest ``point``."""
    polyline = np.asarray(polyline, dtype=float)
    i, t, _, steps = _nearest_on_segments(polyline[:-1], polyline[1:], point)
    return float(steps[:i].sum() + t * steps[i])


def _resample(polyline, spacing):
    """Polyline resampled at (about) uniform arc-length spacing, ends kept."""
    length = polyline_length(polyline)
    n = max(int(np.ceil(length / spacing)), 1)
    return np.array([point_at_distance(polyline, d) for d in np.linspace(0.0, length, n + 1)])


# --------------------------------------------------------------------------------------------
# Geodesics
# --------------------------------------------------------------------------------------------
def geodesic_path(vertices, faces, start, end, *, refine: bool = True):
    """Shortest path along the mesh surface between two points.

    Dijkstra's algorithm on the edge graph (``scipy.sparse.csgraph.dijkstra``) from the vertex
    nearest ``start`` to the vertex nearest ``end`` gives the route; edge paths zigzag (on a
    marching-cubes mesh they are 5-10 % too long), so the route is then straightened on the
    surface: resampled at 8, 4, 2 and 1 mm and relaxed (each inner point moved to the midpoint of
    its neighbours, then back onto the surface, the tangent plane of its nearest vertex) until it
    is a discrete geodesic. On a sphere the length is within 0.5 % of R x angle.

    Parameters
    ----------
    vertices : ndarray (N, 3)
    faces : ndarray (M, 3) of int
    start, end : array-like (3,)
        World mm; points off the mesh go to their nearest vertex.
    refine : bool
        Straighten the edge path (default). ``False`` returns the Dijkstra edge path.

    Returns
    -------
    polyline : ndarray (K, 3)
        From the start point (on the surface) to the end point.
    length_mm : float
    """
    surface = _as_surface(vertices, faces)
    (i_start, i_end), _ = surface.nearest_vertex(np.array([start, end], dtype=float))
    if i_start == i_end:
        point = surface.vertices[i_start]
        return np.array([point, point]), 0.0
    dist, predecessors = dijkstra(surface.graph, directed=False, indices=int(i_start),
                                  return_predecessors=True)
    if not np.isfinite(dist[i_end]):
        raise ValueError("start and end are on disconnected parts of the mesh")
    route = [int(i_end)]
    while route[-1] != i_start:
        route.append(int(predecessors[route[-1]]))
    path = surface.vertices[route[::-1]]
    # Start and end projected onto the surface near their vertices.
    ends = surface.to_surface(np.array([start, end], dtype=float))
    if np.linalg.norm(ends[0] - path[0]) < 3.0:
        path[0] = ends[0]
    if np.linalg.norm(ends[1] - path[-1]) < 3.0:
        path[-1] = ends[1]
    if refine:
        path = _straighten(surface, path)
    return path, polyline_length(path)


def _straighten(surface: _Surface, path: np.ndarray) -> np.ndarray:
    """Relax a surface path with fixed ends towards a geodesic, coarse to fine."""
    length = polyline_length(path)
    for spacing in (8.0, 4.0, 2.0, 1.0):
        if length < 2 * spacing:
            continue
        path = _resample(path, spacing)
        n_inner = len(path) - 2
        # Smoothing diffuses over ~n**2 iterations; finer levels only remove local kinks.
        n_iter = int(min(max(2 * n_inner**2, 60), 1500)) if spacing == 8.0 else 60
        for _ in range(n_iter):
            middle = 0.5 * (path[:-2] + path[2:])
            moved = surface.to_surface(middle)
            change = np.abs(moved - path[1:-1]).max()
            path[1:-1] = moved
            if change < 1e-4:
                break
        length = polyline_length(path)
    return path


# --------------------------------------------------------------------------------------------
# Plane sections
# --------------------------------------------------------------------------------------------
def _section_loops(surface: _Surface, origin, normal):
    """Closed curves where the plane (origin, normal) cuts the mesh: a list of (K, 3) arrays."""
    vertices, faces = surface.vertices, surface.faces
    normal = np.asarray(normal, dtype=float)
    normal = normal / np.linalg.norm(normal)
    d = (vertices - np.asarray(origin, dtype=float)) @ normal
    d[d == 0] = 1e-12  # a vertex exactly on the plane counts as above it
    above = d > 0
    edges = np.stack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], axis=1)  # (M, 3, 2)
    crossing = above[edges[..., 0]] != above[edges[..., 1]]
    cut = crossing.sum(axis=1) == 2
    if not cut.any():
        return []
    cut_edges = edges[cut][crossing[cut]].reshape(-1, 2, 2)  # two crossing edges per cut face
    pairs = np.sort(cut_edges.reshape(-1, 2), axis=1)
    n_vertices = len(vertices)
    keys, inverse = np.unique(pairs[:, 0] * n_vertices + pairs[:, 1], return_inverse=True)
    inverse = inverse.reshape(-1, 2)  # per cut face: its two edge points
    a, b = keys // n_vertices, keys % n_vertices
    t = d[a] / (d[a] - d[b])
    points = vertices[a] + t[:, None] * (vertices[b] - vertices[a])

    # Each edge point belongs to two cut faces: degree 2, the segments form closed loops.
    n = len(keys)
    neighbours = np.full((n, 2), -1, dtype=np.int64)
    fill = np.zeros(n, dtype=np.int64)
    for p, q in inverse:
        if fill[p] < 2:
            neighbours[p, fill[p]] = q
            fill[p] += 1
        if fill[q] < 2:
            neighbours[q, fill[q]] = p
            fill[q] += 1
    visited = np.zeros(n, dtype=bool)
    loops = []
    for seed in range(n):
        if visited[seed]:
            continue
        order, previous, current = [seed], -1, seed
        visited[seed] = True
        while True:
            options = [k for k in neighbours[current] if k >= 0 and k != previous]
            if not options:
                break
            nxt = options[0]
            if nxt == seed or visited[nxt]:
                break
            visited[nxt] = True
            order.append(nxt)
            previous, current = current, nxt
        if len(order) >= 3:
            loops.append(points[order])
    return loops


def _locate_on_loop(loop, point):
    """Arc-length position (mm from loop[0], along the closed loop) of the loop point nearest
    ``point``, its distance, and the loop's cumulative lengths."""
    closed = np.vstack([loop, loop[:1]])
    i, t, distance, steps = _nearest_on_segments(closed[:-1], closed[1:], point)
    cumulative = np.concatenate([[0.0], np.cumsum(steps)])
    return float(cumulative[i] + t * steps[i]), distance, cumulative


def _loop_arc(loop, s_from, s_to, cumulative):
    """Polyline along a closed loop from arc position s_from forward to s_to."""
    total = cumulative[-1]
    closed = np.vstack([loop, loop[:1]])
    span = (s_to - s_from) % total
    inner = (cumulative[:-1] - s_from) % total
    keep = np.flatnonzero((inner > 1e-9) & (inner < span - 1e-9))
    keep = keep[np.argsort(inner[keep])]

    def at(s):
        s = s % total
        i = int(np.clip(np.searchsorted(cumulative, s, side="right") - 1, 0, len(loop) - 1))
        step = cumulative[i + 1] - cumulative[i]
        t = (s - cumulative[i]) / step if step > 0 else 0.0
        return closed[i] + t * (closed[i + 1] - closed[i])

    return np.vstack([at(s_from), closed[keep], at(s_from + span)])


def section_curve(vertices, faces, first, through, last, *, off_surface_mm: float = 0.5):
    """Scalp curve from ``first`` through ``through`` to ``last`` in the plane of the three points.

    The plane through the three points cuts the mesh in one or more closed curves; the one
    passing nearest the three points is followed from the point nearest ``first``, in the
    direction that passes ``through``, to the point nearest ``last`` (a tape laid over the head
    from ``first`` to ``last`` across ``through``, in one plane). An end point more than
    ``off_surface_mm`` from the curve (off the skin, e.g. a nasion where the face was removed)
    is added as the first (last) point.

    Returns
    -------
    ndarray (K, 3)
        Polyline (on the surface but for such end points).
    """
    return _section(_as_surface(vertices, faces), first, through, last, off_surface_mm)[1]


def _section(surface: _Surface, first, through, last, off_surface_mm: float = 0.5):
    """The plane-section curve on the skin, and the same with off-skin end points added."""
    first, through, last = (np.asarray(p, dtype=float) for p in (first, through, last))
    normal = np.cross(through - first, last - first)
    if np.linalg.norm(normal) < 1e-9:
        raise ValueError("the three points of a section are collinear")
    loops = _section_loops(surface, first, normal)
    if not loops:
        raise ValueError("the section plane does not cut the scalp mesh")
    best = None
    for loop in loops:
        located = [_locate_on_loop(loop, p) for p in (first, through, last)]
        worst = max(item[1] for item in located)
        if best is None or worst < best[0]:
            best = (worst, loop, located)
    _, loop, ((s_a, d_a, cumulative), (s_c, _, _), (s_b, d_b, _)) = best
    total = cumulative[-1]
    if (s_c - s_a) % total <= (s_b - s_a) % total:
        arc = _loop_arc(loop, s_a, s_b, cumulative)
    else:  # the other way round: reverse the loop
        reverse = loop[::-1]
        s_a2, _, cumulative2 = _locate_on_loop(reverse, first)
        s_b2, _, _ = _locate_on_loop(reverse, last)
        arc = _loop_arc(reverse, s_a2, s_b2, cumulative2)
    # End points off the skin (a fiducial where the face was removed) are kept: the curve
    # starts (ends) with the straight step from (to) them.
    anchored = arc
    if d_a > off_surface_mm:
        anchored = np.vstack([first, anchored])
    if d_b > off_surface_mm:
        anchored = np.vstack([anchored, last])
    return arc, anchored


def _walk_in_plane(surface: _Surface, start, normal, direction, distance_mm):
    """Point ``distance_mm`` along the plane section (plane through ``start`` with ``normal``)
    from ``start``, leaving it in the sense of ``direction``; and the polyline walked."""
    start = np.asarray(start, dtype=float)
    loops = _section_loops(surface, start, normal)
    if not loops:
        raise ValueError("the section plane does not cut the scalp mesh")
    located = [_locate_on_loop(loop, start) for loop in loops]
    k = int(np.argmin([item[1] for item in located]))
    loop = loops[k]
    for candidate in (loop, loop[::-1]):
        s0, _, cumulative = _locate_on_loop(candidate, start)
        total = cumulative[-1]
        ahead = _loop_arc(candidate, s0, s0 + min(5.0, 0.25 * total), cumulative)
        if np.dot(ahead[-1] - ahead[0], direction) > 0:
            path = _loop_arc(candidate, s0, s0 + min(distance_mm + 1.0, 0.95 * total), cumulative)
            return point_at_distance(path, distance_mm), path
    raise ValueError("could not orient the section curve")


# --------------------------------------------------------------------------------------------
# 10-20 system
# --------------------------------------------------------------------------------------------
def _initial_vertex(surface: _Surface, nz, iz, lpa, rpa):
    """The scalp point above the centre of the fiducials (FieldTrip's first vertex guess)."""
    centre = (nz + iz + lpa + rpa) / 4.0
    up = np.cross(rpa - lpa, nz - iz)
    up /= np.linalg.norm(up)
    rel = surface.vertices - centre
    along = rel @ up
    across = np.linalg.norm(rel - along[:, None] * up, axis=1)
    candidates = np.flatnonzero((along > 0) & (across < max(3.0, np.percentile(across, 0.5))))
    if candidates.size == 0:
        candidates = np.flatnonzero(along > 0)
    return surface.vertices[candidates[np.argmax(along[candidates])]]


def _taut(curve, through):
    """The tape over a plane curve: its convex envelope in the plane, from its first to its last
    point on the side of ``through``. Concavities (the nasion notch, the temples, a defaced
    region) are bridged as a tape bridges them. The curve itself when its ends are not on the
    envelope."""
    curve = np.asarray(curve, dtype=float)
    if len(curve) < 4:
        return curve
    origin = curve[0]
    chord = curve[-1] - origin
    if np.linalg.norm(chord) < 1e-6:
        return curve
    e1 = chord / np.linalg.norm(chord)
    centred = curve - curve.mean(axis=0)
    normal = np.linalg.svd(centred, full_matrices=False)[2][-1]
    e2 = np.cross(normal, e1)
    uv = np.column_stack([(curve - origin) @ e1, (curve - origin) @ e2])
    try:
        hull = ConvexHull(uv).vertices  # counter-clockwise
    except QhullError:
        return curve
    last = len(curve) - 1
    where = {int(v): k for k, v in enumerate(hull)}
    if 0 not in where or last not in where:
        return curve
    n = len(hull)
    a, b = where[0], where[last]
    forward = [hull[(a + k) % n] for k in range((b - a) % n + 1)]
    backward = [hull[(a - k) % n] for k in range((a - b) % n + 1)]
    side = np.sign(np.dot(np.asarray(through, dtype=float) - origin, e2)) or 1.0
    chain = max((forward, backward), key=lambda c: float(np.mean(uv[c, 1] * side)))
    return curve[np.asarray(chain)]


class _Tape:
    """A tape laid over the scalp from ``first`` through ``through`` to ``last`` in their plane.

    ``curve`` is the plane section of the skin (:func:`section_curve`, with end points off the
    skin added), ``skin`` the same without them; ``taut`` is the tape (:func:`_taut`), whose length
    is the measurement. A mark at a distance along the tape is pressed onto the skin: the nearest
    point of the skin curve.
    """

    def __init__(self, surface: _Surface, first, through, last):
        self.skin, self.curve = _section(surface, first, through, last)
        self.taut = _taut(self.curve, through)
        self.length = polyline_length(self.taut)

    def at(self, distance_mm):
        point = point_at_distance(self.taut, distance_mm)
        return point_at_distance(self.skin, _split_at(self.skin, point))

    def fraction(self, fraction):
        return self.at(fraction * self.length)

    def position(self, point):
        """Distance along the tape of the tape point nearest ``point``."""
        return _split_at(self.taut, np.asarray(point, dtype=float))


def _ten_twenty(surface: _Surface, nz, iz, lpa, rpa, *, max_iter: int = 50, tol_mm: float = 0.05):
    """10-20 points and the tapes they were measured on."""
    nz, iz, lpa, rpa = (np.asarray(p, dtype=float) for p in (nz, iz, lpa, rpa))
    cz = _initial_vertex(surface, nz, iz, lpa, rpa)
    converged, step = False, np.inf
    for _ in range(max_iter):
        cz_midline = _Tape(surface, nz, cz, iz).fraction(0.5)
        cz_new = _Tape(surface, lpa, cz_midline, rpa).fraction(0.5)
        step = max(np.linalg.norm(cz_new - cz), np.linalg.norm(cz_midline - cz))
        # Damped update: the two midpoints pull along different axes.
        cz = surface.to_surface(0.5 * (cz_new + cz_midline))[0]
        if step < tol_mm:
            converged = True
            break
    if not converged:
        LOGGER.warning("10-20 construction: the vertex Cz did not converge (last step %.2f mm)",
                       step)
    midline = _Tape(surface, nz, cz, iz)
    coronal = _Tape(surface, lpa, cz, rpa)
    cz = 0.5 * (midline.fraction(0.5) + coronal.fraction(0.5))
    points = {"Nz": nz, "Iz": iz, "LPA": lpa, "RPA": rpa, "Cz": cz}
    for name, fraction in (("Fpz", 0.1), ("Fz", 0.3), ("Pz", 0.7), ("Oz", 0.9)):
        points[name] = midline.fraction(fraction)
    for name, fraction in (("T7", 0.1), ("C3", 0.3), ("C4", 0.7), ("T8", 0.9)):
        points[name] = coronal.fraction(fraction)
    left = _Tape(surface, points["Fpz"], points["T7"], points["Oz"])
    right = _Tape(surface, points["Fpz"], points["T8"], points["Oz"])
    points["Fp1"], points["F7"] = left.fraction(0.1), left.fraction(0.3)
    points["Fp2"], points["F8"] = right.fraction(0.1), right.fraction(0.3)
    frontal = _Tape(surface, points["F7"], points["Fz"], points["F8"])
    s_fz = frontal.position(points["Fz"])
    points["F3"] = frontal.at(0.5 * s_fz)
    points["F4"] = frontal.at(s_fz + 0.5 * (frontal.length - s_fz))
    tapes = {"midline": midline, "coronal": coronal, "left": left, "right": right,
             "frontal": frontal}
    return points, tapes


def ten_twenty_f3(vertices, faces, nz, iz, lpa, rpa) -> dict:
    """The international 10-20 positions on this scalp, F3 among them.

    Definitions (Jasper 1958; as constructed on a surface by Oostenveld & Praamstra 2001 and
    Jurcak et al. 2007). Every curve is a plane section of the scalp (:func:`section_curve`)
    measured as a taut tape in its plane (concavities bridged; marks pressed onto the skin):

    - **Cz**: the midpoint of both the midline curve Nz-Cz-Iz and the coronal curve LPA-Cz-RPA.
      Found by iteration from the scalp point above the centre of the fiducials: midpoint of the
      midline curve through the current Cz, then midpoint of the coronal curve through that
      point, until Cz moves by less than 0.05 mm.
    - **Fpz, Fz, Pz, Oz**: 10, 30, 70, 90 % of the midline curve from Nz.
    - **T7, C3, C4, T8**: 10, 30, 70, 90 % of the coronal curve from LPA.
    - **Fp1, F7**: 10 and 30 % of the left circumferential curve Fpz-T7-Oz from Fpz (the 10-20
      "20 % steps" of the half circumference, 10 % at the ends); **Fp2, F8** likewise on the right
      curve Fpz-T8-Oz.
    - **F3**: the midpoint of the curve from F7 to Fz, a part of the curve F7-Fz-F8; **F4** the
      midpoint of Fz-F8.

    The fiducials are used as given: put them on the scalp first (:func:`place_fiducials`, which
    snaps them, or keeps a fiducial whose skin was removed as an anchor in the air).

    Parameters
    ----------
    vertices, faces : scalp mesh (world mm, RAS)
    nz, iz, lpa, rpa : array-like (3,)
        Nasion, inion, left and right preauricular points on this scalp.

    Returns
    -------
    dict
        Name -> ndarray (3,): Nz, Iz, LPA, RPA, Cz, Fpz, Fz, Pz, Oz, T7, C3, C4, T8, Fp1, Fp2, F7,
        F8, F3, F4.
    """
    points, _ = _ten_twenty(_as_surface(vertices, faces), nz, iz, lpa, rpa)
    return points


# --------------------------------------------------------------------------------------------
# Beam F3
# --------------------------------------------------------------------------------------------
BEAM_FORMULA = ("R2 = 0.4*TT; R1 = 0.4*NI; A = (R2*sin(324 deg) + R1/2)/R2; "
                "B = R1*sin(298 deg)/(R1*cos(298 deg) - R2/2); x = (R1 - R2*B)/(2*(A - B)); "
                "y = A*x - R1/2; r = sqrt(x^2 + y^2); theta = atan(y/x) (deg); "
                "X = HC/4*(90 + theta)/90 (arc from Fpz along the left circumference); "
                "Y = 0.91*r (from Cz towards the point X); lengths in cm")


def beam_f3(tt_cm: float, ni_cm: float, hc_cm: float) -> tuple[float, float]:
    """Beam F3 distances (cm) from tragus-tragus, nasion-inion and head circumference (cm).

    The formula of the web calculator published with Beam et al. (2009): ``R2 = 0.4 TT``,
    ``R1 = 0.4 NI``, ``A = (R2 sin 324 deg + R1/2) / R2``,
    ``B = R1 sin 298 deg / (R1 cos 298 deg - R2/2)``, ``x = (R1 - R2 B) / (2 (A - B))``,
    ``y = A x - R1/2``, ``r = sqrt(x^2 + y^2)``, ``theta = atan(y/x)`` in degrees;
    ``X = HC/4 (90 + theta)/90`` is the arc along the circumference from the midline front (Fpz)
    and ``Y = 0.91 r`` the distance from the vertex (Cz) towards that point.

    Example: ``beam_f3(36, 38, 60)`` gives X = 6.95 cm, Y = 9.79 cm.

    Returns
    -------
    (X_cm, Y_cm)
    """
    tt, ni, hc = float(tt_cm), float(ni_cm), float(hc_cm)
    if not (tt > 0 and ni > 0 and hc > 0):
        raise ValueError(f"head measurements must be positive, got TT={tt}, NI={ni}, HC={hc}")
    r2, r1 = 0.4 * tt, 0.4 * ni
    a = (r2 * np.sin(np.radians(324.0)) + r1 / 2.0) / r2
    b = r1 * np.sin(np.radians(298.0)) / (r1 * np.cos(np.radians(298.0)) - r2 / 2.0)
    x = 0.5 * (r1 - r2 * b) / (a - b)
    y = a * x - r1 / 2.0
    r = np.hypot(x, y)
    theta = np.degrees(np.arctan(y / x))
    return float(hc / 4.0 * (90.0 + theta) / 90.0), float(0.91 * r)


def head_measurements(vertices, faces, nz, iz, lpa, rpa, *, construction=None) -> dict:
    """Tape measurements of this head along the scalp (cm), as Beam F3 needs them.

    - ``NI``: nasion to inion over the vertex: the midline curve Nz-Cz-Iz.
    - ``TT``: tragus to tragus over the vertex: the coronal curve LPA-Cz-RPA (the preauricular
      points stand for the tragi).
    - ``HC``: head circumference at the 10 % level (where a tape measure is placed, through Fpz,
      T7, Oz and T8): the left curve Fpz-T7-Oz plus the right curve Fpz-T8-Oz.

    Lengths are those of a taut tape in the plane of each curve (concavities bridged).
    ``construction`` may pass the ``(points, tapes)`` of a previous 10-20 construction.
    """
    if construction is None:
        construction = _ten_twenty(_as_surface(vertices, faces), nz, iz, lpa, rpa)
    _, tapes = construction
    return {
        "NI": tapes["midline"].length / 10.0,
        "TT": tapes["coronal"].length / 10.0,
        "HC": (tapes["left"].length + tapes["right"].length) / 10.0,
    }


def place_beam_f3(vertices, faces, nz, iz, lpa, rpa, *, construction=None,
                  details: bool = False):
    """Beam F3 on this scalp, placed as a technician does.

    Measure NI, TT and HC (:func:`head_measurements`), compute X and Y (:func:`beam_f3`); from
    Fpz measure the arc X along the left circumference (the curve Fpz-T7-Oz) and mark that point
    P; from the vertex Cz go along the scalp (geodesic, a taut tape) towards P a distance Y: that
    is Beam F3.

    Returns
    -------
    ndarray (3,)
        Beam F3 on the scalp (world mm). With ``details=True`` a dict instead: ``F3``, ``P`` (the
        point X), ``X_cm``, ``Y_cm``, ``NI``, ``TT``, ``HC`` (cm).
    """
    surface = _as_surface(vertices, faces)
    if construction is None:
        construction = _ten_twenty(surface, nz, iz, lpa, rpa)
    points, tapes = construction
    measures = head_measurements(surface, None, nz, iz, lpa, rpa, construction=construction)
    x_cm, y_cm = beam_f3(measures["TT"], measures["NI"], measures["HC"])
    left = tapes["left"]
    if 10.0 * x_cm > left.length:
        LOGGER.warning("Beam F3: X = %.1f cm exceeds the left half circumference", x_cm)
    p = left.at(10.0 * x_cm)
    path, length = geodesic_path(surface, None, points["Cz"], p)
    if 10.0 * y_cm > length:
        LOGGER.warning("Beam F3: Y = %.1f cm exceeds the distance from Cz to the point X", y_cm)
    f3 = point_at_distance(path, 10.0 * y_cm)
    if not details:
        return f3
    return {"F3": f3, "P": p, "X_cm": x_cm, "Y_cm": y_cm, **measures}


# --------------------------------------------------------------------------------------------
# The 5 cm rule
# --------------------------------------------------------------------------------------------
def five_cm_rule(vertices, faces, motor_scalp_point, nz, iz, *, distance_mm: float = FIVE_CM_MM,
                 left_right=None) -> np.ndarray:
    """The "5 cm rule" site: 5 cm anterior of the motor hot spot along the scalp.

    Pascual-Leone et al. (1996) and most trials since move the coil 5 cm anterior from the scalp
    site above the motor hand area, along a parasagittal line. Here the line is the parasagittal
    plane section of the scalp through ``motor_scalp_point`` (the plane containing the
    nasion-inion direction and normal to the left-right axis), walked forwards (towards the
    nasion) for ``distance_mm`` along the surface, so the lateral offset from the midline stays
    that of the motor site.

    Parameters
    ----------
    motor_scalp_point : array-like (3,)
        Scalp point above the motor hand area.
    nz, iz : array-like (3,)
        Nasion and inion (give the anterior direction).
    left_right : array-like (3,), optional
        The head's left-to-right direction (e.g. RPA - LPA); default the world x axis (RAS).
        Made orthogonal to the nasion-inion direction.
    """
    surface = _as_surface(vertices, faces)
    anterior = np.asarray(nz, dtype=float) - np.asarray(iz, dtype=float)
    anterior /= np.linalg.norm(anterior)
    lr = np.array([1.0, 0.0, 0.0]) if left_right is None else np.asarray(left_right, float)
    lr = lr - np.dot(lr, anterior) * anterior
    if np.linalg.norm(lr) < 1e-6:
        raise ValueError("the left-right direction is parallel to the nasion-inion direction")
    point, _ = _walk_in_plane(surface, motor_scalp_point, lr, anterior, distance_mm)
    return point


# --------------------------------------------------------------------------------------------
# Cortex beneath a scalp point
# --------------------------------------------------------------------------------------------
def grey_matter_points(gm_data, affine, *, threshold: float = 0.5, dseg: bool | None = None):
    """World coordinates (mm) of the grey-matter voxel centres.

    ``gm_data`` is a GM probability map (voxels with probability >= ``threshold``) or an fMRIPrep
    ``dseg`` (label 1 = GM). ``dseg=None`` decides from the data: integer-valued with values
    above 1 means a segmentation.
    """
    data = np.asanyarray(gm_data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if dseg is None:
        finite = data[np.isfinite(data)] if np.issubdtype(data.dtype, np.floating) else data
        dseg = bool(finite.size and finite.max() > 1.0 + 1e-6
                    and np.allclose(finite, np.round(finite)))
    gm = (np.round(data) == 1) if dseg else (np.nan_to_num(data) >= threshold)
    return apply_affine(affine, np.argwhere(gm))


def cortical_point_beneath(scalp_point, gm_points, *, tree=None) -> np.ndarray:
    """The grey-matter voxel centre nearest a scalp point (world mm).

    ``gm_points`` from :func:`grey_matter_points`; ``tree`` may pass a ``cKDTree`` of them.
    """
    gm_points = np.asarray(gm_points, dtype=float)
    if len(gm_points) == 0:
        raise ValueError("the grey-matter map holds no voxel")
    tree = cKDTree(gm_points) if tree is None else tree
    _, index = tree.query(np.asarray(scalp_point, dtype=float))
    return gm_points[index]


# --------------------------------------------------------------------------------------------
# Nipype interface
# --------------------------------------------------------------------------------------------
POSE_COLUMNS = ("coil_x", "coil_y", "coil_z",
                "coil_xaxis_x", "coil_xaxis_y", "coil_xaxis_z",
                "coil_yaxis_x", "coil_yaxis_y", "coil_yaxis_z",
                "coil_zaxis_x", "coil_zaxis_y", "coil_zaxis_z")
TARGET_COLUMNS = ("name", "x", "y", "z", "seed_correlation_z", *SCALP_COLUMNS, *POSE_COLUMNS,
                  "distance_to_connectivity_mm", "depth_adjustment_pct_mso")
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


def _fmt(value, digits: int = 2) -> str:
    value = float(value)
    return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"


def _to_float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


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
        surface = _Surface(mesh["vertices"], mesh["faces"],
                           mesh["normals"] if "normals" in mesh.files else None)

        # Published MNI points into the computation space.
        names = ["Nz", "Iz", "LPA", "RPA", "motor_hand"]
        mni = np.array([*(FIDUCIALS_MNI[k] for k in names[:4]), MOTOR_HAND_MNI], dtype=float)
        if inputs.from_mni_xfm:
            from tmstarget.workflows.transforms import map_points

            mapped = map_points(mni, inputs.from_mni_xfm)
        else:
            mapped = mni.copy()
        if not np.isfinite(mapped).all():
            raise ValueError("the MNI landmarks did not map into the computation space")
        fiducials, snap_distance, snapped = place_fiducials(mapped[:4], surface, None)
        for name, distance, on_scalp in zip(names, snap_distance, snapped):
            if not on_scalp:
                LOGGER.warning("Fiducial %s maps %.1f mm outside the scalp (a face removed by "
                               "defacing, a field of view cutting the head, or a head unlike the "
                               "template?): the tape is anchored there, in the air.",
                               name, distance)
            elif distance > 10.0:
                LOGGER.warning("Fiducial %s maps %.1f mm inside the scalp: check the transform.",
                               name, distance)
        nz, iz, lpa, rpa = fiducials

        construction = _ten_twenty(surface, nz, iz, lpa, rpa)
        points, _ = construction
        beam = place_beam_f3(surface, None, nz, iz, lpa, rpa, construction=construction,
                             details=True)

        gm_img = nb.load(inputs.gm_file)
        dseg = "dseg" in Path(inputs.gm_file).name.lower() or None
        gm_points = grey_matter_points(np.asanyarray(gm_img.dataobj), gm_img.affine,
                                       threshold=inputs.gm_threshold, dseg=dseg)
        if len(gm_points) == 0:
            raise ValueError(f"{inputs.gm_file} holds no grey-matter voxel")
        gm_tree = cKDTree(gm_points)

        # The motor hot spot: the scalp point nearest the M1 hand coordinate; the cortex under
        # the coil there (as for every scalp-based row) gives the reference depth.
        motor_scalp = project_to_scalp(mapped[4], surface.vertices, surface.normals,
                                       surface.faces)["scalp_xyz"][0]
        motor_cortex = cortical_point_beneath(motor_scalp, gm_points, tree=gm_tree)
        five_cm = five_cm_rule(surface, None, motor_scalp, nz, iz, left_right=rpa - lpa)

        z_img = nb.load(inputs.z_file)
        z_data = np.asanyarray(z_img.dataobj, dtype=np.float32)
        if z_data.ndim == 4:
            z_data = z_data[..., 0]
        z_inverse = np.linalg.inv(z_img.affine)

        def z_at(xyz):
            ijk = np.round(apply_affine(z_inverse, xyz)).astype(int)
            if np.any(ijk < 0) or np.any(ijk >= z_data.shape[:3]):
                return float("nan")
            return float(z_data[tuple(ijk)])

        # Input table, read as text to keep its values verbatim.
        table = pd.read_csv(inputs.targets_file, sep="\t", dtype=str, keep_default_na=False)
        missing = {"name", "x", "y", "z"} - set(table.columns)
        if missing:
            raise ValueError(f"{inputs.targets_file} lacks the column(s) {sorted(missing)}")
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
                table.loc[redo, column] = [_fmt(v) for v in values]

        # New rows: scalp point -> cortical point beneath.
        new_scalp = np.array([points["F3"], beam["F3"], five_cm, motor_scalp])
        new_cortex = np.array([cortical_point_beneath(p, gm_points, tree=gm_tree)
                               for p in new_scalp])
        rows = []
        for name, scalp, cortex in zip(COMPARATOR_ROWS, new_scalp, new_cortex):
            row = {column: "n/a" for column in table.columns}
            row.update(name=name, x=_fmt(cortex[0]), y=_fmt(cortex[1]), z=_fmt(cortex[2]),
                       seed_correlation_z=_fmt(z_at(cortex)))
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
                table.loc[k, column] = _fmt(value)
        # The depth reported in the table is what every row's dose adjustment uses.
        depth_table = numbers(table, ("scalp_distance_mm",))[:, 0]

        poses = np.full((len(table), len(POSE_COLUMNS)), np.nan)
        for k in np.flatnonzero(valid & np.isfinite(normal_all).all(axis=1)):
            pose = coil_pose(scalp_all[k], normal_all[k], inputs.handle_angle_deg,
                             inputs.coil_offset_mm, posterior=iz - nz, left_right=rpa - lpa)
            poses[k] = np.concatenate([pose[:3, 3], pose[:3, 0], pose[:3, 1], pose[:3, 2]])
        for column, values in zip(POSE_COLUMNS, poses.T):
            digits = 4 if "axis" in column else 2  # direction cosines: 4 decimals
            table[column] = [_fmt(v, digits) for v in values]

        is_connectivity = (table["name"] == "connectivity").to_numpy()
        reference = cortex_all[is_connectivity][0] if is_connectivity.any() else np.full(3, np.nan)
        table["distance_to_connectivity_mm"] = [
            _fmt(np.linalg.norm(c - reference)) for c in cortex_all]
        motor_depth = depth_table[-1]
        table["depth_adjustment_pct_mso"] = [
            _fmt(depth_dose_adjustment(d, motor_depth)) for d in depth_table]

        # Column order: the input's, then the pose and comparison columns.
        ordered = list(dict.fromkeys([*table.columns.drop([*POSE_COLUMNS,
                                                          "distance_to_connectivity_mm",
                                                          "depth_adjustment_pct_mso"]),
                                      *POSE_COLUMNS, "distance_to_connectivity_mm",
                                      "depth_adjustment_pct_mso"]))
        table = table[ordered]
        out_file = Path(runtime.cwd) / "scalp_targets.tsv"
        table.to_csv(out_file, sep="\t", index=False)

        def listed(point):
            return [round(float(v), 2) for v in point]

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
                "References": [LANDMARK_REFERENCES["Jurcak2007"],
                               LANDMARK_REFERENCES["SimNIBSCaps"]],
                "MNI152NLin2009cAsym_mm": {k: list(FIDUCIALS_MNI[k]) for k in names[:4]},
                "Mapped_mm": {k: listed(p) for k, p in zip(names[:4], mapped[:4])},
                "Used_mm": {k: listed(p) for k, p in zip(names[:4], fiducials)},
                "SnappedToScalp": {k: bool(s) for k, s in zip(names[:4], snapped)},
                "DistanceToScalp_mm": {k: round(float(d), 2)
                                       for k, d in zip(names[:4], snap_distance)},
            },
            "TenTwenty_mm": {k: listed(p) for k, p in points.items()},
            "MotorHand": {"MNI152NLin2009cAsym_mm": list(MOTOR_HAND_MNI),
                          "Mapped_mm": listed(mapped[4]), "Cortex_mm": listed(motor_cortex),
                          "Scalp_mm": listed(motor_scalp),
                          "Source": LANDMARK_REFERENCES["Mayka2006"]},
            "FiveCm": {"Distance_mm": FIVE_CM_MM, "Scalp_mm": listed(five_cm)},
            "Coil": {"HandleAngle_deg": inputs.handle_angle_deg,
                     "Offset_mm": inputs.coil_offset_mm,
                     "Convention": METHODS["coil"], "Source": LANDMARK_REFERENCES["SimNIBS"]},
            "DepthAdjustment": {"Slope_pct_MSO_per_mm": STOKES_SLOPE_PCT_PER_MM,
                                "ReferenceRow": "motor_hand",
                                "ReferenceDepth_mm": round(float(motor_depth), 2),
                                "Source": LANDMARK_REFERENCES["Stokes2007"]},
            "Methods": METHODS,
            "References": LANDMARK_REFERENCES,
        }
        measurements_file = Path(runtime.cwd) / "scalp_measurements.json"
        measurements_file.write_text(json.dumps(measurements, indent=2))
        self._results["out_file"] = str(out_file)
        self._results["measurements_file"] = str(measurements_file)
        return runtime
