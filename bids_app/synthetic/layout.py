"""The dataset layout: fMRIPrep file names, the writers, and :func:`make_fmriprep_dataset`."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from tmstarget import __version__
from tmstarget.collect import clean_label

from .bold import _GM_INTENSITY, _NOISE_SD_2MM, _Maps, _mni_bold_maps, _render, _t1w_bold_maps
from .confounds import _confounds
from .constants import (_HEAD_CENTRE_MNI, DECOY_MNI, MNI_SPACES, N_NON_STEADY, PLANTED_TARGET_MNI,
                        SGACC_MNI, TEMPLATE, TRUTH_FILE)
from .grids import _covering_grid, _Grid, _mni_grid, _sampler
from .heads import _rician, _SyntheticHead, _TemplateHead, _tissue_fields
from .sources import _find_confounds_table, _find_template_dir
from .timecourses import _add_spikes, _real_motion, _synthetic_motion, _timecourses
from .transforms import _participant_map, _write_itk_h5
from .warp import _NonlinearMap, _nonlinear_map, _point_maps, _trilinear


def _save(volume: np.ndarray, grid: _Grid, path: Path, dtype, space_code: int) -> None:
    img = nib.Nifti1Image(np.asarray(volume), grid.affine)
    img.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(grid.affine, code=space_code)
    img.set_sform(grid.affine, code=space_code)
    img.to_filename(path)


def _write_bold(path: Path, quantized: np.ndarray, maps: _Maps, slope: float, tr: float,
                space_code: int) -> None:
    """Stream an int16 4-D NIfTI (scale factor ``slope``) volume by volume into a .nii.gz.

    A full-grid float array of a 2 mm run would take about 1 GB; streaming needs one volume.
    ``quantized`` (T, V) holds the integer values of ``maps.voxels``.
    """
    shape = maps.grid.shape
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((*shape, quantized.shape[0]))
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(maps.grid.affine, code=space_code)
    hdr.set_sform(maps.grid.affine, code=space_code)
    hdr.set_xyzt_units("mm", "sec")
    hdr["pixdim"][4] = tr
    hdr.set_slope_inter(slope, 0.0)
    flat = np.ravel_multi_index(maps.voxels, shape, order="F")
    order = np.argsort(flat)  # write each volume in file (Fortran) order
    flat = flat[order]
    volume = np.zeros(int(np.prod(shape)), np.int16)
    header = io.BytesIO()
    hdr.write_to(header)
    # A gzip stream (wbits 31) with run-length matching: a third faster than gzip level 1 on
    # these mostly-zero volumes, and no larger.
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31, 9, zlib.Z_RLE)
    with open(path, "wb") as fobj:
        fobj.write(compressor.compress(header.getvalue()))
        for values in quantized:
            volume[flat] = values[order]
            fobj.write(compressor.compress(volume.tobytes()))
        fobj.write(compressor.flush())


def _write_json(path: Path, content) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")


def _entities(participant: str, session, run: int) -> str:
    """``sub-<p>[_ses-<s>]_task-rest_run-<r>``: fMRIPrep's file-name stem of a run."""
    session = [f"ses-{session}"] if session is not None else []
    return "_".join([f"sub-{participant}", *session, f"task-rest_run-{run}"])


def _write_anat(anat_dir: Path, prefix: str, f: dict, grid: _Grid, space_code: int) -> None:
    _save(f["t1w"], grid, anat_dir / f"{prefix}_desc-preproc_T1w.nii.gz", np.int16, space_code)
    _save(f["brain"].astype(np.uint8), grid, anat_dir / f"{prefix}_desc-brain_mask.nii.gz", np.uint8,
          space_code)
    for label in ("GM", "WM", "CSF"):
        _save(f[label.lower()], grid, anat_dir / f"{prefix}_label-{label}_probseg.nii.gz", np.float32,
              space_code)
    _save(f["dseg"], grid, anat_dir / f"{prefix}_dseg.nii.gz", np.uint8, space_code)


