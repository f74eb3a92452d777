"""Neuronavigation exports of coil poses: Brainsight, Localite TMS Navigator, NIBS-BIDS markers.

Writers return text (and a dict for JSON); they never touch the disk, so the caller writes the
files atomically. Each writer has a reader that parses the file back, and the round trip is
exact to the printed precision (positions 1e-4 mm or better, axes 1e-8 or better).

The coil pose convention of tmstarget
-------------------------------------
A coil pose is a 4x4 matrix ``M`` in world millimetres, RAS, of the participant's T1w image: the
scanner ("NIfTI") coordinates of fMRIPrep's ``sub-<label>_desc-preproc_T1w.nii.gz``, i.e. the
coordinates its affine (the sform; Brainsight and SimNIBS expect the qform to be the same)
gives to its voxels.

- ``M[:3, 0]`` (x): the coil's left-right axis, ``x = y cross z``;
- ``M[:3, 1]`` (y): the direction the coil **handle** points;
- ``M[:3, 2]`` (z): the coil normal, pointing **into** the head;
- ``M[:3, 3]``: the coil centre, on the scalp surface;
- ``M[3] = (0, 0, 0, 1)``; the three axes are unit vectors, orthogonal and right-handed.

This is SimNIBS's ``matsimnibs`` convention. Checked in SimNIBS ``simnibs/utils/nnav.py``: its
writers take ``matsimnibs`` in RAS and apply only axis flips/permutations for each device, and
the reference data of its tests show the convention on real files: a Localite InstrumentMarker
over the left motor cortex at (-41.8, -34.1, 88.6) mm has its first column (0.727, 0.049,
-0.685), pointing right and down, into the head, and SimNIBS maps that column to matsimnibs z.
(SimNIBS's own examples give y as the prolongation of the coil handle: ``pos_ydir``.)

Brainsight (Rogue Research) text export
---------------------------------------
Tab-separated text, header lines starting with ``#`` (``# Version:``, ``# Coordinate system:``,
``# Created by:``, ``# Units:``, ``# Encoding:``, ``# Notes:``), then a column header line
``# Target Name<TAB>Loc. X<TAB>Loc. Y<TAB>Loc. Z<TAB>m0n0 ... m2n2`` and one line per target.
``Loc. X/Y/Z`` is the coil centre; ``m{i}n0..m{i}n2`` are the x, y, z components of the coil's
axis ``i`` (a column of the rotation). Brainsight's coil axes differ from tmstarget's by a
rotation of 180 degrees about the handle axis (nnav.py ``_simnibs2brainsight``,
``diag(-1, 1, -1)``, applied to the axes)::

    Brainsight x = -x,  Brainsight y = +y (handle),  Brainsight z = -z (points OUT of the head)

(Real exports confirm it: a sample over the left frontal scalp at (-44.2, 75.8, 65.7) mm has
m2n = (-0.624, 0.469, 0.624), pointing left, forward and up, away from the head.)

"NIfTI:Aligned" is the world space that the image's own qform/sform with code
NIFTI_XFORM_ALIGNED_ANAT (2) defines: ``affine @ (i, j, k, 1)``, RAS, millimetres, exactly what
nibabel reports as ``img.affine``. It is not Brainsight's internal "Brainsight" system (LPS, origin
at a corner voxel) nor "World" (DICOM, LPS). When qform and sform are the same matrix, Brainsight
offers one NIfTI option and it is this space, so a tmstarget pose goes into the file unchanged: no
LPS flip and no voxel offset. The label follows the xform *code*: an image whose codes say
"scanner" (1), as images written by ANTs >= 2.3.5 do (so possibly fMRIPrep's T1w: check it), is
offered as "NIfTI:Scanner" with the same numbers; Brainsight 2.5 (export version 14) writes
"NIfTI:Q:Aligned"/"NIfTI:S:Aligned" to name the qform or sform. Use
:func:`brainsight_coordinate_system` on the T1w to get the label Brainsight will show for it.
If qform and sform differ, the two NIfTI options are two different spaces: don't guess, fix the
image (fMRIPrep's outputs have them equal).

Localite TMS Navigator InstrumentMarker XML
-------------------------------------------
``<InstrumentMarkerList coordinateSpace="RAS|LPS">`` holding ``<InstrumentMarker>`` elements,
each with a ``<Marker description="name">`` and a ``<Matrix4D data00=".." ... data33=".."/>``
(``dataRC`` = row R, column C). Localite's coil axes (nnav.py ``_simnibs2localite``, a
permutation applied to the axes)::

    Localite column 0 = +z (coil normal, INTO the head)
    Localite column 1 = -y (opposite the handle)
    Localite column 2 = +x

With ``coordinateSpace="LPS"`` (DICOM-based Localite projects) the world coordinates are LPS:
the x and y rows of the whole matrix (position and the three axes) are negated
(``diag(-1, -1, 1, 1) @ L``); z is unchanged. LPS is only right for a project whose image is the
DICOM series the T1w NIfTI was converted from with world coordinates preserved (dcm2niix does).

NIBS-BIDS markers (BEP037, NIBS-BIDS proposal v6.2)
---------------------------------------------------
``*_markers.tsv``: ``target_id`` first, then ``target_label``, ``target_x/y/z`` (the cortical
target, ``n/a`` when not given), ``coil_x/y/z`` (coil centre), ``normal_x/y/z``,
``direction_x/y/z`` and ``coil_transform`` (4x4). The proposal does not define the sign of the
normal nor what "direction" is, so tmstarget states it in ``*_coordsystem.json`` and in
:func:`nibs_markers_sidecar`: normal = z (into the head), direction = y (handle), coil_transform
= ``M`` (tmstarget/SimNIBS convention, rows as JSON arrays). ``*_coordsystem.json`` gives
``IntendedFor`` (a BIDS URI of the T1w), ``NIBSCoordinateSystem`` (``IndividualMRI``),
``NIBSCoordinateUnits`` (``mm``) and a description.

Sources read: SimNIBS ``simnibs/utils/nnav.py`` and its test data
(``_internal_resources/testing_files/nnav_testdata``: Brainsight exports versions 7, 12 and 14,
Localite InstrumentMarker files in RAS and LPS); NIBS-BIDS ``nibs-bids-v6/
non-invasive-brain-stimulation-v6.2.md`` (github.com/nigelrogasch/nibs-bids).
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

import numpy as np

from tmstarget.workflows.coil import pose_matrix

__all__ = [
    "pose_from_vectors",
    "as_pose",
    "brainsight_targets",
    "read_brainsight_targets",
    "brainsight_coordinate_system",
    "localite_instrument_markers",
    "read_localite_instrument_markers",
    "nibs_markers",
    "nibs_markers_sidecar",
    "read_nibs_markers",
    "BRAINSIGHT_TARGET_COLUMNS",
    "NIBS_MARKER_COLUMNS",
]

# --- axis conventions -------------------------------------------------------------------------
# Right-multiplication acts on the coil axes (columns); both matrices are their own inverse.
#   device_rotation = R @ FLIP      and      R = device_rotation @ FLIP
_TMS_TO_BRAINSIGHT_AXES = np.diag([-1.0, 1.0, -1.0])
_TMS_TO_LOCALITE_AXES = np.array([[0.0, 0.0, 1.0],
                                  [0.0, -1.0, 0.0],
                                  [1.0, 0.0, 0.0]])
# Left-multiplication acts on world coordinates (rows): RAS <-> LPS.
_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

BRAINSIGHT_TARGET_COLUMNS = ("Target Name", "Loc. X", "Loc. Y", "Loc. Z",
                             "m0n0", "m0n1", "m0n2", "m1n0", "m1n1", "m1n2",
                             "m2n0", "m2n1", "m2n2")
_BRAINSIGHT_UNITS = "millimetres, degrees, milliseconds, and microvolts"
_BRAINSIGHT_NOTES = ("Each column is delimited by a tab. "
                     "Each value within a column is delimited by a semicolon.")
_BRAINSIGHT_NIFTI = re.compile(r"NIfTI:(?:[QS]:)?(Scanner|Aligned|MNI-152|Talairach|Other-Template)")
_NIFTI_XFORM_NAMES = {1: "Scanner", 2: "Aligned", 3: "Talairach", 4: "MNI-152", 5: "Other-Template"}

NIBS_MARKER_COLUMNS = ("target_id", "target_label", "target_x", "target_y", "target_z",
                       "coil_x", "coil_y", "coil_z", "normal_x", "normal_y", "normal_z",
                       "direction_x", "direction_y", "direction_z", "coil_transform")

# Tolerances on |R^T R - I| and on det: writers get computed poses, readers get printed numbers
# (real Brainsight exports have 3 or 4 decimals).
_WRITE_TOL = 1e-4
_READ_TOL = 1e-2


def _version() -> str:
    try:
        from . import __version__
    except Exception:  # pragma: no cover - package metadata missing
        return "unknown"
    return __version__


# --- poses ------------------------------------------------------------------------------------
def _unit(v, what: str) -> np.ndarray:
    v = np.asarray(v, dtype=float).reshape(3)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"{what} must be a finite non-zero 3-vector, got {v}")
    return v / n


def pose_from_vectors(centre, inward, handle) -> np.ndarray:
    """The tmstarget pose of a coil at ``centre`` (mm) whose normal points along ``inward``
    (into the head) and whose handle points along ``handle`` (projected onto the coil plane).

    A low-level helper (the NIBS-BIDS reader uses it); the pipeline's poses come from the scalp
    stage (``tmstarget.workflows.coil.coil_pose``, same convention); the frame is built by
    :func:`tmstarget.workflows.coil.coil_frame`, the one builder of coil frames."""
    _unit(inward, "inward")
    pose = pose_matrix(centre, inward, handle)
    if not np.all(np.isfinite(pose)):
        raise ValueError("the coil centre must be finite")
    return pose


def _nearest_rotation(r: np.ndarray, tol: float, what: str) -> np.ndarray:
    err = float(np.abs(r.T @ r - np.eye(3)).max())
    if not err <= tol:
        raise ValueError(f"{what}: the coil axes are not orthonormal (max |R^T R - I| = {err:.3g})")
    if np.linalg.det(r) <= 0:
        raise ValueError(f"{what}: the coil axes are left-handed (det < 0); an axis has the wrong sign")
    u, _, vt = np.linalg.svd(r)
    return u @ vt


def as_pose(pose, *, tol: float = _WRITE_TOL, what: str = "pose") -> np.ndarray:
    """Check a coil pose (4x4, finite, last row 0 0 0 1, right-handed orthonormal axes within
    ``tol``) and return a float copy whose axes are exactly orthonormal."""
    m = np.array(pose, dtype=float)
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise ValueError(f"{what}: a coil pose is a 4x4 matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{what}: the pose has non-finite values")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError(f"{what}: the last row of a pose must be 0 0 0 1, got {m[3]}")
    m[3] = [0.0, 0.0, 0.0, 1.0]
    m[:3, :3] = _nearest_rotation(m[:3, :3], tol, what)
    return m


def _check_name(name, fmt: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{fmt}: every target needs a non-empty name, got {name!r}")
    if any(c in name for c in "\t\r\n"):
        raise ValueError(f"{fmt}: target names cannot hold tabs or line breaks: {name!r}")
    return name


def _targets(targets, fmt: str) -> list[tuple[str, np.ndarray, dict]]:
    out = []
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "name" not in t or "pose" not in t:
            raise ValueError(f"{fmt}: target {i} must be a dict with 'name' and 'pose'")
        name = _check_name(t["name"], fmt)
        out.append((name, as_pose(t["pose"], what=f"{fmt} target {name!r}"), t))
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{fmt}: target names must be unique, got {names}")
    return out


def _fixed_point(v: float, decimals: int) -> str:
    """``v`` with ``decimals`` decimals, never a negative zero."""
    s = f"{v:.{decimals}f}"
    return s[1:] if s.startswith("-") and float(s) == 0.0 else s  # no "-0.0000"


# --- Brainsight -------------------------------------------------------------------------------
def brainsight_coordinate_system(img) -> str:
    """The label Brainsight gives the NIfTI world space of ``img`` (a nibabel image).

    Brainsight names the space after the NIfTI xform code (1 scanner, 2 aligned, ...). Raises if
    the image has no valid xform, or a qform and an sform that differ (two different spaces)."""
    hdr = img.header
    q_code, s_code = int(hdr["qform_code"]), int(hdr["sform_code"])
    if q_code > 0 and s_code > 0 and not np.allclose(img.get_qform(), img.get_sform(), atol=1e-3):
        raise ValueError("qform and sform differ: Brainsight would offer two NIfTI spaces; make them equal")
    code = s_code if s_code > 0 else q_code
    if code not in _NIFTI_XFORM_NAMES:
        raise ValueError(f"the image has no usable qform/sform code (qform {q_code}, sform {s_code})")
    return f"NIfTI:{_NIFTI_XFORM_NAMES[code]}"


def brainsight_targets(targets: list[dict], *, coordinate_system: str = "NIfTI:Aligned",
                       created_by: str | None = None) -> str:
    """Brainsight "Targets" text export of the coil poses (tmstarget convention, T1w RAS mm).

    ``coordinate_system`` is the label of the image's NIfTI world space as Brainsight shows it
    (see :func:`brainsight_coordinate_system`); the numbers written are the same for every
    NIfTI label. Positions have 4 decimals (as Brainsight writes them), direction cosines 8."""
    if not _BRAINSIGHT_NIFTI.fullmatch(coordinate_system):
        raise ValueError(f"Brainsight coordinate system must be a NIfTI world space such as "
                         f"'NIfTI:Aligned', got {coordinate_system!r}")
    items = _targets(targets, "Brainsight")
    for name, _, _ in items:
        if name.lstrip().startswith("#"):
            raise ValueError(f"Brainsight: a target name cannot start with '#': {name!r}")
    # Export version 14 (Brainsight 2.5) introduced the NIfTI:Q:/NIfTI:S: labels.
    version = 14 if coordinate_system.count(":") == 2 else 12
    created_by = created_by or f"tmstarget {_version()}"
    lines = [
        f"# Version: {version}",
        f"# Coordinate system: {coordinate_system}",
        f"# Created by: {created_by}",
        f"# Units: {_BRAINSIGHT_UNITS}",
        "# Encoding: UTF-8",
        f"# Notes: {_BRAINSIGHT_NOTES}",
        "# " + "\t".join(BRAINSIGHT_TARGET_COLUMNS),
    ]
    for name, m, _ in items:
        axes = m[:3, :3] @ _TMS_TO_BRAINSIGHT_AXES   # columns = Brainsight coil axes
        fields = [name] + [_fixed_point(v, 4) for v in m[:3, 3]]
        for i in range(3):                           # m{i}n{j} = component j of axis i
            fields += [_fixed_point(v, 8) for v in axes[:, i]]
        lines.append("\t".join(fields))
    return "\n".join(lines) + "\n"


def read_brainsight_targets(text: str) -> list[dict]:
    """Parse the Targets of a Brainsight text export back to ``{"name", "pose"}`` (tmstarget
    convention). Only NIfTI world coordinate systems are accepted ("Brainsight" and "World" are
    LPS systems of other origins). Samples and other sections are ignored."""
    lines = text.lstrip("\ufeff").splitlines()
    coord = None
    header_at = None
    for i, line in enumerate(lines):
        if line.startswith("# Coordinate system:"):
            coord = line.split(":", 1)[1].strip()
        elif line.startswith("# Target Name"):
            header_at = i
            break
    if coord is None:
        raise ValueError("not a Brainsight export: no '# Coordinate system:' line")
    if not _BRAINSIGHT_NIFTI.fullmatch(coord):
        raise ValueError(f"Brainsight coordinate system {coord!r} is not a NIfTI world space; "
                         "export the targets as NIfTI:Aligned (or the NIfTI option of the T1w)")
    if header_at is None:
        return []
    columns = lines[header_at][2:].split("\t")
    missing = [c for c in BRAINSIGHT_TARGET_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"Brainsight target table lacks columns {missing}")
    col = {c: columns.index(c) for c in BRAINSIGHT_TARGET_COLUMNS}
    out = []
    for line in lines[header_at + 1:]:
        if line.startswith("#"):
            break
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < len(columns):
            raise ValueError(f"Brainsight target line has {len(fields)} fields, expected {len(columns)}: {line!r}")
        name = fields[col["Target Name"]]
        try:
            pos = [float(fields[col[c]]) for c in ("Loc. X", "Loc. Y", "Loc. Z")]
            axes = np.array([[float(fields[col[f"m{i}n{j}"]]) for i in range(3)] for j in range(3)])
        except ValueError as err:
            raise ValueError(f"Brainsight target {name!r} has a non-numeric pose: {err}") from None
        m = np.eye(4)
        m[:3, :3] = axes @ _TMS_TO_BRAINSIGHT_AXES
        m[:3, 3] = pos
        out.append({"name": name, "pose": as_pose(m, tol=_READ_TOL, what=f"Brainsight target {name!r}")})
    return out


# --- Localite ---------------------------------------------------------------------------------
def localite_instrument_markers(targets: list[dict], coordinate_space: str = "RAS") -> str:
    """Localite TMS Navigator InstrumentMarker XML of the coil poses, in ``RAS`` (NIfTI-based
    projects) or ``LPS`` (DICOM-based projects) world coordinates, Localite coil axes."""
    space = str(coordinate_space).upper()
    if space not in ("RAS", "LPS"):
        raise ValueError(f"Localite coordinateSpace must be 'RAS' or 'LPS', got {coordinate_space!r}")
    items = _targets(targets, "Localite")
    note = (f"Written by tmstarget {_version()}. Coil poses in {space} world coordinates (mm) of the "
            "participant's T1w image; Localite coil axes: column 0 the coil normal into the head, "
            "column 1 opposite the handle, column 2 the third axis; column 3 the coil centre.")
    note = note.replace("--", "-")
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<InstrumentMarkerList coordinateSpace="{space}">',
             f"    <!--{note}-->"]
    for index, (name, m, _) in enumerate(items):
        loc = m.copy()
        loc[:3, :3] = m[:3, :3] @ _TMS_TO_LOCALITE_AXES
        if space == "LPS":
            loc = _RAS_LPS @ loc
        lines.append(f'    <InstrumentMarker alwaysVisible="false" index="{index}" selected="false">')
        lines.append(f'        <Marker additionalInformation="" color="#ff0000" '
                     f'description={quoteattr(name)} set="true">')
        rows = []
        for r in range(4):
            rows.append(" ".join(f'data{r}{c}="{_fixed_point(loc[r, c], 12)}"' for c in range(4)))
        lines.append("            <Matrix4D " + ("\n" + " " * 22).join(rows) + "/>")
        lines.append("        </Marker>")
        lines.append("    </InstrumentMarker>")
    lines.append("</InstrumentMarkerList>")
    return "\n".join(lines) + "\n"


def read_localite_instrument_markers(text: str) -> list[dict]:
    """Parse a Localite InstrumentMarker XML back to ``{"name", "pose"}`` (tmstarget convention,
    RAS), converting from LPS when the file says ``coordinateSpace="LPS"``."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise ValueError(f"not a Localite InstrumentMarker file: {err}") from None
    if root.tag != "InstrumentMarkerList":
        raise ValueError(f"not a Localite InstrumentMarker file: root element <{root.tag}>")
    space = (root.get("coordinateSpace") or "").upper()
    if space not in ("RAS", "LPS"):
        raise ValueError(f"Localite coordinateSpace {root.get('coordinateSpace')!r} is not RAS or LPS")
    out = []
    for i, marker in enumerate(root.iter("InstrumentMarker")):
        inner = marker.find("Marker")
        matrix = inner.find("Matrix4D") if inner is not None else None
        if matrix is None:
            raise ValueError(f"Localite InstrumentMarker {i} has no Marker/Matrix4D")
        name = inner.get("description") or f"marker{i}"
        try:
            loc = np.array([[float(matrix.get(f"data{r}{c}")) for c in range(4)] for r in range(4)])
        except (TypeError, ValueError):
            raise ValueError(f"Localite marker {name!r}: Matrix4D needs numeric data00..data33") from None
        if space == "LPS":
            loc = _RAS_LPS @ loc
        m = loc.copy()
        m[:3, :3] = loc[:3, :3] @ _TMS_TO_LOCALITE_AXES
        out.append({"name": name, "pose": as_pose(m, tol=_READ_TOL, what=f"Localite marker {name!r}")})
    return out


