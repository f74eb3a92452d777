"""Command line: ``tmstarget bids_dir output_dir participant|group [options]`` (the BIDS Apps contract).

The CLI checks the request, collects inputs, runs the Nipype graph and reports; it does no science.
Exit codes: 0 success, 1 failure (bad data, processing error), 2 wrong use.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

# Nothing is ever sent anywhere: Nipype's telemetry (a version check against rig.mit.edu, made at
# import and when a node runs, also in MultiProc workers) is off before Nipype is imported.
os.environ["NIPYPE_NO_ET"] = "1"

from tmstarget import __version__  # noqa: E402
from tmstarget.config import (  # noqa: E402
    COIL_ORIENTATIONS,
    CONFOUND_STRATEGIES,
    TARGET_METHODS,
    Options,
    clean_label,
)
from tmstarget.interrupts import InterruptFlag, Interrupted  # noqa: E402
from tmstarget.workflows.coil_models import COIL_GEOMETRIES, DEFAULT_COIL  # noqa: E402
from tmstarget.workflows.defaults import SPACES  # noqa: E402

LOGGER = logging.getLogger("tmstarget")


class UsageError(Exception):
    """Wrong use of the command line (exit code 2)."""


class OutputError(Exception):
    """The outputs cannot be written (exit code 1)."""


def _path(text):
    """A path the user typed, made absolute once, here, against the folder tmstarget was started in.

    As fMRIPrep's parser does (``Path(path).absolute()``): every later step, Nipype nodes included
    (each runs in its own folder), gets the same absolute path. Symbolic links are kept, not
    resolved: a DataLad dataset is all links whose targets' names are not BIDS names.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return Path(text).expanduser().absolute()


def _key_value(text):
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, _path(path)


