"""Neuronavigation exports: Brainsight, Localite InstrumentMarkers, NIBS-BIDS markers.

The round trips alone cannot catch a convention error made the same way in writer and reader, so
the files' numbers are also checked against the device conventions (as SimNIBS's nnav.py and real
exports in its test data show them), and real device lines are read.
"""

import json
import xml.etree.ElementTree as ET

import nibabel as nb
import numpy as np
import pytest

from tmstarget import exports as E

BRAIN_CENTRE = np.array([0.0, 0.0, 20.0])


def _rotation(axis, angle_deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def dlpfc_pose():
    """Left DLPFC: centre (-45, 45, 45) mm, normal into the head toward the brain centre, handle
    pointing posterior and 45 degrees from the midline (posterolateral)."""
    centre = np.array([-45.0, 45.0, 45.0])
    handle = np.array([-np.sin(np.pi / 4), -np.cos(np.pi / 4), 0.0])
    return E.pose_from_vectors(centre, BRAIN_CENTRE - centre, handle)


def vertex_pose():
    return E.pose_from_vectors([2.0, -12.0, 88.0], [0, 0, -1], [0, -1, 0])


def tilted_pose():
    m = np.eye(4)
    m[:3, :3] = _rotation([0.3, -0.5, 0.8], 37.0)
    m[:3, 3] = [61.25, -18.5, 52.125]
    return m


POSES = {
    "identity": np.eye(4),
    "identity_shifted": np.array([[1, 0, 0, 10.0], [0, 1, 0, -20.0], [0, 0, 1, 70.0], [0, 0, 0, 1]]),
    "vertex": vertex_pose(),
    "left_dlpfc": dlpfc_pose(),
    "tilted_right": tilted_pose(),
}


def assert_same_pose(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == (4, 4)
    np.testing.assert_allclose(got[:3, 3], want[:3, 3], atol=0.01)        # positions to 0.01 mm
    np.testing.assert_allclose(got[:3, :3], want[:3, :3], atol=1e-6)      # axes to 1e-6
    np.testing.assert_allclose(got[3], [0, 0, 0, 1])
    r = got[:3, :3]
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-9)
    assert np.linalg.det(r) > 0                                            # right-handed


def one(name, pose):
    return [{"name": name, "pose": pose}]


# --- the test pose itself -----------------------------------------------------------------------
def test_dlpfc_pose_is_the_described_one():
    m = dlpfc_pose()
    x, y, z, c = m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3]
    np.testing.assert_allclose(c, [-45, 45, 45])
    np.testing.assert_allclose(z, (BRAIN_CENTRE - c) / np.linalg.norm(BRAIN_CENTRE - c))
    assert y[1] < 0 and y[0] < 0                      # handle posterior and lateral (left)
    horiz = y[:2] / np.linalg.norm(y[:2])
    assert np.degrees(np.arccos(horiz @ [0, -1])) == pytest.approx(45.0, abs=1e-9)
    np.testing.assert_allclose(np.cross(y, z), x, atol=1e-12)
    assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0)