# --- NIBS-BIDS --------------------------------------------------------------------------------
def _subject_label(subject: str) -> str:
    label = str(subject)
    label = label[4:] if label.startswith("sub-") else label
    if not re.fullmatch(r"[A-Za-z0-9]+", label):
        raise ValueError(f"not a BIDS subject label: {subject!r}")
    return label


def _t1w_uri(label: str, t1w: str | None) -> str:
    if t1w is None:
        return f"bids:fmriprep:sub-{label}/anat/sub-{label}_desc-preproc_T1w.nii.gz"
    return t1w if t1w.startswith("bids:") else f"bids:fmriprep:{t1w.lstrip('/')}"


_NIBS_DESCRIPTION = (
    "World coordinates in millimetres, RAS (x to the right, y anterior, z superior), of the T1w "
    "image in IntendedFor: the coordinates its affine (sform, equal to its qform) gives to its "
    "voxels. coil_x/y/z is the coil centre on the scalp; normal_x/y/z is the unit coil normal "
    "pointing into the head; direction_x/y/z is the unit vector along which the coil handle "
    "points; target_x/y/z is the cortical target. coil_transform is the 4x4 coil pose as JSON "
    "rows: columns 1-3 are the coil axes x = direction cross normal, y = direction (handle), "
    "z = normal (into the head), column 4 the coil centre (the SimNIBS 'matsimnibs' convention). "
    "Localite instrument markers use other axes (Localite column 1 = normal, column 2 = "
    "-direction, column 3 = x)."
)


