"""Find a participant's fMRIPrep outputs with pybids.

fMRIPrep trees vary: sessions or none, several runs, extra entities (``rec-refaced``, ``acq-``),
anatomy at the participant level or inside a session folder, older confounds names. The queries
below ask only for the entities that matter and keep every other entity of a BOLD run when looking
for its companions (mask, confounds), so companions always belong to their run.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

# the labels' check lives with the options (the command line checks them before reading anything)
from tmstarget.config import clean_label  # noqa: F401  (tmstarget.collect.clean_label)
from tmstarget.workflows.defaults import MNI_SPACES, REGIONS_SPACE, SPACES  # noqa: F401  (tmstarget.collect.SPACES)

# pybids (about 0.5 s to import) is imported by the functions that query it: the command line
# indexes in a forked process (tmstarget.cli), and its main process only reads the results.


class InputError(Exception):
    """Input data that cannot be processed; the message names the file and the fix."""


@dataclass
class Run:
    """One preprocessed BOLD run and its companions."""

    bold: str
    mask: str
    confounds: str
    t_r: float
    entities: dict = field(default_factory=dict)


@dataclass
class ParticipantInputs:
    """Everything tmstarget reads for one participant, in one space."""

    subject: str
    space: str
    runs: list[Run]
    t1w: str | None
    gm: str
    #: maps points of the BOLD space into MNI152NLin2009cAsym (T1w space only)
    to_mni_xfm: str | None = None
    #: maps MNI152NLin2009cAsym points into the BOLD space (T1w space only)
    from_mni_xfm: str | None = None
    #: the participant's own head T1w (fMRIPrep desc-preproc_T1w without space): navigation exports refer to it
    native_t1w: str | None = None
    #: the space targets are also reported in (T1w for MNI computations, and the reverse)
    other_space: str | None = None
    #: maps points of the BOLD space into ``other_space``
    to_other_xfm: str | None = None
    #: maps points of ``other_space`` into the BOLD space
    from_other_xfm: str | None = None
    #: grey matter of the participant's own T1w (label-GM_probseg or dseg without space)
    native_gm: str | None = None
    source_version: str | None = None

    @property
    def native_head(self) -> bool:
        """Whether the navigation plan can be made on the participant's own head in an MNI
        computation: the native T1w, its grey matter and both T1w<->space transforms."""
        return bool(self.space != "T1w" and self.native_t1w and self.native_gm
                    and self.other_space == "T1w" and self.to_other_xfm and self.from_other_xfm)


def find_fmriprep_dir(bids_dir, derivatives=None):
    """The fMRIPrep derivatives folder for ``bids_dir`` (itself, ``--derivatives`` or ``derivatives/fmriprep``)."""
    bids_dir = Path(bids_dir)
    if derivatives and "fmriprep" in derivatives:
        return Path(derivatives["fmriprep"])
    description = bids_dir / "dataset_description.json"
    if not description.is_file():
        raise InputError(f"{bids_dir} has no dataset_description.json: give a BIDS dataset or the "
                         "fMRIPrep derivatives folder")
    try:
        dataset_type = json.loads(description.read_text()).get("DatasetType", "raw")
    except json.JSONDecodeError as err:
        raise InputError(f"{description} is not valid JSON ({err.msg}): repair it") from None
    if dataset_type == "derivative":
        return bids_dir
    candidate = bids_dir / "derivatives" / "fmriprep"
    if candidate.is_dir():
        return candidate
    raise InputError(f"{bids_dir} is a raw BIDS dataset without derivatives/fmriprep: point to the "
                     "fMRIPrep outputs with --derivatives fmriprep=PATH")


#: Never read by tmstarget, so never indexed (pybids matches these against the path below the
#: dataset root, with a leading ``/``): fMRIPrep's figures and logs, FreeSurfer outputs, surfaces
#: (GIFTI) and CIFTI files, HTML reports and images, plus pybids' own default ignores.
NOT_INDEXED = tuple(re.compile(pattern) for pattern in (
    r"^/(?:code|models|sourcedata|stimuli|logs)(?:/|$)",
    r"^/sub-[^/]+/(?:ses-[^/]+/)?(?:figures|log)(?:/|$)",
    r"\.(?:surf|shape|func|label)\.gii$",
    r"\.d(?:tseries|scalar|label)\.nii$",
    r"\.(?:html|svg|png|gif)$",
    r"/\.",
))

#: pybids' entities that live in folder names: their patterns are searched in the whole absolute
#: path, so a dataset below a folder named like a datatype (``/tmp/perf/...``) or a participant
#: would get that folder's value. They are anchored to the dataset root here.
_PATH_ENTITY_START = ("[/\\\\]+", "[_/\\\\]+")

#: The database file pybids keeps in a ``database_path`` folder.
DATABASE_FILE = "layout_index.sqlite"


def _anchored_config(root):
    """pybids' ``bids`` + ``derivatives`` configuration with entity patterns searched below ``root``.

    pybids matches each entity's pattern anywhere in a file's absolute path, so the folders above
    the dataset count: under ``/tmp/perf/fmriprep`` every file has datatype ``perf`` and no BOLD is
    found. Each pattern that starts at a separator is prefixed with the escaped root, so only the
    path below the dataset root is searched (from its first separator on: the original pattern
    starts there); the entities and their other patterns are pybids'.
    """
    from bids.config import get_option

    entities = []
    for name in ("bids", "derivatives"):
        config = json.loads(Path(get_option("config_paths")[name]).read_text())
        for entity in config["entities"]:
            entity = dict(entity)
            if entity.get("pattern", "").startswith(_PATH_ENTITY_START):
                entity["pattern"] = "^" + re.escape(str(root)) + "(?=[/\\\\]).*?" + entity["pattern"]
            entities.append(entity)
    return {"name": "tmstarget_fmriprep", "entities": entities}


def _selected(root, participant_label):
    """A pattern ignoring every ``sub-*`` folder and file at the root but the selected participants'."""
    missing = [label for label in participant_label if not (root / f"sub-{label}").is_dir()]
    if missing:
        available = sorted(p.name[4:] for p in root.glob("sub-*") if p.is_dir())
        raise InputError(f"participant(s) {', '.join(missing)} not found in {root} (available: "
                         f"{', '.join(available) or 'none'})")
    labels = "|".join(re.escape(label) for label in participant_label)
    return re.compile(rf"^/sub-(?!(?:{labels})(?:/|$))")


