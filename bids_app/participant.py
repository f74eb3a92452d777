"""The face's participant workflow: the science graph fed from pybids, with the sink and the report.

:func:`tmstarget.workflows.base.init_tmstarget_wf` computes; this module gives it a participant's
collected files and the command line's options, and attaches what only the BIDS App does: the
derivatives (:class:`tmstarget.derivatives.ParticipantDerivatives`) and the HTML report
(:class:`tmstarget.reports.ParticipantReport`). :func:`init_participants_wf` puts every participant
of one invocation into one graph, so that ``--nprocs`` runs them side by side.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.pipeline import engine as pe

from tmstarget import __version__
from tmstarget.derivatives import ParticipantDerivatives
from tmstarget.workflows.base import init_tmstarget_wf
from tmstarget.workflows.confounds import denoise_mem_gb

#: The graph holding the participants of one invocation (its folder in the work dir).
PARTICIPANTS_WF_NAME = "tmstarget_wf"
#: The science workflow's name inside each participant's workflow.
SCIENCE_WF_NAME = "connectivity_wf"


def participant_wf_name(subject):
    """Name of a participant's workflow, which is its folder in the work dir.

    The version is part of it (as fMRIPrep does): Nipype reuses a cached step when its inputs are
    unchanged, even if another version of tmstarget computed it differently or gave it other
    outputs, so each version keeps its own cache.
    """
    return f"tmstarget_{__version__.replace('.', '_')}_sub_{subject}_wf"


def participant_work_dir(work_dir, subject):
    """Folder of a participant's science steps in the work dir (``run_01_wf/denoise``, ...)."""
    return Path(work_dir) / PARTICIPANTS_WF_NAME / participant_wf_name(subject) / SCIENCE_WF_NAME


def science_parameters(options):
    """The keyword arguments of :func:`init_tmstarget_wf` from the command line's options."""
    return dict(
        confounds=options.confounds, fd_threshold=options.fd_threshold, high_pass=options.high_pass,
        low_pass=options.low_pass, smoothing_fwhm=options.smoothing_fwhm, min_time=options.min_time,
        min_total_time=options.min_total_time, seed_center=tuple(options.seed_center),
        seed_radius=options.seed_radius, seed_image=options.seed_image, seed_name=options.seed_name,
        allow_poor_seed=options.allow_poor_seed,
        search_region_image=options.search_region_image, target_method=options.target_method,
        cluster_percentile=options.cluster_percentile, gm_threshold=options.gm_threshold,
        bootstrap_samples=options.bootstrap_samples, bootstrap_block=options.bootstrap_block,
        random_seed=options.random_seed, handle_angle=options.handle_angle, coil=options.coil,
        coil_orientation=options.coil_orientation, didt=options.didt,
        motor_threshold=options.motor_threshold)


#: At most this many processes share one step (fMRIPrep caps its threads per process at 8 too):
#: the read cannot go faster than its one decompression (1.5 s for 300 volumes at 2 mm), which
#: 8 processes smoothing their slabs already keep up with, and a report has 8 figures.
MAX_PROCESSES_PER_STEP = 8

#: A head T1w of more voxels than this (a grid finer than about 1.5 mm: fMRIPrep's usual 1 mm
#: anatomy has 8 to 10 million) makes the head's steps (the scalp mesh, the transforms read once,
#: the methods' points) take about as long as a run's Denoise; they depend on the head alone.
LARGE_HEAD_VOXELS = 4_000_000


