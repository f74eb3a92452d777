"""The published scalp landmark constructions, placed on this head as a technician would.

Three ways of aiming at the left DLPFC without imaging, and what they start from:

- the **fiducials** (nasion Nz, inion Iz, preauricular points LPA/RPA): published MNI positions
  mapped into the computation space by the caller and put on this scalp (:func:`place_fiducials`);
- **10-20 F3** (:func:`ten_twenty_f3`): the international 10-20 construction from the fiducials;
- **Beam F3** (:func:`beam_f3`, :func:`place_beam_f3`): the Beam et al. (2009) formula from three
  head measurements (:func:`head_measurements`);
- the **motor hand area** (:data:`MOTOR_HAND_MNI`) and **the "5 cm rule"** (:func:`five_cm_rule`):
  5 cm anterior of the motor hot spot along the scalp.

All coordinates are world millimetres, RAS, of the computation space (the space of the mesh).
Published positions are given in MNI152NLin2009cAsym millimetres. The curves, geodesics and tapes
are those of :mod:`tmstarget.workflows.surface`; the comparator rows built from these points are
:mod:`tmstarget.workflows.comparators`.

Defaced heads
-------------
A fiducial that maps into the air, away from the scalp (the nasion of a defaced T1w), is not
snapped onto the cut surface (that would move it by centimetres) but kept as the anchor of the
tape (:func:`place_fiducials`): the tape runs straight from it to the remaining skin. On the
MNI152NLin2009cAsym head, removing the face with the nasion moves the 10-20 F3 by about 1 mm.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tmstarget.workflows.coil import COIL_REFERENCES
from tmstarget.workflows.surface import (
    Surface,
    Tape,
    as_surface,
    geodesic_path,
    point_at_distance,
    walk_in_plane,
)

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
# Fiducials
# --------------------------------------------------------------------------------------------
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
    surface = as_surface(vertices, faces)
    points = np.atleast_2d(np.asarray(points, dtype=float))
    distance, index = surface.tree.query(points)
    nearest = surface.vertices[index]
    normals = surface.normals if normals is None else np.asarray(normals, dtype=float)
    outside = np.einsum("ij,ij->i", points - nearest, normals[index]) > 0
    snapped = ~(outside & (distance > max_snap_mm))
    placed = np.where(snapped[:, None], nearest, points)
    return placed, distance, snapped


FIDUCIAL_NAMES = ("Nz", "Iz", "LPA", "RPA")


def fiducial_checks(mapped, placed, distance_mm, snapped, border, *, t1w_name: str):
    """Whether the fiducials can carry the 10-20 and Beam constructions, and the warnings.

    A fiducial outside the image or on its border (``border``: the mapped point or its place on
    the scalp; the head is cut there) cannot: the tapes would run over the cut. Nor can one left
    in the air (not snapped, more than ``max_snap_mm`` of :func:`place_fiducials` outside the
    scalp: a head unlike the template, or a wrong transform), except the nasion alone, whose
    skin a defacing removes (the tape is then anchored in the air, which moves 10-20 F3 by about
    1 mm on the MNI head). A fiducial mapped more than 10 mm inside the scalp is snapped onto it,
    with a warning.

    Parameters
    ----------
    mapped, placed : array-like (4, 3)
        Fiducials Nz, Iz, LPA, RPA as mapped into the space, and as placed on this scalp.
    distance_mm, snapped : array-like (4,)
        Their distance to the scalp and whether they were snapped (:func:`place_fiducials`).
    border : array-like (4,) of bool
        Whether each lies outside the image or on its border (mapped or placed).
    t1w_name : str
        The head image, named in the warnings.

    Returns
    -------
    trusted : bool
    warnings : list of str
    """
    snapped = np.asarray(snapped, dtype=bool)
    border = np.asarray(border, dtype=bool)
    in_air = ~snapped
    defaced = bool(in_air[0] and not in_air[1:].any() and not border[0])
    trusted = not border.any() and (not in_air.any() or defaced)
    def listed(mask):
        return ", ".join(f"{name} ({', '.join(f'{v:.1f}' for v in point)} mm)"
                         for name, point, m in zip(FIDUCIAL_NAMES, mapped, mask) if m)

    warnings = []
    if border.any():
        warnings.append(f"{t1w_name}: the fiducial(s) {listed(border)} lie outside the image or "
                        "on its border, where the head is cut off: 10-20 F3 and Beam F3 were not "
                        "constructed; give a T1w whose field of view holds the whole head.")
    air = in_air & ~border
    if air.any() and defaced:
        warnings.append(f"{t1w_name}: the fiducial {listed(air)} maps {distance_mm[0]:.1f} mm "
                        "outside the scalp (the face removed by defacing?): the tapes are "
                        "anchored there, in the air; give a T1w with the face for tapes from "
                        "the skin.")
    elif air.any():
        distances = ", ".join(f"{d:.1f}" for d, m in zip(distance_mm, air) if m)
        warnings.append(f"{t1w_name}: the fiducial(s) {listed(air)} map {distances} mm outside "
                        "the scalp (a head unlike the template, or a wrong transform): 10-20 F3 "
                        "and Beam F3 were not constructed; check the T1w and its transform to "
                        "MNI152NLin2009cAsym.")
    inside = ~in_air & ~border & (np.asarray(distance_mm) > 10.0)
    if inside.any():
        distances = ", ".join(f"{d:.1f}" for d, m in zip(distance_mm, inside) if m)
        warnings.append(f"{t1w_name}: the fiducial(s) {listed(inside)} map {distances} mm "
                        "inside the scalp and were put on it: check the transform to "
                        "MNI152NLin2009cAsym.")
    return trusted, warnings


# --------------------------------------------------------------------------------------------
# 10-20 system
# --------------------------------------------------------------------------------------------
def _initial_vertex(surface: Surface, nz, iz, lpa, rpa):
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



class TenTwenty(NamedTuple):
    """A 10-20 construction on a scalp: the points, the tapes they were measured on and the
    warnings of the construction (one-line strings)."""

    points: dict
    tapes: dict
    warnings: list


def ten_twenty_construction(surface, nz, iz, lpa, rpa, *, max_iter: int = 50,
                            tol_mm: float = 0.05) -> TenTwenty:
    """10-20 points, the tapes they were measured on, and warnings (see :func:`ten_twenty_f3`).

    ``surface`` is a :class:`tmstarget.workflows.surface.Surface` (or a ``(vertices, faces)``
    pair)."""
    if not isinstance(surface, Surface):
        surface = as_surface(*surface)
    warnings = []
    nz, iz, lpa, rpa = (np.asarray(p, dtype=float) for p in (nz, iz, lpa, rpa))
    cz = _initial_vertex(surface, nz, iz, lpa, rpa)
    converged, step = False, np.inf
    for _ in range(max_iter):
        cz_midline = Tape(surface, nz, cz, iz).fraction(0.5)
        cz_new = Tape(surface, lpa, cz_midline, rpa).fraction(0.5)
        step = max(np.linalg.norm(cz_new - cz), np.linalg.norm(cz_midline - cz))
        # Damped update: the two midpoints pull along different axes.
        cz = surface.to_surface(0.5 * (cz_new + cz_midline))[0]
        if step < tol_mm:
            converged = True
            break
    if not converged:
        warnings.append(f"10-20 construction: the vertex Cz did not converge in {max_iter} "
                        f"iterations (last step {step:.2f} mm): the scalp is irregular around the "
                        "vertex or the fiducials are off; 10-20 F3 and Beam F3 are uncertain.")
    midline = Tape(surface, nz, cz, iz)
    coronal = Tape(surface, lpa, cz, rpa)
    cz = 0.5 * (midline.fraction(0.5) + coronal.fraction(0.5))
    points = {"Nz": nz, "Iz": iz, "LPA": lpa, "RPA": rpa, "Cz": cz}
    for name, fraction in (("Fpz", 0.1), ("Fz", 0.3), ("Pz", 0.7), ("Oz", 0.9)):
        points[name] = midline.fraction(fraction)
    for name, fraction in (("T7", 0.1), ("C3", 0.3), ("C4", 0.7), ("T8", 0.9)):
        points[name] = coronal.fraction(fraction)
    left = Tape(surface, points["Fpz"], points["T7"], points["Oz"])
    right = Tape(surface, points["Fpz"], points["T8"], points["Oz"])
    points["Fp1"], points["F7"] = left.fraction(0.1), left.fraction(0.3)
    points["Fp2"], points["F8"] = right.fraction(0.1), right.fraction(0.3)
    frontal = Tape(surface, points["F7"], points["Fz"], points["F8"])
    s_fz = frontal.position(points["Fz"])
    points["F3"] = frontal.at(0.5 * s_fz)
    points["F4"] = frontal.at(s_fz + 0.5 * (frontal.length - s_fz))
    tapes = {"midline": midline, "coronal": coronal, "left": left, "right": right,
             "frontal": frontal}
    return TenTwenty(points, tapes, warnings)


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
    return ten_twenty_construction(as_surface(vertices, faces), nz, iz, lpa, rpa).points


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
    ``construction`` may pass a previous :func:`ten_twenty_construction` of this head.
    """
    if construction is None:
        construction = ten_twenty_construction(as_surface(vertices, faces), nz, iz, lpa, rpa)
    tapes = construction.tapes
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
        point X), ``X_cm``, ``Y_cm``, ``NI``, ``TT``, ``HC`` (cm) and ``warnings`` (one-line
        strings: X or Y longer than the scalp curve they are measured along).
    """
    surface = as_surface(vertices, faces)
    if construction is None:
        construction = ten_twenty_construction(surface, nz, iz, lpa, rpa)
    points, tapes = construction.points, construction.tapes
    warnings = []
    measures = head_measurements(surface, None, nz, iz, lpa, rpa, construction=construction)
    x_cm, y_cm = beam_f3(measures["TT"], measures["NI"], measures["HC"])
    left = tapes["left"]
    if 10.0 * x_cm > left.length:
        warnings.append(f"Beam F3: X = {x_cm:.1f} cm exceeds the left half circumference "
                        f"({left.length / 10.0:.1f} cm): the head measurements are implausible "
                        "for this scalp (fiducials off the head?); Beam F3 is clamped there.")
    p = left.at(10.0 * x_cm)
    path, length = geodesic_path(surface, None, points["Cz"], p)
    if 10.0 * y_cm > length:
        warnings.append(f"Beam F3: Y = {y_cm:.1f} cm exceeds the distance from Cz to the point "
                        f"X ({length / 10.0:.1f} cm): Beam F3 is clamped at the point X.")
    f3 = point_at_distance(path, 10.0 * y_cm)
    if not details:
        return f3
    return {"F3": f3, "P": p, "X_cm": x_cm, "Y_cm": y_cm, **measures, "warnings": warnings}


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
    surface = as_surface(vertices, faces)
    anterior = np.asarray(nz, dtype=float) - np.asarray(iz, dtype=float)
    anterior /= np.linalg.norm(anterior)
    lr = np.array([1.0, 0.0, 0.0]) if left_right is None else np.asarray(left_right, float)
    lr = lr - np.dot(lr, anterior) * anterior
    if np.linalg.norm(lr) < 1e-6:
        raise ValueError("the left-right direction is parallel to the nasion-inion direction")
    point, _ = walk_in_plane(surface, motor_scalp_point, lr, anterior, distance_mm)
    return point
