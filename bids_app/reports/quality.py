"""What the report says about the quality of the target, in words: warnings, reliability, data.

Reads the entries the graph wrote into the targets sidecar (``QualityWarnings``, ``Reliability``,
``DataSufficiency``) and turns them into sentences and small tables; nothing is re-computed.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np

from tmstarget.reports.html import format_number, key_value_table

#: What the block bootstrap measures, in one sentence under its numbers.
BOOTSTRAP_SCOPE = (
    "The bootstrap re-selects the target on resampled blocks of this participant's own data: its "
    "radius measures how far the target scatters with the noise of these data (precision), not "
    "whether it is in the right place (bias): an error every sample shares, such as residual motion, "
    "signal dropout at the seed or a wrong seed, moves all of them together and does not widen it.")


def voxel_size_mm(image_file):
    """The largest voxel edge (mm) of an image: the resolution a target position has."""
    import nibabel as nb

    return float(max(nb.load(image_file).header.get_zooms()[:3]))


def format_distance(distance_mm, voxel_mm):
    """A distance for a reader: below one voxel it is not zero but unresolved (``< 1 voxel (2 mm)``)."""
    if distance_mm is None or not np.isfinite(distance_mm):
        return "n/a"
    if voxel_mm and distance_mm < voxel_mm:
        return f"< 1 voxel ({voxel_mm:g} mm)"
    return f"{distance_mm:.1f} mm"


def readable_distances(text, voxel_mm):
    """Every ``<number> mm`` of a sentence below one voxel written as ``< 1 voxel (2 mm)``."""
    return re.sub(r"(\d+(?:\.\d+)?) mm", lambda m: format_distance(float(m.group(1)), voxel_mm), text)


def report_warnings(sidecars, targets, has_mesh):
    """Every warning the report shows, each once, in order.

    The graph's warnings (``QualityWarnings`` of the targets sidecars, every space: the graph
    collected every step's, :data:`tmstarget.workflows.base.WARNING_SOURCES`), then what the
    report itself cannot show. A scalp stage that was not built is one of the graph's warnings;
    only a mesh missing after a scalp stage that ran is the report's own.
    """
    notes = [str(n) for s in sidecars for n in (s.get("QualityWarnings") or [])]
    if not has_mesh and "scalp_x" in targets.columns:
        notes.append("No scalp mesh was given to the report: the head figure is missing.")
    return list(dict.fromkeys(notes))


def warnings_html(notes):
    """The warnings box."""
    if not notes:
        return "<p class='ok'>No warnings.</p>"
    return "".join(f"<p class='warn'>{html.escape(n)}</p>" for n in notes)


def grade_sentence(reliability, voxel_mm):
    """``high: bootstrap 95 % radius < 1 voxel (2 mm), ...``: the grade and its cause, or None."""
    if not isinstance(reliability, dict) or reliability.get("Grade") is None:
        return None
    reason = reliability.get("GradeReason")
    return f"{reliability['Grade']}" + (f": {readable_distances(str(reason), voxel_mm)}" if reason else "")


def reliability_html(reliability, voxel_mm):
    """The reliability entry of the targets sidecar in words and one table of its measures."""
    body = []
    if reliability.get("Grade") is not None:
        reason = reliability.get("GradeReason")
        body.append(f"<p>Grade: <b class='grade'>{html.escape(str(reliability['Grade']))}</b>"
                    + (f" &mdash; {html.escape(readable_distances(str(reason), voxel_mm))}" if reason else "")
                    + ".</p>")
    bootstrap, split = reliability.get("Bootstrap") or {}, reliability.get("SplitHalf") or {}
    rows = []

    def row(label, value, meaning=""):
        rows.append(f"<tr><td>{html.escape(label)}</td><td class='num'>{html.escape(value)}</td>"
                    f"<td>{html.escape(meaning)}</td></tr>")

    if "Radius95_mm" in bootstrap:
        samples = bootstrap.get("Samples")
        row("bootstrap 95 % radius", format_distance(bootstrap["Radius95_mm"], voxel_mm),
            f"95 % of the {samples} bootstrap targets lie within this distance of the target")
    if "MedianDistance_mm" in bootstrap:
        row("bootstrap median distance", format_distance(bootstrap["MedianDistance_mm"], voxel_mm),
            "half of the bootstrap targets lie closer than this")
    if "ModalFrequency" in bootstrap:
        row("most frequent voxel", f"{100 * bootstrap['ModalFrequency']:.1f} % of samples",
            "share of the samples choosing the same voxel")
    if "ChosenVoxels" in bootstrap:
        row("voxels ever chosen", str(bootstrap["ChosenVoxels"]), "distinct targets over all samples")
    if "BlockLength_s" in bootstrap:
        row("bootstrap blocks", f"{bootstrap['BlockLength_s']:g} s",
            "circular blocks of retained volumes, which keep the data's autocorrelation")
    if "Distance_mm" in split:
        row("split halves", format_distance(split["Distance_mm"], voxel_mm),
            f"distance between the targets of {split.get('Split', 'the two halves of the data')}")
    if split.get("MapCorrelation") is not None:
        row("split-half map correlation", f"{split['MapCorrelation']:.2f}",
            "correlation of the two halves' maps in the search region")
    if rows:
        body.append("<table class='reliability'><tr><th>measure</th><th>value</th><th>what it says</th></tr>"
                    + "".join(rows) + "</table>")
    if bootstrap:
        body.append(f"<p>{html.escape(BOOTSTRAP_SCOPE)}</p>")
    handled = {"Grade", "GradeReason", "Bootstrap", "SplitHalf"}
    others = {k: v for k, v in reliability.items() if k not in handled and v is not None}
    if others:
        body.append(key_value_table(others))
    return "".join(body)


def data_sufficiency_html(sufficiency, denoising):
    """The ``DataSufficiency`` entry of the targets sidecar in words."""
    note = "<p><small>From the <code>DataSufficiency</code> entry of the targets sidecar.</small></p>"
    if not {"RunsUsed", "TotalRetainedVolumes", "TotalRetainedTime_min"} <= set(sufficiency):
        return key_value_table(sufficiency) + note
    minimum = ""
    if denoising:
        minimum = (f" The minimum is {denoising.get('MinimumRetainedTime_s', 0) / 60:g} min per run and "
                   f"{denoising.get('MinimumTotalRetainedTime_s', 0) / 60:g} min in total: connectivity "
                   "estimates stabilise from about 5 minutes of data (Van Dijk et al. 2010).")
    dropped = sufficiency.get("RunsDropped", 0)
    dof = sufficiency.get("TotalDegreesOfFreedom")
    text = (f"{sufficiency['RunsUsed']} run(s) used{f', {dropped} dropped' if dropped else ''}: "
            f"{sufficiency['TotalRetainedVolumes']} volumes retained, "
            f"{sufficiency['TotalRetainedTime_min']:.1f} min of data"
            + (f", {format_number(dof, 0)} degrees of freedom left after denoising" if dof is not None else "")
            + "." + minimum)
    return f"<p>{html.escape(text)}</p>" + note