def _megabytes(text):
    """``--mem``/``--mem-mb`` as fMRIPrep and XCP-D read it: a number of megabytes (``8000``), or a
    number with a unit (``16G``, ``16GB``, ``500M``, ``1T``; SLURM's spelling). Returns gigabytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)B?\s*", text, flags=re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected megabytes (8000) or a size with a unit (16G), "
                                         f"got {text!r}")
    scale = {"K": 1e-6, "M": 1e-3, "": 1e-3, "G": 1.0, "T": 1e3}[match.group(2).upper()]
    return float(match.group(1)) * scale


def _choices_help(intro, descriptions):
    """Help text listing each choice with its description (``%`` escaped for argparse)."""
    text = f"{intro}. " + "; ".join(f"{k}: {v}" for k, v in descriptions.items())
    return text.replace("%", "%%")


def available_cpus():
    """The CPUs this process may run on: its affinity (a SLURM task's or container's CPU set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def build_parser():
    # allow_abbrev=False: no prefix matching, so --mem is --mem (megabytes, as fMRIPrep reads it),
    # never a silent --mem-gb, and a misspelled flag is an error, not another flag.
    parser = argparse.ArgumentParser(
        prog="tmstarget", allow_abbrev=False,
        description="Connectivity-guided left-DLPFC TMS targets (sgACC anticorrelation) from "
        "fMRIPrep outputs, written as BIDS-Derivatives.")
    parser.add_argument("bids_dir", type=_path,
                        help="fMRIPrep derivatives folder, or a raw BIDS dataset (see --derivatives)")
    parser.add_argument("output_dir", type=_path, help="where the derivatives are written")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="'participant' processes each participant; 'group' gathers the participants' "
                        "outputs already in output_dir into group tables and group.html")
    parser.add_argument("--version", action="version", version=f"tmstarget {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more messages (-vv: Nipype's too, and tracebacks)")

    g = parser.add_argument_group("inputs")
    g.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="participants to process (01 or sub-01); all when omitted")
    g.add_argument("--session-label", nargs="+", metavar="LABEL", help="sessions to use; all when omitted")
    g.add_argument("--task-id", metavar="TASK", help="task of the resting-state runs (default: rest)")
    g.add_argument("--space", choices=SPACES,
                   help="space of the BOLD runs to compute in (default: MNI152NLin2009cAsym)")
    g.add_argument("--derivatives", nargs="+", type=_key_value, metavar="NAME=PATH",
                   help="where the fMRIPrep outputs are when bids_dir is raw BIDS: fmriprep=PATH")
    g.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                   help="accepted for fMRIPrep compatibility; does nothing: tmstarget reads "
                   "fMRIPrep derivatives and never runs the BIDS validator")
    g.add_argument("--bids-filter-file", type=_path, metavar="FILE",
                   help='JSON of pybids filters by file kind, e.g. {"bold": {"acquisition": "mb"}}')
    g.add_argument("--config-file", type=_path, metavar="FILE",
                   help="options saved by an earlier run (sub-*/log/config.json); flags override it")
    g.add_argument("--bids-database-dir", type=_path, metavar="DIR",
                   help="pybids index of the fMRIPrep folder, shared by jobs over one dataset: read "
                   "when DIR holds one, else built there once over all participants")

    g = parser.add_argument_group("denoising")
    g.add_argument("--confounds", choices=sorted(CONFOUND_STRATEGIES),
                   help=_choices_help("confound strategy (default: gsr)",
                                      {k: v["description"] for k, v in CONFOUND_STRATEGIES.items()}))
    g.add_argument("--fd-threshold", type=float, metavar="MM",
                   help="censor volumes with framewise displacement above MM (default: no censoring; "
                   "0.5 is the usual choice, Power et al. 2012)")
    g.add_argument("--min-time", type=float, metavar="S",
                   help="drop runs keeping less than S seconds after censoring (default: 240)")
    g.add_argument("--min-total-time", type=float, metavar="S",
                   help="fail when the used runs keep less than S seconds together (default: 300)")
    g.add_argument("--high-pass", type=float, metavar="HZ", help="band-pass lower edge (default: 0.01)")
    g.add_argument("--low-pass", type=float, metavar="HZ", help="band-pass upper edge (default: 0.1)")
    g.add_argument("--smoothing-fwhm", type=float, metavar="MM", help="Gaussian smoothing (default: 6)")

    g = parser.add_argument_group("seed and target")
    g.add_argument("--seed-center", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="seed sphere centre, MNI mm (default: sgACC 6 16 -10, Fox et al. 2012)")
    g.add_argument("--seed-radius", type=float, metavar="MM", help="seed sphere radius (default: 10)")
    g.add_argument("--seed-image", type=_path, metavar="FILE",
                   help="seed mask or weighted seed map in MNI152NLin2009cAsym (replaces the sphere)")
    g.add_argument("--seed-name", metavar="NAME", help="seed name used in file names (default: sgACC)")
    g.add_argument("--allow-poor-seed", action="store_true", default=None,
                   help="compute the target even when the seed has (almost) no BOLD signal (below the "
                   "seed-quality hard limits: susceptibility dropout, seed off the brain); it is "
                   "then flagged in the outputs")
    g.add_argument("--search-region-image", type=_path, metavar="FILE",
                   help="search-region mask in MNI152NLin2009cAsym (default: the four DLPFC spheres)")
    g.add_argument("--target-method", choices=sorted(TARGET_METHODS),
                   help=_choices_help("target selection (default: cluster)", TARGET_METHODS))
    g.add_argument("--cluster-percentile", type=float, metavar="PCT",
                   help="most negative share of search-region voxels for 'cluster' and 'snt' "
                   "(default: 10)")
    g.add_argument("--gm-threshold", type=float, metavar="P",
                   help="grey-matter probability threshold (default: 0.5)")
    g.add_argument("--handle-angle", type=float, metavar="DEG",
                   help="coil handle angle from the midline, pointing posterior-lateral (default: 45)")

    g = parser.add_argument_group("coil and electric field")
    g.add_argument("--coil", choices=sorted(COIL_GEOMETRIES),
                   help=_choices_help(f"coil model of the E-field (default: {DEFAULT_COIL}, "
                                      "geometry of Thielscher & Kammer 2002)",
                                      {k: v[0] for k, v in COIL_GEOMETRIES.items()}))
    g.add_argument("--coil-orientation", choices=sorted(COIL_ORIENTATIONS),
                   help=_choices_help("coil handle angle used for the plan and the exports "
                                      "(default: clinical)", COIL_ORIENTATIONS))
    g.add_argument("--didt", type=float, metavar="A_PER_US",
                   help="coil current slope the E-field is given for, A/us (default: 1, "
                   "SimNIBS's default; fields scale linearly: give your stimulator's dI/dt at "
                   "the output used)")
    g.add_argument("--motor-threshold", type=float, metavar="PCT_MSO",
                   help="measured resting motor threshold, %% of maximum stimulator output: "
                   "gives the E-field-based dose in %% MSO (default: none, the dose in %% of "
                   "the motor threshold only)")

    g = parser.add_argument_group("reliability")
    g.add_argument("--bootstrap-samples", type=int, metavar="N",
                   help="block-bootstrap samples of the target (default: 1000; 0 skips the bootstrap)")
    g.add_argument("--bootstrap-block", type=float, metavar="S",
                   help="length of the bootstrap's blocks of consecutive volumes (default: 30 s)")
    g.add_argument("--random-seed", type=int, metavar="N",
                   help="seed of the bootstrap's random draws (default: 0; same seed, same numbers)")

    g = parser.add_argument_group("resources")
    g.add_argument("-w", "--work-dir", type=_path, metavar="DIR",
                   help="Nipype work dir; re-using it skips finished steps (default: $TMPDIR/tmstarget_work)")
    # fMRIPrep's and XCP-D's spellings, with their meanings and units.
    g.add_argument("--nprocs", "--nthreads", "--n-cpus", "--n_cpus", type=int, default=available_cpus(),
                   metavar="N", dest="nprocs",
                   help="CPUs to use: parallel steps, and processes within a step when there are fewer "
                   "runs than CPUs (fMRIPrep's --nthreads/--n-cpus too; default: the CPUs this process "
                   f"may run on, {available_cpus()} here); the outputs are the same for any N")
    g.add_argument("--omp-nthreads", type=int, default=1, metavar="N",
                   help="threads per process, for BLAS and decompression (default 1: the BLAS thread count "
                   "changes the rounding of matrix products, so the same N gives the same bytes)")
    memory = g.add_mutually_exclusive_group()
    memory.add_argument("--mem-gb", type=float, metavar="GB", dest="mem_gb",
                        help="memory limit for the scheduler, gigabytes")
    memory.add_argument("--mem", "--mem-mb", "--mem_mb", type=_megabytes, metavar="MB", dest="mem_gb",
                        help="the same limit in megabytes, as fMRIPrep and XCP-D read it (8000), "
                        "or with a unit (16G)")
    g.add_argument("--notrack", action="store_true",
                   help="accepted for fMRIPrep compatibility; does nothing: tmstarget never sends "
                   "anything anywhere (Nipype's telemetry is off)")

    g = parser.add_argument_group("outputs")
    g.add_argument("--no-report", action="store_true",
                   help="do not write the HTML report (sub-<label>.html and sub-<label>/figures)")
    return parser


