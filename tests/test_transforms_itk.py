"""ITK is the oracle: map_points against SimpleITK on fMRIPrep-like nonlinear transforms.

The generator's ``warp="nonlinear"`` participant has what every fMRIPrep ``*_xfm.h5`` has: an
anisotropic affine and a non-zero, smooth displacement field, in both directions. SimpleITK reads
the same files (``ReadTransform(...).TransformPoint``, in ITK's LPS millimetres) and says where
each point goes; :func:`tmstarget.workflows.transforms.map_points` must agree within 0.1 mm,
forward, inverse and round trip. Each usual mistake in reading such a file (the field ignored,
its sign flipped, its vectors taken as RAS, the transforms applied in file order, the field read
in C order) is built here as a mapping of its own and shown to be rejected by the same oracle, so
the tolerance can tell a right reading from a wrong one. The native head must be the MNI head
warped through the same map, and the planted target known in both spaces.
"""

import h5py
import nibabel as nb
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from tmstarget.synthetic import make_fmriprep_dataset
from tmstarget.workflows.transforms import map_points
from helpers import REAL_DATA

#: Each test here runs the pipeline (or a dataset generation) end to end.
pytestmark = pytest.mark.slow

TOLERANCE_MM = 0.1
LPS = np.array([-1.0, -1.0, 1.0])   # RAS <-> LPS: negate x and y
SPACE = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def warped(tmp_path_factory):
    """One nonlinear participant (2 mm anatomy, so the field is stored at 2 mm) and sample points."""
    root = tmp_path_factory.mktemp("itk") / "fmriprep"
    truth = make_fmriprep_dataset(root, n_volumes=20, voxel_size=4.0, seed=3, warp="nonlinear", **REAL_DATA)
    anat = root / "sub-01" / "anat"
    rng = np.random.default_rng(0)

    def sample_points(mask_file, n):
        img = nb.load(mask_file)
        ijk = np.argwhere(np.asarray(img.dataobj) > 0.5)
        chosen = ijk[rng.choice(len(ijk), n, replace=False)] + rng.uniform(-0.5, 0.5, (n, 3))
        return nb.affines.apply_affine(img.affine, chosen)

    head_mni = _head_mask(anat / f"sub-01_space-{SPACE}_desc-preproc_T1w.nii.gz")
    return {
        "truth": truth,
        "anat": anat,
        "forward": anat / f"sub-01_from-T1w_to-{SPACE}_mode-image_xfm.h5",   # MNI mm -> T1w mm
        "inverse": anat / f"sub-01_from-{SPACE}_to-T1w_mode-image_xfm.h5",   # T1w mm -> MNI mm
        # points through the whole head, where the field is largest, and in the brain
        "mni": np.r_[sample_points(head_mni, 300),
                     sample_points(anat / f"sub-01_space-{SPACE}_desc-brain_mask.nii.gz", 100)],
        "t1w": sample_points(_head_mask(anat / "sub-01_desc-preproc_T1w.nii.gz"), 300),
    }


def _head_mask(t1w_file):
    """A head mask beside ``t1w_file`` (the image above 10 % of its 99th percentile), as a file."""
    img = nb.load(t1w_file)
    data = np.asarray(img.dataobj, dtype=float)
    mask = ndimage.binary_erosion(data > 0.1 * np.percentile(data, 99), iterations=1)
    path = t1w_file.with_name(t1w_file.name.replace(".nii.gz", "_headmask.nii.gz"))
    nb.Nifti1Image(mask.astype(np.uint8), img.affine).to_filename(path)
    return path


def itk_map(path, points_ras):
    """The oracle: ITK's own TransformPoint on each point (RAS mm in, RAS mm out)."""
    transform = sitk.ReadTransform(str(path))
    return np.array([np.array(transform.TransformPoint(tuple(float(v) for v in p * LPS))) * LPS
                     for p in np.atleast_2d(points_ras)])


def oracle_error(mapping, path, points):
    """Largest distance (mm) between ``mapping(points)`` and ITK's mapping of them."""
    return float(np.linalg.norm(mapping(points) - itk_map(path, points), axis=1).max())


