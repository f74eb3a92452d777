"""Geometry: the same data stored in another voxel order or with an oblique affine give the same
world-coordinate target, never the other hemisphere.

A left-right flip is the worst error this program can make. Every computation is meant to happen
in world millimetres, so the voxel order of the files must not matter:

- **LAS** (x axis stored right-to-left) and **LPI** (all three axes reversed): every
  MNI152NLin2009cAsym image of the participant (BOLD, brain masks, T1w, GM probseg, dseg) is
  reoriented with nibabel (data reversed along the axes, affine adjusted); world coordinates of
  every voxel are unchanged, so the target must be the same point in MNI mm.
- **Oblique**: an affine whose voxel axes are not the world axes cannot be applied to MNI-space
  files honestly: they would no longer be in MNI152NLin2009cAsym (the seed at MNI (6, 16, -10)
  would fall elsewhere in the brain). It is what a participant's native space looks like when the
  head is tilted in the scanner. So the test runs in ``--space T1w``: every T1w-space image (BOLD,
  brain masks, head T1w, GM probseg, dseg) keeps its voxels and gets the affine ``R @ A`` (the head
  rotated by ``R`` about its centre, 20 degrees about z and 15 about x), and fMRIPrep's transforms
  are composed with the rotation (MNI -> T1w becomes ``R`` after it; T1w -> MNI becomes ``R^-1``
  before it). The target must then be ``R`` times the unrotated target in T1w mm, and the same
  point in MNI mm through the transform.

Half a voxel (2 mm on the 4 mm test grid) is the tolerance: the same voxel must be chosen. Storage
differs only by the int16 re-quantization of the reoriented BOLD (relative 1e-5).
"""

import shutil

import nibabel as nb
import numpy as np
import pytest

from tmstarget.synthetic import _Grid, _write_itk_h5
from helpers import connectivity_row, run_app

#: Each test here runs the pipeline (or a dataset generation) end to end.
pytestmark = pytest.mark.slow

SPACE = "MNI152NLin2009cAsym"
ROTATION = nb.eulerangles.euler2mat(np.deg2rad(20.0), 0.0, np.deg2rad(15.0))  # about z, then x


def _copy(one_run_dataset, tmp_path_factory, name):
    root, truth = one_run_dataset
    copy = tmp_path_factory.mktemp(name) / "fmriprep"
    shutil.copytree(root, copy)
    return copy, truth


def _images(root, space):
    """The participant's images in ``space`` (T1w: the files without a space entity)."""
    files = sorted(root.glob("sub-01/*/*.nii.gz"))
    if space == "T1w":
        return [f for f in files if "space-" not in f.name or "space-T1w_" in f.name]
    return [f for f in files if f"space-{space}_" in f.name]


def _reoriented(one_run_dataset, tmp_path_factory, flips, name):
    """The dataset with every MNI image stored with the axes in ``flips`` reversed."""
    root, truth = _copy(one_run_dataset, tmp_path_factory, name)
    ornt = np.array([[axis, -1 if axis in flips else 1] for axis in range(3)])
    for path in _images(root, SPACE):
        img = nb.load(path)
        reoriented = img.as_reoriented(ornt)  # nibabel: data reversed, affine adjusted
        path.unlink()
        reoriented.to_filename(path)
    return root, truth


def _run(root, tmp_path_factory, name, *flags):
    base = tmp_path_factory.mktemp(f"{name}_run")
    assert run_app(root, base / "out", *flags, work_dir=base / "work") == 0
    return base / "out"


@pytest.fixture(scope="module")
def t1w_run(one_run_dataset, tmp_path_factory):
    root, _ = one_run_dataset
    return _run(root, tmp_path_factory, "t1w", "--space", "T1w")


def _xyz(row):
    return np.array([row.x, row.y, row.z])


@pytest.mark.parametrize("flips,codes", [((0,), ("L", "A", "S")), ((0, 1, 2), ("L", "P", "I"))],
                         ids=["LAS", "LPI"])
