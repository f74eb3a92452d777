"""ITK composite transforms: the files the generator writes and the direction map_points maps.

The direction of fMRIPrep's ``*_mode-image_xfm.h5`` files is the classic trap: an image transform
maps points of the reference (``to-``) space into the moving (``from-``) space. These tests hold
that direction with nitransforms itself, on files with a known matrix.
"""

import h5py
import nibabel as nb
import numpy as np
import pytest
from nitransforms.manip import load

from tmstarget import synthetic
from tmstarget.workflows.transforms import map_points

MNI_POINTS = np.array([
    [-40.0, 40.0, 30.0],    # the planted DLPFC target
    [6.0, 16.0, -10.0],     # sgACC
    [-50.2, 53.1, 42.2],    # F3 on the MNI scalp, near the edge of the head
    [70.0, -100.0, -60.0],  # far from the centre, right-posterior-inferior
])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("xfm") / "fmriprep"
    truth = synthetic.make_fmriprep_dataset(root, n_volumes=20, voxel_size=4.0, anat_voxel_size=4.0,
                                            seed=5, templateflow_home=False, confounds_tsv=False)
    anat = root / "sub-01" / "anat"
    files = {
        "mni_to_t1w": anat / "sub-01_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5",
        "t1w_to_mni": anat / "sub-01_from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5",
    }
    return files, np.array(truth["participants"]["01"]["mni_to_t1w"]), truth


def _expected_t1w(matrix, points):
    return nb.affines.apply_affine(matrix, points)


def test_matrix_is_a_non_trivial_similarity(dataset):
    _, matrix, _ = dataset
    linear = matrix[:3, :3]
    scale = np.cbrt(np.linalg.det(linear))
    rotation = linear / scale
    assert 0.9 < scale < 1.0
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-10)
    angle = np.degrees(np.arccos((np.trace(rotation) - 1) / 2))
    assert angle > 2.0                                  # a real rotation, not the identity
    assert np.linalg.norm(matrix[:3, 3]) > 10.0         # and a translation of centimetres


def test_h5_files_have_the_itk_composite_layout(dataset):
    files, _, _ = dataset
    for path in files.values():
        with h5py.File(path, "r") as f:
            group = f["TransformGroup"]
            assert sorted(group) == ["0", "1", "2"]
            assert group["0"]["TransformType"][0] == b"CompositeTransform_double_3_3"
            assert group["1"]["TransformType"][0] == b"AffineTransform_double_3_3"
            assert group["1"]["TransformParameters"].shape == (12,)
            assert group["1"]["TransformFixedParameters"].shape == (3,)
            assert group["2"]["TransformType"][0] == b"DisplacementFieldTransform_float_3_3"
            fixed = group["2"]["TransformFixedParameters"][()]
            assert fixed.shape == (18,)                 # size, origin, spacing, direction
            size = fixed[:3].astype(int)
            assert group["2"]["TransformParameters"].shape == (3 * int(np.prod(size)),)
            np.testing.assert_allclose(np.abs(fixed[9:].reshape(3, 3)), np.eye(3))


def test_nitransforms_maps_reference_points_into_the_moving_space(dataset):
    """from-T1w_to-MNI maps MNI -> T1w; from-MNI_to-T1w maps T1w -> MNI (nitransforms itself)."""
    files, matrix, _ = dataset
    t1w = _expected_t1w(matrix, MNI_POINTS)
    np.testing.assert_allclose(load(str(files["mni_to_t1w"]), fmt="itk").map(MNI_POINTS), t1w, atol=0.01)
    np.testing.assert_allclose(load(str(files["t1w_to_mni"]), fmt="itk").map(t1w), MNI_POINTS, atol=0.01)


def test_map_points_round_trip_and_direction(dataset):
    files, matrix, truth = dataset
    t1w = map_points(MNI_POINTS, files["mni_to_t1w"])
    np.testing.assert_allclose(t1w, _expected_t1w(matrix, MNI_POINTS), atol=0.01)
    np.testing.assert_allclose(map_points(t1w, files["t1w_to_mni"]), MNI_POINTS, atol=0.01)
    # the truth's T1w target is the same map
    target_t1w = map_points(truth["target_mni"], files["mni_to_t1w"])[0]
    np.testing.assert_allclose(target_t1w, truth["participants"]["01"]["target_t1w"], atol=0.01)
    # the wrong file moves the point by centimetres: the direction matters
    wrong = map_points(truth["target_mni"], files["t1w_to_mni"])[0]
    assert np.linalg.norm(wrong - target_t1w) > 10.0