# Command-line flags that map one to one onto Options fields.
_OPTION_FLAGS = ("task_id", "space", "confounds", "fd_threshold", "min_time", "min_total_time",
                 "high_pass", "low_pass", "smoothing_fwhm", "seed_center", "seed_radius", "seed_name",
                 "target_method", "cluster_percentile", "gm_threshold", "handle_angle",
                 "bootstrap_samples", "bootstrap_block", "random_seed", "allow_poor_seed",
                 "coil", "coil_orientation", "didt", "motor_threshold")


def resolve_options(args):
    """Options from the defaults, then ``--config-file``, then the flags given."""
    if args.config_file:
        try:
            options = Options.from_file(args.config_file)
        except (OSError, ValueError, TypeError) as err:
            raise UsageError(f"--config-file {args.config_file}: {err}; give a config.json written "
                             "by tmstarget") from None
    else:
        options = Options()
    for name in _OPTION_FLAGS:
        value = getattr(args, name)
        if value is not None:
            setattr(options, name, tuple(value) if name == "seed_center" else value)
    for name in ("seed_image", "search_region_image"):
        value = getattr(args, name)
        if value is not None:
            _check_region_image(f"--{name.replace('_', '-')}", value)
            setattr(options, name, str(value))
    try:
        # from the flags, else from --config-file: checked either way
        options.participant_label = [clean_label(x) for x in args.participant_label or
                                     options.participant_label]
        options.session_label = [clean_label(x, "session") for x in args.session_label or
                                 options.session_label]
        options.task_id = clean_label(options.task_id, "task")
        options.seed_name = clean_label(options.seed_name, "seed name")
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.bids_filter_file:
        try:
            options.bids_filters = json.loads(args.bids_filter_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"--bids-filter-file {args.bids_filter_file}: {err}") from None
        if not isinstance(options.bids_filters, dict) or not set(options.bids_filters) <= {"bold", "t1w"}:
            raise UsageError(f"--bids-filter-file {args.bids_filter_file}: expected a JSON object with "
                             'keys "bold" and/or "t1w"')
    if not options.high_pass < options.low_pass:
        raise UsageError("--high-pass must be lower than --low-pass")
    _check_ranges(options)
    if args.nprocs < 1 or args.omp_nthreads < 1:
        raise UsageError("--nprocs and --omp-nthreads must be at least 1")
    if args.mem_gb is not None and not args.mem_gb > 0:
        raise UsageError(f"--mem-gb {args.mem_gb:g} is out of range: give a value more than 0")
    return options


