"""The group level: gather the participants' targets into tables, statistics, a figure and a page.

``tmstarget bids_dir output_dir group`` reads what ``participant`` wrote under ``output_dir``
(``sub-*/tms/sub-*_space-*_targets.tsv`` and their JSON sidecars) and writes only under
``output_dir/group/`` and ``output_dir/group.html``: participant files are never opened for writing.

Outputs
-------
``group/group_targets.tsv``
    One row per participant x target x space: ``participant_id``, ``space``, then the columns of
    the participant's targets table (``name``, ``x``, ``y``, ``z``, ...), and ``reliability_grade``
    when the sidecar has one.
``group/group_summary.json``
    Spread of the connectivity targets (per space: centroid, SD per axis, mean and maximum distance
    to the centroid, distance to the group-optimal site for MNI spaces), distances from the
    connectivity target to each scalp-based comparator (mean, SD, min, median, max), and the counts
    of reliability grades.
``group/figures/group_space-<space>_desc-targets_glassbrain.png``
    Every participant's connectivity target (and comparators) on a glass brain (MNI spaces).
``group.html``
    The page that shows them, self-contained like the participant reports.
"""

from __future__ import annotations

import html
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from tmstarget.collect import InputError
from tmstarget.config import GROUP_OPTIMAL_MNI
from tmstarget.derivatives import atomic_write, sidecar, write_json, write_text
from tmstarget.workflows.defaults import MNI_SPACES  # spaces drawn on the MNI glass brain


def find_participant_targets(output_dir, participant_label=None):
    """The participants' targets tables under ``output_dir``.

    Parameters
    ----------
    output_dir : path
    participant_label : list of str, optional
        Restrict to these participants (labels without ``sub-``).

    Returns
    -------
    list of (subject, space, pathlib.Path)
    """
    found = []
    for path in sorted(Path(output_dir).glob("sub-*/tms/sub-*_space-*_targets.tsv")):
        subject = path.parts[-3][len("sub-"):]
        if path.name.split("_space-")[0] != f"sub-{subject}":
            continue
        space = path.name.split("_space-")[1].split("_")[0]
        if participant_label and subject not in participant_label:
            continue
        found.append((subject, space, path))
    return found


def gather_targets(output_dir, participant_label=None):
    """One table of every participant's targets in every space (``group_targets.tsv``).

    Raises
    ------
    InputError
        When no participant output exists under ``output_dir``.
    """
    found = find_participant_targets(output_dir, participant_label)
    if not found:
        which = f" for participant(s) {', '.join(participant_label)}" if participant_label else ""
        raise InputError(f"no participant outputs (sub-*/tms/sub-*_space-*_targets.tsv){which} in "
                         f"{output_dir}: run 'tmstarget bids_dir {output_dir} participant' first")
    tables = []
    for subject, space, path in found:
        table = pd.read_csv(path, sep="\t", na_values="n/a")
        if "cluster_size" in table:
            table["cluster_size"] = table["cluster_size"].astype("Int64")
        meta_file = sidecar(path)
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        reliability = meta.get("Reliability")
        grade = reliability.get("Grade") if isinstance(reliability, dict) else None
        table.insert(0, "space", space)
        table.insert(0, "participant_id", f"sub-{subject}")
        table["reliability_grade"] = grade
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def _stats(values):
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    return {"N": int(values.size), "Mean": round(float(values.mean()), 2),
            "SD": round(float(values.std(ddof=1)), 2) if values.size > 1 else None,
            "Min": round(float(values.min()), 2), "Median": round(float(np.median(values)), 2),
            "Max": round(float(values.max()), 2)}


