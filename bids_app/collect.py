"""Find a participant's fMRIPrep outputs with pybids.

fMRIPrep trees vary: sessions or none, several runs, extra entities (``rec-refaced``, ``acq-``),
anatomy at the participant level or inside a session folder, older confounds names. The queries
below ask only for the entities that matter and keep every other entity of a BOLD run when looking
for its companions (mask, confounds), so companions always belong to their run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from bids import BIDSLayout
from bids.layout import Query

MNI_SPACES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")
SPACES = MNI_SPACES + ("T1w",)
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9]+$")


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
    source_version: str | None = None


def clean_label(label, what="participant"):
    """``sub-01`` or ``01`` -> ``01``; anything that is not a plain BIDS label is refused."""
    prefix = {"participant": "sub-", "session": "ses-"}[what]
    value = label[len(prefix):] if label.startswith(prefix) else label
    if not LABEL_PATTERN.match(value):
        raise ValueError(f"invalid {what} label {label!r}: BIDS labels are letters and digits only")
    return value


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


def load_layout(fmriprep_dir):
    """Index an fMRIPrep derivatives folder (no validation, no database written)."""
    fmriprep_dir = Path(fmriprep_dir)
    if not (fmriprep_dir / "dataset_description.json").is_file():
        raise InputError(f"{fmriprep_dir} has no dataset_description.json: is it fMRIPrep's output folder?")
    return BIDSLayout(str(fmriprep_dir), validate=False, config=["bids", "derivatives"])


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
    return Query.NONE if space == "T1w" else space


def _anat(layout, subject, space, filters, **entities):
    """Anatomical files of a participant in ``space``, participant level before session level."""
    query = dict(subject=subject, datatype="anat", space=_space_query(space),
                 extension=[".nii.gz", ".nii"], **entities)
    query.update(filters)
    files = layout.get(**query)
    return sorted(files, key=lambda f: ("session" in f.entities, f.path))


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
    filters = filters or {}
    bold_query = dict(subject=subject, task=task, space=space, desc="preproc", suffix="bold",
                      datatype="func", extension=[".nii.gz", ".nii"])
    if sessions:
        bold_query["session"] = list(sessions)
    bold_query.update(filters.get("bold", {}))
    bold_files = layout.get(**bold_query)
    if not bold_files:
        sessions_text = f" session(s) {', '.join(sessions)}" if sessions else ""
        raise InputError(f"no preprocessed BOLD for sub-{subject}{sessions_text} task '{task}' in "
                         f"space {space} under {layout.root}: check --task-id and --space, or run "
                         f"fMRIPrep with --output-spaces {space}")

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
        metadata = bold.get_metadata()
        if "RepetitionTime" not in metadata:
            raise InputError(f"{bold.path} has no RepetitionTime in its JSON sidecar: restore the "
                             "sidecar fMRIPrep wrote")
        runs.append(Run(
            bold=bold.path,
            mask=_one(mask, f"brain mask for {bold.filename}",
                      "fMRIPrep writes desc-brain_mask beside every BOLD; restore it"),
            confounds=_one(confounds, f"confounds table for {bold.filename}",
                           "fMRIPrep writes desc-confounds_timeseries.tsv beside every run; restore it"),
            t_r=float(metadata["RepetitionTime"]),
            entities={k: entities[k] for k in ("session", "run", "acquisition", "reconstruction",
                                               "direction", "echo") if k in entities},
        ))

    t1w_files = _anat(layout, subject, space, filters.get("t1w", {}), desc="preproc", suffix="T1w")
    native_t1w = (t1w_files if space == "T1w" else
                  _anat(layout, subject, "T1w", filters.get("t1w", {}), desc="preproc", suffix="T1w"))
    gm_files = (_anat(layout, subject, space, {}, label="GM", suffix="probseg")
                or _anat(layout, subject, space, {}, suffix="dseg", label=Query.NONE))
    inputs = ParticipantInputs(
        subject=subject, space=space, runs=runs,
        t1w=t1w_files[0].path if t1w_files else None,
        native_t1w=native_t1w[0].path if native_t1w else None,
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
        # The seed and search region are defined in MNI152NLin2009cAsym: the transforms are needed.
        fix = ("run fMRIPrep with --output-spaces MNI152NLin2009cAsym so it writes the T1w<->MNI "
               "transforms")
        inputs.to_mni_xfm = _one(xfm("MNI152NLin2009cAsym", "T1w"),
                                 f"transform from MNI152NLin2009cAsym to T1w for sub-{subject}", fix)
        inputs.from_mni_xfm = _one(xfm("T1w", "MNI152NLin2009cAsym"),
                                   f"transform from T1w to MNI152NLin2009cAsym for sub-{subject}", fix)
        inputs.other_space, inputs.to_other_xfm = "MNI152NLin2009cAsym", inputs.to_mni_xfm
    else:
        # Optional: without it, targets are reported in the computation space only.
        to_t1w = xfm("T1w", space)
        if to_t1w:
            inputs.other_space, inputs.to_other_xfm = "T1w", to_t1w[0].path
    return inputs