def test_voxel_order_does_not_move_the_target(one_run_dataset, mni_run, tmp_path_factory, flips, codes):
    root, truth = _reoriented(one_run_dataset, tmp_path_factory, flips, "".join(codes))
    bold = _images(root, SPACE)
    assert all(nb.aff2axcodes(nb.load(f).affine) == codes for f in bold)
    out = _run(root, tmp_path_factory, "".join(codes))
    reference, _, _ = mni_run
    row, expected = connectivity_row(out, SPACE), connectivity_row(reference, SPACE)
    voxel = truth["voxel_size"]
    assert np.linalg.norm(_xyz(row) - _xyz(expected)) <= voxel / 2
    assert row.x < 0 and expected.x < 0  # left hemisphere, as planted
    assert np.linalg.norm(_xyz(row) - truth["target_mni"]) <= voxel
    # the scalp point above it and the T1w-space report do not move either
    scalp = np.array([row.scalp_x, row.scalp_y, row.scalp_z])
    assert np.linalg.norm(scalp - [expected.scalp_x, expected.scalp_y, expected.scalp_z]) <= voxel / 2
    assert scalp[0] < 0
    t1w, t1w_expected = connectivity_row(out, "T1w"), connectivity_row(reference, "T1w")
    assert np.linalg.norm(_xyz(t1w) - _xyz(t1w_expected)) <= voxel / 2


def _rotate_dataset(root, truth):
    """Tilt the participant's head by ``ROTATION`` about its centre in T1w space (see the module
    docstring); return the 4x4 world rotation."""
    t1w = nb.load(root / "sub-01" / "anat" / "sub-01_desc-preproc_T1w.nii.gz")
    centre = nb.affines.apply_affine(t1w.affine, (np.array(t1w.shape) - 1) / 2)
    rotation = nb.affines.from_matvec(ROTATION, centre - ROTATION @ centre)
    for path in _images(root, "T1w"):
        img = nb.load(path)
        tilted = rotation @ img.affine
        img.set_sform(tilted, code=int(img.header["sform_code"]) or 1)
        img.set_qform(tilted, code=int(img.header["qform_code"]) or 1)
        written = path.with_name(f"tilted_{path.name}")  # the data are read from ``path`` on saving
        img.to_filename(written)
        written.replace(path)
    mni_to_t1w = np.array(truth["participants"]["01"]["mni_to_t1w"])
    mni = nb.load(root / "sub-01" / "anat" / f"sub-01_space-{SPACE}_desc-preproc_T1w.nii.gz")
    anat = root / "sub-01" / "anat"
    # The composite transforms as fMRIPrep writes them (zero displacement field + affine): an
    # image transform maps points of its reference (to-) space into its moving (from-) space.
    _write_itk_h5(anat / f"sub-01_from-T1w_to-{SPACE}_mode-image_xfm.h5", rotation @ mni_to_t1w,
                  np.zeros(3), _Grid(mni.shape, mni.affine).padded(5))
    _write_itk_h5(anat / f"sub-01_from-{SPACE}_to-T1w_mode-image_xfm.h5",
                  np.linalg.inv(mni_to_t1w) @ np.linalg.inv(rotation), centre,
                  _Grid(t1w.shape, t1w.affine).padded(5))
    return rotation


def test_oblique_affine_gives_the_rotated_target(one_run_dataset, t1w_run, tmp_path_factory):
    root, truth = _copy(one_run_dataset, tmp_path_factory, "oblique")
    rotation = _rotate_dataset(root, truth)
    bold = next(root.glob("sub-01/func/*_space-T1w_desc-preproc_bold.nii.gz"))
    axes = nb.load(bold).affine[:3, :3]
    assert not np.allclose(axes, np.diag(np.diag(axes)))  # really oblique
    out = _run(root, tmp_path_factory, "oblique", "--space", "T1w")
    voxel = truth["voxel_size"]
    row, flat = connectivity_row(out, "T1w"), connectivity_row(t1w_run, "T1w")
    expected = nb.affines.apply_affine(rotation, _xyz(flat))
    assert np.linalg.norm(_xyz(row) - expected) <= voxel / 2
    scalp_expected = nb.affines.apply_affine(rotation, [flat.scalp_x, flat.scalp_y, flat.scalp_z])
    assert np.linalg.norm([row.scalp_x - scalp_expected[0], row.scalp_y - scalp_expected[1],
                           row.scalp_z - scalp_expected[2]]) <= voxel / 2
    # through the composed transform, the same MNI point, in the left hemisphere
    mni, mni_flat = connectivity_row(out, SPACE), connectivity_row(t1w_run, SPACE)
    assert np.linalg.norm(_xyz(mni) - _xyz(mni_flat)) <= voxel / 2
    assert mni.x < 0 and np.linalg.norm(_xyz(mni) - truth["target_mni"]) <= voxel
    assert flat.x < 0 and row.x < 0  # left of the participant's midline (head near x = 0)