def summarize(table):
    """Group statistics of :func:`gather_targets`'s table (all distances in mm).

    The spread of the connectivity targets is computed in MNI spaces only (positions of different
    heads in their own T1w spaces are not comparable); distances to the comparators in every space.

    Returns
    -------
    dict
        ``Participants``, and per space ``ConnectivitySpread``, ``DistanceToConnectivity_mm``
        (per comparator: cortical, and scalp where the table has scalp points),
        ``ReliabilityGrades``.
    """
    summary = {"Participants": sorted(table["participant_id"].unique()), "Spaces": {}}
    for space, rows in table.groupby("space", sort=True):
        connectivity = rows[rows["name"] == "connectivity"].set_index("participant_id")
        xyz = connectivity[["x", "y", "z"]].to_numpy(float)
        centroid = xyz.mean(axis=0)
        to_centroid = np.linalg.norm(xyz - centroid, axis=1)
        # Positions of different heads are comparable in a template space only.
        spread = {} if space not in MNI_SPACES else {
            "N": int(len(xyz)),
            "Centroid_mm": [round(float(v), 2) for v in centroid],
            "SD_mm": [round(float(v), 2) for v in xyz.std(axis=0, ddof=1)] if len(xyz) > 1 else None,
            "DistanceToCentroid_mm": _stats(to_centroid),
            "SeedCorrelationZ": _stats(connectivity["seed_correlation_z"]),
        }
        if spread:
            spread["DistanceToGroupOptimalSite_mm"] = _stats(np.linalg.norm(xyz - np.array(GROUP_OPTIMAL_MNI), axis=1))
            spread["GroupOptimalSiteMNI_mm"] = list(GROUP_OPTIMAL_MNI)
        comparators = {}
        for name, others in rows[rows["name"] != "connectivity"].groupby("name", sort=True):
            others = others.set_index("participant_id")
            common = others.index.intersection(connectivity.index)
            entry = {"Cortical": _stats(np.linalg.norm(
                others.loc[common, ["x", "y", "z"]].to_numpy(float)
                - connectivity.loc[common, ["x", "y", "z"]].to_numpy(float), axis=1))}
            if "scalp_x" in rows:
                columns = ["scalp_x", "scalp_y", "scalp_z"]
                entry["Scalp"] = _stats(np.linalg.norm(others.loc[common, columns].to_numpy(float)
                                                       - connectivity.loc[common, columns].to_numpy(float), axis=1))
            comparators[name] = entry
        grades = connectivity["reliability_grade"].dropna()
        summary["Spaces"][space] = {
            "ConnectivitySpread": spread,
            "DistanceToConnectivity_mm": comparators,
            "ReliabilityGrades": {str(k): int(v) for k, v in grades.value_counts().sort_index().items()},
        }
    return summary


def plot_group_glass(table, space, path):
    """All participants' targets of an MNI space on a glass brain (connectivity red, comparators)."""
    from matplotlib import pyplot as plt

    from tmstarget.reports.figures import plot_glass_brain, save_display
    from tmstarget.reports.palette import TARGET_COLOURS, WIDTH_IN

    rows = table[table["space"] == space]
    fig = plt.figure(figsize=(WIDTH_IN, 3.4))
    display = plot_glass_brain(None, display_mode="lzr", figure=fig,
                               title=f"targets of {rows['participant_id'].nunique()} participants ({space})")
    for name, group in rows.groupby("name"):
        display.add_markers(group[["x", "y", "z"]].to_numpy(float), marker_color=TARGET_COLOURS.get(name, "k"),
                            marker_size=45 if name == "connectivity" else 20)
    display.add_markers([GROUP_OPTIMAL_MNI], marker_color="k", marker="x", marker_size=60)
    return save_display(display, path)


def _stats_row(label, stats):
    if not stats:
        return ""
    cells = "".join(f"<td>{'' if stats.get(k) is None else stats[k]}</td>" for k in ("N", "Mean", "SD", "Min", "Median", "Max"))
    return f"<tr><td>{html.escape(label)}</td>{cells}</tr>"


