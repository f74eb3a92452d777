"""The report's E-field figure and methods text: the field map of the plan's coil pose.

Drawn from what :class:`tmstarget.workflows.efield_plan.EfieldPlan` wrote (the |E| map on the
BOLD grid, its ``efield.json`` and the targets table); nothing is re-computed. Like
:mod:`tmstarget.reports.figures`, imported only when a report is drawn.
"""

from __future__ import annotations

import math

import nibabel as nb
import numpy as np
from matplotlib import pyplot as plt

from tmstarget.reports.figures import save_display
from tmstarget.reports.palette import WIDTH_IN

#: Where the map is drawn: the field above this share of its maximum (the rest is background).
DRAW_THRESHOLD = 0.1
#: The contour drawn: the half-value region (Deng et al. 2013's focality measure).
HALF_VALUE = 0.5


def plot_efield(efield_map, underlay, target_xyz, path, coil_xyz=None, title=None):
    """Orthogonal slices of the |E| map through the target, over the T1w, with the half-value
    contour, the target (green) and the coil centre (cyan square; nilearn draws a marker only
    on the slices it lies near, and the coil sits on the scalp above the target) marked.

    Parameters
    ----------
    efield_map : path or nibabel image
        |E| in V/m (``EfieldPlan``'s ``efield_file``, the derivative ``desc-efield``).
    underlay : path or nibabel image
        T1w of the map's space (:func:`tmstarget.reports.figures.load_underlay`).
    target_xyz : sequence of 3 float
        Connectivity target, world mm of the map's space.
    path : path
        Output image (PNG or SVG).
    coil_xyz : sequence of 3 float, optional
        Coil centre on the scalp, same space.
    title : str, optional
        Default: the maximum field and where the target is.

    Returns
    -------
    pathlib.Path
        ``path``, written atomically.
    """
    from nilearn import plotting

    image = nb.load(efield_map) if not isinstance(efield_map, nb.Nifti1Image) else efield_map
    data = np.asanyarray(image.dataobj)
    peak = float(data.max()) if data.size else 0.0
    target = tuple(float(v) for v in target_xyz)
    if title is None:
        title = (f"|E| (V/m) of the coil pose, max {peak:.2f}; target "
                 f"({target[0]:.0f}, {target[1]:.0f}, {target[2]:.0f}) mm")
    fig = plt.figure(figsize=(WIDTH_IN, 3.4))
    display = plotting.plot_stat_map(image, bg_img=underlay, cut_coords=target, figure=fig,
                                     cmap="inferno", threshold=DRAW_THRESHOLD * peak or None,
                                     vmax=peak or None, symmetric_cbar=False, dim=-0.3,
                                     title=title, colorbar=True, draw_cross=False)
    if peak > 0:
        display.add_contours(image, levels=[HALF_VALUE * peak], colors="white", linewidths=0.8)
    display.add_markers([target], marker_color="lime", marker_size=60)
    if coil_xyz is not None and np.isfinite(np.asarray(coil_xyz, dtype=float)).all():
        display.add_markers([tuple(float(v) for v in coil_xyz)], marker_color="cyan",
                            marker_size=60, marker="s")
    return save_display(display, path)


def _number(value, digits=2):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return f"{value:.{digits}f}" if math.isfinite(value) else None


def efield_methods(info, row, cite=None):
    """The methods paragraph of the E-field plan (Markdown), for one targets-table row.

    Parameters
    ----------
    info : dict
        ``EfieldPlan``'s ``efield.json`` (the sidecar's E-field block).
    row : mapping
        The row (normally ``connectivity``) of the targets table with the E-field columns
        (numbers or their text; ``n/a`` where not computed).
    cite : callable, optional
        ``cite(reference_text) -> "[n]"`` of the methods boilerplate
        (:func:`tmstarget.reports.methods.boilerplate`); default: author and year in the text.

    Returns
    -------
    str
    """
    references = info.get("References", {})

    def ref(key, short):
        return cite(references[key]) if cite and key in references else f"({short})"

    coil = info["Coil"]
    didt = info["dIdt_A_per_us"]
    source = (" with the geometry of Thielscher & Kammer (2002)," if "Thielscher A, Kammer T"
              in coil.get("Source", "") else "")
    text = (f"The electric field (E-field) of the coil was computed with tmstarget's analytic "
            f"model: the {coil['Description']} ({coil['Name']}) as {coil['Dipoles']} magnetic "
            f"dipoles,{source} in a spherically "
            "symmetric conductor fitted to the scalp under each coil position, whose field has "
            f"a closed form {ref('Eaton1992', 'Eaton 1992')} "
            f"{ref('HellerVanHulsteyn1992', 'Heller & van Hulsteyn 1992')}. Fields are given for "
            f"a coil current slope of {didt:g} A/µs and scale linearly with it. ")
    name = row.get("name", "connectivity")
    clinical, optimal = _number(row.get("efield_clinical_v_per_m"), 3), _number(
        row.get("efield_optimal_v_per_m"), 3)
    used, angle = _number(row.get("efield_target_v_per_m"), 3), _number(
        row.get("handle_angle_deg"), 0)
    best_angle = _number(row.get("efield_optimal_angle_deg"), 0)
    if used is None:
        text += f"No field was computed for the {name} row (no trusted coil pose). "
    else:
        rule = ("chosen by the field (the largest |E| at the target, keeping the clinical "
                "angle unless another gained more than 1 %)" if info.get("Orientation") == "efield"
                else f"the clinical {coil.get('HandleAngleClinical_deg', 45):g}°")
        text += (f"The handle angle used was {rule}: {angle}° from the head's posterior "
                 f"direction, giving {used} V/m at the {name} target (clinical angle "
                 f"{clinical} V/m; best angle {best_angle}°, {optimal} V/m). ")
        dose_mt, dose_mso = _number(row.get("efield_dose_pct_mt"), 0), _number(
            row.get("efield_dose_pct_mso"), 0)
        stokes = _number(row.get("depth_adjustment_pct_mso"), 1)
        if dose_mt is not None:
            text += (f"The field-based dose, the output giving the target the field the motor "
                     f"hand area gets at motor threshold, is {dose_mt} % of the resting motor "
                     "threshold" + (f" ({dose_mso} % of maximum stimulator output for the "
                                    f"threshold of {info['MotorThreshold_pct_MSO']:g} % given)"
                                    if dose_mso is not None else "")
                     + (f"; the depth adjustment of Stokes et al. (2007) "
                        f"{ref('Stokes2007', 'Stokes et al. 2007')} gives {stokes} % of maximum "
                        "stimulator output over the motor threshold" if stokes is not None else "")
                     + ". ")
    text += ("Limits: the sphere ignores the folding of the cortex, the cerebrospinal fluid and "
             "the skull's shape; realistic head models concentrate the field on gyral crowns "
             "and raise it by up to about 50 % where the current crosses a gyrus "
             f"{ref('Thielscher2011', 'Thielscher et al. 2011')}, so the ratios (dose, "
             "orientation gain) are more reliable than the absolute field; the orientation is "
             "chosen by the field's magnitude, not its direction across the sulcus; the "
             "field-based dose assumes the same threshold field at the target as at the motor "
             "cortex and is not validated clinically for the DLPFC.")
    return text