# --- round trips ------------------------------------------------------------------------------
FORMATS = {
    "brainsight": (E.brainsight_targets, E.read_brainsight_targets),
    "localite_ras": (lambda t: E.localite_instrument_markers(t, "RAS"), E.read_localite_instrument_markers),
    "localite_lps": (lambda t: E.localite_instrument_markers(t, "LPS"), E.read_localite_instrument_markers),
    "nibs": (lambda t: E.nibs_markers(t, "01")[0], E.read_nibs_markers),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("pose_name", POSES)
def test_round_trip(fmt, pose_name):
    write, read = FORMATS[fmt]
    back = read(write(one(pose_name, POSES[pose_name])))
    assert [b["name"] for b in back] == [pose_name]
    assert_same_pose(back[0]["pose"], POSES[pose_name])


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_many_targets_keeps_order_and_hemisphere(fmt):
    write, read = FORMATS[fmt]
    targets = [{"name": n, "pose": p} for n, p in POSES.items()]
    back = read(write(targets))
    assert [b["name"] for b in back] == list(POSES)
    for b in back:
        assert_same_pose(b["pose"], POSES[b["name"]])
    dl = {b["name"]: b for b in back}["left_dlpfc"]["pose"]
    assert dl[0, 3] < 0                                # still on the left


def test_writers_do_not_modify_inputs():
    pose = dlpfc_pose()
    keep = pose.copy()
    for write, _ in FORMATS.values():
        write(one("t", pose))
    np.testing.assert_array_equal(pose, keep)


# --- Brainsight -------------------------------------------------------------------------------
BRAINSIGHT_HEADER = [
    "# Version: 12",
    "# Coordinate system: NIfTI:Aligned",
    None,  # "# Created by: ..." (checked separately)
    "# Units: millimetres, degrees, milliseconds, and microvolts",
    "# Encoding: UTF-8",
    "# Notes: Each column is delimited by a tab. Each value within a column is delimited by a semicolon.",
    "# Target Name\tLoc. X\tLoc. Y\tLoc. Z\tm0n0\tm0n1\tm0n2\tm1n0\tm1n1\tm1n2\tm2n0\tm2n1\tm2n2",
]


def test_brainsight_header_matches_the_real_format():
    lines = E.brainsight_targets(one("connectivity", dlpfc_pose())).splitlines()
    assert len(lines) == len(BRAINSIGHT_HEADER) + 1
    for got, want in zip(lines, BRAINSIGHT_HEADER):
        if want is None:
            assert got.startswith("# Created by: tmstarget")
        else:
            assert got == want
    assert all(line.startswith("#") for line in lines[:7])
    assert not lines[7].startswith("#")
    assert len(lines[7].split("\t")) == 13


def test_brainsight_columns_are_nifti_aligned_position_and_brainsight_axes():
    m = dlpfc_pose()
    line = E.brainsight_targets(one("connectivity", m)).splitlines()[-1]
    fields = line.split("\t")
    assert fields[0] == "connectivity"
    vals = np.array(fields[1:], float)
    np.testing.assert_allclose(vals[0:3], [-45.0, 45.0, 45.0], atol=1e-4)   # Loc. = RAS centre, unchanged
    m0, m1, m2 = vals[3:6], vals[6:9], vals[9:12]                          # m{i}n0..2 = Brainsight axis i
    np.testing.assert_allclose(m0, -m[:3, 0], atol=1e-8)
    np.testing.assert_allclose(m1, m[:3, 1], atol=1e-8)                    # handle axis kept
    np.testing.assert_allclose(m2, -m[:3, 2], atol=1e-8)                   # Brainsight z points out of the head
    assert m2 @ (BRAIN_CENTRE - m[:3, 3]) < 0
    assert np.linalg.det(np.column_stack([m0, m1, m2])) == pytest.approx(1.0, abs=1e-7)


def test_brainsight_real_export_line_reads_as_simnibs_does():
    # A target line of a real Brainsight 2.3.5 export (SimNIBS test data niiImage_niftialignedcoord.txt)
    # and the matsimnibs SimNIBS's tests expect for it (test_nnav.py, arr_sample2).
    text = "\n".join([
        "# Version: 7",
        "# Coordinate system: NIfTI:Aligned",
        "# Created by: Brainsight 2.3.5",
        "# units: millimetres, degrees, milliseconds, and microvolts",
        "# Encoding: UTF-8",
        "# Notes: Each column is delimited by a tab. Each value within a column is delimited by a semicolon.",
        "# Target Name\tLoc. X\tLoc. Y\tLoc. Z\tm0n0\tm0n1\tm0n2\tm1n0\tm1n1\tm1n2\tm2n0\tm2n1\tm2n2",
        "Sample 1\t-44.198\t75.810\t65.742\t0.712\t0.013\t0.702\t0.321\t0.883\t-0.342\t-0.624\t0.469\t0.624",
        "# Sample Name\tSession Name\tIndex\tLoc. X",
        "Sample 1\tSession 1\t1\t-44.198",
    ]) + "\r\n"
    (t,) = E.read_brainsight_targets(text)
    want = np.array([[-0.712, 0.321, 0.624, -44.198],
                     [-0.013, 0.883, -0.469, 75.81],
                     [-0.702, -0.342, -0.624, 65.742]])
    np.testing.assert_allclose(t["pose"][:3], want, atol=2e-3)
    z, c = t["pose"][:3, 2], t["pose"][:3, 3]
    assert z @ (BRAIN_CENTRE - c) / np.linalg.norm(BRAIN_CENTRE - c) > 0.8  # into the head


@pytest.mark.parametrize("system", ["Brainsight", "World", "NIfTI:Scanner:Extra", ""])
def test_brainsight_reader_refuses_non_nifti_spaces(system):
    text = E.brainsight_targets(one("t", dlpfc_pose())).replace(
        "# Coordinate system: NIfTI:Aligned", f"# Coordinate system: {system}")
    with pytest.raises(ValueError, match="coordinate system"):
        E.read_brainsight_targets(text)


def test_brainsight_other_nifti_labels():
    text = E.brainsight_targets(one("t", dlpfc_pose()), coordinate_system="NIfTI:S:Aligned")
    assert text.splitlines()[:2] == ["# Version: 14", "# Coordinate system: NIfTI:S:Aligned"]
    assert_same_pose(E.read_brainsight_targets(text)[0]["pose"], dlpfc_pose())
    with pytest.raises(ValueError):
        E.brainsight_targets(one("t", dlpfc_pose()), coordinate_system="Brainsight")


def _image(q_code, s_code, q_aff=np.eye(4), s_aff=np.eye(4)):
    img = nb.Nifti1Image(np.zeros((2, 2, 2), np.float32), None)
    img.set_qform(q_aff, code=q_code)
    img.set_sform(s_aff, code=s_code)
    return img


def test_brainsight_coordinate_system_label_follows_xform_code():
    assert E.brainsight_coordinate_system(_image(2, 2)) == "NIfTI:Aligned"
    assert E.brainsight_coordinate_system(_image(1, 1)) == "NIfTI:Scanner"
    assert E.brainsight_coordinate_system(_image(0, 4)) == "NIfTI:MNI-152"
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    with pytest.raises(ValueError, match="differ"):
        E.brainsight_coordinate_system(_image(1, 1, s_aff=shifted))
    with pytest.raises(ValueError):
        E.brainsight_coordinate_system(_image(0, 0))


# --- Localite ---------------------------------------------------------------------------------
def _localite_matrix(text, index=0):
    root = ET.fromstring(text.encode())
    matrix = list(root.iter("InstrumentMarker"))[index].find("Marker").find("Matrix4D")
    return np.array([[float(matrix.get(f"data{r}{c}")) for c in range(4)] for r in range(4)])


def test_localite_file_structure_and_header():
    text = E.localite_instrument_markers([{"name": "connectivity", "pose": dlpfc_pose()},
                                          {"name": "F3 <Beam> & co", "pose": vertex_pose()}])
    lines = text.splitlines()
    assert lines[0] == '<?xml version="1.0" encoding="UTF-8"?>'
    assert lines[1] == '<InstrumentMarkerList coordinateSpace="RAS">'
    assert lines[-1] == "</InstrumentMarkerList>"
    root = ET.fromstring(text.encode())
    assert root.tag == "InstrumentMarkerList" and root.get("coordinateSpace") == "RAS"
    markers = list(root)
    assert [m.tag for m in markers] == ["InstrumentMarker", "InstrumentMarker"]
    assert [m.get("index") for m in markers] == ["0", "1"]
    descriptions = []
    for m in markers:
        (marker,) = list(m)
        assert marker.tag == "Marker" and marker.get("set") == "true"
        descriptions.append(marker.get("description"))
        (matrix,) = list(marker)
        assert matrix.tag == "Matrix4D"
        assert sorted(matrix.attrib) == sorted(f"data{r}{c}" for r in range(4) for c in range(4))
    assert descriptions == ["connectivity", "F3 <Beam> & co"]
    assert [t["name"] for t in E.read_localite_instrument_markers(text)] == descriptions


def test_localite_axes_are_nnav_mapping():
    m = dlpfc_pose()
    loc = _localite_matrix(E.localite_instrument_markers(one("c", m), "RAS"))
    np.testing.assert_allclose(loc[:3, 0], m[:3, 2], atol=1e-9)    # Localite x = coil normal, into the head
    np.testing.assert_allclose(loc[:3, 1], -m[:3, 1], atol=1e-9)   # Localite y = opposite the handle
    np.testing.assert_allclose(loc[:3, 2], m[:3, 0], atol=1e-9)    # Localite z = tmstarget x
    np.testing.assert_allclose(loc[:3, 3], m[:3, 3], atol=1e-9)    # RAS position unchanged
    np.testing.assert_allclose(loc[3], [0, 0, 0, 1])
    assert loc[:3, 0] @ (BRAIN_CENTRE - m[:3, 3]) > 0
    assert np.linalg.det(loc[:3, :3]) == pytest.approx(1.0)


def test_localite_lps_negates_x_and_y():
    m = dlpfc_pose()
    ras_text = E.localite_instrument_markers(one("c", m), "RAS")
    lps_text = E.localite_instrument_markers(one("c", m), coordinate_space="lps")
    assert lps_text.splitlines()[1] == '<InstrumentMarkerList coordinateSpace="LPS">'
    ras, lps = _localite_matrix(ras_text), _localite_matrix(lps_text)
    np.testing.assert_allclose(lps[:3, 3], [45.0, -45.0, 45.0], atol=1e-9)
    np.testing.assert_allclose(lps[0], -ras[0], atol=1e-12)         # position and axes: x negated
    np.testing.assert_allclose(lps[1], -ras[1], atol=1e-12)         # y negated
    np.testing.assert_allclose(lps[2:], ras[2:], atol=1e-12)        # z unchanged
    assert np.linalg.det(lps[:3, :3]) == pytest.approx(1.0)


def _localite_file(space, rows):
    attrs = " ".join(f'data{r}{c}="{rows[r][c]}"' for r in range(4) for c in range(4))
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<InstrumentMarkerList coordinateSpace="{space}">\n'
            f'  <InstrumentMarker alwaysVisible="false" index="0" selected="false">\n'
            f'    <Marker color="#0000ff" description="real" set="true">\n'
            f'      <Matrix4D {attrs}/>\n    </Marker>\n  </InstrumentMarker>\n</InstrumentMarkerList>\n')


