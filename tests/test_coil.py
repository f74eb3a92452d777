"""Coil pose (SimNIBS matsimnibs convention) and the Stokes depth adjustment."""

from __future__ import annotations

import numpy as np
import pytest

from tmstarget.workflows.coil import coil_pose, depth_dose_adjustment

MIRROR = np.diag([-1.0, 1.0, 1.0])  # left-right mirror of RAS coordinates


def unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


# A left-DLPFC-like scalp point on a head centred at the origin, and its mirror on the right.
LEFT_NORMAL = unit([-0.6, 0.5, 0.62])
LEFT_POINT = 90.0 * LEFT_NORMAL
RIGHT_NORMAL = MIRROR @ LEFT_NORMAL
RIGHT_POINT = MIRROR @ LEFT_POINT


def assert_rotation(pose):
    rotation = pose[:3, :3]
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-12)  # right-handed
    np.testing.assert_allclose(pose[3], [0, 0, 0, 1])
    # x = y cross z, the SimNIBS column order.
    np.testing.assert_allclose(np.cross(pose[:3, 1], pose[:3, 2]), pose[:3, 0], atol=1e-12)


def test_pose_orthonormal_right_handed_z_into_head():
    pose = coil_pose(LEFT_POINT, 3.0 * LEFT_NORMAL)  # normal need not be unit
    assert_rotation(pose)
    np.testing.assert_allclose(pose[:3, 2], -LEFT_NORMAL, atol=1e-12)  # into the head
    np.testing.assert_allclose(pose[:3, 3], LEFT_POINT)
    # Handle tangent to the scalp.
    assert abs(np.dot(pose[:3, 1], LEFT_NORMAL)) < 1e-12


def test_offset_moves_centre_outwards():
    pose = coil_pose(LEFT_POINT, LEFT_NORMAL, coil_offset_mm=4.0)
    np.testing.assert_allclose(pose[:3, 3], LEFT_POINT + 4.0 * LEFT_NORMAL)


def test_left_handle_posterior_and_lateral_at_45_degrees():
    """Left hemisphere: handle backwards (y < 0) and away from the midline (x < 0), 45 degrees
    from the posterior direction projected onto the scalp."""
    handle = coil_pose(LEFT_POINT, LEFT_NORMAL, 45.0)[:3, 1]
    assert handle[1] < 0 and handle[0] < 0
    posterior = np.array([0.0, -1.0, 0.0])
    posterior_tangent = unit(posterior - np.dot(posterior, LEFT_NORMAL) * LEFT_NORMAL)
    angle = np.degrees(np.arccos(np.dot(handle, posterior_tangent)))
    assert angle == pytest.approx(45.0, abs=1e-9)
    # More lateral than the straight-back handle.
    straight = coil_pose(LEFT_POINT, LEFT_NORMAL, 0.0)[:3, 1]
    np.testing.assert_allclose(straight, posterior_tangent, atol=1e-12)
    assert handle[0] < straight[0]
    # A negative angle turns it medially.
    medial = coil_pose(LEFT_POINT, LEFT_NORMAL, -45.0)[:3, 1]
    assert medial[0] > straight[0]


def test_right_point_mirrors_left():
    """The mirror point gets the mirrored handle (x > 0 on the right), still a proper rotation."""
    left = coil_pose(LEFT_POINT, LEFT_NORMAL, 45.0)
    right = coil_pose(RIGHT_POINT, RIGHT_NORMAL, 45.0)
    assert_rotation(right)
    assert right[:3, 1][0] > 0 and right[:3, 1][1] < 0
    np.testing.assert_allclose(right[:3, 1], MIRROR @ left[:3, 1], atol=1e-12)
    np.testing.assert_allclose(right[:3, 2], MIRROR @ left[:3, 2], atol=1e-12)
    # A mirror reverses handedness, so the x axis of the right pose is minus the mirrored one.
    np.testing.assert_allclose(right[:3, 0], -(MIRROR @ left[:3, 0]), atol=1e-12)