def load_layout(fmriprep_dir, participant_label=None, database_dir=None):
    """Index an fMRIPrep derivatives folder: only what tmstarget may read (no validation).

    Parameters
    ----------
    fmriprep_dir : path
        The fMRIPrep derivatives folder (its ``dataset_description.json`` at the top).
    participant_label : list of str, optional
        Index only these participants' folders (labels without ``sub-``): a participant of a
        dataset of 1,000 costs what it costs alone. All participants when empty.
    database_dir : path, optional
        A pybids database folder (fMRIPrep's ``--bids-database-dir``), shared by jobs over one
        dataset: read when it holds an index of ``fmriprep_dir``, else built once over all
        participants (never ``participant_label`` only, so that any job can reuse it) and moved
        into place atomically (concurrent builders: the first one wins, the others use it).

    Returns
    -------
    bids.BIDSLayout
    """
    from bids import BIDSLayout
    from bids.layout.index import BIDSLayoutIndexer

    root = Path(fmriprep_dir).absolute()
    if not (root / "dataset_description.json").is_file():
        raise InputError(f"{root} has no dataset_description.json: is it fMRIPrep's output folder?")
    ignore = list(NOT_INDEXED)
    if participant_label:
        selected = _selected(root, participant_label)
        if database_dir is None:
            ignore.append(selected)

    def index(database_path=None):
        return BIDSLayout(str(root), validate=False, config=[_anchored_config(root)],
                          indexer=BIDSLayoutIndexer(validate=False, ignore=ignore),
                          database_path=database_path)

    if database_dir is None:
        return index()
    database_dir = Path(database_dir).absolute()
    if not (database_dir / DATABASE_FILE).is_file():
        if root in database_dir.parents:
            raise InputError(f"--bids-database-dir {database_dir} is inside the fMRIPrep folder {root}, "
                             "which is never written to: choose a folder outside it")
        _build_database(database_dir, index)
    layout = BIDSLayout(database_path=str(database_dir))
    if Path(layout.root).absolute() != root:
        raise InputError(f"--bids-database-dir {database_dir} indexes {layout.root}, not {root}: give "
                         "the database of this dataset, or a new folder to build one")
    return layout


