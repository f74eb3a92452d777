"""The participant's head: the scalp with the coil positions and the coil of the plan drawn on it.

The mesh is :class:`tmstarget.workflows.scalp.ScalpProjection`'s ``scalp_mesh.npz``, in the space of
the head the scalp stage ran on; the coil pose is the targets table's (SimNIBS convention: the
columns ``coil_yaxis_*`` are the handle direction, ``coil_zaxis_*`` point into the head).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Largest distance (mm) between a table's scalp point and the mesh for the table to be the mesh's.
ON_MESH_MM = 3.0

#: The drawn coil (mm): a figure-8 of two wings of this radius, centred this far either side of the
#: coil centre along the coil's x axis, and the handle arrow's length. A picture of the orientation,
#: not a model of a particular coil.
COIL_WING_RADIUS_MM = 17.0
COIL_WING_OFFSET_MM = 18.0
HANDLE_LENGTH_MM = 45.0


#: The head is drawn with faces of about this size (mm): a mesh made on a finer grid (fMRIPrep's
#: 1 mm T1w) is merged to it for the picture, which has fewer pixels than such a mesh has faces.
DRAWN_FACE_MM = 2.0


def merged_mesh(vertices, faces, normals, cell_mm):
    """The mesh with its vertices merged cell by cell of a grid of ``cell_mm`` (vertex clustering,
    Rossignac & Borrel 1993): each cell's vertices become their mean, its normals their
    normalized mean, and the faces left with three distinct vertices are kept. For the picture
    only; the plan uses the mesh itself.

    Returns
    -------
    vertices (M, 3), faces (F, 3), normals (M, 3)
    """
    cells = np.floor(np.asarray(vertices) / cell_mm).astype(np.int64)
    cells -= cells.min(axis=0)
    extent = cells.max(axis=0) + 1
    _, cluster, counts = np.unique((cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2],
                                   return_inverse=True, return_counts=True)

    def mean(values):
        return np.column_stack([np.bincount(cluster, weights=values[:, axis], minlength=counts.size)
                                for axis in range(3)]) / counts[:, None]
    merged, merged_normals = mean(np.asarray(vertices, float)), mean(np.asarray(normals, float))
    merged_normals /= np.maximum(np.linalg.norm(merged_normals, axis=1, keepdims=True), 1e-12)
    faces = cluster[faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2])
                  & (faces[:, 0] != faces[:, 2])]
    return merged, faces, merged_normals


def table_on_mesh(vertices, tables):
    """Which of several targets tables is in the mesh's space: the one whose scalp points lie on it.

    Parameters
    ----------
    vertices : (N, 3) array
        Mesh vertices (mm).
    tables : mapping of str to pandas.DataFrame
        Targets tables by space.

    Returns
    -------
    str or None
        The space whose connectivity scalp point is nearest the mesh, if within :data:`ON_MESH_MM`.
    """
    best, best_distance = None, ON_MESH_MM
    for space, table in tables.items():
        rows = table[table["name"] == "connectivity"]
        if rows.empty or "scalp_x" not in rows or not np.isfinite(rows[["scalp_x", "scalp_y", "scalp_z"]].to_numpy(float)).all():
            continue
        point = rows[["scalp_x", "scalp_y", "scalp_z"]].to_numpy(float)[0]
        distance = float(np.sqrt(((vertices - point) ** 2).sum(axis=1).min()))
        if distance <= best_distance:
            best, best_distance = space, distance
    return best


def coil_axes(row):
    """The coil's centre and x, y (handle) and z (into the head) axes of a targets row, or None."""
    columns = ["coil_x", "coil_y", "coil_z"] + [f"coil_{a}axis_{c}" for a in "xyz" for c in "xyz"]
    if not all(c in row.index for c in columns):
        return None
    values = row[columns].to_numpy(float)
    if not np.isfinite(values).all():
        return None
    centre, x_axis, y_axis, z_axis = values[:3], values[3:6], values[6:9], values[9:12]
    return centre, x_axis, y_axis, z_axis


