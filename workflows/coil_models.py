"""TMS coil models: a figure-of-eight coil as magnetic dipoles (and as wire loops), by name.

A coil model is what the E-field of :mod:`tmstarget.workflows.efield` needs of a coil: magnetic
dipoles with positions and moments in the coil's own frame, as in SimNIBS ``.ccd`` files and in
Thielscher & Kammer (2002, 2004). The same windings are also given as circular wire loops
(:func:`figure8_loops`), whose vector potential :func:`vector_potential_segments` computes by
Biot-Savart on straight segments: an independent representation against which the dipole
discretisation is tested.

Coil frame (SimNIBS ``matsimnibs``, see :mod:`tmstarget.workflows.coil`)
-----------------------------------------------------------------------
Millimetres. ``x``: the axis through the two wing centres; ``y``: the handle direction;
``z``: the coil normal pointing INTO the head; ``z = 0`` is the surface of the casing that touches
the head, so the windings lie at negative ``z``. The wing at ``+x`` has its moment along ``+z``,
the wing at ``-x`` along ``-z`` (as in SimNIBS's ``Magstim_70mm_Fig8.ccd``): for a coil current
rising (dI/dt > 0) the induced field under the coil centre points along ``+y``, the handle.
Moments are per ampere of coil current (A m^2 / A = m^2), so every field is linear in dI/dt.

Geometry of the Magstim 70 mm double coil
-----------------------------------------
Two wings of 9 turns each between radii 26 and 44 mm (the "70 mm" is the mean winding diameter),
wing centres 44 mm either side of the coil centre (the outer turns meet under the centre), the
windings 7 mm thick starting 3 mm above the casing surface. These are the dimensions Thielscher &
Kammer (2002) gave for this coil, as used by Petrov et al. (2017: 9 turns, inner and outer radius
26 and 44 mm) and Stenroos & Koponen (2019: wing centres at +-44 mm, 7 mm winding thickness, 3 mm
casing). Each turn is a circle in the middle of its share of the winding width (radii 27, 29, ...,
43 mm); the spiral's radial pitch and the leads are neglected (their moment is small against the
turns'). The winding thickness is integrated by 3-point Gauss-Legendre layers (the z-layers of
Stenroos & Koponen 2019).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

#: mu_0 / (4 pi), T m / A.
MU0_OVER_4PI = 1e-7

COIL_MODEL_REFERENCES = {
    "ThielscherKammer2002": "Thielscher A, Kammer T. Linking physics with physiology in TMS: a "
    "sphere field model to determine the cortical stimulation site in TMS. NeuroImage. "
    "2002;17(3):1117-1130. doi:10.1006/nimg.2002.1282",
    "ThielscherKammer2004": "Thielscher A, Kammer T. Electric field properties of two commercial "
    "figure-8 coils in TMS: calculation of focality and efficiency. Clin Neurophysiol. "
    "2004;115(7):1697-1708. doi:10.1016/j.clinph.2004.02.019",
    "Petrov2017": "Petrov PI, Mandija S, Sommer IEC, van den Berg CAT, Neggers SFW. How much "
    "detail is needed in modeling a transcranial magnetic stimulation figure-8 coil: "
    "measurements and brain simulations. PLoS One. 2017;12(6):e0178952. "
    "doi:10.1371/journal.pone.0178952 (Magstim 70 mm coil model: 9 turns, radii 26-44 mm; data "
    "and scripts at github.com/pip010/plosone-data-pub01)",
    "StenroosKoponen2019": "Stenroos M, Koponen LM. Real-time computation of the TMS-induced "
    "electric field in a realistic head model. NeuroImage. 2019;203:116159. "
    "doi:10.1016/j.neuroimage.2019.116159 (Magstim 70 mm coil after Thielscher & Kammer 2002: "
    "wing centres +-44 mm, 7 mm windings above a 3 mm casing)",
}


@dataclass(frozen=True)
class Figure8Geometry:
    """Windings of a flat figure-of-eight coil (all lengths in mm).

    Attributes
    ----------
    inner_radius_mm, outer_radius_mm : float
        Inner and outer radius of each wing's winding.
    turns : int
        Turns per wing.
    wing_centre_mm : float
        Distance of each wing's centre from the coil centre along the coil's x axis.
    casing_mm : float
        Distance from the casing surface touching the head to the bottom of the windings.
    thickness_mm : float
        Thickness of the windings along the coil normal.
    """

    inner_radius_mm: float
    outer_radius_mm: float
    turns: int
    wing_centre_mm: float
    casing_mm: float
    thickness_mm: float

    def turn_radii_mm(self) -> np.ndarray:
        """Radius of each turn (mm): the middle of its share of the winding width."""
        width = (self.outer_radius_mm - self.inner_radius_mm) / self.turns
        return self.inner_radius_mm + width * (np.arange(self.turns) + 0.5)

    def layers(self) -> tuple[np.ndarray, np.ndarray]:
        """z of the winding layers (mm, negative: outside the head) and their weights (sum 1).

        3-point Gauss-Legendre quadrature over the winding thickness.
        """
        nodes, weights = np.polynomial.legendre.leggauss(3)
        middle = self.casing_mm + 0.5 * self.thickness_mm
        return -(middle + 0.5 * self.thickness_mm * nodes), weights / 2.0


@dataclass(frozen=True)
class CoilModel:
    """Magnetic dipoles of a coil in its own frame (see the module docstring).

    Attributes
    ----------
    name : str
    description : str
    source : str
        Where the geometry comes from (full citations).
    positions_mm : ndarray (N, 3)
        Dipole positions, mm, coil frame.
    moments_m2 : ndarray (N, 3)
        Dipole moments per ampere of coil current, m^2 (A m^2 / A).
    geometry : Figure8Geometry
    """

    name: str
    description: str
    source: str
    positions_mm: np.ndarray = field(repr=False)
    moments_m2: np.ndarray = field(repr=False)
    geometry: Figure8Geometry | None = None

    def in_world(self, pose) -> tuple[np.ndarray, np.ndarray]:
        """Dipole positions (mm) and moments (m^2) in world coordinates for a 4x4 ``pose``
        (``matsimnibs`` layout: columns x, y, z axes and centre, world mm)."""
        pose = np.asarray(pose, dtype=float)
        rotation, centre = pose[:3, :3], pose[:3, 3]
        return self.positions_mm @ rotation.T + centre, self.moments_m2 @ rotation.T


def figure8_dipoles(geometry: Figure8Geometry, spacing_mm: float = 4.0) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    """Dipole discretisation of a figure-of-eight coil's turns.

    A loop of current I is, seen from outside its plane, a sheet of dipoles of density I normal
    to the disc it bounds; the turns of a wing therefore make a dipole density equal to the
    number of turns enclosing each point. Each wing's disc (radius = outer radius) is cut into
    rings ``spacing_mm`` wide, each ring into arcs about ``spacing_mm`` long; an element's moment
    is the exact integral of that density over it, so the coil's total moment is exact. Arcs of
    neighbouring rings are staggered. Each layer of :meth:`Figure8Geometry.layers` repeats the
    pattern with its weight.

    Parameters
    ----------
    geometry : Figure8Geometry
    spacing_mm : float
        Element size (mm). Dipoles stand for their element at distances large against it; at
        4 mm the vector potential 15 mm or more below the casing is within 0.3 % of the wire
        loops' (tests/test_efield.py); the error falls with the spacing.

    Returns
    -------
    positions_mm : ndarray (N, 3)
    moments_m2 : ndarray (N, 3)
    """
    radii = geometry.turn_radii_mm()
    n_rings = max(1, int(np.ceil(geometry.outer_radius_mm / spacing_mm)))
    edges = np.linspace(0.0, geometry.outer_radius_mm, n_rings + 1)
    xy, weight = [], []
    for index, (r0, r1) in enumerate(zip(edges[:-1], edges[1:])):
        # Area of the ring enclosed by each turn, summed over turns (mm^2).
        enclosed = np.pi * (np.clip(radii, r0, r1) ** 2 - r0 ** 2)
        moment = float(enclosed.sum())
        if moment <= 0:
            continue
        if r0 == 0:
            xy.append(np.zeros((1, 2)))
            weight.append(np.array([moment]))
            continue
        rho = 2.0 / 3.0 * (r1 ** 3 - r0 ** 3) / (r1 ** 2 - r0 ** 2)  # area centroid radius
        n_arcs = max(3, int(np.ceil(2 * np.pi * rho / spacing_mm)))
        theta = 2 * np.pi * (np.arange(n_arcs) + 0.5 * (index % 2)) / n_arcs
        xy.append(rho * np.column_stack([np.cos(theta), np.sin(theta)]))
        weight.append(np.full(n_arcs, moment / n_arcs))
    xy, weight = np.vstack(xy), np.concatenate(weight)

    positions, moments = [], []
    z_layers, z_weights = geometry.layers()
    for sign in (+1.0, -1.0):
        for z, w in zip(z_layers, z_weights):
            wing = np.column_stack([sign * (geometry.wing_centre_mm + xy[:, 0]), xy[:, 1],
                                    np.full(len(xy), z)])
            positions.append(wing)
            moment = np.zeros((len(xy), 3))
            moment[:, 2] = sign * w * weight * 1e-6  # mm^2 -> m^2
            moments.append(moment)
    return np.vstack(positions), np.vstack(moments)


def figure8_loops(geometry: Figure8Geometry, n_segments: int = 180) -> list[tuple[np.ndarray,
                                                                                 float]]:
    """The same turns as closed polygons of straight wire segments (an independent representation).

    Returns
    -------
    list of (vertices_mm (n_segments, 3), current_weight)
        Closed polygons (last vertex joins the first), coil frame, mm, counter-clockwise about
        +z for the wing at +x (moment +z) and clockwise for the wing at -x; ``current_weight``
        is the layer weight (the share of the coil current in that layer). The polygons are
        circumscribed-area corrected: their vertices lie at the radius giving the polygon the
        area of the circle.
    """
    theta = 2 * np.pi * np.arange(n_segments) / n_segments
    # A regular polygon of circumradius R has area n R^2 sin(2 pi / n) / 2.
    stretch = np.sqrt(2 * np.pi / (n_segments * np.sin(2 * np.pi / n_segments)))
    loops = []
    z_layers, z_weights = geometry.layers()
    for sign in (+1.0, -1.0):
        for z, w in zip(z_layers, z_weights):
            for radius in geometry.turn_radii_mm():
                r = radius * stretch
                vertices = np.column_stack([sign * geometry.wing_centre_mm + r * np.cos(theta),
                                            sign * r * np.sin(theta), np.full(n_segments, z)])
                loops.append((vertices, float(w)))
    return loops


def vector_potential_segments(points_mm, loops) -> np.ndarray:
    """Magnetic vector potential per ampere (T m / A = V s / (A m)) of wire polygons, by
    Biot-Savart.

    For a straight segment from a to b (length L) carrying current I the potential at r is
    ``mu0 I / (4 pi) * u * ln((Ra + Rb + L) / (Ra + Rb - L))`` with ``u`` the segment's
    direction and Ra, Rb the distances of r from its ends (exact for straight segments).

    Parameters
    ----------
    points_mm : array-like (P, 3)
        Field points, mm (same frame as the loops).
    loops : list of (vertices_mm (n, 3), weight)
        Closed polygons, e.g. from :func:`figure8_loops` (or moved by a pose).

    Returns
    -------
    ndarray (P, 3)
        A per ampere; the primary field is ``E = -dI/dt * A`` (V/m with dI/dt in A/s).
    """
    points = np.atleast_2d(np.asarray(points_mm, dtype=float)) * 1e-3
    potential = np.zeros_like(points)
    for vertices, weight in loops:
        a = np.asarray(vertices, dtype=float) * 1e-3
        b = np.roll(a, -1, axis=0)
        length = np.linalg.norm(b - a, axis=1)
        direction = (b - a) / length[:, None]
        ra = np.linalg.norm(points[:, None, :] - a[None], axis=2)
        rb = np.linalg.norm(points[:, None, :] - b[None], axis=2)
        log_term = np.log((ra + rb + length) / (ra + rb - length))
        potential += weight * MU0_OVER_4PI * log_term @ direction
    return potential


def vector_potential_dipoles(points_mm, positions_mm, moments_m2) -> np.ndarray:
    """Vector potential per ampere of magnetic dipoles, ``mu0 / (4 pi) m x R / |R|^3``.

    Units as :func:`vector_potential_segments`; positions in mm, moments in m^2.
    """
    points = np.atleast_2d(np.asarray(points_mm, dtype=float)) * 1e-3
    offset = points[:, None, :] - np.asarray(positions_mm, dtype=float)[None] * 1e-3
    distance3 = np.linalg.norm(offset, axis=2, keepdims=True) ** 3
    return MU0_OVER_4PI * (np.cross(np.asarray(moments_m2)[None], offset) / distance3).sum(1)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
#: Coil models by name (for a ``--coil`` option): description, geometry and source.
COIL_GEOMETRIES = {
    "Magstim_70mm_Fig8": (
        "Magstim 70 mm double coil (figure-of-eight)",
        Figure8Geometry(inner_radius_mm=26.0, outer_radius_mm=44.0, turns=9,
                        wing_centre_mm=44.0, casing_mm=3.0, thickness_mm=7.0),
        "; ".join(COIL_MODEL_REFERENCES[key] for key in
                  ("ThielscherKammer2002", "Petrov2017", "StenroosKoponen2019")),
    ),
}

DEFAULT_COIL = "Magstim_70mm_Fig8"


@lru_cache(maxsize=None)
def coil_model(name: str = DEFAULT_COIL, spacing_mm: float = 4.0) -> CoilModel:
    """The named coil model of :data:`COIL_GEOMETRIES` as dipoles.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    """
    if name not in COIL_GEOMETRIES:
        known = ", ".join(sorted(COIL_GEOMETRIES))
        raise ValueError(f"unknown coil model {name!r}; known: {known}")
    description, geometry, source = COIL_GEOMETRIES[name]
    positions, moments = figure8_dipoles(geometry, spacing_mm)
    positions.setflags(write=False)
    moments.setflags(write=False)
    return CoilModel(name=name, description=description, source=source,
                     positions_mm=positions, moments_m2=moments, geometry=geometry)