def _build_database(database_dir, index):
    """Index into a temporary folder beside ``database_dir``, then rename it into place."""
    import shutil
    import tempfile

    database_dir.parent.mkdir(parents=True, exist_ok=True)
    if database_dir.is_dir() and any(database_dir.iterdir()):
        raise InputError(f"--bids-database-dir {database_dir} is a folder without a pybids index "
                         f"({DATABASE_FILE}): give an empty or new folder, or an index built by "
                         "tmstarget")
    building = Path(tempfile.mkdtemp(prefix=f".{database_dir.name}-", dir=database_dir.parent))
    try:
        index(str(building))
        try:
            if database_dir.is_dir():
                database_dir.rmdir()  # empty (checked above); a concurrent builder may fill it
            building.rename(database_dir)
        except OSError:
            if not (database_dir / DATABASE_FILE).is_file():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)


def build_database_main(argv=None):
    """``python -m tmstarget.collect FMRIPREP_DIR DATABASE_DIR``: build the shared index once.

    The first step of the SLURM recipe (``scripts/slurm/index.sbatch``); the array tasks then read
    it with ``--bids-database-dir``.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m tmstarget.collect",
                                     description=build_database_main.__doc__.splitlines()[0])
    parser.add_argument("fmriprep_dir", type=Path)
    parser.add_argument("database_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        layout = load_layout(args.fmriprep_dir, database_dir=args.database_dir)
    except InputError as err:
        print(f"tmstarget: error: {err}", file=sys.stderr)
        return 1
    print(f"{args.database_dir}: index of {layout.root} ({len(layout.get_subjects())} participants)")
    return 0


def source_version(layout):
    """The version of the pipeline that made the derivatives, from its dataset_description.json."""
    description = layout.get_dataset_description()
    generated = description.get("GeneratedBy") or [{}]
    return generated[0].get("Version") or description.get("PipelineDescription", {}).get("Version")


def _one(files, what, fix):
    if not files:
        raise InputError(f"no {what}: {fix}")
    return files[0].path


def _space_query(space):
    from bids.layout import Query

    return Query.NONE if space == "T1w" else space


def _anat(layout, subject, space, filters, **entities):
    """Anatomical files of a participant in ``space``, participant level before session level."""
    query = dict(subject=subject, datatype="anat", space=_space_query(space),
                 extension=[".nii.gz", ".nii"], **entities)
    query.update(filters)
    files = layout.get(**query)
    return sorted(files, key=lambda f: ("session" in f.entities, f.path))


def available_bold(layout, subject):
    """What preprocessed BOLD ``subject`` has, for a message: its tasks, spaces (with their
    resolutions) and sessions, e.g. ``found for sub-01: task rest; spaces MNI152NLin2009cAsym
    (res-2), T1w; sessions 1, 2``."""
    files = layout.get(subject=subject, desc="preproc", suffix="bold", datatype="func",
                       extension=[".nii.gz", ".nii"])
    if not files:
        return f"sub-{subject} has no desc-preproc_bold at all"
    entities = [f.get_entities() for f in files]

    def values(name):
        return sorted({str(e[name]) for e in entities if name in e})

    spaces = []
    for space in values("space"):
        resolutions = sorted({str(e["res"]) for e in entities if e.get("space") == space and "res" in e})
        spaces.append(space + (f" (res-{', res-'.join(resolutions)})" if resolutions else ""))
    tasks, sessions = values("task"), values("session")
    return (f"found for sub-{subject}: task{'s' if len(tasks) > 1 else ''} {', '.join(tasks) or 'none'}; "
            f"space{'s' if len(spaces) > 1 else ''} {', '.join(spaces) or 'none'}; "
            + (f"session{'s' if len(sessions) > 1 else ''} {', '.join(sessions)}" if sessions
               else "no sessions"))


def collect_participant(layout, subject, task="rest", space="MNI152NLin2009cAsym", sessions=None,
                        filters=None):
    """Collect one participant's inputs.

    Parameters
    ----------
    layout : bids.BIDSLayout
        Index of the fMRIPrep derivatives.
    subject : str
        Participant label without ``sub-``.
    task : str
        Task label (``rest``).
    space : str
        One of :data:`SPACES`.
    sessions : list of str or None
        Session labels to use; all when empty.
    filters : dict or None
        pybids filters by file kind (``bold``, ``t1w``), as in fMRIPrep's ``--bids-filter-file``.

    Returns
    -------
    ParticipantInputs
    """
    from bids.layout import Query

    filters = filters or {}
    check_filters(layout, filters)
    bold_query = dict(subject=subject, task=task, space=space, desc="preproc", suffix="bold",
                      datatype="func", extension=[".nii.gz", ".nii"])
    if sessions:
        bold_query["session"] = list(sessions)
    bold_query.update(filters.get("bold", {}))
    bold_files = layout.get(**bold_query)
    if not bold_files:
        sessions_text = f" session(s) {', '.join(sessions)}" if sessions else ""
        raise InputError(f"no preprocessed BOLD for sub-{subject}{sessions_text} task '{task}' in "
                         f"space {space} under {layout.root} ({available_bold(layout, subject)}): "
                         f"check --task-id, --space and --session-label, or run fMRIPrep with "
                         f"--output-spaces {space}")

    runs = []
    for bold in bold_files:
        entities = {k: v for k, v in bold.get_entities().items()
                    if k not in ("desc", "suffix", "extension", "datatype")}
        mask = layout.get(**{**entities, "desc": "brain", "suffix": "mask",
                             "extension": [".nii.gz", ".nii"]})
        confounds_entities = {k: v for k, v in entities.items() if k not in ("space", "res", "den")}
        confounds = layout.get(**confounds_entities, desc="confounds",
                               suffix=["timeseries", "regressors"], extension=".tsv",
                               space=Query.NONE)
        t_r = _repetition_time(bold.path, bold.get_metadata())
        runs.append(Run(
            bold=bold.path,
            mask=_one(mask, f"brain mask for {bold.filename}",
                      "fMRIPrep writes desc-brain_mask beside every BOLD; restore it"),
            confounds=_one(confounds, f"confounds table for {bold.filename}",
                           "fMRIPrep writes desc-confounds_timeseries.tsv beside every run; restore it"),
            t_r=t_r,
            # plain values (pybids' run numbers are its own int type): the inputs are unpickled
            # in the command line's main process, which does not import pybids
            entities={k: int(entities[k]) if isinstance(entities[k], int) else str(entities[k])
                      for k in ("session", "run", "acquisition", "reconstruction", "direction",
                                "echo") if k in entities},
        ))

    t1w_files = _anat(layout, subject, space, filters.get("t1w", {}), desc="preproc", suffix="T1w")
    native_t1w = (t1w_files if space == "T1w" else
                  _anat(layout, subject, "T1w", filters.get("t1w", {}), desc="preproc", suffix="T1w"))
    def grey_matter(in_space):
        return (_anat(layout, subject, in_space, {}, label="GM", suffix="probseg")
                or _anat(layout, subject, in_space, {}, suffix="dseg", label=Query.NONE))

    gm_files = grey_matter(space)
    native_gm = gm_files if space == "T1w" else grey_matter("T1w")
    inputs = ParticipantInputs(
        subject=subject, space=space, runs=runs,
        t1w=t1w_files[0].path if t1w_files else None,
        native_t1w=native_t1w[0].path if native_t1w else None,
        native_gm=native_gm[0].path if native_gm else None,
        gm=_one(gm_files, f"grey-matter map (label-GM_probseg or dseg) for sub-{subject} in space {space}",
                f"run fMRIPrep with --output-spaces {space} (anatomical outputs are needed)"),
        source_version=source_version(layout),
    )
    def xfm(source, target):
        """fMRIPrep's ``from-<source>_to-<target>`` image transform: it maps <target> points to <source>."""
        files = layout.get(subject=subject, suffix="xfm", mode="image", extension=".h5",
                           **{"from": source, "to": target})
        return sorted(files, key=lambda f: ("session" in f.entities, f.path))

    if space == "T1w":
        # The seed and search region are placed in REGIONS_SPACE: the transforms are needed.
        fix = (f"run fMRIPrep with --output-spaces {REGIONS_SPACE} so it writes the T1w<->MNI "
               "transforms")
        inputs.to_mni_xfm = _one(xfm(REGIONS_SPACE, "T1w"),
                                 f"transform from {REGIONS_SPACE} to T1w for sub-{subject}", fix)
        inputs.from_mni_xfm = _one(xfm("T1w", REGIONS_SPACE),
                                   f"transform from T1w to {REGIONS_SPACE} for sub-{subject}", fix)
        inputs.other_space, inputs.to_other_xfm = REGIONS_SPACE, inputs.to_mni_xfm
        inputs.from_other_xfm = inputs.from_mni_xfm
    else:
        # Optional: without them, targets are reported in the computation space only (no T1w
        # table), or planned on the MNI-space head (no transform back).
        to_t1w, from_t1w = xfm("T1w", space), xfm(space, "T1w")
        if to_t1w:
            inputs.other_space, inputs.to_other_xfm = "T1w", to_t1w[0].path
            inputs.from_other_xfm = from_t1w[0].path if from_t1w else None
    return inputs