# --------------------------------------------------------------------------------------------
# map_points against ITK
# --------------------------------------------------------------------------------------------
def test_forward_matches_itk(warped):
    assert oracle_error(lambda p: map_points(p, warped["forward"]), warped["forward"], warped["mni"]) < TOLERANCE_MM


def test_inverse_matches_itk(warped):
    assert oracle_error(lambda p: map_points(p, warped["inverse"]), warped["inverse"], warped["t1w"]) < TOLERANCE_MM


def test_round_trips(warped):
    mni, t1w = warped["mni"], warped["t1w"]
    back = map_points(map_points(mni, warped["forward"]), warped["inverse"])
    assert np.linalg.norm(back - mni, axis=1).max() < TOLERANCE_MM
    back = map_points(map_points(t1w, warped["inverse"]), warped["forward"])
    assert np.linalg.norm(back - t1w, axis=1).max() < TOLERANCE_MM
    # and ITK's own: the two files are each other's inverse
    back = itk_map(warped["inverse"], itk_map(warped["forward"], mni))
    assert np.linalg.norm(back - mni, axis=1).max() < TOLERANCE_MM


def test_the_map_is_nonlinear_small_in_the_brain_and_larger_at_the_scalp(warped):
    """The files are worth testing against: not a similarity, not an affine."""
    info = warped["truth"]["participants"]["01"]
    affine = np.array(info["mni_to_t1w_affine"])
    scales = np.linalg.svd(affine[:3, :3], compute_uv=False)
    assert scales.max() / scales.min() > 1.02                      # anisotropic
    displacement = np.linalg.norm(itk_map(warped["forward"], warped["mni"])
                                  - nb.affines.apply_affine(affine, warped["mni"]), axis=1)
    in_brain, in_head = displacement[300:], displacement[:300]
    assert np.median(in_brain) < np.median(in_head)
    assert np.max(in_head) > 2.0 and np.median(in_brain) < 2.0
    assert info["displacement_mm"]["brain_max"] < info["displacement_mm"]["head_max"] < 10.0


# --------------------------------------------------------------------------------------------
# the usual mistakes, each a mapping of its own, each rejected by the oracle
# --------------------------------------------------------------------------------------------
def _read_composite(path):
    """The transforms of an ITK composite .h5 in file order: ('affine', M, t, c) or ('field', ...)."""
    parts = []
    with h5py.File(path, "r") as f:
        group = f["TransformGroup"]
        for name in sorted(group, key=int)[1:]:
            kind = group[name]["TransformType"][0].decode()
            params = np.asarray(group[name]["TransformParameters"], float)
            fixed = np.asarray(group[name]["TransformFixedParameters"], float)
            if kind.startswith("AffineTransform"):
                parts.append(("affine", params[:9].reshape(3, 3), params[9:], fixed))
            else:
                parts.append(("field", params, fixed))
    return parts


def hand_mapping(path, *, ignore_field=False, flip_sign=False, vectors_ras=False, file_order=False,
                 c_order=False):
    """A reading of ``path`` written out by hand, right by default, with one mistake on request.

    Right: LPS points; the affine maps x to M (x - c) + c + t; the field is read as (3, nx, ny, nz)
    in Fortran order (vector index fastest), holds LPS vectors, is interpolated trilinearly and
    added (x + u(x)); the transforms are applied from the last in the file to the first.
    """
    def affine_step(matrix, translation, centre):
        return lambda x: (x - centre) @ matrix.T + centre + translation

    def field_step(params, fixed):
        shape = fixed[:3].astype(int)
        origin, spacing, direction = fixed[3:6], fixed[6:9], fixed[9:].reshape(3, 3)
        if c_order:
            vectors = params.reshape(*shape, 3)
        else:
            vectors = np.moveaxis(params.reshape(3, *shape, order="F"), 0, -1)
        if vectors_ras:
            vectors = vectors * LPS
        to_index = np.linalg.inv(direction * spacing)

        def step(x):
            ijk = (x - origin) @ to_index.T
            u = np.stack([ndimage.map_coordinates(vectors[..., c], ijk.T, order=1, mode="constant")
                          for c in range(3)], axis=-1)
            return x + (0.0 if ignore_field else -u if flip_sign else u)
        return step

    steps = [affine_step(*part[1:]) if part[0] == "affine" else field_step(*part[1:])
             for part in _read_composite(path)]
    order = steps if file_order else steps[::-1]

    def mapping(points_ras):
        x = np.atleast_2d(points_ras) * LPS
        for step in order:
            x = step(x)
        return x * LPS
    return mapping