def test_written_transform_of_a_known_matrix(tmp_path):
    """An off-centre affine with a large rotation, written and read back without the generator."""
    matrix = nb.affines.from_matvec(1.1 * synthetic._rotation(np.radians([20.0, -35.0, 50.0])),
                                    [-12.0, 30.0, 7.5])
    grid = synthetic._mni_grid(8.0).padded(5)
    path = tmp_path / "from-A_to-B_mode-image_xfm.h5"
    synthetic._write_itk_h5(path, matrix, centre_ras=[10.0, -20.0, 30.0], field_grid=grid)
    np.testing.assert_allclose(map_points(MNI_POINTS, path), _expected_t1w(matrix, MNI_POINTS), atol=0.01)


def test_map_points_shapes(dataset):
    files, _, _ = dataset
    assert map_points([1.0, 2.0, 3.0], files["mni_to_t1w"]).shape == (1, 3)
    assert map_points(np.empty((0, 3)), files["mni_to_t1w"]).shape == (0, 3)
    with pytest.raises(ValueError):
        map_points(np.zeros((4, 2)), files["mni_to_t1w"])


# --------------------------------------------------------------------------------------------
# Coil poses through an anisotropic transform: normals by J^-T, tangents by J
# --------------------------------------------------------------------------------------------
def _angle_deg(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b),
                                              -1.0, 1.0))))