def nibs_markers_sidecar() -> dict:
    """The ``*_markers.json`` sidecar describing the columns :func:`nibs_markers` writes."""
    xyz = {"x": "X (left to right)", "y": "Y (posterior to anterior)", "z": "Z (inferior to superior)"}
    side = {
        "target_id": {"Description": "Unique identifier of the stimulation target (tmstarget target name)."},
        "target_label": {"Description": "Human-readable label of the stimulation target."},
    }
    for a, d in xyz.items():
        side[f"target_{a}"] = {"Description": f"{d} coordinate of the cortical target.", "Units": "mm"}
    for a, d in xyz.items():
        side[f"coil_{a}"] = {"Description": f"{d} coordinate of the coil centre on the scalp.", "Units": "mm"}
    for a, d in xyz.items():
        side[f"normal_{a}"] = {"Description": f"{d} component of the unit coil normal, pointing into the head."}
    for a, d in xyz.items():
        side[f"direction_{a}"] = {"Description": f"{d} component of the unit vector along which the coil handle points."}
    side["coil_transform"] = {
        "Description": ("4x4 coil pose as a JSON array of rows: columns are the coil x axis "
                        "(direction cross normal), the handle direction, the normal into the head "
                        "and the coil centre (mm); SimNIBS 'matsimnibs' convention."),
    }
    return side