MISTAKES = {
    "field ignored": dict(ignore_field=True),
    "field sign flipped": dict(flip_sign=True),
    "vectors taken as RAS": dict(vectors_ras=True),
    "transforms applied in file order": dict(file_order=True),
    "field read in C order": dict(c_order=True),
}


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_the_right_hand_reading_passes_the_oracle(warped, direction):
    """The hand-written reading without a mistake agrees with ITK: the mistakes below are the
    only thing that differs in them."""
    points = warped["mni" if direction == "forward" else "t1w"]
    assert oracle_error(hand_mapping(warped[direction]), warped[direction], points) < 0.01


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_usual_mistake_fails_the_oracle(warped, direction, mistake):
    points = warped["mni" if direction == "forward" else "t1w"]
    error = oracle_error(hand_mapping(warped[direction], **MISTAKES[mistake]), warped[direction], points)
    assert error > 5 * TOLERANCE_MM, f"{mistake} ({direction}) is off by only {error:.3f} mm"


# --------------------------------------------------------------------------------------------
# the native head and the truth
# --------------------------------------------------------------------------------------------
def test_native_head_is_the_mni_head_warped(warped):
    """Every tissue image in T1w space is the MNI one seen through ITK's mapping of the files."""
    anat, mni = warped["anat"], warped["mni"]
    in_t1w = itk_map(warped["forward"], mni)
    for suffix, agreement in (("desc-brain_mask", 0.97), ("dseg", 0.9)):
        native = nb.load(anat / f"sub-01_{suffix}.nii.gz")
        template = nb.load(anat / f"sub-01_space-{SPACE}_{suffix}.nii.gz")
        a = _nearest(native, in_t1w)
        b = _nearest(template, mni)
        assert np.mean(a == b) > agreement, suffix
    native = nb.load(anat / "sub-01_desc-preproc_T1w.nii.gz")
    template = nb.load(anat / f"sub-01_space-{SPACE}_desc-preproc_T1w.nii.gz")
    assert np.corrcoef(_linear(native, in_t1w), _linear(template, mni))[0, 1] > 0.9
    # the affine alone would not do: the head really is warped
    affine = np.array(warped["truth"]["participants"]["01"]["mni_to_t1w_affine"])
    warped_r = np.corrcoef(_linear(native, in_t1w), _linear(template, mni))[0, 1]
    affine_r = np.corrcoef(_linear(native, nb.affines.apply_affine(affine, mni)), _linear(template, mni))[0, 1]
    assert warped_r > affine_r


def test_planted_target_known_in_both_spaces(warped):
    truth, anat = warped["truth"], warped["anat"]
    target_mni = np.array(truth["target_mni"])
    target_t1w = np.array(truth["participants"]["01"]["target_t1w"])
    assert np.linalg.norm(itk_map(warped["forward"], target_mni)[0] - target_t1w) < 0.01
    assert np.linalg.norm(itk_map(warped["inverse"], target_t1w)[0] - target_mni) < TOLERANCE_MM
    assert target_t1w[0] < 0                                        # still the left hemisphere
    gm = nb.load(anat / "sub-01_label-GM_probseg.nii.gz")
    assert _linear(gm, target_t1w[None])[0] > 0.5                  # in the native grey matter


def _nearest(img, points):
    ijk = np.rint(nb.affines.apply_affine(np.linalg.inv(img.affine), points)).astype(int)
    ijk = np.clip(ijk, 0, np.array(img.shape[:3]) - 1)
    return np.asarray(img.dataobj)[tuple(ijk.T)]


def _linear(img, points):
    ijk = nb.affines.apply_affine(np.linalg.inv(img.affine), points).T
    return ndimage.map_coordinates(np.asarray(img.dataobj, dtype=float), ijk, order=1)
