"""The participant workflow.

::

    per run: Denoise -> SeedTimeseries -> SeedCorrelation --+
                 Regions (seed, search region) ------------ | --> CombineRuns -> SelectTarget
                          -> TargetReliability (split half, block bootstrap)
                          -> ScalpProjection -> ScalpTargets (coil poses, 10-20 F3, Beam F3, 5 cm)
                                                   -> MapTargets (T1w <-> MNI)
                                                   -> derivatives -> ParticipantReport
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from tmstarget import __version__
from tmstarget.config import DLPFC_RADIUS_MM, DLPFC_SITES_MNI
from tmstarget.derivatives import ParticipantDerivatives
from tmstarget.workflows.combine import CombineRuns
from tmstarget.workflows.landmarks import ScalpTargets
from tmstarget.workflows.confounds import Denoise, denoise_mem_gb
from tmstarget.workflows.correlation import SeedCorrelation
from tmstarget.workflows.regions import Regions
from tmstarget.workflows.reliability import TargetReliability
from tmstarget.workflows.scalp import ScalpProjection
from tmstarget.workflows.seed import SeedTimeseries
from tmstarget.workflows.target import SelectTarget
from tmstarget.workflows.transforms import MapTargets


def participant_wf_name(subject):
    """Name of a participant's workflow, which is its folder in the work dir.

    The version is part of it (as fMRIPrep does): Nipype reuses a cached step when its inputs are
    unchanged, even if another version of tmstarget computed it differently or gave it other
    outputs, so each version keeps its own cache.
    """
    return f"tmstarget_{__version__.replace('.', '_')}_sub_{subject}_wf"


#: What each run's workflow hands to the participant level.
RUN_OUTPUTS = ["z_file", "mask_file", "info_file", "cleaned_file", "carpet_file"]


def init_run_wf(run, options, name):
    """Denoise one BOLD run, extract its seed time series and correlate it with every voxel.

    Parameters
    ----------
    run : tmstarget.collect.Run
    options : tmstarget.config.Options
    name : str

    Returns
    -------
    nipype Workflow: ``inputnode.seed_file`` takes the seed weights on the BOLD grid;
    ``outputnode`` holds ``z_file``, ``mask_file``, ``info_file``, ``cleaned_file`` and ``carpet_file``.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["seed_file"]), name="inputnode")
    denoise = pe.Node(Denoise(
        bold_file=run.bold, mask_file=run.mask, t_r=run.t_r, strategy=options.confounds,
        fd_threshold=options.fd_threshold, high_pass=options.high_pass, low_pass=options.low_pass,
        smoothing_fwhm=options.smoothing_fwhm), name="denoise",
        # the scheduler's estimate, so that --nprocs with --mem-gb never overcommits memory
        mem_gb=denoise_mem_gb(run.bold, run.mask))
    seed = pe.Node(SeedTimeseries(mask_file=run.mask), name="seed_timeseries")
    correlate = pe.Node(SeedCorrelation(mask_file=run.mask), name="seed_correlation", mem_gb=2.0)
    outputnode = pe.Node(niu.IdentityInterface(fields=RUN_OUTPUTS), name="outputnode")
    outputnode.inputs.mask_file = run.mask
    workflow.connect([
        (inputnode, seed, [("seed_file", "seed_file")]),
        (denoise, seed, [("cleaned_file", "cleaned_file")]),
        (denoise, correlate, [("cleaned_file", "cleaned_file")]),
        (seed, correlate, [("timeseries_file", "timeseries_file")]),
        (correlate, outputnode, [("z_file", "z_file")]),
        (denoise, outputnode, [("info_file", "info_file"), ("cleaned_file", "cleaned_file"),
                                ("carpet_file", "carpet_file")]),
    ])
    return workflow