def test_localite_real_markers_read_as_simnibs_does():
    # Matrices of real InstrumentMarker files (SimNIBS test data: RAS_InstrumentMarker20170316160859032.xml
    # "M0", LPS_InstrumentMarker20120925123537421.xml "hotspot") and the matsimnibs SimNIBS's tests
    # expect for them (test_nnav.py arr_im_0, arr_im_lps_0).
    ras = [["0.7265942667645653", "-0.5155009532533439", "-0.4542808568975744", "-41.837674747395575"],
           ["0.04949249463932184", "-0.6201864008744066", "0.782924568134545", "-34.1115598830028"],
           ["-0.685319504116932", "-0.5913367514447083", "-0.425099496484739", "88.60916741149502"],
           ["0.0", "0.0", "0.0", "1.0"]]
    want_ras = [[-4.54280857e-01, +5.15500953e-01, +7.26594267e-01, -4.18376747e+01],
                [+7.82924568e-01, +6.20186401e-01, +4.94924946e-02, -3.41115599e+01],
                [-4.25099496e-01, +5.91336751e-01, -6.85319504e-01, +8.86091674e+01]]
    lps = [["-0.349056140613181800", "+0.56477344307721900", "+0.74783276125888560", "36.237570946032804"],
           ["-0.010511085286115066", "+0.79561407736941440", "-0.60576466312824820", "35.691391691174246"],
           ["-0.937076516568147800", "-0.21929949385138790", "-0.27176902731949915", "101.91661045854771"],
           ["0.0", "0.0", "0.0", "1.0"]]
    want_lps = [[-7.47832761e-01, +5.64773443e-01, +3.49056141e-01, -3.62375709e+01],
                [+6.05764663e-01, +7.95614077e-01, +1.05110853e-02, -3.56913917e+01],
                [-2.71769027e-01, +2.19299494e-01, -9.37076517e-01, +1.01916610e+02]]
    for space, rows, want in (("RAS", ras, want_ras), ("LPS", lps, want_lps)):
        (t,) = E.read_localite_instrument_markers(_localite_file(space, rows))
        # The real matrices are orthonormal to ~3e-5 only; the reader returns the nearest rotation.
        np.testing.assert_allclose(t["pose"][:3], want, atol=1e-4)
        c, z = t["pose"][:3, 3], t["pose"][:3, 2]
        assert c[0] < 0                                             # both are left motor cortex
        head_centre = np.array([0.0, -20.0, 30.0])
        assert z @ (head_centre - c) / np.linalg.norm(head_centre - c) > 0.8   # normal into the head


