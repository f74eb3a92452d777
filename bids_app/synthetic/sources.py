"""Where the generator finds real data: a TemplateFlow home and a real fMRIPrep confounds table.

Nothing is downloaded. Unless told otherwise (a path, or False for none), the generator looks for
``$TEMPLATEFLOW_HOME`` and then for the project's shared data folder, ``shared/data`` beside the
repository checkout: :data:`SHARED_DATA` is ``<checkout>/../shared/data`` computed from this
file's own location (``bids_app/synthetic/sources.py``, three folders below the checkout's
parent). It is found only from a source checkout (an editable install, as in development and
CI); from an installed wheel the path points into site-packages, where no such folder exists,
and the generator falls back to its self-made head and synthesized motion. Tests that must not
depend on this choose explicitly (``tests/helpers.py`` ``REAL_DATA``).
"""

import os
from pathlib import Path

from .constants import TEMPLATE

# <checkout>/bids_app/synthetic/sources.py -> parents[3] is the folder holding the checkout.
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
"""The project's shared data folder beside a source checkout (absent for an installed wheel)."""
SHARED_TEMPLATEFLOW = SHARED_DATA / "templateflow"
SHARED_CONFOUNDS = (SHARED_DATA / "fmriprep-confounds" / "ds005239"
                    / "sub-01_ses-2_task-rest_desc-confounds_timeseries.tsv")


def _find_template_dir(templateflow_home):
    """Resolve ``templateflow_home`` (None = auto, False = none, or a path) to the template folder."""
    needed = [f"tpl-{TEMPLATE}_res-02_{s}.nii.gz" for s in
              ("T1w", "desc-brain_mask", "label-GM_probseg", "label-WM_probseg", "label-CSF_probseg")]

    def complete(home):
        folder = Path(home) / f"tpl-{TEMPLATE}"
        return folder if all((folder / n).is_file() for n in needed) else None

    if templateflow_home is False:
        return None
    if templateflow_home is not None:
        folder = complete(templateflow_home)
        if folder is None:
            raise FileNotFoundError(f"{templateflow_home} holds no complete tpl-{TEMPLATE} (res-02 "
                                    f"T1w, brain mask and GM/WM/CSF probsegs are needed)")
        return folder
    for home in (os.environ.get("TEMPLATEFLOW_HOME"), SHARED_TEMPLATEFLOW):
        if home and complete(home):
            return complete(home)
    return None


def _find_confounds_table(confounds_tsv):
    """Resolve ``confounds_tsv`` (None = auto, False = synthesize, or a path) to a path or None."""
    if confounds_tsv is False:
        return None
    if confounds_tsv is not None:
        if not Path(confounds_tsv).is_file():
            raise FileNotFoundError(confounds_tsv)
        return Path(confounds_tsv)
    return SHARED_CONFOUNDS if SHARED_CONFOUNDS.is_file() else None