def init_participant_wf(inputs, options, output_dir, source_dir, name=None, report=True):
    """Build the whole graph of one participant.

    Parameters
    ----------
    inputs : tmstarget.collect.ParticipantInputs
    options : tmstarget.config.Options
    output_dir : path
        Derivatives root.
    source_dir : path
        The fMRIPrep derivatives folder (for provenance in the sidecars).
    name : str, optional
    report : bool
        Append the :class:`tmstarget.reports.ParticipantReport` node (``sub-<label>.html``).
    """
    workflow = pe.Workflow(name=name or participant_wf_name(inputs.subject))

    regions = pe.Node(Regions(
        mask_files=[run.mask for run in inputs.runs], gm_file=inputs.gm,
        gm_threshold=options.gm_threshold, sites=list(DLPFC_SITES_MNI.values()),
        site_radius=DLPFC_RADIUS_MM), name="regions")
    if options.seed_image:
        regions.inputs.seed_image = options.seed_image
    else:
        regions.inputs.seed_center = tuple(options.seed_center)
        regions.inputs.seed_radius = options.seed_radius
    if options.search_region_image:
        regions.inputs.search_image = options.search_region_image
    if inputs.to_mni_xfm:
        regions.inputs.to_mni_xfm = inputs.to_mni_xfm

    n_runs = len(inputs.runs)
    merge = {field: pe.Node(niu.Merge(n_runs), name=f"merge_{field}")
             for field in RUN_OUTPUTS}
    for index, run in enumerate(inputs.runs, start=1):
        run_wf = init_run_wf(run, options, name=f"run_{index:02d}_wf")
        workflow.connect(regions, "seed_file", run_wf, "inputnode.seed_file")
        for field, node in merge.items():
            workflow.connect(run_wf, f"outputnode.{field}", node, f"in{index}")

    combine = pe.Node(CombineRuns(min_time=options.min_time, min_total_time=options.min_total_time),
                      name="combine_runs")
    select = pe.Node(SelectTarget(method=options.target_method,
                                  percentile=options.cluster_percentile), name="select_target")
    sink = pe.Node(ParticipantDerivatives(
        output_dir=str(output_dir), subject=inputs.subject, space=inputs.space,
        task=options.task_id, seed_name=options.seed_name, parameters=options.parameters(),
        config=options.to_json(), source_dir=str(source_dir), **(
            {"native_t1w": inputs.native_t1w} if inputs.native_t1w else {})),
        name="derivatives", run_without_submitting=True)
    # The derivatives are written every time, even when every computation is reused from the
    # work dir: the outputs may have been moved or deleted since.
    sink.overwrite = True
    workflow.connect([
        (merge["z_file"], combine, [("out", "z_files")]),
        (merge["mask_file"], combine, [("out", "mask_files")]),
        (merge["info_file"], combine, [("out", "info_files")]),
        (combine, select, [("z_file", "z_file")]),
        (regions, select, [("search_file", "search_file")]),
        (combine, sink, [("z_file", "z_file"), ("runs_file", "runs_file")]),
        (regions, sink, [("seed_file", "seed_file"), ("search_file", "search_file")]),
    ])
    reliability = pe.Node(TargetReliability(
        method=options.target_method, percentile=options.cluster_percentile,
        n_samples=options.bootstrap_samples, block_s=options.bootstrap_block,
        random_seed=options.random_seed), name="target_reliability")
    workflow.connect([
        (merge["cleaned_file"], reliability, [("out", "cleaned_files")]),
        (merge["mask_file"], reliability, [("out", "mask_files")]),
        (combine, reliability, [("runs_file", "runs_file")]),
        (regions, reliability, [("seed_file", "seed_file"), ("search_file", "search_file")]),
        (select, reliability, [("targets_file", "targets_file")]),
        (reliability, sink, [("reliability_file", "reliability_file")]),
    ])
    if options.bootstrap_samples:
        workflow.connect(reliability, "frequency_file", sink, "frequency_file")
    if report:
        # imported only when asked for: matplotlib and nilearn.plotting are a second of start-up
        from tmstarget.reports import ParticipantReport

        report_node = pe.Node(ParticipantReport(
            output_dir=str(output_dir), subject=inputs.subject, space=inputs.space, task=options.task_id,
            seed_name=options.seed_name, confounds_files=[run.confounds for run in inputs.runs],
            **{key: value for key, value in (("t1w", inputs.t1w), ("other_space", inputs.other_space),
                                             ("source_version", inputs.source_version)) if value}),
            name="report", run_without_submitting=True)
        # Like the sink: the report is written every time, after the derivatives it shows.
        report_node.overwrite = True
        workflow.connect([
            (sink, report_node, [("out_files", "derivatives")]),
            (merge["info_file"], report_node, [("out", "info_files")]),
            (merge["carpet_file"], report_node, [("out", "carpet_files")]),
        ])
    # The final targets table of the computation space, whatever stages ran.
    targets = pe.Node(niu.IdentityInterface(fields=["targets_file"]), name="targets")
    if inputs.t1w:
        scalp = pe.Node(ScalpProjection(t1w_file=inputs.t1w), name="scalp_projection")
        comparators = pe.Node(ScalpTargets(gm_file=inputs.gm, handle_angle_deg=options.handle_angle),
                              name="scalp_targets")
        if inputs.from_mni_xfm:
            comparators.inputs.from_mni_xfm = inputs.from_mni_xfm
        workflow.connect([
            (select, scalp, [("targets_file", "points_file")]),
            (scalp, comparators, [("out_file", "targets_file"), ("mesh_file", "mesh_file")]),
            (combine, comparators, [("z_file", "z_file")]),
            (comparators, targets, [("out_file", "targets_file")]),
            (comparators, sink, [("measurements_file", "measurements_file")]),
        ])
        if report:
            workflow.connect(scalp, "mesh_file", report_node, "mesh_file")
    else:
        workflow.connect(select, "targets_file", targets, "targets_file")
    workflow.connect(targets, "targets_file", sink, "targets_file")

    if inputs.to_other_xfm:
        to_other = pe.Node(MapTargets(xfm_file=inputs.to_other_xfm), name=f"map_to_{inputs.other_space}")
        sink.inputs.other_space = inputs.other_space
        sink.inputs.other_xfm = inputs.to_other_xfm
        workflow.connect([
            (targets, to_other, [("targets_file", "targets_file")]),
            (to_other, sink, [("out_file", "other_targets_file")]),
        ])
    return workflow