def plot_head(mesh_file, targets, path, elevation=25.0, azimuth=140.0):
    """The scalp seen from the front left, with each target's coil position and the planned coil.

    matplotlib draws the mesh as polygons shaded by their normal (Lambert). Only faces turned
    towards the viewer are drawn: the hidden half of the head costs time and nothing else. A mesh
    of a T1w finer than 1.5 mm is drawn merged to :data:`DRAWN_FACE_MM` (:func:`merged_mesh`):
    the 1 mm head's 330,000 faces took 2.4 s to draw, to no visible difference. The
    connectivity row's coil is drawn as a figure-8 outline in the coil plane with an arrow along the
    handle direction.

    Parameters
    ----------
    mesh_file : path
        ``scalp_mesh.npz`` (``vertices``, ``faces``, ``normals``; world mm RAS).
    targets : pandas.DataFrame
        Rows with ``name`` and ``scalp_x``, ``scalp_y``, ``scalp_z`` (mm, the mesh's space), and the
        coil axes columns for the coil to be drawn.
    elevation, azimuth : float
        Viewing direction (degrees, matplotlib convention: azimuth 180 looks from the left).
    """
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d import proj3d
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    from tmstarget.reports.figures import save_figure
    from tmstarget.reports.palette import TARGET_COLOURS

    mesh = np.load(mesh_file)
    vertices, faces, normals = mesh["vertices"], mesh["faces"], mesh["normals"]
    if np.min(np.linalg.norm(mesh["affine"][:3, :3], axis=0)) < 0.75 * DRAWN_FACE_MM:
        vertices, faces, normals = merged_mesh(vertices, faces, normals, DRAWN_FACE_MM)
    face_normals = normals[faces].mean(axis=1)
    elev, azim = np.deg2rad(elevation), np.deg2rad(azimuth)
    towards_viewer = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
    visible = face_normals @ towards_viewer > 0
    light = towards_viewer + np.array([0.0, 0.0, 0.6])
    shade = np.clip(face_normals[visible] @ (light / np.linalg.norm(light)), 0, 1)
    skin = np.array([0.94, 0.82, 0.72])
    fig = Figure(figsize=(6.4, 5.0))
    ax = fig.add_axes((0.0, 0.0, 0.74, 0.95), projection="3d", computed_zorder=False)
    # Without antialiasing the polygons' shared edges leave no seams, and Agg fills them faster.
    ax.add_collection3d(Poly3DCollection(vertices[faces[visible]], facecolors=skin * (0.35 + 0.65 * shade[:, None]),
                                         edgecolors="none", antialiased=False, zorder=1))
    for axis, set_lim in enumerate((ax.set_xlim, ax.set_ylim, ax.set_zlim)):
        set_lim(vertices[:, axis].min(), vertices[:, axis].max())
    ax.set_box_aspect(np.ptp(vertices, axis=0), zoom=1.25)
    ax.view_init(elev=elevation, azim=azimuth)
    ax.set_axis_off()

    def to_2d(points):
        points = np.atleast_2d(points)
        return np.column_stack(proj3d.proj_transform(*points.T, ax.get_proj())[:2])

    rows = targets.dropna(subset=["scalp_x"])
    connectivity = rows[rows["name"] == "connectivity"]
    pose = coil_axes(connectivity.iloc[0]) if len(connectivity) else None
    if pose is not None:
        centre, x_axis, y_axis, z_axis = pose
        lifted = centre - 5.0 * z_axis  # z points into the head: lift the drawing off the scalp
        angle = np.linspace(0, 2 * np.pi, 49)[:, None]
        colour = TARGET_COLOURS["connectivity"]
        for side in (-1, 1):
            wing = (lifted + side * COIL_WING_OFFSET_MM * x_axis
                    + COIL_WING_RADIUS_MM * (np.cos(angle) * x_axis + np.sin(angle) * y_axis))
            ax.plot(*wing.T, color=colour, lw=1.6, zorder=2)
        start, end = to_2d([lifted, lifted + HANDLE_LENGTH_MM * y_axis])
        ax.annotate("", xy=end, xytext=start, xycoords="data", zorder=4,
                    arrowprops=dict(arrowstyle="-|>", color=colour, lw=2.6, mutation_scale=18,
                                    shrinkA=0, shrinkB=0))
        ax.text2D(*end, " handle", color=colour, fontsize=9, fontweight="bold", va="center",
                  transform=ax.transData)
    # Lift markers a little off the scalp, towards the viewer, so the mesh does not hide them.
    lifted = rows[["scalp_x", "scalp_y", "scalp_z"]].to_numpy(float) + 4.0 * towards_viewer
    projected = to_2d(lifted)
    # Labels in a column beside the head, in the vertical order of their points, joined by leader
    # lines: neighbouring coil positions (F3 variants lie ~1 cm apart) would overlap in place.
    order = np.argsort(-projected[:, 1])
    label_y = np.linspace(0.8, 0.2, len(order)) if len(order) > 1 else [0.5]
    for rank, index in enumerate(order):
        name = rows["name"].iloc[index]
        colour = TARGET_COLOURS.get(name, "k")
        ax.scatter(*lifted[index], s=70 if name == "connectivity" else 40, color=colour,
                   edgecolors="k", depthshade=False, zorder=3)
        ax.annotate(name, xy=projected[index], xycoords="data", xytext=(1.02, label_y[rank]),
                    textcoords="axes fraction", color=colour, fontsize=10, fontweight="bold",
                    va="center", arrowprops=dict(arrowstyle="-", color=colour, lw=1.0))
    ax.set_title("coil positions on the scalp, seen from the front left (face to the left)", fontsize=10)
    return save_figure(fig, path)


def scalp_distances(targets):
    """Distances (mm) from the connectivity target to every other row, on the scalp and on the cortex.

    Returns
    -------
    pandas.DataFrame
        ``name``, ``scalp_distance_to_connectivity_mm`` (straight line between the scalp points)
        and ``cortical_distance_to_connectivity_mm`` (between the cortical points).
    """
    table = targets.set_index("name")
    if "connectivity" not in table.index:
        return pd.DataFrame(columns=["name"])
    reference = table.loc["connectivity"]
    rows = []
    for name, row in table.drop(index="connectivity").iterrows():
        entry = {"name": name, "cortical_distance_to_connectivity_mm": float(np.linalg.norm(
            row[["x", "y", "z"]].to_numpy(float) - reference[["x", "y", "z"]].to_numpy(float)))}
        if "scalp_x" in table:
            entry["scalp_distance_to_connectivity_mm"] = float(np.linalg.norm(
                row[["scalp_x", "scalp_y", "scalp_z"]].to_numpy(float)
                - reference[["scalp_x", "scalp_y", "scalp_z"]].to_numpy(float)))
        rows.append(entry)
    return pd.DataFrame(rows)
