"""The seed and the DLPFC search region on the BOLD grid.

Both are defined in MNI millimetres. Rather than warping masks, every brain voxel of the BOLD grid
gets its MNI coordinate (the identity for MNI spaces; fMRIPrep's ``from-MNI…_to-T1w`` transform for
T1w-space data) and the regions are evaluated there. Spheres stay exact spheres in MNI space and a
user's image is sampled once, whatever the computation space.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nilearn.image import resample_to_img
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from scipy import ndimage

from tmstarget.workflows.greymatter import GM_LABEL, is_segmentation


def voxel_coordinates(mask, affine):
    """World coordinates (mm) of the voxels of a boolean 3-D mask, in ``mask`` C-order."""
    ijk = np.argwhere(mask)
    return nb.affines.apply_affine(affine, ijk)


def sphere_weights(coords, center, radius):
    """1.0 for points within ``radius`` mm of ``center`` (mm), else 0.0."""
    distance = np.linalg.norm(np.asarray(coords) - np.asarray(center, dtype=float), axis=1)
    return (distance <= radius).astype(np.float32)


def sample_image(data, affine, coords, order):
    """Values of a 3-D image at world coordinates (mm); 0 outside its field of view.

    ``order`` 0 (nearest neighbour) for masks and labels, 1 (trilinear) for continuous maps.
    """
    ijk = nb.affines.apply_affine(np.linalg.inv(affine), coords).T
    return ndimage.map_coordinates(np.asarray(data, dtype=np.float32), ijk, order=order,
                                   mode="constant", cval=0.0).astype(np.float32)


def is_binary(data):
    """Whether an image only holds 0 and 1 (a mask, as opposed to a weighted map)."""
    return bool(np.isin(np.unique(data), (0, 1)).all())


def seed_weights(coords_mni, center=None, radius=None, image=None):
    """Weights of the seed at each brain voxel: a sphere, a mask image or a weighted map.

    Parameters
    ----------
    coords_mni : ndarray of shape (n_voxels, 3)
        MNI coordinates (mm) of the brain voxels.
    center, radius : tuple of float, float
        Sphere centre and radius in MNI mm, used when ``image`` is None.
    image : nibabel image or None
        A seed mask (values 0/1) or a weighted seed map in MNI152NLin2009cAsym space.
    """
    if image is None:
        return sphere_weights(coords_mni, center, radius)
    data = np.asanyarray(image.dataobj, dtype=np.float32)
    if is_binary(data):
        return sample_image(data, image.affine, coords_mni, order=0)
    return sample_image(data, image.affine, coords_mni, order=1)


def search_region(coords_mni, gm_probability, sites, radius, gm_threshold, image=None):
    """The DLPFC search region: union of spheres (or a mask image) restricted to grey matter.

    Parameters
    ----------
    coords_mni : ndarray of shape (n_voxels, 3)
        MNI coordinates (mm) of the brain voxels.
    gm_probability : ndarray of shape (n_voxels,)
        Grey-matter probability of each voxel.
    sites : iterable of 3-tuples
        Sphere centres in MNI mm (ignored when ``image`` is given).
    radius : float
        Sphere radius in mm.
    gm_threshold : float
        Minimum grey-matter probability.
    image : nibabel image or None
        A user search-region mask in MNI152NLin2009cAsym space.

    Returns
    -------
    ndarray of bool, shape (n_voxels,)
    """
    if image is None:
        inside = np.zeros(len(coords_mni), dtype=bool)
        for center in sites:
            inside |= sphere_weights(coords_mni, center, radius) > 0
    else:
        data = np.asanyarray(image.dataobj, dtype=np.float32)
        inside = sample_image(data > 0, image.affine, coords_mni, order=0) > 0
    return inside & (np.asarray(gm_probability) >= gm_threshold)


def grey_matter_probability(gm_img, reference_img):
    """Grey-matter probability on the reference grid, from a GM probseg or an fMRIPrep dseg.

    An fMRIPrep ``dseg`` labels grey matter 1; it stands in for a missing ``label-GM_probseg``
    (the rule of :mod:`tmstarget.workflows.greymatter`).
    """
    data = np.asanyarray(gm_img.dataobj)
    if is_segmentation(data):
        gm_img = nb.Nifti1Image((np.round(data) == GM_LABEL).astype(np.float32), gm_img.affine)
    resampled = resample_to_img(gm_img, reference_img, interpolation="linear",
                                force_resample=True, copy_header=True)
    return np.asanyarray(resampled.dataobj, dtype=np.float32)


class _RegionsInputSpec(BaseInterfaceInputSpec):
    mask_files = InputMultiObject(File(exists=True), mandatory=True,
                                  desc="brain masks of the runs (same grid)")
    gm_file = File(exists=True, mandatory=True, desc="GM probseg or dseg in the BOLD's space")
    to_mni_xfm = File(exists=True, desc="transform mapping BOLD-space points to MNI points "
                      "(fMRIPrep from-MNI…_to-T1w); absent for MNI spaces")
    seed_center = traits.Tuple(traits.Float, traits.Float, traits.Float)
    seed_radius = traits.Float()
    seed_image = File(exists=True)
    sites = traits.List(traits.Tuple(traits.Float, traits.Float, traits.Float))
    site_radius = traits.Float()
    search_image = File(exists=True)
    gm_threshold = traits.Float(0.5, usedefault=True)


class _RegionsOutputSpec(TraitedSpec):
    seed_file = File(exists=True, desc="seed weights on the BOLD grid (float32)")
    search_file = File(exists=True, desc="search-region mask on the BOLD grid (uint8)")


class Regions(SimpleInterface):
    """Place the seed and the grey-matter search region on the participant's BOLD grid."""

    input_spec = _RegionsInputSpec
    output_spec = _RegionsOutputSpec

    def _run_interface(self, runtime):
        from tmstarget.workflows.transforms import map_points

        inputs = self.inputs
        reference = nb.load(inputs.mask_files[0])
        brain = np.zeros(reference.shape[:3], dtype=bool)
        for mask_file in inputs.mask_files:
            brain |= np.asanyarray(nb.load(mask_file).dataobj) > 0
        coords = voxel_coordinates(brain, reference.affine)
        coords_mni = map_points(coords, inputs.to_mni_xfm) if inputs.to_mni_xfm else coords

        seed_img = nb.load(inputs.seed_image) if inputs.seed_image else None
        seed = seed_weights(coords_mni, inputs.seed_center, inputs.seed_radius, seed_img)
        gm = grey_matter_probability(nb.load(inputs.gm_file), reference)[brain]
        search_img = nb.load(inputs.search_image) if inputs.search_image else None
        region = search_region(coords_mni, gm, inputs.sites, inputs.site_radius,
                               inputs.gm_threshold, search_img)

        # Refused here, before any run is denoised, with the option that placed the region.
        if not np.any(seed):
            where = (f"--seed-image {inputs.seed_image}" if inputs.seed_image else
                     f"--seed-center {' '.join(f'{c:g}' for c in inputs.seed_center)} "
                     f"--seed-radius {inputs.seed_radius:g}")
            raise ValueError(f"the seed ({where}) holds no brain voxel of {inputs.mask_files[0]}: "
                             "give MNI152NLin2009cAsym coordinates or an image inside the brain")
        if not region.any():
            where = (f"--search-region-image {inputs.search_image}" if inputs.search_image
                     else "the DLPFC spheres")
            raise ValueError(f"the search region ({where}) holds no grey-matter voxel (probability >= "
                             f"{inputs.gm_threshold:g}) of {inputs.mask_files[0]}: give an MNI152NLin2009cAsym "
                             "mask over the cortex, or check --gm-threshold and the grey-matter map")
        out = Path(runtime.cwd)
        for name, values, dtype in (("seed", seed, np.float32), ("search", region, np.uint8)):
            volume = np.zeros(brain.shape, dtype=dtype)
            volume[brain] = values
            nb.Nifti1Image(volume, reference.affine).to_filename(out / f"{name}.nii")
            self._results[f"{name}_file"] = str(out / f"{name}.nii")
        return runtime