def _check_ranges(options):
    """Refuse option values outside their meaningful range (from the flags or a config file)."""
    ranges = {  # option: (lowest, highest, lowest allowed itself)
        "high_pass": (0.0, None, True), "low_pass": (0.0, None, False),
        "smoothing_fwhm": (0.0, None, True), "min_time": (0.0, None, True),
        "min_total_time": (0.0, None, True), "bootstrap_samples": (0, None, True),
        "bootstrap_block": (0.0, None, False),
        "fd_threshold": (0.0, None, False), "seed_radius": (0.0, None, False),
        "cluster_percentile": (0.0, 100.0, False), "gm_threshold": (0.0, 1.0, True),
        "handle_angle": (-180.0, 180.0, True),
        "didt": (0.0, None, False), "motor_threshold": (0.0, 100.0, False),
    }
    for name, (lowest, highest, closed) in ranges.items():
        value = getattr(options, name)
        if value is None and name in ("fd_threshold", "motor_threshold"):
            continue
        flag = "--" + name.replace("_", "-")
        if not isinstance(value, (int, float)) or value != value:
            raise UsageError(f"{flag} {value!r} is not a number")
        if value < lowest or (value == lowest and not closed) or (highest is not None and value > highest):
            bound = f"at least {lowest:g}" if closed else f"more than {lowest:g}"
            raise UsageError(f"{flag} {value:g} is out of range: give a value {bound}"
                             + (f" and at most {highest:g}" if highest is not None else ""))
    if not all(isinstance(v, (int, float)) for v in options.seed_center) or len(options.seed_center) != 3:
        raise UsageError(f"--seed-center {options.seed_center!r}: give three numbers, MNI mm")
    if options.confounds not in CONFOUND_STRATEGIES or options.target_method not in TARGET_METHODS:
        raise UsageError(f"--confounds {options.confounds!r} or --target-method {options.target_method!r} "
                         "is not a known choice (see --help)")
    if options.coil not in COIL_GEOMETRIES or options.coil_orientation not in COIL_ORIENTATIONS:
        raise UsageError(f"--coil {options.coil!r} or --coil-orientation "
                         f"{options.coil_orientation!r} is not a known choice (see --help)")


def _check_region_image(flag, path):
    """A seed or search-region image must be a readable 3-D NIfTI (its voxels are read later)."""
    import nibabel as nb

    if not path.is_file():
        raise UsageError(f"{flag} {path} does not exist")
    try:
        img = nb.load(path)
        shape = img.shape
    except Exception as err:  # noqa: BLE001  nibabel raises many types for a damaged file
        raise UsageError(f"{flag} {path} cannot be read as NIfTI ({type(err).__name__}): give a "
                         "NIfTI image in MNI152NLin2009cAsym") from None
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise UsageError(f"{flag} {path} has shape {shape}: give one 3-D image in MNI152NLin2009cAsym")