def test_mapped_coil_normal_is_the_mapped_scalp_normal(tmp_path):
    """A sphere's coil poses mapped through an anisotropic, sheared affine written as fMRIPrep's
    .h5: the mapped coil z-axis is the normal of the mapped surface (measured independently, by
    a plane fitted to a mapped patch of the sphere) within 3 degrees, the handle lies in the
    mapped surface's tangent plane and keeps the sense of the mapped handle; carrying the normal
    like a tangent (the mistake) misses by more."""
    import pandas as pd

    from tmstarget.workflows.coil import coil_pose
    from tmstarget.workflows.transforms import AXIS_COLUMNS, map_targets_table, points_mapping

    scale_shear = np.array([[1.25, 0.18, 0.0], [0.0, 0.85, 0.22], [0.10, 0.0, 1.1]])
    matrix = nb.affines.from_matvec(scale_shear @ synthetic._rotation(np.radians([8.0, -5.0, 12.0])),
                                    [4.0, -9.0, 6.0])
    path = tmp_path / "from-A_to-B_mode-image_xfm.h5"
    synthetic._write_itk_h5(path, matrix, centre_ras=[0.0, -15.0, 10.0],
                            field_grid=synthetic._mni_grid(8.0).padded(5))

    centre, radius = np.array([0.0, -15.0, 10.0]), 80.0
    directions = np.array([[-0.6, 0.5, 0.6], [0.6, 0.5, 0.6], [-0.8, -0.2, 0.55], [0.1, 0.3, 0.95]])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    rows = []
    for k, outward in enumerate(directions):
        scalp = centre + radius * outward
        pose = coil_pose(scalp, outward, 45.0)
        cortex = scalp - 15.0 * outward
        row = {"name": f"p{k}", "x": cortex[0], "y": cortex[1], "z": cortex[2],
               "scalp_x": scalp[0], "scalp_y": scalp[1], "scalp_z": scalp[2],
               "coil_x": scalp[0], "coil_y": scalp[1], "coil_z": scalp[2]}
        for a, column in zip("xyz", range(3)):
            row.update(zip(AXIS_COLUMNS[a], pose[:3, column]))
        rows.append(row)
    table = pd.DataFrame(rows)
    mapped = map_targets_table(table, points_mapping(path))

    for k, outward in enumerate(directions):
        # The mapped surface near the mapped point: a patch of the sphere (±6 degrees), mapped.
        e1 = np.cross(outward, [0.0, 0.0, 1.0] if abs(outward[2]) < 0.9 else [1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(outward, e1)
        theta = np.radians(np.linspace(-6, 6, 7))
        patch = np.array([centre + radius * (np.cos(a) * np.cos(b) * outward + np.sin(a) * e1
                                             + np.cos(a) * np.sin(b) * e2)
                          for a in theta for b in theta])
        moved = map_points(patch, path)
        normal = np.linalg.svd(moved - moved.mean(axis=0))[2][-1]
        z_axis = mapped.loc[k, list(AXIS_COLUMNS["z"])].to_numpy(float)
        y_axis = mapped.loc[k, list(AXIS_COLUMNS["y"])].to_numpy(float)
        x_axis = mapped.loc[k, list(AXIS_COLUMNS["x"])].to_numpy(float)
        angle = min(_angle_deg(z_axis, normal), _angle_deg(z_axis, -normal))
        assert angle < 3.0, (k, angle)
        # Into the mapped head: towards the mapped sphere centre.
        assert np.dot(z_axis, map_points(centre, path)[0] - mapped.loc[k, ["coil_x", "coil_y", "coil_z"]].to_numpy(float)) > 0
        # A right-handed orthonormal frame; the handle tangent, along the mapped handle.
        frame = np.array([x_axis, y_axis, z_axis])
        np.testing.assert_allclose(frame @ frame.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(frame) == pytest.approx(1.0)
        assert abs(90.0 - _angle_deg(y_axis, normal)) < 3.0
        handle = table.loc[k, list(AXIS_COLUMNS["y"])].to_numpy(float)
        assert _angle_deg(y_axis, matrix[:3, :3] @ handle) < 1.0
        # The mistake this replaces: the normal carried like a tangent.
        wrong = matrix[:3, :3] @ table.loc[k, list(AXIS_COLUMNS["z"])].to_numpy(float)
        assert min(_angle_deg(wrong, normal), _angle_deg(wrong, -normal)) > 5.0, k


def test_map_measurements_moves_every_point_and_keeps_the_lengths(tmp_path):
    """The scalp measurements' points go through the transform (each sidecar in its own space);
    lengths on the head, the template's published coordinates and texts do not change."""
    from tmstarget.workflows.transforms import map_measurements, points_mapping

    matrix = nb.affines.from_matvec(1.05 * synthetic._rotation(np.radians([5.0, -3.0, 8.0])),
                                    [3.0, -7.0, 11.0])
    path = tmp_path / "from-A_to-B_mode-image_xfm.h5"
    synthetic._write_itk_h5(path, matrix, centre_ras=[0.0, 0.0, 0.0],
                            field_grid=synthetic._mni_grid(8.0).padded(5))
    measurements = {
        "HeadMeasurements_cm": {"NI": 36.0, "TT": 35.0, "HC": 57.0},
        "Fiducials": {"MNI152NLin2009cAsym_mm": {"Nz": [0.0, 86.0, -40.0]},
                      "Mapped_mm": {"Nz": [1.0, 84.0, -38.0], "Iz": [0.0, -118.0, -20.0]},
                      "Used_mm": {"Nz": [1.5, 85.0, -37.0], "Iz": [0.5, -117.0, -21.0]},
                      "DistanceToScalp_mm": {"Nz": 1.2}, "Source": "text"},
        "TenTwenty_mm": {"F3": [-40.0, 50.0, 45.0], "Cz": [0.0, -15.0, 95.0]},
        "BeamF3": {"X_cm": 6.9, "Y_cm": 9.8, "PointX": [-60.0, 60.0, 20.0], "F3": [-42.0, 48.0, 47.0]},
        "MotorHand": {"Mapped_mm": [-37.0, -21.0, 58.0], "Cortex_mm": [-38.0, -22.0, 60.0],
                      "Scalp_mm": [-50.0, -25.0, 75.0]},
        "FiveCm": {"Distance_mm": 50.0, "Scalp_mm": [-48.0, 24.0, 80.0]},
    }
    mapped = map_measurements(measurements, points_mapping(path))
    expected = lambda p: np.round(nb.affines.apply_affine(matrix, p), 2)  # noqa: E731
    for group, key in (("Fiducials", "Mapped_mm"), ("Fiducials", "Used_mm"), ("TenTwenty_mm", None)):
        source = measurements[group] if key is None else measurements[group][key]
        target = mapped[group] if key is None else mapped[group][key]
        for name, point in source.items():
            np.testing.assert_allclose(target[name], expected(point), atol=0.02)
    for group, key in (("BeamF3", "PointX"), ("BeamF3", "F3"), ("MotorHand", "Mapped_mm"),
                       ("MotorHand", "Cortex_mm"), ("MotorHand", "Scalp_mm"), ("FiveCm", "Scalp_mm")):
        np.testing.assert_allclose(mapped[group][key], expected(measurements[group][key]), atol=0.02)
    assert mapped["HeadMeasurements_cm"] == measurements["HeadMeasurements_cm"]
    assert mapped["Fiducials"]["MNI152NLin2009cAsym_mm"] == measurements["Fiducials"]["MNI152NLin2009cAsym_mm"]
    assert mapped["Fiducials"]["DistanceToScalp_mm"] == {"Nz": 1.2}
    assert mapped["BeamF3"]["X_cm"] == 6.9 and mapped["FiveCm"]["Distance_mm"] == 50.0
    assert measurements["TenTwenty_mm"]["F3"] == [-40.0, 50.0, 45.0]  # the input is not modified


# --------------------------------------------------------------------------------------------
# A transform read once (ReadTransform) maps as nitransforms does, exactly where it should
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nonlinear(tmp_path_factory):
    """A participant whose transforms hold a displacement field (fMRIPrep's kind), both ways."""
    root = tmp_path_factory.mktemp("xfm-nonlinear") / "fmriprep"
    synthetic.make_fmriprep_dataset(root, n_volumes=20, voxel_size=4.0, anat_voxel_size=4.0,
                                    seed=6, templateflow_home=False, confounds_tsv=False,
                                    warp="nonlinear")
    anat = root / "sub-01" / "anat"
    return {"mni_to_t1w": anat / "sub-01_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5",
            "t1w_to_mni": anat / "sub-01_from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5"}


def _field_and_affine_only(path):
    """nitransforms' chain of ``path``: its displacement field, and the chain without it."""
    from nitransforms.nonlinear import DenseFieldTransform

    field, = [t for t in load(str(path), fmt="itk").transforms if isinstance(t, DenseFieldTransform)]
    affine_only = load(str(path), fmt="itk")
    affine_only.transforms = [t for t in affine_only.transforms if not isinstance(t, DenseFieldTransform)]
    return field, affine_only


def _points_near_faces(field, low, high, n, rng):
    """World points of the field's grid between ``low`` and ``high`` voxels inside a face."""
    shape = np.array(field.reference.shape)
    ijk = rng.uniform(high, shape - 1 - high, (n, 3))
    axis, depth = rng.integers(0, 3, n), rng.uniform(low, high, n)
    ijk[np.arange(n), axis] = np.where(rng.integers(0, 2, n), shape[axis] - 1 - depth, depth)
    return nb.affines.apply_affine(field.reference.affine, ijk)


@pytest.mark.filterwarnings("ignore:Reference space not set")  # nitransforms' map, for points
@pytest.mark.parametrize("direction", ["mni_to_t1w", "t1w_to_mni"])
def test_a_transform_read_once_maps_as_nitransforms(nonlinear, direction, tmp_path):
    """The steps map points through the spline coefficients of the displacements computed once
    (in the step from the .h5, or by ReadTransform for the whole graph: the same bits).
    nitransforms interpolates the mapped positions instead and computes the splines at every
    map: inside the field the two agree (to its float32 arithmetic), on the field's grid too
    (nitransforms reads the field there), and off the field both move a point by the affine
    only."""
    from tmstarget.workflows.transforms import ReadTransform, points_mapping, transform_source

    path = nonlinear[direction]
    chain = load(str(path), fmt="itk")
    field, affine_only = _field_and_affine_only(path)
    rng = np.random.default_rng(1)
    # where the field is met (8 voxels or more inside every face; the t1w_to_mni file applies
    # its affine first), then the points that meet it there
    before_field = chain.transforms[:chain.transforms.index(field)]
    to_points = (lambda q: np.asarray(before_field[0].map(q, inverse=True))) if before_field else np.asarray
    inside = to_points(_points_near_faces(field, 8, 20, 300, rng))
    on_grid = to_points(nb.affines.apply_affine(field.reference.affine,
                                                rng.integers(8, 20, (50, 3)).astype(float)))
    off_field = np.array([[400.0, -380.0, 350.0], [-500.0, 10.0, 2.0]])
    # the field moves points: the test sees it
    assert np.abs(np.asarray(chain.map(inside)) - np.asarray(affine_only.map(inside))).max() > 0.5

    mapping_file = ReadTransform(xfm_file=str(path)).run(cwd=str(tmp_path)).outputs.mapping_file
    assert transform_source(mapping_file) == path and transform_source(path) == path
    read_here, read_once = points_mapping(path), points_mapping(mapping_file)
    for points in (inside, on_grid, np.r_[on_grid, inside]):
        assert np.array_equal(read_once(points), read_here(points))
        np.testing.assert_allclose(read_once(points), np.asarray(chain.map(points)), rtol=0, atol=1e-4)
    assert np.array_equal(read_once(off_field), np.asarray(affine_only.map(off_field)))
    assert np.array_equal(read_once(off_field), np.asarray(chain.map(off_field)))


def _nitransforms_reading(path):
    """Each transform of ``path`` as nitransforms reads it (``ITKCompositeH5``), in the order
    ITK applies them: ('affine', RAS matrix) or ('field', grid affine, spline coefficients of
    its RAS displacements, computed from nitransforms' image as SplineField computes them)."""
    from nitransforms.io.itk import ITKCompositeH5, ITKLinearTransform
    from scipy.ndimage import spline_filter

    parts = []
    for part in ITKCompositeH5.from_filename(str(path)):
        if isinstance(part, ITKLinearTransform):
            parts.insert(0, ("affine", part.to_ras()))
            continue
        displacements = np.asanyarray(part.dataobj)
        coefficients = np.stack([spline_filter(displacements[..., axis], order=3, mode="constant")
                                 for axis in range(3)])
        parts.insert(0, ("field", part.affine, coefficients))
    return parts


def _oblique_composite(path, spelling="Transform"):
    """An ITK composite as antsRegistration writes one, with what the generator never makes: an
    oblique, anisotropic field grid (the direction cosines of a rotation, some axes reversed), a
    float64 field of rough random vectors, two affines around it, and ``spelling`` for ITK's
    dataset names (old ITK wrote ``Tranform``)."""
    rng = np.random.default_rng(4)
    shape = np.array([9, 11, 7])
    c, s = np.cos(np.deg2rad(23.0)), np.sin(np.deg2rad(23.0))
    rotation = (np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])      # about z, then x
                @ np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]]) @ np.diag([1.0, -1.0, -1.0]))
    vlen = h5py.string_dtype("ascii")
    with h5py.File(path, "w") as f:
        group = f.create_group("TransformGroup")
        group.create_group("0").create_dataset("TransformType", data=[b"CompositeTransform_double_3_3"],
                                               dtype=vlen)
        for name, kind in zip("123", ("affine", "field", "affine")):
            sub = group.create_group(name)
            if kind == "affine":
                sub.create_dataset("TransformType", data=[b"AffineTransform_double_3_3"], dtype=vlen)
                matrix = np.eye(3) + rng.uniform(-0.1, 0.1, (3, 3))
                sub.create_dataset(f"{spelling}Parameters", data=np.r_[matrix.ravel(), rng.uniform(-9, 9, 3)])
                sub.create_dataset(f"{spelling}FixedParameters", data=rng.uniform(-5, 5, 3))
                continue
            sub.create_dataset("TransformType", data=[b"DisplacementFieldTransform_double_3_3"], dtype=vlen)
            sub.create_dataset(f"{spelling}FixedParameters", data=np.r_[
                shape.astype(float), rng.uniform(-90, 90, 3), [2.0, 2.5, 3.0], rotation.ravel()])
            sub.create_dataset(f"{spelling}Parameters", data=rng.normal(0.0, 2.0, 3 * shape.prod()))
    return path


