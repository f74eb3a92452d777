"""The scalp stage on the generator's heads: the self-made demo head and a warped native head.

The demo (a fresh clone without ../shared) runs on the self-made head, so its fiducials, 10-20 F3,
Beam F3, the 5 cm site and the head measurements must come out as they would on a head: the
template fiducials (Jurcak et al. 2007) on its skin, F3 on the left, tape measurements in the
range of adult heads. A nonlinear participant's native head must carry the template fiducials,
mapped through its own transform, onto its own skin.

Functions used, through their public names: ``tmstarget.workflows.scalp.head_mask``,
``scalp_mesh``; ``tmstarget.workflows.surface.snap_to_scalp``; ``tmstarget.workflows.landmarks.FIDUCIALS_MNI``, ``MOTOR_HAND_MNI``,
``place_fiducials``, ``snap_to_scalp``, ``ten_twenty_f3``, ``head_measurements``,
``place_beam_f3``, ``five_cm_rule``; ``tmstarget.workflows.transforms.map_points``.
"""

import nibabel as nb
import numpy as np
import pytest

from tmstarget.synthetic.grids import _mni_grid
from tmstarget.synthetic.heads import _rician, _SyntheticHead, _tissue_fields
from tmstarget.synthetic import make_fmriprep_dataset
from tmstarget.workflows import landmarks
from tmstarget.workflows.head import head_mask
from tmstarget.workflows.scalp import scalp_mesh
from tmstarget.workflows.surface import snap_to_scalp
from tmstarget.workflows.transforms import map_points
from helpers import REAL_DATA

#: Each test here runs the pipeline (or a dataset generation) end to end.
pytestmark = pytest.mark.slow

FIDUCIAL_NAMES = ("Nz", "Iz", "LPA", "RPA")
ON_SKIN_MM = 3.0   # the template's own fiducials lie 0.5-2 mm from its 2 mm scalp mesh
# Adult heads (cm): nasion-inion, tragus-tragus and circumference at the 10 % level. Ranges
# around the MNI152 head (NI 39.6, TT 39.3, HC 60.2 here) and the adult values Beam et al. (2009)
# built Beam F3 on; a head outside them is not a head a technician measures.
PLAUSIBLE_CM = {"NI": (32.0, 43.0), "TT": (32.0, 43.0), "HC": (52.0, 64.0)}


def _mesh(t1w, affine):
    zooms = tuple(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    return scalp_mesh(head_mask(t1w, zooms), affine)


@pytest.fixture(scope="module")
def self_made_head():
    """The self-made MNI head at 2 mm, as the generator writes it (with its Rician noise)."""
    grid = _mni_grid(2.0)
    fields = _tissue_fields(_SyntheticHead(), grid)
    t1w = _rician(fields["t1w"], 12.0, np.random.default_rng(0))
    return _mesh(t1w, grid.affine)


def test_template_fiducials_lie_on_the_self_made_head(self_made_head):
    vertices, faces, normals = self_made_head
    fiducials = np.array([landmarks.FIDUCIALS_MNI[k] for k in FIDUCIAL_NAMES])
    _, distance, snapped = landmarks.place_fiducials(fiducials, vertices, faces, normals)
    assert snapped.all(), dict(zip(FIDUCIAL_NAMES, np.round(distance, 1)))
    assert distance.max() < ON_SKIN_MM, dict(zip(FIDUCIAL_NAMES, np.round(distance, 1)))


def test_comparators_on_the_self_made_head(self_made_head):
    vertices, faces, normals = self_made_head
    fiducials = np.array([landmarks.FIDUCIALS_MNI[k] for k in FIDUCIAL_NAMES])
    placed, _, _ = landmarks.place_fiducials(fiducials, vertices, faces, normals)
    points = landmarks.ten_twenty_f3(vertices, faces, *placed)
    f3, cz = points["F3"], points["Cz"]
    assert f3[0] < -20.0                                     # left (RAS x < 0), off the midline
    assert f3[1] > cz[1] + 30.0                              # frontal
    assert snap_to_scalp(f3, vertices)[1][0] < 1.5  # on the skin
    measures = landmarks.head_measurements(vertices, faces, *placed)
    for name, (low, high) in PLAUSIBLE_CM.items():
        assert low < measures[name] < high, (name, measures[name])
    beam = landmarks.place_beam_f3(vertices, faces, *placed)
    assert beam[0] < -20.0 and np.linalg.norm(beam - f3) < 15.0  # Beam F3 approximates 10-20 F3
    motor = snap_to_scalp(landmarks.MOTOR_HAND_MNI, vertices)[0][0]
    five_cm = landmarks.five_cm_rule(vertices, faces, motor, placed[0], placed[1])
    assert five_cm[0] < 0 and five_cm[1] > motor[1] + 30.0    # anterior of the motor site, left
    assert snap_to_scalp(five_cm, vertices)[1][0] < 1.5


@pytest.fixture(scope="module")
def nonlinear_participant(tmp_path_factory):
    root = tmp_path_factory.mktemp("native") / "fmriprep"
    truth = make_fmriprep_dataset(root, n_volumes=20, voxel_size=4.0, seed=2, warp="nonlinear", **REAL_DATA)
    return root / "sub-01" / "anat", truth


def test_fiducials_mapped_through_the_warp_lie_on_the_native_head(nonlinear_participant):
    """The template fiducials, mapped MNI -> T1w by the participant's transform, are on the native
    skin, F3 is on its left and its tape measurements are those of a head."""
    anat, truth = nonlinear_participant
    img = nb.load(anat / "sub-01_desc-preproc_T1w.nii.gz")
    vertices, faces, normals = _mesh(np.asarray(img.dataobj, dtype=float), img.affine)
    fiducials = np.array([landmarks.FIDUCIALS_MNI[k] for k in FIDUCIAL_NAMES])
    native = map_points(fiducials, anat / "sub-01_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5")
    _, distance, snapped = landmarks.place_fiducials(native, vertices, faces, normals)
    assert snapped.all() and distance.max() < ON_SKIN_MM, np.round(distance, 1)
    placed, _, _ = landmarks.place_fiducials(native, vertices, faces, normals)
    f3 = landmarks.ten_twenty_f3(vertices, faces, *placed)["F3"]
    lpa_to_rpa = placed[3] - placed[2]
    assert np.dot(f3 - (placed[2] + placed[3]) / 2, lpa_to_rpa) < 0   # F3 on the participant's left
    measures = landmarks.head_measurements(vertices, faces, *placed)
    for name, (low, high) in PLAUSIBLE_CM.items():
        assert low < measures[name] < high, (name, measures[name])