def default_work_dir():
    """``$TMPDIR/tmstarget_work`` (``/tmp`` without ``TMPDIR``), absolute."""
    return Path(os.environ.get("TMPDIR") or "/tmp").absolute() / "tmstarget_work"


def check_paths(args):
    """Refuse a missing input or an output or work dir that would write into the inputs.

    The paths are absolute already (:func:`_path`); they are compared with their symbolic links
    resolved, so a link into the dataset is caught too.
    """
    if not args.bids_dir.is_dir():
        raise UsageError(f"bids_dir {args.bids_dir} does not exist")
    bids_dir = args.bids_dir.resolve()
    output_dir = args.output_dir.resolve()
    if output_dir == bids_dir or bids_dir in output_dir.parents:
        raise UsageError(f"output_dir {args.output_dir} is inside bids_dir {args.bids_dir}: choose an "
                         "output folder outside the input dataset")
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"output_dir {args.output_dir} is a file: choose a folder")
    if args.work_dir is not None:
        work_dir = args.work_dir.resolve()
        if work_dir == bids_dir or bids_dir in work_dir.parents:
            raise UsageError(f"--work-dir {args.work_dir} is inside bids_dir {args.bids_dir}: the input "
                             "dataset is never written to; choose a work folder outside it")
        if work_dir.exists() and not work_dir.is_dir():
            raise UsageError(f"--work-dir {args.work_dir} is a file: choose a folder")
    for flag, path in (("--config-file", args.config_file), ("--bids-filter-file", args.bids_filter_file)):
        if path is not None and not path.is_file():
            raise UsageError(f"{flag} {path} does not exist" + (
                ": give the config.json of an earlier run (sub-*/log/config.json)"
                if flag == "--config-file" else ""))
    for name, path in args.derivatives or []:
        if not path.is_dir():
            raise UsageError(f"--derivatives {name}={path}: {path} does not exist")


def _probe_writable(folder, what):
    """Create ``folder`` if needed and prove it writable; return whether it was created.

    A probe file is created and removed (as root, permission bits say nothing; a read-only mount,
    a full disk or a quota only show when writing).
    """
    import tempfile

    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".tmstarget-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"{what} {folder} is not writable ({err.strerror}): choose a folder you "
                          "can write to, or fix its permissions or mount") from None
    return created


def prepare_work_dir(work_dir):
    """Create the work dir if needed and prove it writable (checked before any input is read)."""
    return _probe_writable(work_dir, "--work-dir")


def _remove_empty_folders(folder):
    """Remove ``folder`` and the folders under it, if they hold no file (a failed run that
    created it leaves nothing behind; anything with content, e.g. steps to resume, stays)."""
    for path in sorted((p for p in Path(folder).rglob("*") if p.is_dir()), reverse=True) + [Path(folder)]:
        try:
            path.rmdir()  # only ever removes an empty folder
        except OSError:
            pass


def prepare_output_dir(output_dir):
    """Create ``output_dir`` if needed and prove it writable; return whether it was created.

    A probe file is created and removed (as root, permission bits say nothing; a read-only mount,
    a full disk or a quota only show when writing).
    """
    return _probe_writable(output_dir, "output_dir")


def run_participants(collected, options, output_dir, source_dir, work_dir, args):
    """Build one graph of every collected participant and run it (see :mod:`tmstarget.execution`).

    Returns the time the run began; raises :class:`tmstarget.execution.StepFailed` or
    :class:`tmstarget.interrupts.Interrupted`.
    """
    from tmstarget.execution import ImportAhead, run_graph
    from tmstarget.participant import init_participants_wf

    report = not getattr(args, "no_report", False)
    workflow = init_participants_wf(collected, options, output_dir, source_dir, report=report,
                                    cpus=args.nprocs)
    labels = {(inputs.subject, number): label for inputs in collected
              for number, label in run_labels(inputs, options.task_id).items()}
    import_ahead = None
    if report:
        from tmstarget.reports import DRAWING_MODULES

        # The report draws in this process at the end: its libraries are imported once the
        # reliability step ends. It runs last of the steps beside the plan's chain (the
        # scheduler's order), so from there a CPU is free; earlier, the imports would take a
        # CPU from the head's steps, on which the plan waits.
        import_ahead = ImportAhead(DRAWING_MODULES, after="target_reliability")
    return run_graph(workflow, work_dir, nprocs=args.nprocs, mem_gb=args.mem_gb, run_labels=labels,
                     import_ahead=import_ahead)


