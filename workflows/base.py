"""The science workflow of tmstarget, to run alone or inside another Nipype pipeline.

::

    per run: Denoise -> SeedTimeseries -> SeedCorrelation --+
                 Regions (seed, search region) ------------ | --> CombineRuns -> SelectTarget
                          -> TargetReliability (split half, block bootstrap)
                          -> [MapTargets into T1w] -> SnapToGreyMatter -> ScalpProjection
    head T1w -> ScalpMesh -> ScalpLandmarks (fiducials, 10-20 F3, Beam F3, motor hot spot, 5 cm)
                (beside the steps above: they need the head alone)
    ScalpProjection, ScalpLandmarks -> ScalpTargets (coil poses, the comparators' rows, doses)
                                  -> EfieldPlan (field at each target, handle angle, dose, map)
                                                   -> MapTargets (T1w <-> MNI)
                          -> QualityChecks, CollectWarnings (every step's warnings)

The scalp stage (the navigation plan) runs on the participant's own head whenever there is one
(``native_head``): a target computed in MNI is mapped into T1w, put in the native grey matter,
planned on the native scalp, and the plan mapped back for the MNI table. The patient's quantities
(depths, doses, head measurements) are then those of the native head in both tables.

Nothing here imports the face (:mod:`tmstarget.config`, the derivatives sink, the report): the
command line wraps :func:`init_tmstarget_wf` in :func:`tmstarget.participant.init_participant_wf`,
which feeds its ``inputnode`` from pybids and attaches the sink and the report to its ``outputnode``.
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from tmstarget.workflows import defaults
from tmstarget.workflows.combine import CombineRuns
from tmstarget.workflows.comparators import ScalpLandmarks, ScalpTargets
from tmstarget.workflows.confounds import Denoise
from tmstarget.workflows.coil_models import DEFAULT_COIL
from tmstarget.workflows.correlation import SeedCorrelation
from tmstarget.workflows.defaults import DEFAULT_COIL_ORIENTATION, DEFAULT_DIDT_A_PER_US
from tmstarget.workflows.efield_plan import EfieldPlan
from tmstarget.workflows.quality import CollectWarnings, QualityChecks
from tmstarget.workflows.regions import Regions
from tmstarget.workflows.reliability import TargetReliability
from tmstarget.workflows.scalp import ScalpMesh, ScalpProjection
from tmstarget.workflows.seed_quality import SeedQuality
from tmstarget.workflows.seed import SeedTimeseries
from tmstarget.workflows.target import SelectTarget, SnapToGreyMatter
from tmstarget.workflows.transforms import MapTargets, ReadTransform

#: Files of a participant on the ``inputnode`` of :func:`init_tmstarget_wf`.
INPUT_FIELDS = ["bold_files", "mask_files", "t_rs", "gm_file", "t1w_file", "to_mni_xfm",
                "from_mni_xfm", "to_other_xfm", "from_other_xfm", "native_t1w_file", "native_gm_file"]

#: What :func:`init_tmstarget_wf` gives on its ``outputnode``.
OUTPUT_FIELDS = ["targets_file", "other_targets_file", "z_file", "seed_file", "search_file",
                 "runs_file", "reliability_file", "frequency_file", "measurements_file",
                 "other_measurements_file", "mesh_file", "efield_file", "efield_info_file",
                 "info_files", "carpet_files", "seed_quality_file", "quality_warnings", "warnings_file"]

#: What each run's workflow hands to the participant level.
RUN_OUTPUTS = ["z_file", "mask_file", "info_file", "cleaned_file", "carpet_file", "raw_stats_file"]

#: The steps whose warnings reach the user (the targets sidecar, the console, the report), in the
#: order they are listed: (node name in :func:`init_tmstarget_wf`, output). The output is a JSON
#: list of one-line strings (``warnings_file``) or a JSON object holding them as
#: ``QualityWarnings``. A step of a stage that was not built (no head T1w: no scalp stage) is
#: skipped. To collect a new step's warnings, add its pair here.
WARNING_SOURCES = [
    ("combine_runs", "warnings_file"),
    ("seed_quality", "quality_file"),
    ("quality_checks", "warnings_file"),
    ("scalp_mesh", "warnings_file"),
    ("scalp_projection", "warnings_file"),
    ("scalp_targets", "measurements_file"),
    ("efield_plan", "info_file"),
]

#: Peak memory (GB) of one Denoise run when the caller gives no estimate: measured 0.5 GB for a
#: 2 mm run of 300 volumes (:func:`tmstarget.workflows.confounds.denoise_mem_gb` computes it from
#: the headers; the graph itself never reads an image while it is built).
DENOISE_MEM_GB = 1.0


def _pick(items, index):
    """Item ``index`` of a list: feeds run ``index`` from the list fields of the inputnode."""
    return items[index]


def init_run_wf(*, confounds=defaults.CONFOUNDS, fd_threshold=defaults.FD_THRESHOLD_MM,
                high_pass=defaults.HIGH_PASS_HZ, low_pass=defaults.LOW_PASS_HZ,
                smoothing_fwhm=defaults.SMOOTHING_FWHM_MM, mem_gb=DENOISE_MEM_GB, processes=1,
                name="run_wf"):
    """Denoise one BOLD run, extract its seed time series and correlate it with every voxel.

    Workflow Graph
        .. workflow::
            :graph2use: colored

            from tmstarget.workflows.base import init_run_wf
            wf = init_run_wf()

    Parameters
    ----------
    confounds : str
        Confound strategy, a key of :data:`tmstarget.workflows.defaults.CONFOUND_STRATEGIES`.
    fd_threshold : float or None
        Censor volumes with framewise displacement above it (mm); None: no censoring.
    high_pass, low_pass : float
        Band-pass (Hz).
    smoothing_fwhm : float
        Gaussian smoothing (mm FWHM).
    mem_gb : float
        Denoise's peak memory (GB), for the scheduler (``--nprocs`` with ``--mem-gb``).
    processes : int
        Processes Denoise reads and smooths the BOLD with (the same values for any number), and
        the CPUs the scheduler reserves for it.
    name : str

    Inputs
    ------
    bold_file
        fMRIPrep ``desc-preproc_bold``, with its ``desc-confounds_timeseries.tsv`` beside it under
        fMRIPrep's names (nilearn's ``load_confounds`` finds it).
    mask_file
        Brain mask on the BOLD grid.
    t_r
        Repetition time (s).
    seed_file
        Seed weights on the BOLD grid.

    Outputs
    -------
    z_file
        Fisher-z map of the run.
    mask_file
        The brain mask (passed on).
    info_file
        JSON: volumes, retained volumes, regressors, degrees of freedom.
    cleaned_file
        float32 (retained volumes x mask voxels) ``.npy``.
    carpet_file
        Carpet-plot sample (``.npz``).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["bold_file", "mask_file", "t_r", "seed_file"]),
                        name="inputnode")
    denoise = pe.Node(Denoise(strategy=confounds, fd_threshold=fd_threshold, high_pass=high_pass,
                              low_pass=low_pass, smoothing_fwhm=smoothing_fwhm, processes=processes),
                      name="denoise",
                      # the scheduler's estimates, so that --nprocs with --mem-gb never overcommits
                      mem_gb=mem_gb, n_procs=processes)
    seed = pe.Node(SeedTimeseries(), name="seed_timeseries")
    correlate = pe.Node(SeedCorrelation(), name="seed_correlation", mem_gb=2.0)
    outputnode = pe.Node(niu.IdentityInterface(fields=RUN_OUTPUTS), name="outputnode")
    workflow.connect([
        (inputnode, denoise, [("bold_file", "bold_file"), ("mask_file", "mask_file"), ("t_r", "t_r")]),
        (inputnode, seed, [("seed_file", "seed_file"), ("mask_file", "mask_file")]),
        (inputnode, correlate, [("mask_file", "mask_file")]),
        (inputnode, outputnode, [("mask_file", "mask_file")]),
        (denoise, seed, [("cleaned_file", "cleaned_file")]),
        (denoise, correlate, [("cleaned_file", "cleaned_file")]),
        (seed, correlate, [("timeseries_file", "timeseries_file")]),
        (correlate, outputnode, [("z_file", "z_file")]),
        (denoise, outputnode, [("info_file", "info_file"), ("cleaned_file", "cleaned_file"),
                                ("carpet_file", "carpet_file"), ("raw_stats_file", "raw_stats_file")]),
    ])
    return workflow