def nibs_markers(targets: list[dict], subject: str, *, t1w: str | None = None) -> tuple[str, dict]:
    """NIBS-BIDS ``*_markers.tsv`` text and ``*_coordsystem.json`` dict for the coil poses.

    Each target dict has ``name`` and ``pose``, and optionally ``target`` (cortical target, mm)
    and ``label``. ``t1w`` overrides the T1w the coordinates refer to: a BIDS URI, or a path in
    the fMRIPrep dataset (default ``sub-<label>/anat/sub-<label>_desc-preproc_T1w.nii.gz``),
    written as ``bids:fmriprep:<path>`` (the output's dataset_description.json must then name
    ``fmriprep`` in ``DatasetLinks``)."""
    label = _subject_label(subject)
    items = _targets(targets, "NIBS-BIDS")
    rows = ["\t".join(NIBS_MARKER_COLUMNS)]
    for name, m, t in items:
        target_label = _check_name(str(t.get("label", name)), "NIBS-BIDS")
        if t.get("target") is None:
            target = ["n/a"] * 3
        else:
            tv = np.asarray(t["target"], dtype=float).reshape(3)
            if not np.all(np.isfinite(tv)):
                raise ValueError(f"NIBS-BIDS target {name!r}: the cortical target is not finite")
            target = [_fixed_point(v, 4) for v in tv]
        transform = "[" + ",".join(
            "[" + ",".join(_fixed_point(m[r, c], 4 if c == 3 else 8) for c in range(4)) + "]" for r in range(4)
        ) + "]"
        fields = ([name, target_label] + target
                  + [_fixed_point(v, 4) for v in m[:3, 3]]
                  + [_fixed_point(v, 8) for v in m[:3, 2]]
                  + [_fixed_point(v, 8) for v in m[:3, 1]]
                  + [transform])
        rows.append("\t".join(fields))
    coordsystem = {
        "IntendedFor": _t1w_uri(label, t1w),
        "NIBSCoordinateSystem": "IndividualMRI",
        "NIBSCoordinateUnits": "mm",
        "NIBSCoordinateSystemDescription": _NIBS_DESCRIPTION,
    }
    return "\n".join(rows) + "\n", coordsystem