def run_labels(inputs, task):
    """{graph run number (1, 2, ...): the run's entities as its BOLD file name spells them}.

    ``sub-01_ses-1_task-rest_run-1_space-..._bold.nii.gz`` -> ``ses-1_run-1``: the user's own
    ``run-1`` (pybids reads it as the integer 1, and the graph numbers runs 01, 02, ...), without
    the subject, task and space every run of the line shares; empty for a lone run without any.
    """
    labels = {}
    for number, run in enumerate(inputs.runs, start=1):
        name = Path(run.bold).name.split("_space-")[0]
        parts = [p for p in name.split("_") if p not in (f"sub-{inputs.subject}", f"task-{task}")]
        labels[number] = "_".join(p for p in parts if "-" in p)
    return labels


def main(argv=None):
    # Ctrl-C and a stop (kill, docker stop, SLURM) end the run alike, from the first line on
    with InterruptFlag():
        return _main(argv)


def _main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    # Our messages at INFO; other libraries' only when they warn.
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.WARNING)
    LOGGER.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # Set before numpy's BLAS starts its threads (numerical modules are imported below).
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(args.omp_nthreads)
    # ... and for a BLAS already running (tmstarget called from Python after numpy was imported):
    # the thread count changes the rounding of matrix products, so the same --omp-nthreads must
    # give the same bytes however tmstarget is started.
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=args.omp_nthreads)
    work_created = False
    status = 1
    try:
        check_paths(args)
        options = resolve_options(args)
        if args.analysis_level == "participant":
            args.work_dir = args.work_dir or default_work_dir()
            work_created = prepare_work_dir(args.work_dir)
        status = _run(args, options)
        return status
    except UsageError as err:
        parser.error(str(err))  # exits with 2
    except KeyboardInterrupt as err:
        err = err if isinstance(err, Interrupted) else Interrupted(signal.SIGINT)
        by = "" if err.signum == signal.SIGINT else f" by {err.signum.name}"
        print(f"tmstarget: interrupted{by}: finished steps are kept in the work dir; run the same "
              "command again to resume", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # one line for the user; the traceback with -vv
        if args.verbose >= 2:
            raise
        print(f"tmstarget: error: {_one_line(err)}", file=sys.stderr)
        return 1
    finally:
        if work_created and status != 0:
            _remove_empty_folders(args.work_dir)


def _one_line(err):
    """The message of an error on one line; unexpected errors also say how to see the traceback."""
    from tmstarget.collect import InputError

    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (InputError, OutputError)):
        return text
    return f"{type(err).__name__}: {text} (run with -vv for the traceback)"