# ------------------------------------------------------------------------------------------------
# Checks that need only headers, sidecars and tables: run before the graph, so that bad input is
# refused before anything is computed or written.
# ------------------------------------------------------------------------------------------------
#: Relative difference between the sidecar's and the header's repetition time tolerated (rounding).
TR_TOLERANCE = 0.01
#: Voxel-centre distance (mm) under which two grids are the same grid (float32 header rounding).
GRID_TOLERANCE_MM = 0.01


def check_filters(layout, filters):
    """Refuse ``--bids-filter-file`` entities pybids does not know (a typo in the file, e.g. ``acqusition``)."""
    if not filters:
        return
    # The entity names of the layout's configuration: asking the index for its entities would
    # read every tag of every file (seconds for a shared database of a large dataset).
    known = {name for config in layout.config.values() for name in config.entities}
    for kind, query in filters.items():
        if not isinstance(query, dict):
            raise InputError(f"--bids-filter-file: the value of {kind!r} must be a JSON object of "
                             'entities, e.g. {"acquisition": "mb8"}')
        unknown = sorted(set(query) - known)
        if unknown:
            raise InputError(f"--bids-filter-file: unknown BIDS entit{'y' if len(unknown) == 1 else 'ies'} "
                             f"{', '.join(unknown)} under {kind!r}: use pybids entity names such as "
                             "acquisition, reconstruction, run, session, res")


