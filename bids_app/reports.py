"""The participant's HTML report: what went in, how good the data were, where the target is.

Like fMRIPrep's ``sub-<label>.html``, the report is one HTML file at the top of the output folder
whose figures lie under ``sub-<label>/figures/`` and are linked by relative paths: the folder can be
copied to a USB stick and opened without a network (no CDN, no remote font or script).

Every figure is a plot of the data the run wrote (nilearn plotting on the participant's T1w,
matplotlib for time series and the head); nothing is re-computed except the scalp distances between
coil positions. The 4-D BOLD is never read again: the carpet plot comes from the ``carpet.npz``
that :class:`tmstarget.workflows.confounds.Denoise` writes (a few thousand voxels), framewise displacement from
fMRIPrep's confounds table.

:func:`write_participant_report` does the work from file paths; :class:`ParticipantReport` is its
Nipype node, run at the end of the participant workflow.
"""

from __future__ import annotations

import html
import json
import re
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (headless: the report is drawn in a Nipype node)
# Reproducible SVG: fixed element ids instead of random ones (the date is dropped in _save).
matplotlib.rcParams["svg.hashsalt"] = "tmstarget"

import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from nipype.interfaces.base import (  # noqa: E402
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from tmstarget import __version__  # noqa: E402
from tmstarget.config import REFERENCES  # noqa: E402
from tmstarget.derivatives import (  # noqa: E402
    ParticipantOutputsInputSpec,
    atomic_write,
    participant_paths,
    sidecar,
    targets_path,
    write_text,
)

#: Software whose version the report lists (the libraries that compute or read something).
SOFTWARE = ("tmstarget", "nipype", "nilearn", "nibabel", "numpy", "scipy", "pybids", "nitransforms",
            "templateflow", "scikit-image", "matplotlib")

#: Colours of the targets in every figure (connectivity first, comparators after).
TARGET_COLOURS = {"connectivity": "#d62728", "F3_1020": "#1f77b4", "F3_beam": "#2ca02c",
                  "5cm": "#9467bd", "motor_hand": "#7f7f7f"}

#: Laptop-sized figures: about 1000 px wide at 100 dpi.
DPI = 100
WIDTH_IN = 10.0


def software_versions():
    """Installed versions of the software in :data:`SOFTWARE` (``None`` when absent)."""
    versions = {}
    for name in SOFTWARE:
        try:
            versions[name] = __version__ if name == "tmstarget" else version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def _save(fig, path):
    """Write a matplotlib figure atomically (the format follows the extension) and close it.

    Figures are laid out when created (``layout="constrained"``): ``bbox_inches="tight"`` would draw
    them twice, which doubles the cost of the 3-D head.
    """
    metadata = {"Date": None} if str(path).endswith(".svg") else None
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, metadata=metadata))
    plt.close(fig)
    return Path(path)


def _save_display(display, path):
    """Write a nilearn display atomically and close it."""
    atomic_write(path, lambda tmp: display.savefig(tmp, dpi=DPI))
    display.close()
    return Path(path)


# --------------------------------------------------------------------------------------------
# Data quality
# --------------------------------------------------------------------------------------------
def plot_motion(confounds_files, carpets, infos, fd_threshold, path):
    """Framewise displacement of every run, with the volumes that were not retained marked.

    Parameters
    ----------
    confounds_files : list of path
        fMRIPrep ``desc-confounds_timeseries.tsv``, one per run (column ``framewise_displacement``, mm).
    carpets : list of mapping
        The runs' ``carpet.npz`` contents (``retained``: indices of the retained volumes).
    infos : list of dict
        The runs' Denoise info (``RepetitionTime`` in s).
    fd_threshold : float or None
        Censoring threshold (mm), drawn when given.
    path : path
        Output SVG.
    """
    n_runs = len(confounds_files)
    fig = Figure(figsize=(WIDTH_IN, 1.0 + 1.6 * n_runs), layout="constrained")
    axes = fig.subplots(n_runs, 1, squeeze=False)[:, 0]
    for ax, confounds, carpet, info, in zip(axes, confounds_files, carpets, infos):
        table = pd.read_csv(confounds, sep="\t", na_values="n/a")
        fd = table["framewise_displacement"].fillna(0).to_numpy() if "framewise_displacement" in table \
            else np.zeros(len(table))
        t_r = float(info["RepetitionTime"])
        time_s = np.arange(len(fd)) * t_r
        dropped = np.setdiff1d(np.arange(len(fd)), carpet["retained"])
        ax.plot(time_s, fd, color="k", lw=0.8, label="framewise displacement")
        if dropped.size:
            ax.vlines(time_s[dropped], 0, 1, transform=ax.get_xaxis_transform(), color="#d62728",
                      alpha=0.35, lw=max(0.5, 300 / len(fd)), label=f"not retained ({dropped.size})")
        if fd_threshold is not None:
            ax.axhline(fd_threshold, color="#d62728", ls="--", lw=0.8, label=f"threshold {fd_threshold} mm")
        ax.set_ylabel("FD (mm)")
        ax.set_xlim(0, time_s[-1] + t_r)
        ax.set_title(f"{Path(info['BoldFile']).name.split('_space-')[0]}: mean FD {fd.mean():.2f} mm, "
                     f"{info['RetainedTime_s'] / 60:.1f} of {len(fd) * t_r / 60:.1f} min retained",
                     fontsize=9, loc="left")
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    axes[-1].set_xlabel("time (s)")
    return _save(fig, path)