def test_localite_reader_needs_a_coordinate_space():
    text = E.localite_instrument_markers(one("c", dlpfc_pose())).replace(' coordinateSpace="RAS"', "")
    with pytest.raises(ValueError, match="coordinateSpace"):
        E.read_localite_instrument_markers(text)
    with pytest.raises(ValueError):
        E.localite_instrument_markers(one("c", dlpfc_pose()), "LAS")


# --- NIBS-BIDS --------------------------------------------------------------------------------
def test_nibs_markers_columns_and_values():
    m = dlpfc_pose()
    tsv, coordsystem = E.nibs_markers([{"name": "connectivity", "pose": m, "target": [-38.0, 44.0, 26.0]},
                                       {"name": "beam_f3", "pose": vertex_pose()}], "sub-07")
    lines = tsv.splitlines()
    header = lines[0].split("\t")
    assert header == ["target_id", "target_label", "target_x", "target_y", "target_z",
                      "coil_x", "coil_y", "coil_z", "normal_x", "normal_y", "normal_z",
                      "direction_x", "direction_y", "direction_z", "coil_transform"]
    row = dict(zip(header, lines[1].split("\t")))
    assert row["target_id"] == "connectivity"
    np.testing.assert_allclose([float(row[f"target_{a}"]) for a in "xyz"], [-38, 44, 26])
    np.testing.assert_allclose([float(row[f"coil_{a}"]) for a in "xyz"], [-45, 45, 45])
    np.testing.assert_allclose([float(row[f"normal_{a}"]) for a in "xyz"], m[:3, 2], atol=1e-8)
    np.testing.assert_allclose([float(row[f"direction_{a}"]) for a in "xyz"], m[:3, 1], atol=1e-8)
    np.testing.assert_allclose(np.array(json.loads(row["coil_transform"])), m, atol=1e-4)
    row2 = dict(zip(header, lines[2].split("\t")))
    assert [row2[f"target_{a}"] for a in "xyz"] == ["n/a"] * 3

    assert coordsystem["IntendedFor"] == "bids:fmriprep:sub-07/anat/sub-07_desc-preproc_T1w.nii.gz"
    assert coordsystem["NIBSCoordinateUnits"] == "mm"
    assert coordsystem["NIBSCoordinateSystem"] == "IndividualMRI"
    assert "RAS" in coordsystem["NIBSCoordinateSystemDescription"]
    json.dumps(coordsystem)
    side = E.nibs_markers_sidecar()
    assert set(header) <= set(side)
    assert "into the head" in side["normal_x"]["Description"]

    back = E.read_nibs_markers(tsv)
    np.testing.assert_allclose(back[0]["target"], [-38, 44, 26])
    assert "target" not in back[1]


