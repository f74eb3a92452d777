"""The report's figures of the data: motion, carpet plots, the regions, the map and the target.

Every figure is a plot of what the run wrote (nilearn plotting on the participant's T1w, matplotlib
for time series); nothing is re-computed. The 4-D BOLD is never read again: the carpet plot comes
from the ``carpet.npz`` that :class:`tmstarget.workflows.confounds.Denoise` writes (a few thousand
voxels), framewise displacement from fMRIPrep's confounds table.

This module is imported only when a report is drawn: it selects matplotlib's headless backend.
nilearn's plotting (about half a second to import) is imported by the functions that use it.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (headless: the report is drawn in a Nipype node)

import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tmstarget.derivatives import atomic_write  # noqa: E402
from tmstarget.reports.palette import DPI, TARGET_COLOURS, WIDTH_IN  # noqa: E402
from tmstarget.workflows.parallel import run_parts  # noqa: E402

#: PNG compression: zlib level 1 encodes several times faster than the default 6, for files
#: about a third larger; the pixels are the same.
PNG_OPTIONS = {"pil_kwargs": {"compress_level": 1}}


def _save_options(path):
    if str(path).endswith(".svg"):
        return {"metadata": {"Date": None}}  # reproducible: no date (ids: rc svg.hashsalt)
    return dict(PNG_OPTIONS) if str(path).endswith(".png") else {}


def save_figure(fig, path):
    """Write a matplotlib figure atomically (the format follows the extension).

    Figures are laid out when created (``layout="constrained"``): ``bbox_inches="tight"`` would draw
    them twice, which doubles the cost of the 3-D head.
    """
    with matplotlib.rc_context({"svg.hashsalt": "tmstarget"}):
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, **_save_options(path)))
    plt.close(fig)
    return Path(path)


def draw_all(drawings, processes=1):
    """Draw the report's figures, each a function of no argument that writes one, in ``processes``.

    matplotlib holds the interpreter lock, so the figures are shared out among forked processes
    (:func:`tmstarget.workflows.parallel.run_parts`): each takes the next figure not yet taken, in
    the order given, so that the processes end together although the figures' costs differ (0.2
    to 1.4 s each on a 2 mm participant; the 3-D head or the E-field dealt to one process with
    the other figures dealt in turn left it a second behind). nilearn's plotting is imported
    first, once, rather than by each. Every figure is the same file whichever process draws it.
    """
    processes = max(1, min(processes, len(drawings)))
    importlib.import_module("nilearn.plotting")
    # The figures' numbers wait in a pipe, written whole before any process starts and closed
    # for writing: a read of one number is atomic, so each is taken by one process, and an
    # empty pipe says that none is left. (A counter of multiprocessing, a multiprocessing.Value
    # with its lock, made 3 of 11 runs interrupted while drawing on a loaded machine end killed
    # by the signal, exit -2, instead of with 130; with the pipe none of 20 did.)
    numbers = b"".join(index.to_bytes(4, "little") for index in range(len(drawings)))
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, numbers)  # at most a few hundred bytes: within the pipe's 64 kB
        os.close(write_end)
        write_end = None

        def draw_next_until_none_is_left():
            while taken := os.read(read_end, 4):
                drawings[int.from_bytes(taken, "little")]()

        # Every process forked, this one waiting: a Ctrl-C raised here while matplotlib's
        # weakref callbacks run would be ignored by Python, and the report drawn to its end.
        run_parts([draw_next_until_none_is_left] * processes, here=False)
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)


def save_display(display, path):
    """Write a nilearn display atomically and close it."""
    atomic_write(path, lambda tmp: display.savefig(tmp, dpi=DPI, **_save_options(path)))
    display.close()
    return Path(path)


def plot_glass_brain(stat_map, **kwargs):
    """nilearn's glass brain, built without matplotlib's data-limit updates for its outline.

    nilearn draws the brain outline as about 700 patches and then sets the axes' limits from the
    outline's known bounds; matplotlib meanwhile updates the data limits patch by patch, which is
    about 40 % of the figure's cost and changes nothing drawn (the PNG is byte-identical). The
    update is skipped while the display is built, and restored whatever happens.
    """
    from matplotlib.axes import Axes
    from nilearn import plotting

    if not hasattr(Axes, "_update_patch_limits"):  # another matplotlib: build it as it is
        return plotting.plot_glass_brain(stat_map, **kwargs)
    own = Axes.__dict__.get("_update_patch_limits")  # normally inherited from _AxesBase
    Axes._update_patch_limits = lambda self, patch: None
    try:
        return plotting.plot_glass_brain(stat_map, **kwargs)
    finally:
        if own is None:
            del Axes._update_patch_limits
        else:
            Axes._update_patch_limits = own


def load_underlay(t1w):
    """The T1w underlay read once into memory (the brain figures all draw on it).

    Each nilearn figure given the file name would decompress it again: for an fMRIPrep T1w of
    1 mm that is a few tenths of a second per figure. The voxels are held in C order (nibabel
    reads NIfTI in Fortran order): nilearn masks the underlay's dark voxels with ``numpy.ma``,
    whose mask is filled element by element in C order, 0.45 s on a 1 mm Fortran-ordered
    underlay and 0.12 s on a C-ordered one, in each of four figures. The values and the pixels
    are the same.
    """
    img = nb.load(t1w)
    return nb.Nifti1Image(np.ascontiguousarray(img.dataobj), img.affine, img.header)


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


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
    return save_display(display, path)


def plot_target_slices(z_map, t1w, target_xyz, path, title):
    """Orthogonal slices of the connectivity map through the target, over the T1w."""
    from nilearn import plotting

    fig = plt.figure(figsize=(WIDTH_IN, 3.4))
    display = plotting.plot_stat_map(z_map, bg_img=t1w, cut_coords=tuple(target_xyz), figure=fig,
                                     cmap="cold_hot", threshold=0.1, dim=-0.3, title=title,
                                     colorbar=True, draw_cross=True)
    display.add_markers([target_xyz], marker_color="lime", marker_size=60)
    return save_display(display, path)


def plot_target_glass(z_map, targets, path):
    """Glass brain of the connectivity map with every target marked.

    Parameters
    ----------
    targets : pandas.DataFrame
        Rows with ``name``, ``x``, ``y``, ``z`` (mm, the map's space).
    """
    fig = plt.figure(figsize=(WIDTH_IN, 3.2))
    display = plot_glass_brain(z_map, display_mode="lzr", plot_abs=False, figure=fig,
                                        cmap="cold_hot", threshold=0.3, colorbar=True,
                                        title="seed connectivity (Fisher z) and targets")
    for _, row in targets.iterrows():
        display.add_markers([[row.x, row.y, row.z]], marker_color=TARGET_COLOURS.get(row["name"], "k"),
                            marker_size=50 if row["name"] == "connectivity" else 25)
    return save_display(display, path)


def plot_frequency(frequency_map, t1w, target_xyz, path):
    """How often each voxel was chosen as the target (bootstrap), over the T1w, through the target."""
    from nilearn import plotting

    fig = plt.figure(figsize=(WIDTH_IN, 3.4))
    display = plotting.plot_stat_map(frequency_map, bg_img=t1w, cut_coords=tuple(target_xyz), figure=fig,
                                     cmap="hot", threshold=1e-3, dim=-0.3, vmax=1.0, symmetric_cbar=False,
                                     title="fraction of bootstrap samples choosing each voxel")
    display.add_markers([target_xyz], marker_color="lime", marker_size=60)
    return save_display(display, path)