def _standardize(data):
    """Detrended (mean removed) voxel time series in units of their standard deviation."""
    data = np.asarray(data, dtype=np.float64)
    data = data - data.mean(axis=0)
    std = data.std(axis=0)
    return data / np.where(std > 0, std, 1.0)


def plot_carpet(carpet, info, path):
    """Carpet plot (Power 2017) of the sampled voxels before and after denoising.

    ``raw`` holds every volume; ``cleaned`` only the retained ones, drawn at their own times so
    that the gaps of censored volumes show.
    """
    raw, cleaned, retained = carpet["raw"], carpet["cleaned"], carpet["retained"]
    t_r = float(info["RepetitionTime"])
    n_volumes = raw.shape[0]
    after = np.full((n_volumes, cleaned.shape[1]), np.nan)
    after[retained] = _standardize(cleaned)
    fig = Figure(figsize=(WIDTH_IN, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    extent = (0, n_volumes * t_r, raw.shape[1], 0)
    for ax, data, title in ((axes[0], _standardize(raw), "before denoising"),
                            (axes[1], after, "after denoising (censored volumes blank)")):
        image = ax.imshow(data.T, aspect="auto", cmap="gray", vmin=-2, vmax=2, extent=extent,
                          interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel(f"{raw.shape[1]} voxels sampled from the brain mask")
    fig.colorbar(image, ax=axes, fraction=0.02, label="signal (SD)")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Brain figures (nilearn)
# --------------------------------------------------------------------------------------------
def plot_regions(t1w, seed_mask, search_mask, path):
    """The seed (label 1, yellow) and the search region (label 2, blue) on axial slices of the T1w.

    The slices run from the seed's lowest to the search region's highest voxel, so both show.
    """
    from matplotlib.colors import ListedColormap
    from nilearn import image, plotting

    seed_img, search_img = nb.load(seed_mask), nb.load(search_mask)
    labels = (np.asanyarray(seed_img.dataobj) > 0).astype(np.uint8)
    labels[np.asanyarray(search_img.dataobj) > 0] = 2
    label_img = nb.Nifti1Image(labels, seed_img.affine)
    z_of = {value: nb.affines.apply_affine(seed_img.affine, np.argwhere(labels == value))[:, 2]
            for value in (1, 2) if (labels == value).any()}
    low = min(np.percentile(z, 20) for z in z_of.values())
    high = max(np.percentile(z, 80) for z in z_of.values())
    fig = plt.figure(figsize=(WIDTH_IN, 2.4))
    display = plotting.plot_roi(label_img, bg_img=image.load_img(t1w), display_mode="z", figure=fig,
                                cut_coords=list(np.linspace(low, high, 7).round(0)),
                                cmap=ListedColormap(["#ffd700", "#1f77b4"]), vmin=1, vmax=2,
                                alpha=0.7, dim=-0.3, draw_cross=False, colorbar=False,
                                title="seed (yellow) and search region (blue)")
    return _save_display(display, path)


def plot_target_slices(z_map, t1w, target_xyz, path, title):
    """Orthogonal slices of the connectivity map through the target, over the T1w."""
    from nilearn import plotting

    fig = plt.figure(figsize=(WIDTH_IN, 3.4))
    display = plotting.plot_stat_map(z_map, bg_img=t1w, cut_coords=tuple(target_xyz), figure=fig,
                                     cmap="cold_hot", threshold=0.1, dim=-0.3, title=title,
                                     colorbar=True, draw_cross=True)
    display.add_markers([target_xyz], marker_color="lime", marker_size=60)
    return _save_display(display, path)


def plot_target_glass(z_map, targets, path):
    """Glass brain of the connectivity map with every target marked.

    Parameters
    ----------
    targets : pandas.DataFrame
        Rows with ``name``, ``x``, ``y``, ``z`` (mm, the map's space).
    """
    from nilearn import plotting

    fig = plt.figure(figsize=(WIDTH_IN, 3.2))
    display = plotting.plot_glass_brain(z_map, display_mode="lzr", plot_abs=False, figure=fig,
                                        cmap="cold_hot", threshold=0.3, colorbar=True,
                                        title="seed connectivity (Fisher z) and targets")
    for _, row in targets.iterrows():
        display.add_markers([[row.x, row.y, row.z]], marker_color=TARGET_COLOURS.get(row["name"], "k"),
                            marker_size=50 if row["name"] == "connectivity" else 25)
    return _save_display(display, path)


def plot_frequency(frequency_map, t1w, target_xyz, path):
    """How often each voxel was chosen as the target (bootstrap), over the T1w, through the target."""
    from nilearn import plotting

    fig = plt.figure(figsize=(WIDTH_IN, 3.4))
    display = plotting.plot_stat_map(frequency_map, bg_img=t1w, cut_coords=tuple(target_xyz), figure=fig,
                                     cmap="hot", threshold=1e-3, dim=-0.3, vmax=1.0, symmetric_cbar=False,
                                     title="fraction of bootstrap samples choosing each voxel")
    display.add_markers([target_xyz], marker_color="lime", marker_size=60)
    return _save_display(display, path)


# --------------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------------
def plot_head(mesh_file, targets, path, elevation=25.0, azimuth=155.0):
    """The scalp seen from the front left, with each target's coil position marked and labelled.

    matplotlib draws the mesh of :class:`tmstarget.workflows.scalp.ScalpProjection` as polygons shaded by
    their normal (Lambert). Only faces turned towards the viewer are drawn: the hidden half of the
    head costs time and nothing else.

    Parameters
    ----------
    mesh_file : path
        ``scalp_mesh.npz`` (``vertices``, ``faces``, ``normals``; world mm RAS).
    targets : pandas.DataFrame
        Rows with ``name`` and ``scalp_x``, ``scalp_y``, ``scalp_z`` (mm, the mesh's space).
    elevation, azimuth : float
        Viewing direction (degrees, matplotlib convention: azimuth 180 looks from the left).
    """
    from mpl_toolkits.mplot3d import proj3d
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    mesh = np.load(mesh_file)
    vertices, faces = mesh["vertices"], mesh["faces"]
    face_normals = mesh["normals"][faces].mean(axis=1)
    elev, azim = np.deg2rad(elevation), np.deg2rad(azimuth)
    towards_viewer = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
    visible = face_normals @ towards_viewer > 0
    light = towards_viewer + np.array([0.0, 0.0, 0.6])
    shade = np.clip(face_normals[visible] @ (light / np.linalg.norm(light)), 0, 1)
    skin = np.array([0.94, 0.82, 0.72])
    fig = Figure(figsize=(WIDTH_IN * 0.8, WIDTH_IN * 0.6))
    ax = fig.add_axes((0.0, 0.0, 0.75, 0.95), projection="3d", computed_zorder=False)
    ax.add_collection3d(Poly3DCollection(vertices[faces[visible]], facecolors=skin * (0.35 + 0.65 * shade[:, None]),
                                         edgecolors="none", zorder=1))
    for axis, set_lim in enumerate((ax.set_xlim, ax.set_ylim, ax.set_zlim)):
        set_lim(vertices[:, axis].min(), vertices[:, axis].max())
    ax.set_box_aspect(np.ptp(vertices, axis=0), zoom=1.25)
    ax.view_init(elev=elevation, azim=azimuth)
    ax.set_axis_off()
    rows = targets.dropna(subset=["scalp_x"])
    # Lift markers a little off the scalp, towards the viewer, so the mesh does not hide them.
    lifted = rows[["scalp_x", "scalp_y", "scalp_z"]].to_numpy(float) + 4.0 * towards_viewer
    projected = np.column_stack(proj3d.proj_transform(*lifted.T, ax.get_proj())[:2])
    # Labels in a column beside the head, in the vertical order of their points, joined by leader
    # lines: neighbouring coil positions (F3 variants lie ~1 cm apart) would overlap in place.
    order = np.argsort(-projected[:, 1])
    label_y = np.linspace(0.75, 0.25, len(order)) if len(order) > 1 else [0.5]
    for rank, index in enumerate(order):
        name = rows["name"].iloc[index]
        colour = TARGET_COLOURS.get(name, "k")
        ax.scatter(*lifted[index], s=80 if name == "connectivity" else 45, color=colour,
                   edgecolors="k", depthshade=False, zorder=3)
        ax.annotate(name, xy=projected[index], xycoords="data", xytext=(1.02, label_y[rank]),
                    textcoords="axes fraction", color=colour, fontsize=10, fontweight="bold",
                    va="center", arrowprops=dict(arrowstyle="-", color=colour, lw=1.0))
    ax.set_title("coil positions on the scalp (seen from the front left)", fontsize=10)
    return _save(fig, path)


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


# --------------------------------------------------------------------------------------------
# Methods paragraph
# --------------------------------------------------------------------------------------------
def _collect_references(node, found):
    """Every reference string under the keys ``Source``/``References`` of a (nested) sidecar dict."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("Source", "References"):
                for text in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
                    if isinstance(text, str) and "doi:" in text and text not in found:
                        found.append(text)
            else:
                _collect_references(value, found)
    elif isinstance(node, list):
        for value in node:
            _collect_references(value, found)
    return found


def _fmt(values):
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def boilerplate(parameters, runs, targets_sidecar, space, versions, source_version=None):
    """The methods paragraph of this run, in Markdown, with numbered references.

    Parameters
    ----------
    parameters : dict
        ``Options.parameters()`` of the run (as written into the sidecars).
    runs : list of dict
        The ``Runs`` list of the connectivity map's sidecar.
    targets_sidecar : dict
        The targets table's sidecar (scalp-based methods, reliability when present).
    space : str
    versions : dict
        :func:`software_versions`.
    source_version : str or None
        fMRIPrep's version from its ``dataset_description.json``.

    Returns
    -------
    str
    """
    references = []

    def cite(*texts):
        numbers = []
        for text in texts:
            if text not in references:
                references.append(text)
            numbers.append(references.index(text) + 1)
        return "[" + ", ".join(str(n) for n in numbers) + "]"

    denoising, seed, region = parameters["Denoising"], parameters["Seed"], parameters["SearchRegion"]
    selection = parameters["TargetSelection"]
    used = [r for r in runs if r.get("Used", True)]
    t_rs = sorted({r["RepetitionTime"] for r in used})
    minutes = sum(r["RetainedTime_s"] for r in used) / 60
    text = [
        f"Personalized TMS targets were computed with tmstarget {versions.get('tmstarget')}, which is "
        f"based on Nipype {versions.get('nipype')} {cite('Gorgolewski K, Burns CD, Madison C, et al. Nipype: a flexible, lightweight and extensible neuroimaging data processing framework in Python. Front Neuroinform. 2011;5:13. doi:10.3389/fninf.2011.00013')}, "
        f"nilearn {versions.get('nilearn')} and nibabel {versions.get('nibabel')}, from the outputs of "
        f"fMRIPrep{' ' + source_version if source_version else ''} "
        f"{cite('Esteban O, Markiewicz CJ, Blair RW, et al. fMRIPrep: a robust preprocessing pipeline for functional MRI. Nat Methods. 2019;16(1):111-116. doi:10.1038/s41592-018-0235-4')}. "
        f"{len(used)} resting-state BOLD run(s) in {space} (repetition time {', '.join(f'{t:g}' for t in t_rs)} s; "
        f"{sum(r['Volumes'] for r in used)} volumes, of which {sum(r['RetainedVolumes'] for r in used)} "
        f"({minutes:.1f} min) were retained) entered the analysis"
        + (f"; {len(runs) - len(used)} run(s) were excluded for keeping less than "
           f"{denoising['MinimumRetainedTime_s']:g} s of data" if len(runs) > len(used) else "") + ".",
        f"Each run was smoothed with a Gaussian kernel of {denoising['SmoothingFWHM_mm']:g} mm FWHM and "
        "masked to the brain; non-steady-state volumes were discarded"
        + (f" and volumes with a framewise displacement above {denoising['FramewiseDisplacementThreshold_mm']:g} mm "
           f"were censored, with segments of fewer than 5 retained volumes {cite(REFERENCES['Power2012'])}"
           if denoising["FramewiseDisplacementThreshold_mm"] is not None else "")
        + f". Confound regression (strategy '{denoising['Strategy']}': {denoising['Description']}) "
        + (cite(*denoising["References"]) + " " if denoising["References"] else "")
        + f"and a Butterworth band-pass filter ({denoising['BandPass_Hz'][0]:g}-{denoising['BandPass_Hz'][1]:g} Hz), "
        f"applied to data and confounds alike {cite(REFERENCES['Lindquist2019'])}, were performed in one step "
        "with nilearn's signal.clean, the regression being fit on the retained volumes only.",
    ]
    if seed["Image"]:
        seed_text = f"the {seed['Name']} seed was the (weighted) mean time series of the image {Path(seed['Image']).name}"
    else:
        seed_text = (f"the {seed['Name']} seed time series was the mean of a {seed['Radius_mm']:g} mm sphere "
                     f"centred at MNI {_fmt(seed['CenterMNI_mm'])} mm")
    if region["Image"]:
        region_text = f"the search region given as the image {Path(region['Image']).name}"
    else:
        region_text = ("the union of " + f"{region['Radius_mm']:g} mm spheres at " + "; ".join(
            f"{name} {_fmt(xyz)}" for name, xyz in region["SpheresMNI_mm"].items()) + " (MNI mm)")
    text.append(
        f"In each run {seed_text} {cite(*seed['References'])}; its Pearson correlation with every brain "
        "voxel was converted to Fisher z, and the runs' maps were averaged with weights equal to their "
        f"retained volumes. The target was selected within {region_text}, restricted to voxels of "
        f"grey-matter probability at least {region['GreyMatterProbabilityThreshold']:g} "
        f"{cite(*region['References'])}, as {selection['Description']} {cite(*selection['References'])}."
    )
    scalp = targets_sidecar.get("ScalpBasedTargets")
    if scalp:
        text.append(
            "The target was projected to the nearest point of a scalp surface reconstructed from the "
            "participant's T1w, where the coil pose was defined (handle "
            f"{parameters['Coil']['HandleAngleFromMidline_deg']:g} degrees from the midline, posterior "
            "and lateral). For comparison, the scalp-based targets were constructed on the same head: the "
            "10-20 F3 position, Beam F3 from the head measurements, and the 5 cm rule; a depth-adjusted "
            f"dose was computed {cite(*_collect_references(scalp, []))}.")
    reliability = targets_sidecar.get("Reliability")
    if isinstance(reliability, dict) and reliability.get("Grade") is not None:
        text.append(f"The reliability of the target was graded '{reliability['Grade']}'"
                    + (f" ({reliability['GradeReason']})" if reliability.get("GradeReason") else "") + ".")
    body = "\n\n".join(text)
    refs = "\n".join(f"{i}. {ref}" for i, ref in enumerate(references, start=1))
    return (f"{body}\n\nThis text was generated by tmstarget from the parameters of this run; it may be "
            f"copied into a manuscript unchanged (CC0).\n\n### References\n\n{refs}\n")


def _markdown_to_html(text):
    """The few Markdown constructs of :func:`boilerplate` (paragraphs, a heading, a numbered list)."""
    blocks = []
    for block in text.strip().split("\n\n"):
        if block.startswith("### "):
            blocks.append(f"<h4>{html.escape(block[4:])}</h4>")
        elif re.match(r"^\d+\. ", block):
            items = [re.sub(r"^\d+\. ", "", line) for line in block.splitlines()]
            blocks.append("<ol class='refs'>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ol>")
        else:
            blocks.append(f"<p>{html.escape(block)}</p>")
    return "\n".join(blocks)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------
STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1080px;margin:0 auto;
padding:0 1.2em 3em;color:#222;line-height:1.45}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:.5em 0;z-index:1}
nav a{margin-right:1.1em;color:#1f4e99;text-decoration:none}
h1{margin-top:.6em}h2{border-bottom:2px solid #1f4e99;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.2em .55em;text-align:right}th{background:#f0f3f8}
td:first-child,th:first-child{text-align:left}td{white-space:nowrap}
.tablewrap{overflow-x:auto}
img{max-width:100%;height:auto;display:block;margin:.6em 0;border:1px solid #eee}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:.4em .8em;margin:.3em 0}
.ok{background:#eef8ee;border-left:4px solid #2ca02c;padding:.4em .8em}
.boilerplate{background:#f7f7f7;padding:.6em 1em;border:1px solid #ddd}
.kv td{text-align:left;vertical-align:top;white-space:normal}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:50%;margin-right:.35em}
"""

#: Marks the page once every figure has loaded, for a person (a banner) and for tests (data-*):
#: ``data-images-ok`` is "true" when every <img> decoded with a non-zero size.
CHECK_SCRIPT = """
window.tmsErrors = [];
window.addEventListener('error', function (e) {
  window.tmsErrors.push(e.message || ('failed to load ' + (e.target && (e.target.src || e.target.href))));
}, true);
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.dataset.images = String(images.length);
  document.body.dataset.imagesOk = String(broken.length === 0 && images.length > 0);
  document.body.dataset.errors = String(window.tmsErrors.length + broken.length);
  if (broken.length) {
    var note = document.createElement('p');
    note.className = 'warn';
    note.textContent = broken.length + ' figure(s) could not be loaded: ' +
      broken.map(function (i) { return i.getAttribute('src'); }).join(', ');
    document.body.insertBefore(note, document.body.firstChild);
  }
});
"""


def _page(title, nav, body):
    links = "".join(f"<a href='#{anchor}'>{html.escape(label)}</a>" for anchor, label in nav)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
            f"<script>{CHECK_SCRIPT}</script></head>\n<body>\n<nav>{links}</nav>\n{body}\n</body></html>\n")


def _figure(src, alt, caption=None):
    cap = f"<p><small>{html.escape(caption)}</small></p>" if caption else ""
    return f"<img src='{html.escape(src)}' alt='{html.escape(alt)}'>{cap}"


def _kv_table(data):
    """A nested dict as a two-column table (nested dicts become nested tables)."""
    rows = []
    for key, value in data.items():
        if isinstance(value, dict):
            cell = _kv_table(value)
        elif isinstance(value, float):
            cell = html.escape(f"{value:.4g}")
        elif isinstance(value, list):
            cell = html.escape(", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value))
        else:
            cell = html.escape(str(value))
        rows.append(f"<tr><td>{html.escape(str(key))}</td><td>{cell}</td></tr>")
    return "<table class='kv'>" + "".join(rows) + "</table>"


def _value(value, digits=1):
    if isinstance(value, (float, np.floating)):
        return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


#: Columns of the targets table in the report (the TSV holds all of them).
REPORT_COLUMNS = ("x", "y", "z", "seed_correlation_z", "scalp_x", "scalp_y", "scalp_z",
                  "scalp_distance_mm", "distance_to_connectivity_mm", "depth_adjustment_pct_mso")


def targets_html(table, space, participant_column=None):
    """The targets table of one space; each row carries its coordinates as ``data-*`` attributes.

    With ``participant_column`` (the group page) the first column names each row's participant.
    """
    columns = [c for c in REPORT_COLUMNS if c in table.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [*(["participant"] if participant_column else []), "name", *columns])
    rows = []
    for _, row in table.iterrows():
        name = str(row["name"])
        swatch = f"<span class='swatch' style='background:{TARGET_COLOURS.get(name, '#000')}'></span>"
        cells = "".join(f"<td>{_value(row[c], 2 if c == 'seed_correlation_z' else 1)}</td>" for c in columns)
        participant = str(row[participant_column]) if participant_column else ""
        who = f"<td>{html.escape(participant)}</td>" if participant_column else ""
        rows.append(f"<tr class='target' data-target='{html.escape(name)}' data-space='{html.escape(space)}' "
                    f"data-x='{row.x}' data-y='{row.y}' data-z='{row.z}' data-participant='{html.escape(participant)}'>"
                    f"{who}<td>{swatch}{html.escape(name)}</td>{cells}</tr>")
    return f"<div class='tablewrap'><table class='targets'><tr>{head}</tr>{''.join(rows)}</table></div>"


def parse_report_targets(text):
    """The targets listed in a report's HTML (participant or group page).

    Returns
    -------
    list of dict
        ``target``, ``space``, ``participant`` (empty on a participant page) and ``xyz`` (mm).
    """
    pattern = (r"<tr class='target' data-target='([^']*)' data-space='([^']*)' data-x='([^']*)' "
               r"data-y='([^']*)' data-z='([^']*)' data-participant='([^']*)'>")
    return [{"target": html.unescape(name), "space": html.unescape(space), "participant": html.unescape(who),
             "xyz": tuple(float(v) for v in xyz)}
            for name, space, *xyz, who in re.findall(pattern, text)]


def _warnings(runs, options, targets, has_mesh, has_t1w):
    """Things a reviewer must look at, in words."""
    notes = []
    for run in runs:
        source = str(run.get("Source", run.get("BoldFile", "")))
        if not run.get("Used", True):
            notes.append(f"{Path(source).name} was excluded: {run['RetainedTime_s']:.0f} s retained, less "
                         f"than the minimum of {options.get('min_time', 0):g} s.")
        elif run["RetainedVolumes"] < 0.5 * run["Volumes"]:
            notes.append(f"{Path(source).name}: only {run['RetainedVolumes']} of {run['Volumes']} volumes retained.")
        if run.get("DegreesOfFreedom", 1) <= 0:
            notes.append(f"{Path(source).name}: no degrees of freedom left after filtering and regression.")
    if "connectivity" in set(targets["name"]):
        z = float(targets.set_index("name").loc["connectivity", "seed_correlation_z"])
        if not z < 0:
            notes.append(f"The connectivity target is not anticorrelated with the seed (Fisher z {z:.2f}): "
                         "the map may be dominated by noise.")
    if not has_t1w:
        notes.append("No head T1w was found: the scalp projection and the scalp-based comparators are missing.")
    elif not has_mesh:
        notes.append("No scalp mesh: the head figure is missing.")
    return notes


def write_participant_report(output_dir, subject, space, task, seed_name, info_files, carpet_files,
                             confounds_files, t1w=None, mesh_file=None, other_space=None,
                             source_version=None):
    """Draw the figures and write ``output_dir/sub-<subject>.html`` and ``sub-<subject>/log/CITATION.md``.

    Parameters
    ----------
    output_dir : path
        The derivatives root the participant's outputs were written to.
    subject, space, task, seed_name : str
        As in :func:`tmstarget.derivatives.participant_paths`.
    info_files, carpet_files, confounds_files : list of path
        Per run: Denoise's ``info_file`` and ``carpet_file``, fMRIPrep's confounds table.
    t1w : path or None
        The participant's head T1w in ``space`` (the underlay of the brain figures).
    mesh_file : path or None
        :class:`tmstarget.workflows.scalp.ScalpProjection`'s ``scalp_mesh.npz``.
    other_space : str or None
        The second space the targets are given in.
    source_version : str or None
        fMRIPrep's version.

    Returns
    -------
    list of pathlib.Path
        The report, its figures and CITATION.md.
    """
    output_dir = Path(output_dir)
    paths = participant_paths(output_dir, subject, space, task, seed_name)
    figures = output_dir / f"sub-{subject}" / "figures"
    prefix = f"sub-{subject}_task-{task}_space-{space}"
    z_sidecar = json.loads(sidecar(paths["z_map"]).read_text())
    targets = pd.read_csv(paths["targets"], sep="\t", na_values="n/a")
    targets_sidecar = json.loads(sidecar(paths["targets"]).read_text())
    options = json.loads(paths["config"].read_text()) if paths["config"].is_file() else {}
    parameters = {k: z_sidecar[k] for k in ("Denoising", "Seed", "SearchRegion", "TargetSelection",
                                            "RunCombination", "Coil") if k in z_sidecar}
    infos = [json.loads(Path(f).read_text()) for f in info_files]
    carpets = [dict(np.load(f)) for f in carpet_files]
    connectivity = targets.set_index("name").loc["connectivity"]
    target_xyz = [float(connectivity.x), float(connectivity.y), float(connectivity.z)]
    versions = software_versions()
    written = []
    sections = []

    def rel(path):
        """The path of a file relative to the report, for a link; records it as written."""
        written.append(Path(path))
        return Path(path).relative_to(output_dir).as_posix()

    # -- summary
    runs = z_sidecar.get("Runs", [])
    run_rows = "".join(
        f"<tr><td>{html.escape(Path(str(r['Source'])).name)}</td><td>{r['RepetitionTime']:g}</td>"
        f"<td>{r['Volumes']}</td><td>{r['RetainedVolumes']}</td><td>{r['RetainedTime_s'] / 60:.1f}</td>"
        f"<td>{r['Regressors']}</td><td>{r['DegreesOfFreedom']:.0f}</td><td>{'yes' if r['Used'] else 'no'}</td></tr>"
        for r in runs)
    sessions = sorted({m.group(1) for r in runs for m in [re.search(r"_ses-([^_/]+)", str(r["Source"]))] if m})
    notes = _warnings(runs, options, targets, bool(mesh_file), bool(t1w))
    warn_html = ("".join(f"<p class='warn'>{html.escape(n)}</p>" for n in notes) if notes
                 else "<p class='ok'>No warnings.</p>")
    sections.append(("summary", "Summary", f"""
<p>Participant <b>sub-{html.escape(subject)}</b>; computed in <b>{html.escape(space)}</b>
{f'(targets also in {html.escape(other_space)})' if other_space else ''};
{len(runs)} run(s) of task <b>{html.escape(task)}</b>{', sessions ' + ', '.join(sessions) if sessions else ''}.</p>
<table><tr><th>run</th><th>TR (s)</th><th>volumes</th><th>retained</th><th>retained (min)</th>
<th>regressors</th><th>degrees of freedom</th><th>used</th></tr>{run_rows}</table>
<h3>Warnings</h3>{warn_html}
<h3>Options</h3>{_kv_table({k: v for k, v in options.items() if v not in (None, [], {})})}
<h3>Software</h3>{_kv_table({**{k: v for k, v in versions.items() if v}, **({'fMRIPrep (inputs)': source_version} if source_version else {})})}
"""))

    # -- data quality
    body = [_figure(rel(plot_motion(confounds_files, carpets, infos, options.get("fd_threshold"),
                                    figures / f"{prefix}_desc-motion_plot.svg")),
                    "framewise displacement", "Framewise displacement (fMRIPrep) of each run; red bands: "
                    "volumes not retained (non-steady state or censored).")]
    for index, (carpet, info) in enumerate(zip(carpets, infos), start=1):
        name = Path(info["BoldFile"]).name.split("_space-")[0]
        body.append(f"<h3>{html.escape(name)}</h3>" + _figure(
            rel(plot_carpet(carpet, info, figures / f"{prefix}_run-{index:02d}_desc-carpet_plot.png")),
            f"carpet plot {name}", "Each row a voxel, each column a volume, in standard deviations."))
    sections.append(("quality", "Data quality", "\n".join(body)))

    # -- regions, connectivity
    if t1w:
        regions = plot_regions(t1w, paths["seed_mask"], paths["search_mask"], figures / f"{prefix}_desc-regions_plot.png")
        sections.append(("regions", "Seed and search region", _figure(rel(regions), "seed and search region")))
    slices = plot_target_slices(paths["z_map"], t1w, target_xyz, figures / f"{prefix}_desc-target_plot.png",
                                f"connectivity target ({target_xyz[0]:.1f}, {target_xyz[1]:.1f}, {target_xyz[2]:.1f}) mm")
    glass = plot_target_glass(paths["z_map"], targets, figures / f"{prefix}_desc-glassbrain_plot.png")
    sections.append(("connectivity", "Connectivity map and target", _figure(
        rel(slices), "orthogonal slices through the target",
        f"Fisher z of the {seed_name} seed connectivity; the cross and the green dot mark the connectivity "
        "target.") + _figure(rel(glass), "glass brain", "Glass brain; dots: " + ", ".join(
            f"{n} ({c})" for n, c in TARGET_COLOURS.items() if n in set(targets["name"])) + "."
            + ("" if space.startswith("MNI") else f" The outline is the MNI brain's; the map and the points are "
               f"in the participant's {space} space, so they match it only roughly."))))

    # -- the head
    if mesh_file:
        head = plot_head(mesh_file, targets, figures / f"{prefix}_desc-head_plot.png")
        distances = scalp_distances(targets)
        rows = "".join(f"<tr><td>{html.escape(r['name'])}</td><td>{r.get('scalp_distance_to_connectivity_mm', np.nan):.1f}</td>"
                       f"<td>{r['cortical_distance_to_connectivity_mm']:.1f}</td></tr>" for _, r in distances.iterrows())
        sections.append(("head", "Coil positions on the head", _figure(rel(head), "scalp with coil positions")
                         + "<table class='distances'><tr><th>comparator</th><th>scalp distance to the connectivity "
                         "coil position (mm)</th><th>cortical distance to the connectivity target (mm)</th></tr>"
                         f"{rows}</table>"))

    # -- targets
    tables = [f"<h3>{html.escape(space)}</h3>" + targets_html(targets, space)]
    if other_space and targets_path(output_dir, subject, other_space).is_file():
        tables.append(f"<h3>{html.escape(other_space)}</h3>" + targets_html(pd.read_csv(
            targets_path(output_dir, subject, other_space), sep="\t", na_values="n/a"), other_space))
    sections.append(("targets", "Targets", "<p>World coordinates (mm, RAS) of each space; distances in mm; "
                     "Fisher z of the seed connectivity.</p>" + "".join(tables)))

    # -- reliability (computed elsewhere; shown when the sidecar has it)
    reliability = {k: targets_sidecar[k] for k in ("Reliability", "DataSufficiency") if k in targets_sidecar}
    frequency_map = paths["z_map"].parent / f"{prefix}_desc-targetfrequency_boldmap.nii.gz"
    if reliability or frequency_map.is_file():
        body = ""
        grade = reliability.get("Reliability", {}).get("Grade") if isinstance(reliability.get("Reliability"), dict) else None
        if grade is not None:
            body += f"<p>Grade: <b class='grade'>{html.escape(str(grade))}</b></p>"
        body += "".join(f"<h3>{k}</h3>{_kv_table(v) if isinstance(v, dict) else html.escape(str(v))}"
                        for k, v in reliability.items())
        if frequency_map.is_file() and t1w:
            freq = plot_frequency(frequency_map, t1w, target_xyz, figures / f"{prefix}_desc-targetfrequency_plot.png")
            body += _figure(rel(freq), "target frequency map")
        sections.append(("reliability", "Reliability", body))

    # -- methods
    text = boilerplate(parameters, runs, targets_sidecar, space, versions, source_version)
    citation = write_text(output_dir / f"sub-{subject}" / "log" / "CITATION.md",
                          f"# Methods (sub-{subject})\n\n{text}")
    sections.append(("methods", "Methods", "<p>Also in <code>" + html.escape(rel(citation)) + "</code>.</p>"
                     f"<div class='boilerplate'>{_markdown_to_html(text)}</div>"))

    body = f"<h1>tmstarget report: sub-{html.escape(subject)}</h1>\n" + "\n".join(
        f"<section id='{anchor}'><h2>{html.escape(title)}</h2>{content}</section>" for anchor, title, content in sections)
    report = write_text(output_dir / f"sub-{subject}.html",
                        _page(f"sub-{subject}: tmstarget", [(a, t) for a, t, _ in sections], body))
    figures_written = [path for path in dict.fromkeys(written) if path.parent == figures]
    # Figures of an earlier run that this one did not draw (e.g. a run since excluded) would mislead.
    for stale in set(figures.glob(f"{prefix}_*")) - set(figures_written):
        stale.unlink()
    return [report, citation, *figures_written]


class _ReportInputSpec(ParticipantOutputsInputSpec):
    derivatives = traits.List(File(exists=True), mandatory=True,
                              desc="the files the sink wrote (the report waits for them)")
    info_files = InputMultiObject(File(exists=True), mandatory=True, desc="Denoise info JSON per run")
    carpet_files = InputMultiObject(File(exists=True), mandatory=True, desc="Denoise carpet.npz per run")
    confounds_files = InputMultiObject(File(exists=True), mandatory=True, desc="fMRIPrep confounds per run")
    t1w = File(exists=True, desc="head T1w in the computation space")
    mesh_file = File(exists=True, desc="scalp_mesh.npz of ScalpProjection")
    other_space = traits.Str(desc="the second space of the targets")
    source_version = traits.Str(desc="fMRIPrep's version")


class _ReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="sub-<label>.html")
    out_files = traits.List(File(exists=True), desc="the report, CITATION.md and the figures")


class ParticipantReport(SimpleInterface):
    """Write the participant's HTML report, its figures and the methods paragraph."""

    input_spec = _ReportInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs

        def optional(value):
            return value if isdefined(value) and value else None

        with warnings.catch_warnings():
            # nilearn and matplotlib warn about masked values and defaults while drawing: noise in
            # a user's console, not about the data.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            written = write_participant_report(
                inputs.output_dir, inputs.subject, inputs.space, inputs.task, inputs.seed_name,
                inputs.info_files, inputs.carpet_files, inputs.confounds_files, t1w=optional(inputs.t1w),
                mesh_file=optional(inputs.mesh_file), other_space=optional(inputs.other_space),
                source_version=optional(inputs.source_version))
        self._results["out_report"] = str(written[0])
        self._results["out_files"] = [str(p) for p in written]
        return runtime