def processes_per_step(cpus, n_steps, head_voxels=0):
    """Processes of each of ``n_steps`` steps running at once (the runs' Denoise, a report): the
    CPUs shared out among them (at most :data:`MAX_PROCESSES_PER_STEP`), less one kept for the
    head's steps when a head has more than :data:`LARGE_HEAD_VOXELS` voxels and the steps would
    otherwise take every CPU.

    On 2 CPUs (3 paired runs each, 2 mm BOLD of 300 volumes): with a 1 mm head, Denoise on
    one process with the head's steps beside it took 0.91x and 0.95x the wall time of Denoise on
    both and the head's steps after it; with a 2 mm head, 1.09x (so a small head keeps them all).
    """
    share = max(1, min(cpus // max(n_steps, 1), MAX_PROCESSES_PER_STEP))
    if head_voxels > LARGE_HEAD_VOXELS and share > 1 and share * n_steps >= cpus:
        share = max(1, (cpus - 1) // n_steps)
    return share


def _head_voxels(inputs):
    """Voxels of the head T1w the plan is made on (its header only), 0 without one."""
    head = inputs.native_t1w if inputs.native_head else inputs.t1w
    return int(np.prod(nb.load(head).shape[:3])) if head else 0


def init_participant_wf(inputs, options, output_dir, source_dir, name=None, report=True,
                        denoise_processes=1, efield_processes=1, report_processes=1):
    """The science workflow of one participant, with its derivatives and report.

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
    denoise_processes, efield_processes, report_processes : int
        Processes each run's Denoise, the E-field map and the report work with (their outputs
        are the same for any number).
    """
    workflow = pe.Workflow(name=name or participant_wf_name(inputs.subject))
    other_space = inputs.other_space if inputs.to_other_xfm else None
    scalp = bool(inputs.t1w or inputs.native_head)
    science = init_tmstarget_wf(
        len(inputs.runs), space=inputs.space, scalp=scalp, native_head=inputs.native_head,
        other_space=other_space,
        # the face reads the headers (the graph never does): the scheduler's memory estimate
        denoise_mem_gb=[denoise_mem_gb(run.bold, run.mask) for run in inputs.runs],
        denoise_processes=denoise_processes, efield_processes=efield_processes,
        name=SCIENCE_WF_NAME, **science_parameters(options))
    given = dict(bold_files=[run.bold for run in inputs.runs], mask_files=[run.mask for run in inputs.runs],
                 t_rs=[run.t_r for run in inputs.runs], gm_file=inputs.gm, t1w_file=inputs.t1w,
                 to_mni_xfm=inputs.to_mni_xfm, from_mni_xfm=inputs.from_mni_xfm,
                 to_other_xfm=inputs.to_other_xfm, from_other_xfm=inputs.from_other_xfm)
    if inputs.native_head:
        given.update(native_t1w_file=inputs.native_t1w, native_gm_file=inputs.native_gm)
    for field, value in given.items():
        if value:
            setattr(science.inputs.inputnode, field, value)

    sink = pe.Node(ParticipantDerivatives(
        output_dir=str(output_dir), subject=inputs.subject, space=inputs.space,
        task=options.task_id, seed_name=options.seed_name, parameters=options.parameters(),
        config=options.to_json(), source_dir=str(source_dir), **(
            {"native_t1w": inputs.native_t1w} if inputs.native_t1w else {})),
        name="derivatives", run_without_submitting=True)
    # The derivatives are written every time, even when every computation is reused from the
    # work dir: the outputs may have been moved or deleted since.
    sink.overwrite = True
    outputs = ["z_file", "runs_file", "seed_file", "search_file", "targets_file", "reliability_file",
               "seed_quality_file", "quality_warnings"]
    if options.bootstrap_samples:
        outputs.append("frequency_file")
    if scalp:
        outputs += ["measurements_file", "efield_file", "efield_info_file"]
        # the space of the head the plan was made on (its own table, the others mapped from it)
        sink.inputs.plan_space = "T1w" if inputs.native_head else inputs.space
    if other_space:
        sink.inputs.other_space = other_space
        sink.inputs.other_xfm = inputs.to_other_xfm
        outputs.append("other_targets_file")
        if scalp:
            outputs.append("other_measurements_file")
        if inputs.native_head:
            sink.inputs.from_other_xfm = inputs.from_other_xfm
    workflow.connect([(science, sink, [(f"outputnode.{field}", field) for field in outputs])])

    if report:
        from tmstarget.reports import ParticipantReport  # matplotlib: only when a report is drawn

        report_node = pe.Node(ParticipantReport(
            output_dir=str(output_dir), subject=inputs.subject, space=inputs.space, task=options.task_id,
            seed_name=options.seed_name, confounds_files=[run.confounds for run in inputs.runs],
            processes=report_processes,
            **{key: value for key, value in (("t1w", inputs.t1w), ("other_space", inputs.other_space),
                                             ("source_version", inputs.source_version)) if value}),
            name="report", run_without_submitting=True)
        # Like the sink: the report is written every time, after the derivatives it shows.
        report_node.overwrite = True
        workflow.connect([
            (sink, report_node, [("out_files", "derivatives")]),
            (science, report_node, [("outputnode.info_files", "info_files"),
                                    ("outputnode.carpet_files", "carpet_files")]),
        ])
        if scalp:
            workflow.connect(science, "outputnode.mesh_file", report_node, "mesh_file")
    return workflow


def init_participants_wf(collected, options, output_dir, source_dir, report=True, cpus=1):
    """One graph holding every participant of an invocation (scheduled together by MultiProc).

    ``cpus`` (``--nprocs``) are shared out: when there are fewer runs than CPUs, each run's
    Denoise reads with several processes (:func:`processes_per_step`). The derivatives and the
    reports are marked to run from the main process, which imports the report's libraries ahead
    (with MultiProc: in forked copies of it, each counted as one CPU while the scheduler goes on);
    a report, mostly at the end when the CPUs are free, draws with all of them (up to the cap);
    each participant's E-field map, near the end too, with its share of them.
    """
    n_runs = sum(len(inputs.runs) for inputs in collected)
    denoise = processes_per_step(cpus, n_runs, max(_head_voxels(inputs) for inputs in collected))
    workflow = pe.Workflow(name=PARTICIPANTS_WF_NAME)
    workflow.add_nodes([init_participant_wf(inputs, options, output_dir, source_dir, report=report,
                                            denoise_processes=denoise,
                                            efield_processes=processes_per_step(cpus, len(collected)),
                                            report_processes=processes_per_step(cpus, 1))
                        for inputs in collected])
    return workflow