def group_html(table, summary, figures, output_dir):
    """The group page (``group.html``)."""
    from tmstarget.reports.html import page, sections_html, targets_html
    from tmstarget.reports.palette import colour_legend

    header = "<tr><th></th><th>N</th><th>mean</th><th>SD</th><th>min</th><th>median</th><th>max</th></tr>"
    sections = [("summary", "Summary", f"<p>{len(summary['Participants'])} participant(s): "
                 f"{html.escape(', '.join(summary['Participants']))}.</p>"
                 "<p>Tables: <code>group/group_targets.tsv</code>, <code>group/group_summary.json</code>; "
                 "participant reports: " + " ".join(
                     f"<a href='{html.escape(p)}.html'>{html.escape(p)}</a>" for p in summary["Participants"]
                     if (Path(output_dir) / f"{p}.html").is_file()) + "</p>")]
    for space, stats in summary["Spaces"].items():
        spread = stats["ConnectivitySpread"]
        body = ["<p>Each participant's own space: positions are not compared between heads, distances "
                "are.</p>"] if not spread else [f"<p>Centroid of the connectivity targets ({spread['N']}): "
                f"({', '.join(f'{v:.1f}' for v in spread['Centroid_mm'])}) mm"
                + (f"; SD per axis ({', '.join(f'{v:.1f}' for v in spread['SD_mm'])}) mm" if spread["SD_mm"] else "")
                + ".</p><table>" + header
                + _stats_row("distance to the centroid (mm)", spread["DistanceToCentroid_mm"])
                + _stats_row("distance to the group-optimal site (mm)", spread.get("DistanceToGroupOptimalSite_mm"))
                + _stats_row("seed connectivity at the target (Fisher z)", spread["SeedCorrelationZ"])
                + "</table>"]
        rows = "".join(_stats_row(f"{name}: cortical", entry["Cortical"]) + _stats_row(f"{name}: scalp", entry.get("Scalp"))
                       for name, entry in stats["DistanceToConnectivity_mm"].items())
        if rows:
            body.append("<h3>Distance from the connectivity target to each comparator (mm)</h3><table>"
                        + header + rows + "</table>")
        if stats["ReliabilityGrades"]:
            body.append("<h3>Reliability grades</h3><table><tr><th>grade</th><th>participants</th></tr>" + "".join(
                f"<tr><td>{html.escape(g)}</td><td>{n}</td></tr>" for g, n in stats["ReliabilityGrades"].items()) + "</table>")
        if space in figures:
            rel = figures[space].relative_to(output_dir).as_posix()
            body.append(f"<img src='{html.escape(rel)}' alt='targets on a glass brain'>"
                        f"<p><small>Dots: {html.escape(colour_legend(table['name']))}; "
                        "black cross: the group-optimal site.</small></p>")
        connectivity = table[(table["space"] == space) & (table["name"] == "connectivity")]
        connectivity = connectivity.drop(columns=["distance_to_connectivity_mm", "depth_adjustment_pct_mso"],
                                         errors="ignore")
        body.append("<h3>Connectivity targets</h3>" + targets_html(connectivity, space,
                                                                    participant_column="participant_id"))
        sections.append((f"space-{space}", space, "\n".join(body)))
    content = "<h1>tmstarget group report</h1>\n" + sections_html(sections)
    return page("tmstarget group report", [(a, t) for a, t, _ in sections], content)


def run_group(output_dir, participant_label=None):
    """Write the group outputs; return their paths and the number of participants.

    Raises
    ------
    InputError
        When ``output_dir`` holds no participant output.
    """
    output_dir = Path(output_dir).resolve()
    if not output_dir.is_dir():
        raise InputError(f"output_dir {output_dir} does not exist: run the participant level first")
    table = gather_targets(output_dir, participant_label)
    summary = summarize(table)
    group_dir = output_dir / "group"
    targets_file = group_dir / "group_targets.tsv"
    atomic_write(targets_file, lambda tmp: table.round(4).to_csv(tmp, sep="\t", index=False, na_rep="n/a"))
    write_json(group_dir / "group_targets.json", {
        "participant_id": {"Description": "Participant the row comes from."},
        "space": {"Description": "Space of the coordinates of the row (world mm, RAS)."},
        "reliability_grade": {"Description": "Reliability grade of the participant's target (its "
                              "targets sidecar, 'Reliability.Grade'), n/a when not computed."},
        "OtherColumns": "As in the participants' sub-<label>_space-<space>_targets.json.",
    })
    summary_file = write_json(group_dir / "group_summary.json", summary)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nilearn's drawing defaults, not about the data
        figures = {space: plot_group_glass(table, space, group_dir / "figures" /
                                           f"group_space-{space}_desc-targets_glassbrain.png")
                   for space in sorted(table["space"].unique()) if space in MNI_SPACES}
    report = write_text(output_dir / "group.html", group_html(table, summary, figures, output_dir))
    return {"targets": targets_file, "summary": summary_file, "report": report, "figures": figures,
            "n_participants": len(summary["Participants"])}