def _write_anatomy(anat_dir: Path, subject: str, head, mni_anat: dict, mni_anat_grid: _Grid,
                   participant, mni_spaces, rng) -> None:
    """Write a participant's anatomy (T1w space and each MNI space) and the T1w<->MNI transforms.

    ``participant`` is the participant's map: a 4x4 MNI -> T1w matrix (a similarity) or a
    :class:`.warp._NonlinearMap`. The T1w-space images are the MNI fields resampled through it
    onto an axis-aligned grid covering the head with 10 mm to spare.
    """
    anat_dir.mkdir(parents=True, exist_ok=True)
    mni_to_t1w, t1w_to_mni = _point_maps(participant)
    head_in_t1w = mni_anat_grid.world(mni_anat["head"] > 0.5, to_world=mni_to_t1w)
    t1w_grid = _covering_grid(head_in_t1w, mni_anat_grid.spacing, 10.0)
    outputs = [(_tissue_fields(head, t1w_grid, t1w_to_mni), t1w_grid, subject, 1)]
    outputs += [(mni_anat, mni_anat_grid, f"{subject}_space-{space}", 4) for space in mni_spaces]
    for fields, grid, prefix, code in outputs:
        if head.kind == "synthetic":  # a scanner's image has noise; the template has none to add
            fields = dict(fields, t1w=_rician(fields["t1w"], 12.0, rng))
        _write_anat(anat_dir, prefix, fields, grid, code)
    for space in dict.fromkeys([TEMPLATE, *mni_spaces]):
        forward = anat_dir / f"{subject}_from-T1w_to-{space}_mode-image_xfm.h5"
        inverse = anat_dir / f"{subject}_from-{space}_to-T1w_mode-image_xfm.h5"
        if isinstance(participant, _NonlinearMap):
            # Both fields on the MNI grid, as SyN's: forward x -> A (x + u(x)), inverse
            # y -> q + v(q) with q = A^-1 y (see .warp and _write_itk_h5).
            affine = participant.affine
            _write_itk_h5(forward, affine, _HEAD_CENTRE_MNI, participant.grid, participant.forward, True)
            _write_itk_h5(inverse, np.linalg.inv(affine), nib.affines.apply_affine(affine, _HEAD_CENTRE_MNI),
                          participant.grid, participant.inverse, False)
            continue
        # The zero displacement fields live on the reference grids, padded (see the module docstring).
        _write_itk_h5(forward, mni_to_t1w, _HEAD_CENTRE_MNI, mni_anat_grid.padded(5))
        _write_itk_h5(inverse, t1w_to_mni, nib.affines.apply_affine(mni_to_t1w, _HEAD_CENTRE_MNI),
                      t1w_grid.padded(5))