def _nibs_float(value: str, column: str, name: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"NIBS-BIDS marker {name!r}: {column} is not a number: {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"NIBS-BIDS marker {name!r}: {column} is not finite")
    return v


def read_nibs_markers(text: str) -> list[dict]:
    """Parse a ``*_markers.tsv`` written by :func:`nibs_markers` (or any with ``target_id`` and
    either ``coil_transform`` or ``coil_*``/``normal_*``/``direction_*``) back to
    ``{"name", "pose"}`` (plus ``target`` when given). When both forms are present they must
    agree."""
    lines = [ln for ln in text.lstrip("\ufeff").splitlines() if ln.strip()]
    if not lines:
        raise ValueError("empty markers.tsv")
    header = lines[0].split("\t")
    if not header or header[0] != "target_id":
        raise ValueError(f"markers.tsv must start with the target_id column, got {header[:1]}")
    out = []
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ValueError(f"markers.tsv row has {len(fields)} fields, header has {len(header)}: {line!r}")
        row = dict(zip(header, fields))
        name = row["target_id"]

        def vec(prefix, row=row, name=name):
            cols = [f"{prefix}_{a}" for a in "xyz"]
            if not all(c in row for c in cols) or any(row[c] == "n/a" for c in cols):
                return None
            return np.array([_nibs_float(row[c], c, name) for c in cols])

        pose_t = None
        if row.get("coil_transform", "n/a") != "n/a":
            try:
                pose_t = np.array(json.loads(row["coil_transform"]), dtype=float)
            except (ValueError, TypeError):
                raise ValueError(f"NIBS-BIDS marker {name!r}: coil_transform is not a 4x4 JSON array") from None
            pose_t = as_pose(pose_t, tol=_READ_TOL, what=f"NIBS-BIDS marker {name!r}")
        centre, normal, direction = vec("coil"), vec("normal"), vec("direction")
        pose_v = None
        if centre is not None and normal is not None and direction is not None:
            if abs(float(np.linalg.norm(normal)) - 1) > _READ_TOL or abs(float(np.linalg.norm(direction)) - 1) > _READ_TOL \
                    or abs(float(normal @ direction)) > _READ_TOL:
                raise ValueError(f"NIBS-BIDS marker {name!r}: normal and direction are not orthonormal")
            pose_v = pose_from_vectors(centre, normal, direction)
        if pose_t is not None and pose_v is not None:
            if (np.abs(pose_t[:3, 3] - pose_v[:3, 3]).max() > 1e-3
                    or np.abs(pose_t[:3, 1:3] - pose_v[:3, 1:3]).max() > 1e-5):
                raise ValueError(f"NIBS-BIDS marker {name!r}: coil_transform disagrees with coil/normal/direction")
        pose = pose_t if pose_t is not None else pose_v
        if pose is None:
            raise ValueError(f"NIBS-BIDS marker {name!r} has no coil pose (coil_transform or coil/normal/direction)")
        entry = {"name": name, "pose": pose}
        target = vec("target")
        if target is not None:
            entry["target"] = target
        if row.get("target_label", "n/a") not in ("n/a", name):
            entry["label"] = row["target_label"]
        out.append(entry)
    return out