def init_tmstarget_wf(
    n_runs=1,
    *,
    space="MNI152NLin2009cAsym",
    scalp=True,
    native_head=False,
    other_space=None,
    confounds=defaults.CONFOUNDS,
    fd_threshold=defaults.FD_THRESHOLD_MM,
    high_pass=defaults.HIGH_PASS_HZ,
    low_pass=defaults.LOW_PASS_HZ,
    smoothing_fwhm=defaults.SMOOTHING_FWHM_MM,
    min_time=defaults.MIN_TIME_S,
    min_total_time=defaults.MIN_TOTAL_TIME_S,
    seed_center=defaults.SGACC_CENTER_MNI,
    seed_radius=defaults.SGACC_RADIUS_MM,
    seed_image=None,
    seed_name=defaults.SEED_NAME,
    allow_poor_seed=False,
    search_region_image=None,
    search_sites=tuple(defaults.DLPFC_SITES_MNI.values()),
    search_radius=defaults.DLPFC_RADIUS_MM,
    target_method=defaults.TARGET_METHOD,
    cluster_percentile=defaults.CLUSTER_PERCENTILE,
    gm_threshold=defaults.GM_THRESHOLD,
    bootstrap_samples=defaults.BOOTSTRAP_SAMPLES,
    bootstrap_block=defaults.BOOTSTRAP_BLOCK_S,
    random_seed=defaults.RANDOM_SEED,
    handle_angle=defaults.HANDLE_ANGLE_DEG,
    coil=DEFAULT_COIL,
    coil_orientation=DEFAULT_COIL_ORIENTATION,
    didt=DEFAULT_DIDT_A_PER_US,
    motor_threshold=None,
    denoise_mem_gb=None,
    denoise_processes=1,
    efield_processes=1,
    name="tmstarget_wf",
):
    """Connectivity-guided left-DLPFC TMS target of one participant from fMRIPrep outputs.

    Each run is denoised and correlated with the sgACC seed (Fox et al. 2012); the runs' Fisher-z
    maps are combined, the target is selected in the grey-matter DLPFC search region (Cash et al.
    2021), its reliability measured (split half, block bootstrap), and, with a head T1w, projected
    to the scalp with its coil pose and the scalp-based comparators (10-20 F3, Beam F3, 5 cm).
    Building the graph reads no file: the files come on the ``inputnode``.

    Workflow Graph
        .. workflow::
            :graph2use: orig
            :simple_form: yes

            from tmstarget.workflows.base import init_tmstarget_wf
            wf = init_tmstarget_wf(n_runs=2)

    Parameters
    ----------
    n_runs : int
        Number of BOLD runs (the length of the inputnode's list fields).
    space : str
        The runs' space (the computation space): ``T1w`` or one of
        :data:`tmstarget.workflows.defaults.MNI_SPACES`.
    scalp : bool
        Build the scalp stage (needs ``t1w_file``, or the native head with ``native_head``):
        scalp points, coil poses, comparators.
    native_head : bool
        Plan on the participant's own head, in an MNI computation (needs ``other_space`` "T1w",
        ``native_t1w_file``, ``native_gm_file``, ``to_other_xfm`` and ``from_other_xfm``): the
        target is mapped into T1w and put in its grey matter, the scalp stage runs there, and its
        plan is mapped back for the computation space's table. False in an MNI computation: the
        plan is made on the MNI-space head T1w (a head warped to the template), with a warning.
    other_space : str or None
        Also give the targets in this space (needs ``to_other_xfm``), e.g. ``T1w`` for a run
        computed in MNI152NLin2009cAsym.
    confounds, fd_threshold, high_pass, low_pass, smoothing_fwhm
        Denoising, see :func:`init_run_wf`.
    min_time, min_total_time : float
        Retained time (s) a run needs to be used, and all used runs together.
    seed_center : 3 floats
        sgACC seed sphere centre, MNI152NLin2009cAsym mm.
    seed_radius : float
        Seed sphere radius (mm).
    seed_image : path or None
        Seed mask or weighted map in MNI152NLin2009cAsym, instead of the sphere.
    seed_name : str
        Name of the seed in messages.
    allow_poor_seed : bool
        Go on, with a warning, when the seed's raw signal is below the hard limits of
        :mod:`tmstarget.workflows.seed_quality` (dropout); otherwise the run stops there.
    search_region_image : path or None
        Search-region mask in MNI152NLin2009cAsym, instead of the DLPFC spheres.
    search_sites : sequence of 3 floats
        Centres (MNI mm) of the spheres whose union is the search region.
    search_radius : float
        Their radius (mm).
    target_method : str
        A key of :data:`tmstarget.workflows.defaults.TARGET_METHODS`.
    cluster_percentile : float
        Most negative share (%) of the search region's voxels the clusters are made of.
    gm_threshold : float
        Grey-matter probability threshold.
    bootstrap_samples : int
        Block-bootstrap samples of the target (0: no bootstrap, no ``frequency_file``).
    bootstrap_block : float
        Bootstrap block length (s).
    random_seed : int
        Seed of the bootstrap's random draws.
    handle_angle : float
        Coil handle angle from the midline (degrees), pointing posterior-laterally.
    coil : str
        Coil model of the E-field plan, a key of
        :data:`tmstarget.workflows.coil_models.COIL_GEOMETRIES`.
    coil_orientation : {"clinical", "efield"}
        The pose of the plan: the clinical handle angle, or the one the field chooses
        (:mod:`tmstarget.workflows.efield_plan`); both are reported.
    didt : float
        Coil current slope the fields are given for (A/us).
    motor_threshold : float or None
        Resting motor threshold (% MSO) for the field-based dose in % MSO.
    denoise_mem_gb : float, list of float or None
        Peak memory of each run's Denoise (GB) for the scheduler; None: :data:`DENOISE_MEM_GB`.
    denoise_processes : int
        Processes each run's Denoise reads and smooths its BOLD with (see :func:`init_run_wf`).
    efield_processes : int
        Processes the E-field map is computed with (the same map for any number). The scheduler
        counts the step as one CPU: the map is its last second, when the participant's other
        steps have mostly ended and a CPU would wait idle.
    name : str

    Inputs
    ------
    bold_files
        List of fMRIPrep ``desc-preproc_bold`` runs in one space, each with its confounds table
        beside it under fMRIPrep's names.
    mask_files
        List of their brain masks.
    t_rs
        List of their repetition times (s).
    gm_file
        Grey matter in the runs' space: GM probseg, or fMRIPrep's dseg (label 1 = GM).
    t1w_file
        Head T1w (not skull-stripped) in the runs' space (with ``scalp`` and not ``native_head``).
    native_t1w_file, native_gm_file
        The participant's own head T1w and grey matter (fMRIPrep's ``desc-preproc_T1w`` and
        ``label-GM_probseg`` or ``dseg`` without ``space-``; with ``native_head``).
    to_mni_xfm
        Transform mapping points of the runs' space into MNI152NLin2009cAsym; not set when the
        runs are in an MNI space.
    from_mni_xfm
        The reverse (with ``scalp``, for the 10-20 fiducials); not set in an MNI space.
    to_other_xfm
        Transform mapping points of the runs' space into ``other_space``. In a T1w computation
        whose ``other_space`` is MNI152NLin2009cAsym it is ``to_mni_xfm``, which is used.
    from_other_xfm
        The reverse (with ``native_head``: the plan is mapped back with it).

    Outputs
    -------
    targets_file
        TSV of the targets in the runs' space: the connectivity target and, with ``scalp``, the
        scalp-based comparators, scalp points, coil poses, depths, dose adjustments.
    other_targets_file
        The same in ``other_space``.
    z_file
        Combined Fisher-z connectivity map.
    seed_file, search_file
        Seed weights and search-region mask on the BOLD grid.
    runs_file
        JSON: each run's denoising summary and whether it was used.
    reliability_file
        JSON: split-half and bootstrap reliability, grade.
    frequency_file
        Fraction of bootstrap samples choosing each voxel (with ``bootstrap_samples``).
    measurements_file
        JSON: head measurements and the scalp-based methods (with ``scalp``), points in the runs'
        space.
    other_measurements_file
        The same with its points in ``other_space``.
    mesh_file
        Scalp mesh of the head the plan was made on (with ``scalp``).
    efield_file, efield_info_file
        |E| (V/m) of the connectivity target's pose on the BOLD grid, and the E-field model's
        description and warnings (JSON), with ``scalp``.
    info_files, carpet_files
        Per run: the denoising summary and the carpet-plot sample.
    seed_quality_file
        JSON: the seed's share inside the brain, raw intensity and tSNR against the brain's, per
        run and combined (:mod:`tmstarget.workflows.seed_quality`).
    quality_warnings
        Every step's warnings, one line each (:data:`WARNING_SOURCES`).
    warnings_file
        The same as a JSON list.
    """
    if native_head and (space == "T1w" or other_space != "T1w"):
        raise ValueError("native_head plans on the participant's T1w for a computation in an MNI "
                         f"space: it needs other_space='T1w' (space={space!r}, "
                         f"other_space={other_space!r})")
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=INPUT_FIELDS, mandatory_inputs=False),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=OUTPUT_FIELDS, mandatory_inputs=False),
                         name="outputnode")

    # A transform that several steps map points with is read once for them (ReadTransform):
    # reading fMRIPrep's 1 mm displacement field takes seconds, mapping points with it once read
    # takes milliseconds. Only transforms the graph always has: the others are optional inputs.
    read_nodes = {}

    def read_once(field):
        if field not in read_nodes:
            direction, other = field.split("_")[:2]  # e.g. to_other_xfm: to other_space
            name = f"read_transform_{direction}_{other_space if other == 'other' else 'MNI'}"
            read_nodes[field] = pe.Node(ReadTransform(), name=name)
            workflow.connect(inputnode, field, read_nodes[field], "xfm_file")
        return read_nodes[field]

    regions = pe.Node(Regions(gm_threshold=gm_threshold, sites=[tuple(s) for s in search_sites],
                              site_radius=search_radius), name="regions")
    if seed_image:
        regions.inputs.seed_image = str(seed_image)
    else:
        regions.inputs.seed_center = tuple(seed_center)
        regions.inputs.seed_radius = seed_radius
    if search_region_image:
        regions.inputs.search_image = str(search_region_image)
    workflow.connect(inputnode, "mask_files", regions, "mask_files")
    workflow.connect(inputnode, "gm_file", regions, "gm_file")
    if space == "T1w":  # the regions and the seed's quality place MNI spheres on T1w voxels
        to_mni = (read_once("to_mni_xfm"), "mapping_file")
    else:
        to_mni = (inputnode, "to_mni_xfm")  # not set in an MNI space
    workflow.connect(*to_mni, regions, "to_mni_xfm")

    if denoise_mem_gb is None or isinstance(denoise_mem_gb, (int, float)):
        denoise_mem_gb = [denoise_mem_gb or DENOISE_MEM_GB] * n_runs
    merge = {field: pe.Node(niu.Merge(n_runs), name=f"merge_{field}") for field in RUN_OUTPUTS}
    for index in range(n_runs):
        run_wf = init_run_wf(confounds=confounds, fd_threshold=fd_threshold, high_pass=high_pass,
                             low_pass=low_pass, smoothing_fwhm=smoothing_fwhm,
                             mem_gb=denoise_mem_gb[index], processes=denoise_processes,
                             name=f"run_{index + 1:02d}_wf")
        workflow.connect([
            (inputnode, run_wf, [(("bold_files", _pick, index), "inputnode.bold_file"),
                                 (("mask_files", _pick, index), "inputnode.mask_file"),
                                 (("t_rs", _pick, index), "inputnode.t_r")]),
            (regions, run_wf, [("seed_file", "inputnode.seed_file")]),
        ])
        for field, node in merge.items():
            workflow.connect(run_wf, f"outputnode.{field}", node, f"in{index + 1}")

    combine = pe.Node(CombineRuns(min_time=min_time, min_total_time=min_total_time),
                      name="combine_runs")
    select = pe.Node(SelectTarget(method=target_method, percentile=cluster_percentile),
                     name="select_target")
    reliability = pe.Node(TargetReliability(
        method=target_method, percentile=cluster_percentile, n_samples=bootstrap_samples,
        block_s=bootstrap_block, random_seed=random_seed), name="target_reliability")
    checks = pe.Node(QualityChecks(), name="quality_checks")
    workflow.connect([
        (merge["z_file"], combine, [("out", "z_files")]),
        (merge["mask_file"], combine, [("out", "mask_files")]),
        (merge["info_file"], combine, [("out", "info_files")]),
        (combine, select, [("z_file", "z_file")]),
        (regions, select, [("search_file", "search_file")]),
        (merge["cleaned_file"], reliability, [("out", "cleaned_files")]),
        (merge["mask_file"], reliability, [("out", "mask_files")]),
        (combine, reliability, [("runs_file", "runs_file")]),
        (regions, reliability, [("seed_file", "seed_file"), ("search_file", "search_file")]),
        (select, reliability, [("targets_file", "targets_file")]),
        (combine, checks, [("runs_file", "runs_file")]),
        (select, checks, [("targets_file", "targets_file")]),
        (reliability, checks, [("reliability_file", "reliability_file")]),
        (combine, outputnode, [("z_file", "z_file"), ("runs_file", "runs_file")]),
        (regions, outputnode, [("seed_file", "seed_file"), ("search_file", "search_file")]),
        (reliability, outputnode, [("reliability_file", "reliability_file")]),
        (merge["info_file"], outputnode, [("out", "info_files")]),
        (merge["carpet_file"], outputnode, [("out", "carpet_files")]),
    ])
    if bootstrap_samples:
        workflow.connect(reliability, "frequency_file", outputnode, "frequency_file")

    # Seed quality: the seed's raw signal in every run (susceptibility dropout); it stops the
    # run below the hard limits, before anything is written, unless allow_poor_seed.
    seed_quality = pe.Node(SeedQuality(seed_name=seed_name, allow_poor_seed=allow_poor_seed),
                           name="seed_quality")
    if seed_image:
        seed_quality.inputs.seed_image = str(seed_image)
    else:
        seed_quality.inputs.seed_center = tuple(seed_center)
        seed_quality.inputs.seed_radius = seed_radius
    workflow.connect([
        (to_mni[0], seed_quality, [(to_mni[1], "to_mni_xfm")]),
        (merge["raw_stats_file"], seed_quality, [("out", "raw_stats_files")]),
        (merge["mask_file"], seed_quality, [("out", "mask_files")]),
        (combine, seed_quality, [("runs_file", "runs_file")]),
        (seed_quality, outputnode, [("quality_file", "seed_quality_file")]),
    ])

    # The target in grey matter, on the head it is planned on: mapped into the participant's own
    # T1w first when the plan is made there.
    notes = []
    snap = pe.Node(SnapToGreyMatter(gm_threshold=gm_threshold), name="snap_to_grey_matter")
    if native_head:
        to_native = pe.Node(MapTargets(), name="map_target_to_T1w")
        workflow.connect([
            (select, to_native, [("targets_file", "targets_file")]),
            (read_once("to_other_xfm"), to_native, [("mapping_file", "xfm_file")]),
            (to_native, snap, [("out_file", "targets_file")]),
            (inputnode, snap, [("native_gm_file", "gm_file")]),
        ])
    else:
        workflow.connect([(select, snap, [("targets_file", "targets_file")]),
                          (inputnode, snap, [("gm_file", "gm_file")])])

    # The targets table of the head the plan is made on, whatever stages ran.
    plan = pe.Node(niu.IdentityInterface(fields=["targets_file"]), name="plan")
    if scalp:
        head_t1w, head_gm = (("native_t1w_file", "native_gm_file") if native_head
                             else ("t1w_file", "gm_file"))
        # The scalp mesh and the scalp-based methods' points need the head alone: steps of
        # their own, they run beside the steps that lead to the target instead of after them.
        mesh = pe.Node(ScalpMesh(), name="scalp_mesh")
        landmarks = pe.Node(ScalpLandmarks(gm_threshold=gm_threshold), name="scalp_landmarks")
        projection = pe.Node(ScalpProjection(), name="scalp_projection")
        comparators = pe.Node(ScalpTargets(handle_angle_deg=handle_angle, gm_threshold=gm_threshold,
                                           space="T1w" if native_head else space),
                              name="scalp_targets")
        # The field of each pose on the plan's head; the map on the BOLD grid of the runs.
        efield = pe.Node(EfieldPlan(coil=coil, orientation=coil_orientation, didt_a_per_us=didt,
                                    processes=efield_processes,
                                    handle_angle_deg=handle_angle, **(
                                        {"motor_threshold_pct_mso": motor_threshold}
                                        if motor_threshold else {})), name="efield_plan")
        workflow.connect([
            (inputnode, mesh, [(head_t1w, "t1w_file")]),
            (inputnode, landmarks, [(head_gm, "gm_file")]),
            (mesh, projection, [("mesh_file", "mesh_file")]),
            (mesh, landmarks, [("mesh_file", "mesh_file")]),
            (landmarks, comparators, [("landmarks_file", "landmarks_file")]),
            (snap, projection, [("out_file", "points_file")]),
            (projection, comparators, [("out_file", "targets_file")]),
            (mesh, comparators, [("mesh_file", "mesh_file")]),
            (combine, comparators, [("z_file", "z_file")]),
            # the brain masks tell a skull-stripped head, and which comparators have a z-value
            (inputnode, mesh, [("mask_files", "brain_mask_files")]),
            (merge["mask_file"], comparators, [("out", "mask_files")]),
            (comparators, efield, [("out_file", "targets_file"),
                                   ("measurements_file", "measurements_file")]),
            (mesh, efield, [("mesh_file", "mesh_file")]),
            (merge["mask_file"], efield, [(("out", _pick, 0), "reference_file")]),  # one grid
            (efield, plan, [("out_file", "targets_file")]),
            (efield, outputnode, [("efield_file", "efield_file"), ("info_file", "efield_info_file")]),
            (mesh, outputnode, [("mesh_file", "mesh_file")]),
        ])
        if native_head:
            # the MNI landmarks go into T1w as the target did; the z map stays in the runs' space
            to_t1w, from_t1w = read_once("to_other_xfm"), read_once("from_other_xfm")
            workflow.connect([(to_t1w, landmarks, [("mapping_file", "from_mni_xfm")]),
                              (from_t1w, comparators, [("mapping_file", "to_map_xfm")]),
                              # the BOLD grid's MNI points into T1w, where the plan is
                              (to_t1w, efield, [("mapping_file", "grid_to_plan_xfm")])])
        else:
            workflow.connect(inputnode, "from_mni_xfm", landmarks, "from_mni_xfm")
            if space != "T1w":
                notes.append(
                    f"the scalp stage ran on the {space} head T1w, a head warped to the template: "
                    "its coil poses, depths, dose adjustments and head measurements are the warped "
                    "head's, not this participant's; give fMRIPrep's native desc-preproc_T1w, its "
                    "grey-matter map and the T1w<->MNI transforms to plan on the participant's head")
    else:
        workflow.connect(snap, "out_file", plan, "targets_file")
        notes.append("no desc-preproc_T1w (head T1w) in the space of the runs: the target is computed, "
                     "the scalp stage (scalp point, coil pose, scalp-based comparators) is skipped")

    # The plan's own table (and measurements) and, mapped into the other space, the same again.
    # With native_head the plan is the T1w table and the runs' space gets it mapped back;
    # otherwise the plan is the runs' space's table, mapped into other_space when there is one.
    plan_outputs = [(plan, "targets_file", "targets_file", "out_file")]
    if scalp:
        plan_outputs.append((comparators, "measurements_file", "measurements_file",
                             "measurements_file"))
    own, mapped = ("other_", "") if native_head else ("", "other_")
    if native_head:
        to_mapped = pe.Node(MapTargets(), name=f"map_plan_to_{space}")
        xfm_field = "from_other_xfm"
    elif other_space:
        # a plan on a warped head is measured again in T1w, closer to the patient's head
        to_mapped = pe.Node(MapTargets(remeasure=other_space == "T1w"), name=f"map_to_{other_space}")
        xfm_field = "to_other_xfm"
    else:
        to_mapped = None
    if to_mapped is not None:
        if native_head:  # read once: the scalp stage's comparators map with it too
            workflow.connect(read_once(xfm_field), "mapping_file", to_mapped, "xfm_file")
        elif space == "T1w" and other_space == defaults.REGIONS_SPACE:
            # the regions' transform (T1w to their template), read once for both
            workflow.connect(read_once("to_mni_xfm"), "mapping_file", to_mapped, "xfm_file")
        else:
            workflow.connect(inputnode, xfm_field, to_mapped, "xfm_file")
    for node, output, field, mapped_output in plan_outputs:
        workflow.connect(node, output, outputnode, own + field)
        if to_mapped is not None:
            workflow.connect([(node, to_mapped, [(output, field)]),
                              (to_mapped, outputnode, [(mapped_output, mapped + field)])])

    sources = [(workflow.get_node(node), output) for node, output in WARNING_SOURCES]
    sources = [(node, output) for node, output in sources if node is not None]
    gather = pe.Node(niu.Merge(max(len(sources), 1)), name="merge_warnings")
    collect = pe.Node(CollectWarnings(notes=notes), name="collect_warnings")
    for index, (node, output) in enumerate(sources, start=1):
        workflow.connect(node, output, gather, f"in{index}")
    workflow.connect([
        (gather, collect, [("out", "in_files")]),
        (collect, outputnode, [("quality_warnings", "quality_warnings"),
                               ("warnings_file", "warnings_file")]),
    ])
    return workflow
