"""An fMRIPrep derivatives tree of imaging-core size: one real participant among many of tiny files.

Used by ``benchmarks/run.py`` (the indexing overhead of a 1,000-participant dataset) and by
``tests/test_collect_scale.py``. Every filler participant has what fMRIPrep 23 writes for two
sessions of one resting-state run (66 files): participant-level anatomy in three spaces
(``T1w``, ``MNI152NLin2009cAsym``, ``MNI152NLin6Asym`` at ``res-2``), transforms, FreeSurfer
surfaces (GIFTI), per session a BOLD run in two spaces with its mask, reference, confounds and
sidecars, fsaverage and CIFTI outputs; the figures and the HTML report. The files are empty
(JSON sidecars hold ``{}``; pybids reads them), so the tree costs the file system's metadata only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

SPACES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym_res-2")
SESSIONS = ("1", "2")


def filler_files(label):
    """Relative paths of the files fMRIPrep writes for participant ``label`` (66)."""
    sub = f"sub-{label}"
    files = [f"{sub}.html"]
    anat = f"{sub}/anat/{sub}"
    for space in ("",) + tuple(f"_space-{s}" for s in SPACES):
        files += [f"{anat}{space}_desc-preproc_T1w.nii.gz", f"{anat}{space}_desc-preproc_T1w.json",
                  f"{anat}{space}_desc-brain_mask.nii.gz", f"{anat}{space}_dseg.nii.gz"]
        files += [f"{anat}{space}_label-{t}_probseg.nii.gz" for t in ("GM", "WM", "CSF")]
    for space in ("MNI152NLin2009cAsym", "MNI152NLin6Asym"):
        files += [f"{anat}_from-T1w_to-{space}_mode-image_xfm.h5",
                  f"{anat}_from-{space}_to-T1w_mode-image_xfm.h5"]
    files += [f"{anat}_from-fsnative_to-T1w_mode-image_xfm.txt"]
    files += [f"{anat}_hemi-{h}_{s}.surf.gii" for h in "LR" for s in ("white", "pial", "midthickness")]
    files += [f"{anat}_hemi-{h}_{s}.shape.gii" for h in "LR" for s in ("thickness", "sulc")]
    for session in SESSIONS:
        func = f"{sub}/ses-{session}/func/{sub}_ses-{session}_task-rest_run-1"
        for space in SPACES:
            files += [f"{func}_space-{space}_desc-preproc_bold.nii.gz",
                      f"{func}_space-{space}_desc-preproc_bold.json",
                      f"{func}_space-{space}_desc-brain_mask.nii.gz",
                      f"{func}_space-{space}_boldref.nii.gz"]
        files += [f"{func}_desc-confounds_timeseries.tsv", f"{func}_desc-confounds_timeseries.json",
                  f"{func}_hemi-L_space-fsaverage_bold.func.gii",
                  f"{func}_space-fsLR_den-91k_bold.dtseries.nii"]
    files += [f"{sub}/figures/{sub}_{name}.svg" for name in ("dseg", "t1w_to_MNI", "carpetplot", "flt_bbr")]
    files += [f"{sub}/log/citation.md"]
    return files


def make_large_tree(root, n_participants, real_dataset=None, real_label="01"):
    """Write a tree of ``n_participants`` (fillers and, when given, one real participant).

    Parameters
    ----------
    root : path
        The fMRIPrep derivatives folder to create (must not exist, or be such a tree already:
        it is kept when it holds ``n_participants`` participants).
    n_participants : int
        Participants in all, the real one included.
    real_dataset : path, optional
        An fMRIPrep folder holding ``sub-<real_label>`` (e.g. from ``tmstarget-synth``): its
        participant folder is hard-linked (copied across file systems) into the tree.
    real_label : str

    Returns
    -------
    int
        Files in the tree.
    """
    root = Path(root)
    stamp = root / ".large_tree.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == {"participants": n_participants,
                                                              "real": str(real_dataset)}:
        return sum(len(f) for _, _, f in os.walk(root)) - 1
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    if real_dataset:  # the real participant's dataset description (provenance in its outputs)
        shutil.copy2(Path(real_dataset) / "dataset_description.json", root)
    else:
        (root / "dataset_description.json").write_text(json.dumps({
            "Name": "large fMRIPrep tree (benchmark)", "BIDSVersion": "1.8.0",
            "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}]}))
    n_real = 1 if real_dataset else 0
    for number in range(1, n_participants - n_real + 1):
        label = f"{number + 1:04d}"
        for relative in filler_files(label):
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}" if relative.endswith(".json") else "")
    if real_dataset:
        source = Path(real_dataset) / f"sub-{real_label}"
        shutil.copytree(source, root / f"sub-{real_label}", copy_function=_link_or_copy)
    stamp.write_text(json.dumps({"participants": n_participants, "real": str(real_dataset)}))
    return sum(len(f) for _, _, f in os.walk(root)) - 1


def _link_or_copy(source, target):
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