@pytest.mark.parametrize("spelling", ["Transform", "Tranform"])
def test_the_transforms_are_read_as_nitransforms_reads_them_to_the_bit(nonlinear, tmp_path, spelling):
    """read_transform takes the displacement fields from the .h5 itself (nitransforms' reader
    spends most of its time on a sign flip and a copy): each transform must be the one
    nitransforms reads, in the same order, its grid's affine and spline coefficients equal to
    the bit. On the generator's files and on an oblique grid of rough float64 vectors between
    two affines (a sign, axis or order mistake changes every coefficient)."""
    from tmstarget.workflows.transforms import SplineField, read_transform

    files = [*nonlinear.values(), _oblique_composite(tmp_path / "oblique_xfm.h5", spelling)]
    for path in files:
        expected, read = _nitransforms_reading(path), read_transform(path)
        assert [kind for kind, *_ in expected] == [
            "field" if isinstance(t, SplineField) else "affine" for t in read]
        for (kind, *want), transform in zip(expected, read):
            if kind == "affine":
                assert np.array_equal(transform.matrix, want[0])
            else:
                assert np.array_equal(transform.affine, want[0])
                assert transform.coefficients.shape == want[1].shape
                assert np.array_equal(transform.coefficients, want[1])


@pytest.mark.filterwarnings("ignore:Reference space not set")
def test_a_zero_displacement_field_moves_no_point_up_to_its_faces(dataset):
    """The generator's similarity transforms hold a zero displacement field (a padded grid, as
    antsRegistration writes a composite): every point of the field, up to a fraction of a
    voxel from its faces, goes exactly where the affine alone sends it. A spline through the
    field's mapped positions (nitransforms' map) bends within a few voxels of the faces, its
    boundary condition mirroring the coordinates: the reading must not."""
    from tmstarget.workflows.transforms import points_mapping

    files, _, _ = dataset
    rng = np.random.default_rng(2)
    for path in files.values():
        field, affine_only = _field_and_affine_only(path)
        assert not np.any(field._deltas)  # nitransforms reads a zero field
        points = np.r_[_points_near_faces(field, 0.05, 1.0, 200, rng),
                       _points_near_faces(field, 1.0, 4.0, 200, rng)]
        assert np.array_equal(points_mapping(path)(points), np.asarray(affine_only.map(points)))


