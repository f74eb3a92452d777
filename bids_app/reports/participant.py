"""The participant's report (``sub-<label>.html``) from the files a run wrote, and its Nipype node.

Like fMRIPrep's ``sub-<label>.html``, the report is one HTML file at the top of the output folder
whose figures lie under ``sub-<label>/figures/`` and are linked by relative paths: the folder can be
copied to a USB stick and opened without a network (no CDN, no remote font or script). It opens
with the treatment plan (:mod:`tmstarget.reports.plan`), then the evidence behind it.
"""

from __future__ import annotations

import functools
import html
import json
import re
import warnings
from pathlib import Path

from nipype.interfaces.base import (
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from tmstarget.derivatives import (
    ParticipantOutputsInputSpec,
    participant_paths,
    sidecar,
    targets_path,
    write_text,
)
from tmstarget.reports.html import (
    figure_html,
    format_number,
    key_value_table,
    page,
    sections_html,
    targets_html,
)
from tmstarget.reports.methods import boilerplate, input_dataset, markdown_to_html, software_versions
from tmstarget.reports.palette import colour_legend
from tmstarget.reports.plan import navigation_files, navigator_t1w, plan_html
from tmstarget.reports.quality import (
    data_sufficiency_html,
    reliability_html,
    report_warnings,
    voxel_size_mm,
)


def run_name(bold_file):
    """The entities of a run before ``space-`` (``sub-01_ses-1_task-rest_run-1``), as the input spells them."""
    return Path(str(bold_file)).name.split("_space-")[0].split("_desc-")[0]


def figure_name(stem, space, desc, extension):
    """A figure's file name, entities in BIDS order: ``stem`` (``sub-01_task-rest`` or a run's
    ``sub-01_task-rest_run-1``), then ``space-``, ``desc-``."""
    return f"{stem}_space-{space}_desc-{desc}_plot.{extension}"


def _read_table(path):
    import pandas as pd

    return pd.read_csv(path, sep="\t", na_values="n/a")


def write_participant_report(output_dir, subject, space, task, seed_name, info_files, carpet_files,
                             confounds_files, t1w=None, mesh_file=None, other_space=None,
                             source_version=None, processes=1):
    """Draw the figures and write ``output_dir/sub-<subject>.html`` and ``sub-<subject>/log/CITATION.md``.

    Parameters
    ----------
    output_dir : path
        The derivatives root the participant's outputs were written to.
    subject, space, task, seed_name : str
        As in :func:`tmstarget.derivatives.participant_paths`.
    info_files, carpet_files, confounds_files : list of path
        Per run: Denoise's ``info_file`` and ``carpet_file``, fMRIPrep's confounds table.
    t1w : path or None
        The participant's head T1w in ``space`` (the underlay of the brain figures).
    mesh_file : path or None
        :class:`tmstarget.workflows.scalp.ScalpProjection`'s ``scalp_mesh.npz``.
    other_space : str or None
        The second space the targets are given in.
    source_version : str or None
        Version of what made the inputs, when their ``dataset_description.json`` cannot be found.
    processes : int
        Processes the figures are drawn with (:func:`tmstarget.reports.figures.draw_all`).

    Returns
    -------
    list of pathlib.Path
        The report, its figures and CITATION.md.
    """
    import numpy as np

    from tmstarget.reports import figures as draw
    from tmstarget.reports.head import plot_head, scalp_distances, table_on_mesh

    output_dir = Path(output_dir)
    paths = participant_paths(output_dir, subject, space, task, seed_name)
    figures = output_dir / f"sub-{subject}" / "figures"
    stem = f"sub-{subject}_task-{task}"
    z_sidecar = json.loads(sidecar(paths["z_map"]).read_text())
    tables = {space: _read_table(paths["targets"])}
    sidecars = {space: json.loads(sidecar(paths["targets"]).read_text())}
    if other_space and targets_path(output_dir, subject, other_space).is_file():
        tables[other_space] = _read_table(targets_path(output_dir, subject, other_space))
        sidecars[other_space] = json.loads(sidecar(targets_path(output_dir, subject, other_space)).read_text())
    targets, targets_sidecar = tables[space], sidecars[space]
    options = json.loads(paths["config"].read_text()) if paths["config"].is_file() else {}
    parameters = {k: z_sidecar[k] for k in ("Denoising", "Seed", "SearchRegion", "TargetSelection",
                                            "RunCombination", "Coil") if k in z_sidecar}
    infos = [json.loads(Path(f).read_text()) for f in info_files]
    carpets = [dict(np.load(f)) for f in carpet_files]
    connectivity = targets.set_index("name").loc["connectivity"]
    target_xyz = [float(connectivity.x), float(connectivity.y), float(connectivity.z)]
    voxel_mm = voxel_size_mm(paths["z_map"])
    source = input_dataset(confounds_files[0]) if confounds_files else None
    source_name = source["Name"] if source else None
    source_version = (source["Version"] if source else None) or source_version
    versions = software_versions()
    runs = z_sidecar.get("Runs", [])
    written = []
    sections = []
    drawings = []  # the figures, drawn together once the page is composed

    def later(function, *args, **kwargs):
        """Draw a figure with the others (its path is among the arguments, known already)."""
        drawings.append(functools.partial(function, *args, **kwargs))

    def rel(path):
        """The path of a file relative to the report, for a link; records it as written."""
        written.append(Path(path))
        return Path(path).relative_to(output_dir).as_posix()

    # -- the treatment plan
    head_space, head_figure = None, None
    if mesh_file:
        vertices = np.load(mesh_file)["vertices"]
        head_space = table_on_mesh(vertices, tables) or space
        head = figures / figure_name(stem, head_space, "head", "png")
        later(plot_head, mesh_file, tables[head_space], head)
        head_figure = figure_html(rel(head), "the participant's scalp with the coil of the plan")
    elif "scalp_x" in targets and targets["scalp_x"].notna().any():
        head_space = space
    tms_dir = output_dir / f"sub-{subject}" / "tms"
    notes = report_warnings(list(sidecars.values()), targets, bool(mesh_file))
    sections.append(("plan", "Treatment plan", plan_html(
        subject=subject, tables=tables, head_space=head_space, sidecar=targets_sidecar,
        parameters=parameters, voxel_mm=voxel_mm, warnings=notes,
        exports=[(what, Path(p).relative_to(output_dir).as_posix()) for what, p in navigation_files(tms_dir, subject)],
        t1w_file=navigator_t1w(tms_dir, subject, source["Root"] if source else None),
        head_figure=head_figure, seed_name=seed_name)))

    # -- every target, both spaces
    tables_html = [f"<h3>{html.escape(s)}</h3>" + targets_html(t, s) for s, t in tables.items()]
    distances_html = ""
    if head_space:
        distances = scalp_distances(tables[head_space])
        rows = "".join(f"<tr><td>{html.escape(r['name'])}</td><td class='num'>{format_number(r.get('scalp_distance_to_connectivity_mm', np.nan))}</td>"
                       f"<td class='num'>{format_number(r['cortical_distance_to_connectivity_mm'])}</td></tr>"
                       for _, r in distances.iterrows())
        distances_html = (f"<h3>Distance of each comparator to the connectivity target ({html.escape(head_space)})</h3>"
                          "<table class='distances'><tr><th>comparator</th><th>on the scalp (mm)</th>"
                          f"<th>on the cortex (mm)</th></tr>{rows}</table>")
    sections.append(("targets", "Targets", "<p>World coordinates (mm, RAS) of each space; Fisher z of the seed "
                     "connectivity; dose adjustment in % of maximum stimulator output over the resting motor "
                     "threshold.</p>" + "".join(tables_html) + distances_html))

    # -- connectivity map, regions
    underlay = draw.load_underlay(t1w) if t1w else None
    slices = figures / figure_name(stem, space, "target", "png")
    later(draw.plot_target_slices, paths["z_map"], underlay, target_xyz, slices,
          f"connectivity target ({target_xyz[0]:.1f}, {target_xyz[1]:.1f}, {target_xyz[2]:.1f}) mm")
    glass = figures / figure_name(stem, space, "glassbrain", "png")
    later(draw.plot_target_glass, paths["z_map"], targets, glass)
    sections.append(("connectivity", "Connectivity map and target", figure_html(
        rel(slices), "orthogonal slices through the target",
        f"Fisher z of the {seed_name} seed connectivity; the cross and the green dot mark the connectivity "
        "target.") + figure_html(rel(glass), "glass brain", "Glass brain; dots: " + colour_legend(targets["name"])
                                 + "." + ("" if space.startswith("MNI") else f" The outline is the MNI brain's; the map "
                                          f"and the points are in the participant's {space} space, so they match it only roughly."))))
    # -- the electric field of the connectivity target's pose (EfieldPlan)
    efield_model = targets_sidecar.get("EfieldModel")
    if efield_model and paths["efield"].is_file():
        from tmstarget.reports.efield import efield_methods, plot_efield

        row = targets.set_index("name").loc["connectivity"]
        field = figures / figure_name(stem, space, "efield", "png")
        later(plot_efield, paths["efield"], underlay, target_xyz, field,
              coil_xyz=[row.get(f"coil_{c}", np.nan) for c in "xyz"])
        sections.append(("efield", "Electric field at the target", figure_html(
            rel(field), "electric field of the coil pose", "|E| of the connectivity target's coil "
            "pose; white: the half-value contour; green: the target; cyan: the coil centre.")
            + markdown_to_html(efield_methods(efield_model, row))))
    if t1w:
        regions = figures / figure_name(stem, space, "regions", "png")
        later(draw.plot_regions, underlay, paths["seed_mask"], paths["search_mask"], regions)
        sections.append(("regions", "Seed and search region", figure_html(rel(regions), "seed and search region")))

    # -- reliability and data sufficiency (computed elsewhere; shown when the sidecar has them)
    reliability = targets_sidecar.get("Reliability")
    sufficiency = targets_sidecar.get("DataSufficiency")
    frequency_map = paths["target_frequency"]
    if reliability or sufficiency or frequency_map.is_file():
        body = reliability_html(reliability, voxel_mm) if isinstance(reliability, dict) else ""
        if frequency_map.is_file() and t1w:
            freq = figures / figure_name(stem, space, "targetfrequency", "png")
            later(draw.plot_frequency, frequency_map, underlay, target_xyz, freq)
            body += figure_html(rel(freq), "target frequency map")
        if isinstance(sufficiency, dict):
            body += "<h3>Data the target rests on</h3>" + data_sufficiency_html(sufficiency, parameters.get("Denoising"))
        sections.append(("reliability", "Reliability", body))

    # -- data quality
    run_rows = "".join(
        f"<tr><td title='{html.escape(Path(str(r['Source'])).name)}'>{html.escape(run_name(r['Source']))}</td>"
        f"<td class='num'>{r['RepetitionTime']:g}</td><td class='num'>{r['Volumes']}</td>"
        f"<td class='num'>{r['RetainedVolumes']}</td><td class='num'>{r['RetainedTime_s'] / 60:.1f}</td>"
        f"<td class='num'>{r['Regressors']}</td><td class='num'>{r['DegreesOfFreedom']:.0f}</td>"
        f"<td>{'yes' if r['Used'] else 'no'}</td></tr>" for r in runs)
    motion = figures / figure_name(stem, space, "motion", "svg")
    later(draw.plot_motion, confounds_files, carpets, infos, options.get("fd_threshold"), motion)
    body = ["<table class='runs'><tr><th>run</th><th>TR (s)</th><th>volumes</th><th>retained</th>"
            f"<th>retained (min)</th><th>regressors</th><th>degrees of freedom</th><th>used</th></tr>{run_rows}</table>",
            figure_html(rel(motion), "framewise displacement", "Framewise displacement (fMRIPrep) of each run; red bands: "
                        "volumes not retained (non-steady state or censored).")]
    for carpet, info in zip(carpets, infos):
        name = run_name(info["BoldFile"])
        carpet_figure = figures / figure_name(name, space, "carpet", "png")
        later(draw.plot_carpet, carpet, info, carpet_figure)
        body.append(f"<h3>{html.escape(name)}</h3>" + figure_html(
            rel(carpet_figure),
            f"carpet plot {name}", "Each row a voxel, each column a volume, in standard deviations."))
    sections.append(("quality", "Data quality", "\n".join(body)))

    # -- the run itself
    sessions = sorted({m.group(1) for r in runs for m in [re.search(r"_ses-([^_/]+)", str(r["Source"]))] if m})
    inputs = (f"{source_name or 'unnamed pipeline'}{' ' + source_version if source_version else ''}"
              + (f" ({source['Root']})" if source else ""))
    sections.append(("details", "Run details", f"""
<p>Participant <b>sub-{html.escape(subject)}</b>; computed in <b>{html.escape(space)}</b>
{f'(targets also in {html.escape(other_space)})' if other_space else ''};
{len(runs)} run(s) of task <b>{html.escape(task)}</b>{', sessions ' + ', '.join(sessions) if sessions else ''};
inputs made by <b>{html.escape(inputs)}</b>.</p>
<h3>Options</h3>{key_value_table({k: v for k, v in options.items() if v not in (None, [], {})})}
<h3>Software</h3>{key_value_table({k: v for k, v in versions.items() if v})}
"""))

    # -- methods
    text = boilerplate(parameters, runs, targets_sidecar, space, versions, source_version, source_name)
    citation = write_text(output_dir / f"sub-{subject}" / "log" / "CITATION.md",
                          f"# Methods (sub-{subject})\n\n{text}")
    sections.append(("methods", "Methods", "<p>Also in <code>" + html.escape(rel(citation)) + "</code>.</p>"
                     f"<div class='boilerplate'>{markdown_to_html(text)}</div>"))

    draw.draw_all(drawings, processes)
    body = f"<h1>tmstarget report: sub-{html.escape(subject)}</h1>\n" + sections_html(sections)
    report = write_text(output_dir / f"sub-{subject}.html",
                        page(f"sub-{subject}: tmstarget", [(a, t) for a, t, _ in sections], body))
    figures_written = [path for path in dict.fromkeys(written) if path.parent == figures]
    # Figures of an earlier run that this one did not draw (e.g. a run since excluded) would mislead.
    for stale in set(figures.glob(f"sub-{subject}_*space-*_plot.*")) - set(figures_written):
        stale.unlink()
    return [report, citation, *figures_written]


class _ReportInputSpec(ParticipantOutputsInputSpec):
    derivatives = traits.List(File(exists=True), mandatory=True,
                              desc="the files the sink wrote (the report waits for them)")
    info_files = InputMultiObject(File(exists=True), mandatory=True, desc="Denoise info JSON per run")
    carpet_files = InputMultiObject(File(exists=True), mandatory=True, desc="Denoise carpet.npz per run")
    confounds_files = InputMultiObject(File(exists=True), mandatory=True, desc="fMRIPrep confounds per run")
    t1w = File(exists=True, desc="head T1w in the computation space")
    mesh_file = File(exists=True, desc="scalp_mesh.npz of ScalpProjection")
    other_space = traits.Str(desc="the second space of the targets")
    processes = traits.Int(1, usedefault=True, nohash=True, desc="processes the figures are drawn with")
    source_version = traits.Str(desc="version of what made the inputs (when their dataset_description.json is not found)")


class _ReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="sub-<label>.html")
    out_files = traits.List(File(exists=True), desc="the report, CITATION.md and the figures")


class ParticipantReport(SimpleInterface):
    """Write the participant's HTML report, its figures and the methods paragraph."""

    input_spec = _ReportInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs

        def optional(value):
            return value if isdefined(value) and value else None

        with warnings.catch_warnings():
            # nilearn and matplotlib warn about masked values and defaults while drawing: noise in
            # a user's console, not about the data.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            written = write_participant_report(
                inputs.output_dir, inputs.subject, inputs.space, inputs.task, inputs.seed_name,
                inputs.info_files, inputs.carpet_files, inputs.confounds_files, t1w=optional(inputs.t1w),
                mesh_file=optional(inputs.mesh_file), other_space=optional(inputs.other_space),
                source_version=optional(inputs.source_version), processes=inputs.processes)
        self._results["out_report"] = str(written[0])
        self._results["out_files"] = [str(p) for p in written]
        return runtime
