"""The treatment plan: the first thing the report shows and the one page it prints.

What a TMS clinician acts on, in the participant's own T1w coordinates (the navigator's): where the
target is, where the coil goes and how it is turned, the dose adjustment, how far the target can be
trusted and why, every warning, and which files to load into the neuronavigation system.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np

from tmstarget.reports.head import coil_axes
from tmstarget.reports.html import format_point
from tmstarget.reports.palette import colour_legend
from tmstarget.reports.quality import format_distance, grade_sentence, warnings_html

#: The navigation exports the sink writes in ``sub-<label>/tms/`` (glob, what it is for).
NAVIGATION_EXPORTS = (("*_desc-brainsight_targets.txt", "Brainsight"),
                      ("*_desc-localite_markers.xml", "Localite"),
                      ("*_markers.tsv", "NIBS-BIDS markers"),
                      ("*_coordsystem.json", "NIBS-BIDS coordinates"))


def navigation_files(tms_dir, subject):
    """The navigation exports present in ``tms_dir``: list of (what, path)."""
    found = []
    for pattern, what in NAVIGATION_EXPORTS:
        found.extend((what, path) for path in sorted(Path(tms_dir).glob(f"sub-{subject}{pattern}")))
    return found


def navigator_t1w(tms_dir, subject, input_root=None):
    """The T1w image the exports' coordinates refer to (``IntendedFor`` of their coordsystem).

    Returns
    -------
    str or None
        The path inside the input dataset (the ``bids:<dataset>:`` prefix removed), joined to
        ``input_root`` when given.
    """
    for path in sorted(Path(tms_dir).glob(f"sub-{subject}*_coordsystem.json")):
        intended = json.loads(path.read_text()).get("IntendedFor")
        if isinstance(intended, list):
            intended = intended[0] if intended else None
        if intended:
            relative = re.sub(r"^bids:[^:]*:", "", str(intended))
            return str(Path(input_root) / relative) if input_root else relative
    return None


def handle_words(handle, centre):
    """The handle direction in words: 'posterior and lateral (to the left)'.

    Parameters
    ----------
    handle : (3,) array
        Unit handle direction (RAS).
    centre : (3,) array
        Coil centre (RAS, mm): lateral means away from the midline on its side.
    """
    front = "posterior" if handle[1] < 0 else "anterior"
    side = "to the left" if handle[0] < 0 else "to the right"
    lateral = "lateral" if np.sign(handle[0]) == np.sign(centre[0]) else "medial"
    return f"{front} and {lateral} ({side})"


def _row(table, name="connectivity"):
    if table is None or "name" not in table:
        return None
    rows = table[table["name"] == name]
    return rows.iloc[0] if len(rows) else None


def _finite(row, *columns):
    return row is not None and all(c in row.index and np.isfinite(float(row[c])) for c in columns)


def plan_html(*, subject, tables, head_space, sidecar, parameters, voxel_mm, warnings, exports, t1w_file,
              head_figure=None, seed_name="seed"):
    """The plan section's content.

    Parameters
    ----------
    subject : str
    tables : mapping of str to pandas.DataFrame
        The targets tables by space (the computation space and the other one).
    head_space : str or None
        The space of the head the scalp stage ran on (its depths, dose and coil pose are that
        head's); None without a scalp stage.
    sidecar : dict
        The targets sidecar of the computation space.
    parameters : dict
        The run's parameters (``Coil``).
    voxel_mm : float
        BOLD voxel size (mm).
    warnings : list of str
    exports : list of (str, str)
        (what, path relative to the report) of the navigation exports.
    t1w_file : str or None
        The T1w to load into the navigator.
    head_figure : str or None
        HTML of the head figure.
    seed_name : str
    """
    native = tables.get("T1w")
    mni = next((s for s in tables if s.startswith("MNI")), None)
    facts = []

    def fact(label, value, cls="", data=""):
        facts.append(f"<tr><th>{html.escape(label)}</th><td class='{cls}' {data}>{value}</td></tr>")

    target = _row(native)
    if target is not None:
        fact("Target (T1w)", f"{format_point([target.x, target.y, target.z])} mm", "coords", "data-plan='target-t1w'")
    else:
        fact("Target (T1w)", "n/a: the input has no transform to the participant's T1w")
    if mni:
        row = _row(tables[mni])
        fact(f"Target ({mni})", f"{format_point([row.x, row.y, row.z])} mm", "", "data-plan='target-mni'")
    scalp = _row(native) if _finite(_row(native), "scalp_x", "scalp_y", "scalp_z") else None
    if scalp is not None:
        fact("Coil centre (T1w)", f"{format_point([scalp.scalp_x, scalp.scalp_y, scalp.scalp_z])} mm",
             "coords", "data-plan='scalp-t1w'")
    head_row = _row(tables.get(head_space)) if head_space else None
    pose_row = native if native is not None and coil_axes(_row(native)) is not None else tables.get(head_space)
    pose = coil_axes(_row(pose_row)) if pose_row is not None else None
    if pose is not None:
        centre, _, handle, _ = pose
        pose_space = "T1w" if pose_row is native else head_space
        angle = (parameters.get("Coil") or {}).get("HandleAngleFromMidline_deg")
        fact("Coil handle", f"points {handle_words(handle, centre)}"
             + (f", {angle:g}&deg; from the midline" if angle is not None else "")
             + f"; direction {format_point(handle, 2)} in {html.escape(pose_space)}")
    else:
        fact("Coil handle", "n/a: no coil pose (no scalp stage)")
    if _finite(head_row, "scalp_distance_mm"):
        fact("Scalp to target", f"{float(head_row.scalp_distance_mm):.1f} mm"
             + ("" if head_space == "T1w" else f" (on the head in {html.escape(head_space)})"))
    dose = (sidecar.get("ScalpBasedTargets") or {}).get("DepthAdjustment") or {}
    if _finite(head_row, "depth_adjustment_pct_mso"):
        value = float(head_row.depth_adjustment_pct_mso)
        detail = ""
        if "ReferenceDepth_mm" in dose and "Slope_pct_MSO_per_mm" in dose:
            detail = (f" (depth {float(head_row.scalp_distance_mm):.1f} mm here, {dose['ReferenceDepth_mm']:.1f} mm "
                      f"at the motor hand area; {dose['Slope_pct_MSO_per_mm']:g} % per mm, Stokes et al. 2007)")
        fact("Dose", f"resting motor threshold <b>{value:+.1f} %</b> of maximum stimulator output"
             + html.escape(detail))
    else:
        fact("Dose", "no depth adjustment: no motor reference depth was computed")
    z_row = _row(tables.get(head_space) if head_space else next(iter(tables.values())))
    if _finite(z_row, "seed_correlation_z"):
        z = float(z_row.seed_correlation_z)
        fact("Seed connectivity", f"Fisher z {z:.2f} with the {html.escape(seed_name)} seed"
             + (" (anticorrelated, as intended)" if z < 0 else " (<b>not anticorrelated</b>)"))
    grade = grade_sentence(sidecar.get("Reliability"), voxel_mm)
    if grade:
        level, _, cause = grade.partition(": ")
        grade = f"<b>{html.escape(level)}</b>" + (f": {html.escape(cause)}" if cause else "")
    fact("Reliability", grade if grade else
         "not graded (no reliability estimate in this run)")

    files = []
    if t1w_file:
        folder, name = str(Path(t1w_file).parent), Path(t1w_file).name
        files.append(f"<tr><th>T1w to load</th><td><code data-plan='t1w-file'>{html.escape(name)}</code>"
                     f"<br><small class='path'>in {html.escape(folder)}</small></td></tr>")
    if exports:
        folder = str(Path(exports[0][1]).parent)
        files.extend(f"<tr><th>{html.escape(what)}</th><td><code data-plan='export'>{html.escape(Path(path).name)}</code></td></tr>"
                     for what, path in exports)
        files.append(f"<tr><th></th><td><small>exports in <span class='path'>{html.escape(folder)}/</span> "
                     "of this output folder</small></td></tr>")
    else:
        files.append("<tr><td colspan='2'>No navigation export was written: they need the coil poses in the "
                     "participant's T1w space (a head T1w and fMRIPrep's transform to T1w).</td></tr>")
    navigation = ("<h3>Neuronavigation (T1w world mm, RAS)</h3><table class='plan files'>"
                  + "".join(files) + "</table>")
    figure = ""
    if head_figure:
        names = list(tables[head_space]["name"]) if head_space in tables else []
        figure = (f"<figure class='plan-head' id='head'>{head_figure}<figcaption><small>The coil of the plan in "
                  "red: a figure-8 outline in the coil plane, the arrow along the handle. Dots: "
                  f"{html.escape(colour_legend(names))}. The participant's head in "
                  f"{html.escape(str(head_space))}.</small></figcaption></figure>")
    return (f"<div class='plan-grid'><div><table class='plan'>{''.join(facts)}</table></div>"
            f"<div>{navigation}<h3>Warnings</h3>{warnings_html(warnings)}</div></div>{figure}"
            "<p class='print-note'>Printing this report prints this plan on one A4 page; the sections below "
            "are for review on screen.</p>")