@pytest.mark.parametrize("space", ["MNI152NLin2009cAsym", "T1w"])
def test_each_transform_file_is_read_by_one_step(one_run_dataset, space, tmp_path):
    """Reading fMRIPrep's 1 mm displacement field takes seconds: in the participant graph the
    command line builds, each .h5 the participant's inputs name is read by one step (a
    ReadTransform shared by the steps that map with it, or the one step that needs it). In a T1w
    computation the transform to the targets' other space (MNI) is the regions' own."""
    from collections import Counter

    from tmstarget.collect import collect_participant, load_layout
    from tmstarget.config import Options
    from tmstarget.participant import init_participants_wf

    root, _ = one_run_dataset
    inputs = collect_participant(load_layout(root, ["01"]), "01", space=space)
    workflow = init_participants_wf([inputs], Options(), tmp_path / "out", root, cpus=1)
    graph = workflow._create_flat_graph()
    inputnode = next(node for node in graph.nodes if node.fullname.endswith("connectivity_wf.inputnode"))
    given = {field: getattr(inputnode.inputs, field) for field in
             ("to_mni_xfm", "from_mni_xfm", "to_other_xfm", "from_other_xfm")}
    files = {field: path for field, path in given.items() if isinstance(path, str)}
    assert space != "T1w" or files["to_other_xfm"] == files["to_mni_xfm"]  # the face's T1w inputs
    readers = Counter()
    for _, _, data in graph.out_edges(inputnode, data=True):
        for field in {source for source, _ in data["connect"] if source in files}:
            readers[files[field]] += 1
    assert readers and max(readers.values()) == 1, readers