def _run(args, options):
    if args.analysis_level == "group":
        from tmstarget.group import run_group

        before = _group_participants(args.output_dir)
        paths = run_group(args.output_dir, options.participant_label)
        print(f"group: {paths['n_participants']} participant(s)\n  {paths['report']}\n  {paths['targets']}")
        after = _group_participants(args.output_dir)
        dropped = sorted(before - after)
        if dropped:
            LOGGER.warning("group: %s of the earlier group run %s no longer in group/ and group.html, "
                           "which now hold %s only (--participant-label); run the group level "
                           "without --participant-label to include everyone", ", ".join(dropped),
                           "is" if len(dropped) == 1 else "are", ", ".join(sorted(after)))
        return 0
    collect = functools.partial(_collect_participants, args, options)
    if args.nprocs > 1 and args.verbose < 2:
        # pybids' index (importing pybids, indexing, the queries: 0.6-0.7 s here) and the
        # imports of the graph's modules (Nipype, nilearn, scipy: 1.1-1.3 s) need nothing of each
        # other: the index is made in a forked copy of this process meanwhile (the inputs come
        # back pickled, an error is raised here), so this process never holds it. With -vv
        # both are done here: an error's traceback does not cross processes.
        from tmstarget.workflows.parallel import run_parts

        _, (source_dir, collected) = run_parts([_import_graph_modules, collect])
    else:
        source_dir, collected = collect()
    from tmstarget.collect import InputError, check_participant

    for inputs in collected:
        check_participant(inputs, options)

    work_dir = args.work_dir  # absolute, created and checked writable by main()
    from tmstarget.derivatives import write_dataset_description
    from tmstarget.execution import StepFailed, configure_nipype

    configure_nipype(work_dir, args.verbose)
    # matplotlib (the reports) keeps a font cache in $HOME unless told otherwise: nothing is
    # written outside the output, work and temporary folders.
    os.environ.setdefault("MPLCONFIGDIR", str(work_dir / "matplotlib"))

    output_dir = Path(args.output_dir)
    created = prepare_output_dir(output_dir)
    start = time.time()
    finished = []
    try:
        for number, inputs in enumerate(collected, start=1):
            LOGGER.info("sub-%s [%d/%d]: %d run(s) in %s", inputs.subject, number, len(collected),
                        len(inputs.runs), inputs.space)
        try:
            run_participants(collected, options, output_dir, source_dir, work_dir, args)
        except StepFailed as err:
            subject = err.subject or (collected[0].subject if len(collected) == 1 else None)
            raise InputError(f"sub-{subject}: {err}" if subject else str(err)) from None
        finally:
            # The dataset-level files once a participant is complete (also when another one then
            # failed): a failed first run leaves the output folder as it was.
            finished = [inputs for inputs in collected if _written_since(inputs, options, output_dir, start)]
            if finished:
                write_dataset_description(output_dir, source_dir, finished[0].source_version)
        seconds = time.time() - start
        for inputs in collected:
            _report(inputs, options, output_dir, seconds, source_dir)
    finally:
        if created and not finished and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()
    return 0


def _collect_participants(args, options):
    """The fMRIPrep folder and each selected participant's inputs, found with pybids.

    Returns
    -------
    (pathlib.Path, list of tmstarget.collect.ParticipantInputs)
    """
    from tmstarget.collect import (InputError, check_filters, collect_participant, find_fmriprep_dir,
                                   load_layout)

    derivatives = dict(args.derivatives or [])
    source_dir = find_fmriprep_dir(args.bids_dir, derivatives).resolve()
    output = Path(args.output_dir).resolve()
    if output == source_dir or source_dir in output.parents:
        raise UsageError(f"output_dir {args.output_dir} is inside the fMRIPrep folder {source_dir}: "
                         "choose an output folder outside the input dataset")
    layout = load_layout(source_dir, options.participant_label, getattr(args, "bids_database_dir", None))
    try:
        check_filters(layout, options.bids_filters)
    except InputError as err:
        raise UsageError(str(err)) from None
    available = layout.get_subjects()
    subjects = options.participant_label or available
    missing = sorted(set(subjects) - set(available))
    if missing:
        raise InputError(f"participant(s) {', '.join(missing)} not found in {source_dir} "
                         f"(available: {', '.join(available) or 'none'})")
    if not subjects:
        raise InputError(f"no participant in {source_dir}: is it an fMRIPrep output folder?")

    return source_dir, [collect_participant(layout, subject, options.task_id, options.space,
                                            options.session_label, options.bids_filters)
                        for subject in subjects]


def _import_graph_modules():
    """Import the modules that build and run the graph (the first steps would wait for them)."""
    for module in ("tmstarget.execution", "tmstarget.participant"):
        importlib.import_module(module)


def _written_since(inputs, options, output_dir, since):
    """Whether the participant's derivatives were written by this run (its config is the last file)."""
    from tmstarget.derivatives import participant_paths

    config = participant_paths(output_dir, inputs.subject, inputs.space, options.task_id,
                               options.seed_name)["config"]
    return config.is_file() and config.stat().st_mtime >= since - 1


