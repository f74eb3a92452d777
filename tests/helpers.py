"""Helpers shared by the tests: the shared real data, the fast grid, running the app as a user would,
and comparing output trees. Fixtures that make datasets are in ``conftest.py``."""

import hashlib
import os
import shutil
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

os.environ.setdefault("NIPYPE_NO_ET", "1")

from tmstarget import cli  # noqa: E402

# The real MNI152NLin2009cAsym head and fMRIPrep confounds table beside the repository when they
# are there (CI), the generator's self-made head and synthesized motion otherwise (a fresh clone).
# Given explicitly: an installed package cannot find ../shared from its own location.
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
_TEMPLATEFLOW = SHARED / "templateflow"
_CONFOUNDS = SHARED / "fmriprep-confounds" / "ds005239" / "sub-01_ses-2_task-rest_desc-confounds_timeseries.tsv"
REAL_DATA = dict(templateflow_home=_TEMPLATEFLOW if _TEMPLATEFLOW.is_dir() else False,
                 confounds_tsv=_CONFOUNDS if _CONFOUNDS.is_file() else False)

# Small grids keep the suite fast; the science is the same as on the 2 mm default.
FAST = dict(voxel_size=4.0, n_volumes=160, tr=2.0, **REAL_DATA)


def run_app(bids_dir, output_dir, *flags, work_dir=None):
    """Run the command line as a user would; return its exit code."""
    argv = [str(bids_dir), str(output_dir), "participant", *flags]
    if work_dir is not None:
        argv += ["-w", str(work_dir)]
    return cli.main(argv)


def connectivity_row(output_dir, space, subject="01"):
    table = pd.read_csv(Path(output_dir) / f"sub-{subject}" / "tms" / f"sub-{subject}_space-{space}_targets.tsv",
                        sep="\t")
    return table.set_index("name").loc["connectivity"]


def distance_mm(row, point):
    return float(np.linalg.norm(np.array([row.x, row.y, row.z]) - np.asarray(point)))


def cli_command(bids_dir, output_dir, work_dir, *flags, level="participant"):
    """The command line a user types, for a subprocess (a SIGKILL or a namespace needs a process)."""
    return [sys.executable, "-m", "tmstarget.cli", str(bids_dir), str(output_dir), level,
            "-w", str(work_dir), *flags]


def cli_environment(**extra):
    """The environment of such a subprocess: the installed ``tmstarget``, whatever the folder."""
    return dict(os.environ, NIPYPE_NO_ET="1", **extra)


def tree_digest(root):
    """{relative path: sha256} of every file under ``root``."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_outputs(out, reference):
    """Same files, byte for byte (maps, tables, sidecars, exports, configuration)."""
    digest, expected = tree_digest(out), tree_digest(reference)
    assert sorted(digest) == sorted(expected)
    differing = [name for name in expected if digest[name] != expected[name]]
    assert not differing, f"files differ: {differing}"
    assert any(name.endswith("_boldmap.nii.gz") for name in digest)
    assert any(name.endswith("_targets.tsv") for name in digest)


def copy_with_a_short_run(root, destination, n_volumes=80):
    """A copy of a dataset whose first session's run 1 (BOLD and confounds) is cut to ``n_volumes``;
    returns the cut BOLD's path."""
    shutil.copytree(root, destination)
    bold = sorted(Path(destination).glob("sub-01/ses-1/func/*run-1*desc-preproc_bold.nii.gz"))[0]
    img = nb.load(bold)
    nb.Nifti1Image(np.asanyarray(img.dataobj)[..., :n_volumes], img.affine, img.header).to_filename(bold)
    confounds = bold.with_name(bold.name.split("_space-")[0] + "_desc-confounds_timeseries.tsv")
    pd.read_csv(confounds, sep="\t").iloc[:n_volumes].to_csv(confounds, sep="\t", index=False,
                                                             na_rep="n/a")
    return bold
