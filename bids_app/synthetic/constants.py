"""Names and coordinates shared by the generator's modules (see :mod:`tmstarget.synthetic`)."""

import numpy as np

from tmstarget.workflows.defaults import DLPFC_SITES_MNI, MNI_SPACES, SGACC_CENTER_MNI  # noqa: F401

PLANTED_TARGET_MNI = (-40.0, 40.0, 30.0)
"""Default planted DLPFC target, MNI152NLin2009cAsym mm RAS (near BA46)."""
DECOY_MNI = DLPFC_SITES_MNI["5cm"]
"""Default motion-artefact decoy, MNI mm RAS (the "5 cm" site, inside the DLPFC search region)."""
SGACC_MNI = SGACC_CENTER_MNI
"""Subgenual cingulate seed centre, MNI mm RAS (Fox et al. 2012)."""

TEMPLATE = "MNI152NLin2009cAsym"
N_NON_STEADY = 3
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
TRUTH_FILE = "tmstarget_synthetic_truth.json"

# Rotation centre for head motion, MNI mm: roughly the middle of the head.
_HEAD_CENTRE_MNI = np.array([0.0, -18.0, 15.0])