def _group_participants(output_dir):
    """The participants (``sub-<label>``) in the group table of ``output_dir``; empty without one."""
    import csv

    table = Path(output_dir) / "group" / "group_targets.tsv"
    try:
        with open(table, newline="") as f:
            return {row["participant_id"] for row in csv.DictReader(f, delimiter="\t")}
    except (OSError, KeyError):
        return set()


def _planted_targets(source_dir, subject):
    """{space: planted target (world mm)} of the demo dataset, when ``source_dir`` is one.

    ``tmstarget-synth`` writes where it planted the target (:data:`tmstarget.synthetic.TRUTH_FILE`);
    any other dataset has no such file and gets no such line.
    """
    from tmstarget.synthetic import TRUTH_FILE

    path = Path(source_dir) / TRUTH_FILE
    if not path.is_file():
        return {}
    try:
        truth = json.loads(path.read_text())
        planted = {space: truth["target_mni"] for space in ("MNI152NLin2009cAsym", "MNI152NLin6Asym")}
        if subject in truth.get("participants", {}):
            planted["T1w"] = truth["participants"][subject]["target_t1w"]
        return planted
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _report(inputs, options, output_dir, seconds, source_dir=None):
    """The participant's target on the console, and every warning of its steps, once each."""
    import numpy as np
    import pandas as pd

    from tmstarget.derivatives import participant_paths, sidecar, targets_path

    paths = participant_paths(output_dir, inputs.subject, inputs.space, options.task_id,
                              options.seed_name)
    targets_sidecar = json.loads(sidecar(paths["targets"]).read_text())
    for warning in targets_sidecar.get("QualityWarnings", []):
        LOGGER.warning("sub-%s: %s", inputs.subject, warning)

    print(f"sub-{inputs.subject}: connectivity target, Fisher z and scalp point [{seconds:.0f} s]")
    planted = _planted_targets(source_dir, inputs.subject) if source_dir else {}
    for space in (inputs.space, inputs.other_space):
        targets_file = targets_path(output_dir, inputs.subject, space) if space else None
        if targets_file is None or not targets_file.is_file():
            continue
        row = pd.read_csv(targets_file, sep="\t").set_index("name").loc["connectivity"]
        scalp = (f"; scalp ({row.scalp_x:.1f}, {row.scalp_y:.1f}, {row.scalp_z:.1f}) mm, "
                 f"{row.scalp_distance_mm:.1f} mm above it" if "scalp_x" in row else "")
        print(f"  {space}: ({row.x:.1f}, {row.y:.1f}, {row.z:.1f}) mm, z {row.seed_correlation_z:.2f}"
              f"{scalp}\n    {targets_file}")
        if space in planted:
            where = np.asarray(planted[space], dtype=float)
            print(f"    demo: planted at ({where[0]:.1f}, {where[1]:.1f}, {where[2]:.1f}) mm, found "
                  f"{np.linalg.norm(np.array([row.x, row.y, row.z]) - where):.1f} mm from it")
    reliability = targets_sidecar.get("Reliability", {})
    if reliability.get("Grade") is None and reliability.get("GradeReason"):
        print(f"  reliability: not graded ({reliability['GradeReason']})")
    elif "Grade" in reliability:
        print(f"  reliability: {reliability['Grade']} ({reliability['GradeReason']})"
              + (f"; cause: {reliability['Cause']}" if reliability.get("Cause") else ""))
    report = Path(output_dir) / f"sub-{inputs.subject}.html"
    if report.is_file() and report.stat().st_mtime >= time.time() - seconds - 1:
        print(f"  report: {report}")


def run(argv=None):
    """The ``tmstarget`` command: :func:`main`, then a quick exit.

    At exit the interpreter collects garbage over every object still alive (pybids' index,
    nilearn, scipy, matplotlib, Nipype's graph): 1.2 s measured after a participant, when every
    output is written and closed. ``gc.freeze()`` puts them out of the collector's reach; the
    operating system frees the memory. (Not in :func:`main`, which tests and pipelines call
    in-process and which must leave their collector alone.)
    """
    status = main(argv)
    gc.freeze()
    return status


if __name__ == "__main__":
    sys.exit(run())