def _write_run(func_dir: Path, base: str, spaces, space_maps: dict, tcs: dict, motion: np.ndarray,
               tr: float, noise_sd: float, rng) -> None:
    """Render and write one run's BOLD in every space, then its confounds (from the first space)."""
    rendered = {}
    for space in spaces:
        maps = space_maps[space]
        if id(maps) not in rendered:  # MNI152NLin6Asym shares the MNI geometry: same data
            data = _render(maps, tcs, noise_sd, rng)
            slope = np.float32(np.abs(data).max() / 32000.0)
            data /= slope
            np.rint(data, out=data)   # the int16 values as stored
            rendered[id(maps)] = (data, slope)
        data, slope = rendered[id(maps)]
        code = 1 if space == "T1w" else 4  # NIfTI xform codes: scanner-based, MNI
        stem = f"{base}_space-{space}"
        _write_bold(func_dir / f"{stem}_desc-preproc_bold.nii.gz", data, maps, float(slope), tr, code)
        _write_json(func_dir / f"{stem}_desc-preproc_bold.json",
                    {"RepetitionTime": float(tr), "TaskName": "rest", "SkullStripped": False})
        _save(maps.brain.astype(np.uint8), maps.grid, func_dir / f"{stem}_desc-brain_mask.nii.gz",
              np.uint8, code)
        boldref = np.zeros(maps.grid.shape, np.float32)
        boldref[maps.voxels] = data[N_NON_STEADY:].mean(axis=0) * slope
        _save(boldref, maps.grid, func_dir / f"{stem}_boldref.nii.gz", np.float32, code)
    # confounds from the first space's BOLD as written (rescaled in place: no copy)
    data, slope = rendered.pop(id(space_maps[spaces[0]]))
    data *= slope
    table, meta = _confounds(data, space_maps[spaces[0]], motion, tr)
    table.to_csv(func_dir / f"{base}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
    _write_json(func_dir / f"{base}_desc-confounds_timeseries.json", meta)




def _map_point(mapping, point) -> np.ndarray:
    """One point (3,) through a 4x4 matrix or a function of (..., 3) points."""
    if callable(mapping):
        return mapping(np.asarray(point, float)[None])[0]
    return nib.affines.apply_affine(mapping, point)


def _snap_to_gm(point, gm: np.ndarray, grid: _Grid) -> np.ndarray:
    """Centre of the grey-matter voxel of ``grid`` nearest to ``point`` (mm)."""
    centres = grid.world(gm)
    if len(centres) == 0:
        raise RuntimeError("the head has no grey matter on the BOLD grid")
    return centres[np.argmin(np.sum((centres - np.asarray(point, np.float32)) ** 2, axis=1))].astype(float)


def make_fmriprep_dataset(out_dir, participants=("01",), sessions=(None,), n_runs=1, n_volumes=240,
                          tr=2.0, spaces=("MNI152NLin2009cAsym",), voxel_size=2.0, anat_voxel_size=None,
                          target_mni=PLANTED_TARGET_MNI, signal_strength=1.0, noise_level=1.0,
                          seed=0, templateflow_home=None, confounds_tsv=None, warp="similarity") -> dict:
    """Write a synthetic fMRIPrep derivatives dataset with a planted sgACC-anticorrelated target.

    Parameters
    ----------
    out_dir : str or Path
        Folder of the derivatives dataset (created if needed).
    participants : sequence of str
        Participant labels (``"01"`` or ``"sub-01"``).
    sessions : sequence of str or None
        Session labels; ``(None,)`` writes no ``ses-`` level.
    n_runs : int
        Resting-state runs per participant and session (``run-1`` ...).
    n_volumes : int
        Volumes per run, including the three non-steady-state volumes.
    tr : float
        Repetition time, seconds.
    spaces : sequence of str
        BOLD output spaces: ``"MNI152NLin2009cAsym"``, ``"MNI152NLin6Asym"``, ``"T1w"``.
        Confounds are computed from the BOLD of the first one.
    voxel_size : float
        BOLD voxel size, mm (2 mm reproduces the template's res-02 grid; 4 mm for fast tests).
    anat_voxel_size : float, optional
        Anatomical voxel size, mm; default ``min(voxel_size, 2.0)``.
    target_mni : tuple of 3 floats
        Where to plant the anticorrelated DLPFC cluster, MNI mm RAS; snapped to the nearest
        grey-matter voxel centre of the MNI BOLD grid.
    signal_strength : float
        Scale of the sgACC network signal (seed blob and planted cluster); 1 is about 1 % signal.
    noise_level : float
        Scale of the voxel (thermal, AR(1)) noise; 1 is 3 % of grey matter at 2 mm voxels.
    seed : int
        Seed of every random choice (participant maps, motion segments, signals, noise).
    templateflow_home : None, False or path
        None: use ``$TEMPLATEFLOW_HOME`` if it holds tpl-MNI152NLin2009cAsym, else
        ``../shared/data/templateflow`` beside the repository if present, else the self-made head.
        False: always the self-made head. A path: that TemplateFlow home (error if incomplete).
    confounds_tsv : None, False or path
        Source of the motion parameters. None: the real fMRIPrep table in
        ``../shared/data/fmriprep-confounds`` if present, else synthesized; False: synthesized;
        a path: that fMRIPrep confounds table.
    warp : {"similarity", "nonlinear"}
        Each participant's T1w space. "similarity": ``T1w mm = A @ MNI mm + b`` with a rotation
        and an isotropic scale, written with an all-zero displacement field. "nonlinear": an
        anisotropic affine plus a smooth displacement field, small in the brain and growing
        towards the scalp, in both ``.h5`` directions (each the inverse of the other), and a
        native head that is the MNI head warped through it (:mod:`tmstarget.synthetic.warp`).

    Returns
    -------
    dict
        The truth, also written to ``out_dir/tmstarget_synthetic_truth.json``: ``target_mni`` and
        ``decoy_mni`` (mm, after snapping), ``target_mni_requested``, ``sgacc_mni``, ``participants`` (per label:
        ``target_t1w``, ``decoy_t1w`` in mm and ``mni_to_t1w``, the 4x4 RAS matrix mapping MNI mm
        to T1w mm; with ``warp="nonlinear"`` instead ``mni_to_t1w_affine``, the affine part only,
        ``sgacc_t1w`` and ``displacement_mm``, the largest displacement in the brain and in the
        head), ``tr``, ``n_volumes``, ``n_non_steady``, ``voxel_size``,
        ``anat_voxel_size``, ``spaces``, ``sessions``, ``n_runs``, ``head``, ``motion_source``,
        ``seed``, ``signal_strength``, ``noise_level`` (and ``warp`` when it is "nonlinear").
    """
    out_dir = Path(out_dir)
    participants = tuple(clean_label(str(p)) for p in participants) or ("01",)
    sessions = tuple(None if s is None else clean_label(str(s), "session") for s in sessions or ()) or (None,)
    spaces = tuple(spaces)
    unknown = [s for s in spaces if s not in MNI_SPACES + ("T1w",)]
    if unknown or not spaces:
        raise ValueError(f"unsupported spaces {unknown or spaces}; use {MNI_SPACES + ('T1w',)}")
    if warp not in ("similarity", "nonlinear"):
        raise ValueError(f"unsupported warp {warp!r}; use 'similarity' or 'nonlinear'")
    if n_volumes <= N_NON_STEADY + 10:
        raise ValueError(f"n_volumes must exceed {N_NON_STEADY + 10}")
    voxel_size = float(voxel_size)
    anat_voxel_size = float(anat_voxel_size or min(voxel_size, 2.0))
    tpl_dir = _find_template_dir(templateflow_home)
    motion_table = _find_confounds_table(confounds_tsv)
    head = _TemplateHead(tpl_dir) if tpl_dir is not None else _SyntheticHead()
    noise_sd = _NOISE_SD_2MM * noise_level * (2.0 / voxel_size) ** 1.5 * _GM_INTENSITY

    # MNI-space anatomy and BOLD grids, shared by all participants
    mni_anat_grid = _mni_grid(anat_voxel_size)
    mni_anat = _tissue_fields(head, mni_anat_grid)
    mni_bold_grid = _mni_grid(voxel_size)
    mni_bold = _tissue_fields(head, mni_bold_grid)
    # grey matter on both the BOLD grid and (sampled at the voxel centre) the anatomical dseg
    anat_dseg_here = _sampler(mni_anat_grid.affine, mni_bold_grid)(mni_anat["dseg"].astype(np.float32),
                                                                   order=0)
    gm_bold = (mni_bold["dseg"] == 1) & (anat_dseg_here == 1)
    target = _snap_to_gm(target_mni, gm_bold, mni_bold_grid)
    decoy = _snap_to_gm(DECOY_MNI, gm_bold, mni_bold_grid)
    mni_maps = _mni_bold_maps(mni_bold, mni_bold_grid, target, decoy, signal_strength,
                              np.random.default_rng([seed, 7]))

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "dataset_description.json", {
        "Name": "tmstarget synthetic fMRIPrep derivatives",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "tmstarget-synth", "Version": __version__,
                         "Description": "synthetic resting-state fMRIPrep outputs with a planted "
                                        "sgACC-anticorrelated DLPFC target"}],
    })
    truth = {
        "target_mni": [float(v) for v in target],
        "target_mni_requested": [float(v) for v in target_mni],
        "decoy_mni": [float(v) for v in decoy],
        "sgacc_mni": list(SGACC_MNI),
        "participants": {},
        "tr": float(tr), "n_volumes": int(n_volumes), "n_non_steady": N_NON_STEADY,
        "n_runs": int(n_runs), "sessions": list(sessions), "spaces": list(spaces),
        "voxel_size": voxel_size, "anat_voxel_size": anat_voxel_size,
        "head": head.kind, "motion_source": str(motion_table) if motion_table else "synthesized",
        "seed": int(seed), "signal_strength": float(signal_strength), "noise_level": float(noise_level),
    }
    if warp == "nonlinear":
        truth["warp"] = warp

    for p_index, label in enumerate(participants):
        if warp == "nonlinear":
            participant = _nonlinear_map(seed, label, mni_anat_grid.padded(5))
        else:
            participant = _participant_map(seed, label)
        mni_to_t1w, _ = _point_maps(participant)
        _write_anatomy(out_dir / f"sub-{label}" / "anat", f"sub-{label}", head, mni_anat, mni_anat_grid,
                       participant, [s for s in spaces if s in MNI_SPACES],
                       np.random.default_rng([seed, 13, p_index]))

        def in_t1w(point):
            return np.asarray(_map_point(mni_to_t1w, point), float)

        space_maps = {s: mni_maps for s in spaces if s in MNI_SPACES}
        if "T1w" in spaces:
            space_maps["T1w"] = _t1w_bold_maps(head, mni_maps, participant, in_t1w(target))

        truth["participants"][label] = {
            "target_t1w": in_t1w(target).tolist(),
            "decoy_t1w": in_t1w(decoy).tolist(),
        }
        if warp == "nonlinear":
            brain_u = np.linalg.norm(_trilinear(participant.forward, participant.grid,
                                                mni_anat_grid.world(mni_anat["brain"])), axis=-1)
            head_u = np.linalg.norm(_trilinear(participant.forward, participant.grid,
                                               mni_anat_grid.world(mni_anat["head"] > 0.5)), axis=-1)
            truth["participants"][label].update({
                "sgacc_t1w": in_t1w(SGACC_MNI).tolist(),
                "mni_to_t1w_affine": participant.affine.tolist(),
                "displacement_mm": {"brain_max": float(brain_u.max()), "head_max": float(head_u.max())},
            })
        else:
            truth["participants"][label]["mni_to_t1w"] = participant.tolist()

        for s_index, session in enumerate(sessions):
            func_dir = out_dir / f"sub-{label}" / (f"ses-{session}" if session is not None else "") / "func"
            func_dir.mkdir(parents=True, exist_ok=True)
            for run in range(1, int(n_runs) + 1):
                rng = np.random.default_rng([seed, 17, p_index, s_index, run])
                motion = (_real_motion(motion_table, n_volumes, rng) if motion_table
                          else _synthetic_motion(n_volumes, rng))
                motion, jerks = _add_spikes(motion, rng)
                _write_run(func_dir, _entities(label, session, run), spaces, space_maps,
                           _timecourses(motion, jerks, tr, rng), motion, tr, noise_sd, rng)

    _write_json(out_dir / TRUTH_FILE, truth)
    return truth