def _repetition_time(bold_file, metadata):
    """The run's ``RepetitionTime`` (s) from its sidecar, refused when missing, not a positive
    number, or contradicted by the NIfTI header (both are written by fMRIPrep and must agree)."""
    if "RepetitionTime" not in metadata:
        raise InputError(f"{bold_file} has no RepetitionTime in its JSON sidecar: restore the "
                         "sidecar fMRIPrep wrote")
    value = metadata["RepetitionTime"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise InputError(f"{bold_file}: RepetitionTime {value!r} in its JSON sidecar is not a positive "
                         "number of seconds: restore the sidecar fMRIPrep wrote")
    header = read_image(bold_file, "BOLD").header
    units = header.get_xyzt_units()[1]
    scale = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}.get(units)
    header_tr = float(header["pixdim"][4]) * scale if scale else 0.0
    # Only a header that states its time unit is evidence; 0 or "unknown" says nothing.
    if header_tr > 0 and abs(header_tr - value) > TR_TOLERANCE * value:
        raise InputError(f"{bold_file}: RepetitionTime {value:g} s in the JSON sidecar contradicts "
                         f"{header_tr:g} s in the NIfTI header: find out which is right and correct "
                         "the other (the sidecar is the one tmstarget uses)")
    return float(value)


def read_image(path, what):
    """A NIfTI header (data not read), or an :class:`InputError` naming the file and the fix."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise InputError(f"{what} {path} is a symbolic link to missing content (an un-fetched "
                         "DataLad/git-annex file?): run `datalad get` on it or copy the real file")
    try:
        return nb.load(path)
    except Exception as err:  # nibabel raises many types for a damaged file  # noqa: BLE001
        raise InputError(f"{what} {path} cannot be read as NIfTI ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'no detail'}): the file is "
                         "truncated or corrupt; copy it again from the fMRIPrep outputs") from None


def _grid_mismatch(img, reference):
    """Why ``img`` is not on the voxel grid of ``reference`` (None when it is)."""
    if img.shape[:3] != reference.shape[:3]:
        return f"shape {img.shape[:3]} instead of {reference.shape[:3]}"
    corners = np.array([[0, 0, 0], np.subtract(reference.shape[:3], 1)])
    moved = np.abs(nb.affines.apply_affine(img.affine, corners)
                   - nb.affines.apply_affine(reference.affine, corners)).max()
    if moved > GRID_TOLERANCE_MM:
        return f"an affine whose voxels lie up to {moved:.1f} mm away"
    return None


def _outside_field_of_view(img, points):
    """Share of world ``points`` (mm) outside the field of view of ``img``."""
    ijk = nb.affines.apply_affine(np.linalg.inv(img.affine), points)
    inside = np.all((ijk > -0.5) & (ijk < np.asarray(img.shape[:3]) - 0.5), axis=1)
    return 1.0 - inside.mean()


def _data_3d(img, path, what, fix):
    if len(img.shape) == 3 or (len(img.shape) == 4 and img.shape[3] == 1):
        return
    raise InputError(f"{what} {path} has shape {img.shape}, not a 3-D image: {fix}")


def check_run(run, options):
    """Refuse a run whose headers, sidecar or confounds cannot give a trustworthy target.

    Checks, each answered by an :class:`InputError` naming the file and the fix: the BOLD is a
    readable 4-D image with at least 2 volumes; the band-pass fits below its Nyquist frequency; its
    brain mask is readable, not empty and on the BOLD's grid; its confounds table is readable, has
    one row per BOLD volume, holds every column the ``--confounds`` strategy (and
    ``--fd-threshold``) needs, with finite values.

    Parameters
    ----------
    run : Run
    options : tmstarget.config.Options
    """
    from tmstarget.workflows.confounds import confound_regressors

    bold = read_image(run.bold, "BOLD")
    if len(bold.shape) != 4 or bold.shape[3] < 2:
        raise InputError(f"BOLD {run.bold} has shape {bold.shape}: a 4-D time series is needed; give "
                         "fMRIPrep's desc-preproc_bold, not a reference volume")
    n_volumes = bold.shape[3]
    nyquist = 0.5 / run.t_r
    if options.low_pass and options.low_pass >= nyquist:
        raise InputError(f"--low-pass {options.low_pass:g} Hz is not below the Nyquist frequency "
                         f"{nyquist:g} Hz of {run.bold} (TR {run.t_r:g} s): lower --low-pass")

    mask = read_image(run.mask, "brain mask")
    mismatch = _grid_mismatch(mask, bold)
    if mismatch:
        raise InputError(f"brain mask {run.mask} is not on the grid of its BOLD {run.bold} "
                         f"({mismatch}): use the desc-brain_mask fMRIPrep wrote beside this run")
    if not np.any(np.asanyarray(mask.dataobj)):
        raise InputError(f"brain mask {run.mask} is empty: use the desc-brain_mask fMRIPrep wrote "
                         "beside this run")

    confounds_file = Path(run.confounds)
    try:
        table = pd.read_csv(confounds_file, sep="\t", na_values="n/a")
    except (OSError, ValueError) as err:  # missing, unreadable, empty, not a TSV
        raise InputError(f"confounds table {confounds_file} cannot be read ({type(err).__name__}: "
                         f"{str(err).splitlines()[0]}): restore the desc-confounds_timeseries.tsv "
                         "fMRIPrep wrote") from None
    if len(table) != n_volumes:
        raise InputError(f"confounds table {confounds_file} has {len(table)} rows but its BOLD "
                         f"{Path(run.bold).name} has {n_volumes} volumes: the table belongs to another "
                         "run or was cut; restore the one fMRIPrep wrote for this run")
    try:
        regressors, _, names = confound_regressors(run.bold, options.confounds, options.fd_threshold)
    except (ValueError, KeyError) as err:  # nilearn: ValueError listing them, or a KeyError
        missing = str(err).split("missing:", 1)[-1].split(". You may")[0].strip()
        raise InputError(f"confounds table {confounds_file} lacks what --confounds {options.confounds}"
                         f"{' with --fd-threshold' if options.fd_threshold is not None else ''} needs "
                         f"({missing}): choose another --confounds strategy or rerun fMRIPrep") from None
    # nilearn fills the first row of derivative columns (n/a by definition); anything else that is
    # not finite would poison the regression of every voxel.
    checked = {}
    if regressors is not None:
        checked.update(zip(names, np.asarray(regressors, dtype=float).T))
    if options.fd_threshold is not None and "framewise_displacement" in table:
        checked["framewise_displacement"] = table["framewise_displacement"].to_numpy(float)[1:]
    bad = [name for name, values in checked.items() if not np.all(np.isfinite(values))]
    if bad:
        raise InputError(f"confounds table {confounds_file} has NaN or infinite values in "
                         f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}: restore the table "
                         "fMRIPrep wrote, or choose a --confounds strategy without these columns")


def check_participant(inputs, options):
    """Refuse, before anything is computed or written, inputs that cannot give a trustworthy target.

    Every run is checked by :func:`check_run`; the runs must share one grid (the maps are averaged
    voxel by voxel); the grey-matter map and the head T1w must be readable 3-D images covering the
    brain of the BOLD (a T1w or GM map of another space or person would put the target elsewhere).
    """
    for run in inputs.runs:
        check_run(run, options)
    reference = read_image(inputs.runs[0].mask, "brain mask")
    for run in inputs.runs[1:]:
        mismatch = _grid_mismatch(read_image(run.mask, "brain mask"), reference)
        if mismatch:
            raise InputError(f"runs on different grids: {Path(run.bold).name} has {mismatch} of "
                             f"{Path(inputs.runs[0].bold).name} (several --output-spaces resolutions?): "
                             'select one with --bids-filter-file, e.g. {"bold": {"res": "2"}}')
    brain = nb.affines.apply_affine(reference.affine, np.argwhere(np.asanyarray(reference.dataobj) > 0))
    anatomy = [("grey-matter map", inputs.gm)]
    if inputs.t1w:
        anatomy.append(("head T1w", inputs.t1w))
    for what, path in anatomy:
        img = read_image(path, what)
        _data_3d(img, path, what, "give fMRIPrep's 3-D anatomical output")
        outside = _outside_field_of_view(img, brain)
        if outside > 0.05:
            raise InputError(f"{what} {path} does not cover the brain of {Path(inputs.runs[0].bold).name} "
                             f"({outside:.0%} of its brain voxels lie outside the image): it is in "
                             f"another space than {inputs.space} or of another participant; use the "
                             f"one fMRIPrep wrote for sub-{inputs.subject} in {inputs.space}")
    if inputs.native_t1w and inputs.native_t1w != inputs.t1w:
        read_image(inputs.native_t1w, "head T1w")
    if inputs.native_head:  # the plan is made on the native head: its grey matter is needed too
        _data_3d(read_image(inputs.native_gm, "grey-matter map"), inputs.native_gm, "grey-matter map",
                 "give fMRIPrep's 3-D anatomical output")


if __name__ == "__main__":
    raise SystemExit(build_database_main())
