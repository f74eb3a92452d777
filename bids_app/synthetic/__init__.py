"""Synthetic fMRIPrep derivatives with a planted, known TMS target.

No real 4-D resting-state BOLD can be shipped with tmstarget, so the demo, the tests and the
benchmarks run on data made here. The data are built to behave like fMRIPrep outputs, including
the ways real data mislead a naive analysis; every choice below says which behaviour it imitates.

Layout
------
The output is an fMRIPrep derivatives dataset (real fMRIPrep file names)::

    dataset_description.json                  DatasetType "derivative"
    tmstarget_synthetic_truth.json            what was planted where (see below)
    sub-01/anat/sub-01_desc-preproc_T1w.nii.gz                    head, not skull-stripped, T1w space
                sub-01_desc-brain_mask, _label-{GM,WM,CSF}_probseg, _dseg (1 GM, 2 WM, 3 CSF)
                sub-01_space-<MNI>_desc-preproc_T1w, ..._desc-brain_mask, _label-*_probseg, _dseg
                sub-01_from-T1w_to-<MNI>_mode-image_xfm.h5
                sub-01_from-<MNI>_to-T1w_mode-image_xfm.h5
    sub-01/[ses-1/]func/sub-01[_ses-1]_task-rest_run-1_space-<space>_desc-preproc_bold.nii.gz (+ .json)
                ..._space-<space>_desc-brain_mask.nii.gz, ..._space-<space>_boldref.nii.gz
                sub-01[_ses-1]_task-rest_run-1_desc-confounds_timeseries.tsv (+ .json)

``<space>`` is ``MNI152NLin2009cAsym``, ``MNI152NLin6Asym`` (the same geometry and the same data,
only labelled differently) or ``T1w`` (the participant's own space). The transforms between T1w
and MNI152NLin2009cAsym are always written (the pipeline needs them for a T1w-space run); those of
MNI152NLin6Asym when that space is asked for.

The head
--------
The MNI-space head is the TemplateFlow MNI152NLin2009cAsym template (full-head T1w, brain mask,
GM/WM/CSF probabilities at 2 mm) when a seeded TemplateFlow home is found, read with nibabel from
disk (never downloaded). Otherwise a self-made head of nested ellipsoids (scalp, skull, CSF, a
cortical grey-matter ribbon 8 mm thick, a medial grey-matter wall, ventricles, deep white matter)
that puts the four DLPFC sites and the planted target in the ribbon and the sgACC inside the
brain. Each participant's T1w space is a similarity transform of MNI space,
``T1w mm = A @ MNI mm + b`` (a rotation of a few degrees about each axis, isotropic scale about
0.95, a shift of 2-8 mm left-right and 1-4 cm on the other axes; all seed-dependent), and every
T1w-space image is the MNI-space field resampled through that map onto an axis-aligned RAS grid
covering the head.

Transforms, and which way they map
----------------------------------
The ``*_xfm.h5`` files are real ITK composite transforms, as antsRegistration writes them for
fMRIPrep: ``/TransformGroup/0`` a ``CompositeTransform_double_3_3``, ``/1`` an
``AffineTransform_double_3_3`` (12 parameters in ITK's LPS convention and a 3-value centre),
``/2`` a ``DisplacementFieldTransform_float_3_3`` whose field is all zero (the map is exactly
affine). ITK image transforms map points of the reference (fixed, ``to-``) space into the moving
(``from-``) space, so:

- ``from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5`` maps MNI mm -> T1w mm (``A x + b``);
- ``from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5`` maps T1w mm -> MNI mm.

With nitransforms: ``nitransforms.manip.load(path, fmt="itk").map(points_ras)`` does exactly
that (``fmt="itk"`` is needed; nitransforms >= 25 defaults to X5), and
:func:`tmstarget.workflows.transforms.map_points` wraps it. ``tests/test_transforms.py`` holds the round
trip. The zero field is stored on the reference anatomical grid padded by five voxels, because
nitransforms evaluates the field with cubic splines that lose accuracy within three voxels of the
field's edge.

With ``warp="nonlinear"`` (``tmstarget-synth --warp nonlinear``; off by default) each
participant's map is instead fMRIPrep-like: ``T1w mm = A (MNI mm + u(MNI mm))``, an anisotropic
affine after a smooth displacement field that is small in the brain and grows towards the scalp
(:mod:`tmstarget.synthetic.warp`). ``from-T1w_to-<MNI>`` holds the affine at ``/1`` and ``u`` at
``/2`` (ITK applies the last first: field, then affine); ``from-<MNI>_to-T1w`` holds the inverse
field at ``/1`` and the inverse affine at ``/2`` (affine first), as ITK's
``CompositeTransform::GetInverse`` writes it; both fields lie on the MNI anatomical grid padded
by five voxels, and each file is the inverse of the other to about 0.01 mm. The native
(``space``-less) T1w, masks, dseg and probsegs are the MNI head warped through the map.

The BOLD signal model
---------------------
Everything is made on the MNI BOLD grid as spatial maps times time courses, plus voxel noise; the
T1w-space BOLD resamples the same maps through the participant's map, with the same time courses
and fresh noise. With ``B`` the tissue baseline (EPI contrast: CSF bright, GM, then WM, non-brain
tissue dim), a voxel's intensity is

``B * (1 + sum_k map_k * tc_k(t)) - grad(B) . d(x, t) + spin_history + noise``

- **sgACC network**: a band-limited (0.01-0.1 Hz) signal s(t) carried by a Gaussian blob
  (sigma 6 mm) at the sgACC (6, 16, -10) with positive weight and by a grey-matter-restricted
  Gaussian blob (sigma 5 mm) at the planted target with negative weight: the anticorrelated DLPFC
  cluster the pipeline must find. ``signal_strength`` scales both.
- **global signal** g(t) in every brain voxel; **white-matter** and **CSF** physiological signals
  (partly leaking into grey matter), a slow **scanner drift** and three spatially smooth
  **structured-noise** components (what aCompCor is for).
- **motion**: six rigid-body parameters per volume, taken from a real fMRIPrep confounds table
  (a different segment of it per run, reflected at its ends when more rows are needed) or
  synthesized as a smooth random walk; two spikes (about 0.7 mm) are added per run so that
  censoring at FD > 0.5 mm has something to remove. The physical artefact is first order in the
  displacement, ``-grad(B) . (t + omega x (x - c))`` about the head centre c, plus a small
  spin-history signal drop proportional to framewise displacement at image edges.
- **motion-locked decoy**: a linear combination m(t) of the six motion parameters and their
  first derivatives (so it lies exactly in the span of the 24 motion regressors and a constant)
  added with positive weight in the sgACC blob and negative weight at :data:`DECOY_MNI` (3 % of
  the baseline, 2.5 times the planted signal). Without confound regression, with or without
  band-pass filtering, the decoy is the most anticorrelated part of the DLPFC search region;
  24-parameter regression removes it exactly. Of all such combinations m(t) is the one with the
  largest share of its variance in 0.01-0.1 Hz, so that filtering cannot remove it, and its
  weights cancel the spikes, so that it is carried by ordinary motion, not by two volumes.
- **non-steady state**: the first three volumes carry a decaying positive offset (40 %, 12 %,
  3 %) and are flagged as ``non_steady_state_outlier00..02``.
- **noise**: AR(1) (rho 0.3) thermal noise of uniform standard deviation, 3 % of grey-matter
  intensity at 2 mm, scaled like thermal noise with the voxel volume (about 1 % at 4 mm) and by
  ``noise_level``. At 2 mm the planted voxel's correlation with the seed after denoising is
  about -0.5, at 4 mm about -0.8.

The BOLD is stored as int16 with a scale factor; voxels more than about 6 mm outside the brain
mask are zero.

Confounds
---------
The table carries fMRIPrep's column names and conventions ('n/a' for missing values): the six
motion parameters with ``_derivative1``, ``_power2`` and ``_derivative1_power2``;
``framewise_displacement`` (Power: rotations on a 50 mm sphere); ``global_signal``,
``white_matter`` and ``csf`` computed from the synthetic BOLD as written (means over the brain
mask, the eroded WM mask and the eroded CSF mask) with the same expansions; ``dvars`` and
``std_dvars`` (nipype's ComputeDVARS); ``a_comp_cor_XX`` from a PCA of the high-pass-filtered,
variance-normalized WM+CSF time series (fMRIPrep keeps the components explaining 50 % of the
variance; at least five are kept here), with their JSON metadata; ``cosineXX`` (the DCT basis of
a 128 s high-pass, as fMRIPrep writes it); ``non_steady_state_outlierXX`` and ``motion_outlierXX``.
Confounds are computed from the BOLD of the first space in ``spaces``. As in fMRIPrep, the
CompCor and cosine columns are zero in the non-steady-state rows.

Truth
-----
:func:`make_fmriprep_dataset` returns (and writes as ``tmstarget_synthetic_truth.json``) the
planted target snapped to the nearest grey-matter voxel centre of the MNI BOLD grid, the decoy,
and per participant the target in T1w mm and the 4x4 MNI-to-T1w matrix.

Modules
-------
:mod:`.constants` (shared names and coordinates), :mod:`.sources` (where real data is found),
:mod:`.grids` (voxel grids and resampling), :mod:`.heads` (template and self-made heads),
:mod:`.transforms` (participant maps and the ITK ``.h5`` writer), :mod:`.timecourses` (signals,
motion, decoy), :mod:`.bold` (spatial maps and rendering), :mod:`.confounds` (the confounds
table), :mod:`.layout` (file names, writers and :func:`make_fmriprep_dataset`), :mod:`.cli`
(``tmstarget-synth``).
"""

from .cli import main
from .constants import (DECOY_MNI, MNI_SPACES, MOTION_COLUMNS, N_NON_STEADY, PLANTED_TARGET_MNI,
                        SGACC_MNI, TEMPLATE, TRUTH_FILE)
from .layout import make_fmriprep_dataset
# Building blocks the tests use (an ITK file of a chosen map, a grid, a rotation, the decoy).
from .grids import _Grid, _mni_grid  # noqa: F401
from .timecourses import _bandpass, _decoy_timecourse  # noqa: F401
from .transforms import _rotation, _write_itk_h5  # noqa: F401

__all__ = ["PLANTED_TARGET_MNI", "DECOY_MNI", "SGACC_MNI", "TRUTH_FILE", "N_NON_STEADY", "MNI_SPACES",
           "MOTION_COLUMNS", "TEMPLATE", "make_fmriprep_dataset", "main"]