def test_nibs_t1w_override_and_subject_label():
    _, cs = E.nibs_markers(one("c", dlpfc_pose()), "01",
                           t1w="sub-01/ses-1/anat/sub-01_ses-1_desc-preproc_T1w.nii.gz")
    assert cs["IntendedFor"] == "bids:fmriprep:sub-01/ses-1/anat/sub-01_ses-1_desc-preproc_T1w.nii.gz"
    with pytest.raises(ValueError):
        E.nibs_markers(one("c", dlpfc_pose()), "sub-0_1")


def test_nibs_reader_uses_vectors_alone_and_catches_disagreement():
    m = dlpfc_pose()
    tsv, _ = E.nibs_markers(one("c", m), "01")
    header, row = (line.split("\t") for line in tsv.splitlines())
    # Without coil_transform the pose comes from coil/normal/direction.
    no_transform = "\t".join(header[:-1]) + "\n" + "\t".join(row[:-1]) + "\n"
    assert_same_pose(E.read_nibs_markers(no_transform)[0]["pose"], m)
    # A flipped normal that disagrees with coil_transform is an error, not a silent choice.
    bad = list(row)
    for a in "xyz":
        i = header.index(f"normal_{a}")
        bad[i] = f"{-float(bad[i]):.8f}"
    with pytest.raises(ValueError, match="disagrees"):
        E.read_nibs_markers("\t".join(header) + "\n" + "\t".join(bad) + "\n")


