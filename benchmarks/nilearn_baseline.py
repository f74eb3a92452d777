"""The same science as tmstarget, written as a plain nilearn script: for comparison only.

This is what a careful user would write with nilearn's documented tools (``NiftiMasker`` with
smoothing and ``signal.clean``'s options, ``NiftiSpheresMasker`` for the seed), without tmstarget's
shortcuts. It is timed by ``benchmarks/run.py``; it is not part of tmstarget.

Usage: ``python benchmarks/nilearn_baseline.py FMRIPREP_DIR [--subject 01]``; prints the target.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from nilearn import image
from nilearn.interfaces.fmriprep import load_confounds
from nilearn.maskers import NiftiMasker, NiftiSpheresMasker
from scipy import ndimage

SGACC_MNI = (6.0, 16.0, -10.0)          # Fox et al. 2012
DLPFC_SITES_MNI = [(-36, 39, 43), (-44, 40, 29), (-41, 16, 54), (-37, 26, 49)]
SPACE = "MNI152NLin2009cAsym"
CLEAN = dict(detrend=True, standardize="zscore_sample", high_pass=0.01, low_pass=0.1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fmriprep_dir", type=Path)
    parser.add_argument("--subject", default="01")
    args = parser.parse_args(argv)
    func = args.fmriprep_dir / f"sub-{args.subject}" / "func"
    anat = args.fmriprep_dir / f"sub-{args.subject}" / "anat"
    bolds = sorted(func.glob(f"*space-{SPACE}_desc-preproc_bold.nii.gz"))
    z_maps, weights = [], []
    for bold in bolds:
        mask = str(bold).replace("desc-preproc_bold", "desc-brain_mask")
        t_r = 2.0
        confounds, sample_mask = load_confounds(
            str(bold), strategy=("motion", "wm_csf", "global_signal"), motion="full",
            wm_csf="derivatives", global_signal="derivatives")
        masker = NiftiMasker(mask_img=mask, smoothing_fwhm=6.0, t_r=t_r, **CLEAN)
        voxels = masker.fit_transform(str(bold), confounds=confounds, sample_mask=sample_mask)
        seed_masker = NiftiSpheresMasker([SGACC_MNI], radius=10.0, mask_img=mask,
                                         smoothing_fwhm=6.0, t_r=t_r, **CLEAN)
        seed = seed_masker.fit_transform(str(bold), confounds=confounds, sample_mask=sample_mask)[:, 0]
        seed = (seed - seed.mean()) / seed.std(ddof=1)
        r = voxels.T @ seed / (len(seed) - 1)
        z_maps.append(masker.inverse_transform(np.arctanh(np.clip(r, -0.9999999, 0.9999999))))
        weights.append(len(seed))
    # Runs pooled in Fisher-z space, weighted by their retained volumes.
    z_img = image.new_img_like(z_maps[0], np.average(
        np.stack([m.get_fdata() for m in z_maps], axis=-1), axis=-1, weights=weights))
    # Search region: four 20 mm DLPFC spheres within grey matter (P > 0.5).
    gm = image.resample_to_img(str(next(anat.glob(f"*space-{SPACE}_label-GM_probseg.nii.gz"))),
                               z_img, interpolation="linear", force_resample=True,
                               copy_header=True).get_fdata()
    ijk = np.indices(z_img.shape).reshape(3, -1).T
    xyz = image.coord_transform(*ijk.T, z_img.affine)
    xyz = np.stack(xyz, axis=1)
    near = np.zeros(len(xyz), dtype=bool)
    for site in DLPFC_SITES_MNI:
        near |= np.linalg.norm(xyz - site, axis=1) <= 20.0
    region = near.reshape(z_img.shape) & (gm > 0.5)
    z = z_img.get_fdata()
    # Cluster method: the most negative 10 % of the region, largest 26-connected cluster,
    # |z|-weighted centroid.
    cut = np.percentile(z[region], 10)
    labels, n = ndimage.label(region & (z <= cut), structure=np.ones((3, 3, 3)))
    largest = 1 + np.argmax(ndimage.sum(np.ones_like(z), labels, range(1, n + 1)))
    points = np.argwhere(labels == largest)
    w = np.abs(z[labels == largest])
    centre = (points * w[:, None]).sum(axis=0) / w.sum()
    target = image.coord_transform(*centre, z_img.affine)
    print("target_mni", " ".join(f"{v:.1f}" for v in target))


if __name__ == "__main__":
    main()