def test_vertex_and_back_of_head_are_defined():
    top = coil_pose([0.0, 0.0, 100.0], [0.0, 0.0, 1.0], 45.0)
    assert_rotation(top)
    assert top[:3, 1][1] < 0 and top[:3, 1][0] < 0  # midline: the left side is taken
    back = coil_pose([0.0, -100.0, 0.0], [0.0, -1.0, 0.0], 0.0)  # posterior is the normal here
    assert_rotation(back)
    np.testing.assert_allclose(back[:3, 1], [0.0, 0.0, -1.0], atol=1e-12)
    with pytest.raises(ValueError):
        coil_pose([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])


def test_depth_adjustment_stokes():
    assert depth_dose_adjustment(23.0, 20.0) == pytest.approx(8.4)  # 3 mm deeper: +8.4 % MSO
    assert depth_dose_adjustment(18.0, 20.0) == pytest.approx(-5.6)
    assert depth_dose_adjustment(20.0, 20.0) == 0.0
    assert depth_dose_adjustment(21.0, 20.0, slope=3.0) == pytest.approx(3.0)
    assert np.isnan(depth_dose_adjustment(float("nan"), 20.0))


def test_head_axes_can_be_given():
    """A head yawed by 30 degrees in its space, with its own axes given, gets the same pose
    relative to the head as the unrotated head."""
    angle = np.radians(30.0)
    yaw = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0],
                    [0.0, 0.0, 1.0]])
    reference = coil_pose(LEFT_POINT, LEFT_NORMAL, 45.0)
    rotated = coil_pose(yaw @ LEFT_POINT, yaw @ LEFT_NORMAL, 45.0,
                        posterior=yaw @ [0.0, -1.0, 0.0], left_right=yaw @ [1.0, 0.0, 0.0])
    np.testing.assert_allclose(rotated[:3, :3], yaw @ reference[:3, :3], atol=1e-12)
    np.testing.assert_allclose(rotated[:3, 3], yaw @ reference[:3, 3], atol=1e-12)


def test_coil_frame_is_gram_schmidt_and_broadcasts():
    from tmstarget.workflows.coil import coil_frame

    x, y, z = coil_frame([0.0, 0.0, -3.0], [0.0, -2.0, 5.0])  # handle tilted out of the plane
    np.testing.assert_allclose(z, [0, 0, -1])
    np.testing.assert_allclose(y, [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(x, np.cross(y, z))
    np.testing.assert_allclose(x, [1, 0, 0], atol=1e-12)  # handle posterior, normal down: x right
    rng = np.random.default_rng(0)
    inward, handle = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    frames = coil_frame(inward, handle)
    for k in range(5):
        axes = np.array([axis[k] for axis in frames])
        np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(axes) == pytest.approx(1.0)
        assert np.dot(axes[1], handle[k]) > 0  # the handle keeps its sense
    with pytest.raises(ValueError, match="parallel"):
        coil_frame([0, 0, -1], [0, 0, 2])


def test_coil_pose_axes_are_those_of_coil_frame():
    from tmstarget.workflows.coil import coil_frame

    pose = coil_pose([-40, 40, 50], [-0.6, 0.3, 0.7], 45.0)
    frame = coil_frame(pose[:3, 2], pose[:3, 1])
    np.testing.assert_allclose(np.column_stack(frame), pose[:3, :3], atol=1e-12)


def test_plan_distances_known_answer():
    from tmstarget.workflows.coil import plan_distances

    names = ["connectivity", "F3_1020", "motor_hand"]
    cortex = [[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 10.0]]
    distance, dose = plan_distances(names, cortex, [20.0, 15.0, 14.0])
    np.testing.assert_allclose(distance, [0.0, 5.0, 10.0])
    np.testing.assert_allclose(dose, [2.8 * 6, 2.8 * 1, 0.0])
    distance, dose = plan_distances(["F3_1020"], [[1.0, 2.0, 3.0]], [15.0])
    assert np.isnan(distance).all() and np.isnan(dose).all()  # no reference rows