# --- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("write", [E.brainsight_targets, E.localite_instrument_markers,
                                   lambda t: E.nibs_markers(t, "01")])
def test_writers_refuse_bad_poses_and_names(write):
    mirrored = dlpfc_pose()
    mirrored[:3, 0] *= -1                                   # left-handed: an axis with the wrong sign
    with pytest.raises(ValueError, match="left-handed"):
        write(one("c", mirrored))
    skewed = dlpfc_pose()
    skewed[:3, 1] += 0.05
    with pytest.raises(ValueError, match="orthonormal"):
        write(one("c", skewed))
    with pytest.raises(ValueError):
        write(one("c", np.eye(3)))
    with pytest.raises(ValueError):
        write(one("a\tb", dlpfc_pose()))
    with pytest.raises(ValueError, match="unique"):
        write([{"name": "c", "pose": dlpfc_pose()}, {"name": "c", "pose": vertex_pose()}])


def test_reader_refuses_left_handed_file():
    text = E.brainsight_targets(one("c", dlpfc_pose()))
    fields = text.splitlines()[-1].split("\t")
    fields[4:7] = [f"{-float(v):.8f}" for v in fields[4:7]]   # flip Brainsight x only
    bad = "\n".join(text.splitlines()[:-1] + ["\t".join(fields)]) + "\n"
    with pytest.raises(ValueError, match="left-handed"):
        E.read_brainsight_targets(bad)


def test_coil_pose_projects_the_handle_and_refuses_a_parallel_one():
    m = E.pose_from_vectors([0, 0, 80], [0, 0, -2], [0, -1, 0.7])
    np.testing.assert_allclose(m[:3, 1], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(m[:3, 2], [0, 0, -1])
    np.testing.assert_allclose(m[:3, 0], [1, 0, 0], atol=1e-12)   # handle posterior, normal down: x = right
    with pytest.raises(ValueError, match="parallel"):
        E.pose_from_vectors([0, 0, 80], [0, 0, -1], [0, 0, 3])
