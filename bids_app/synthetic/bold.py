"""Spatial maps of the BOLD model on a BOLD grid and the rendering of a run's BOLD."""

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

from .constants import _HEAD_CENTRE_MNI, MOTION_COLUMNS, SGACC_MNI
from .grids import _covering_grid, _Grid, _sampler
from .heads import _tissue_fields
from .warp import _point_maps

# Amplitudes of the BOLD model, as fractions of the local baseline unless said otherwise.
_SEED_WEIGHT = 0.012        # sgACC blob, times signal_strength
_TARGET_WEIGHT = 0.012      # planted DLPFC blob (negative), times signal_strength
_DECOY_WEIGHT = 0.030       # motion-locked decoy in the seed (+) and at the decoy (-)
_GLOBAL_WEIGHT = 0.006
_WM_WEIGHT, _CSF_WEIGHT, _LEAK = 0.010, 0.015, 0.25
_STRUCTURED_WEIGHT = 0.004
_DRIFT_WEIGHT = 0.008
_NOISE_SD_2MM = 0.030       # of grey-matter intensity, thermal noise at 2 mm voxels
_NOISE_AR1 = 0.3
_SPIN_HISTORY_MM = 0.5      # signal drop per mm of FD, as a displacement along grad(B)
_GM_INTENSITY = 600.0       # BOLD baseline of grey matter (arbitrary units)
_TISSUE_BOLD = {"gm": 1.0, "wm": 0.72, "csf": 1.5, "nonbrain": 0.35}


def _blob(world: np.ndarray, centre, sigma: float) -> np.ndarray:
    return np.exp(-np.sum((world - np.asarray(centre, np.float32)) ** 2, axis=-1) / (2 * sigma**2))


def _bold_baseline(f: dict) -> np.ndarray:
    """EPI baseline intensity from tissue fractions (CSF bright, then GM, WM, non-brain tissue)."""
    t = _TISSUE_BOLD
    nonbrain = np.clip(f["head"] - f["gm"] - f["wm"] - f["csf"], 0.0, 1.0)
    baseline = t["gm"] * f["gm"] + t["wm"] * f["wm"] + t["csf"] * f["csf"] + t["nonbrain"] * nonbrain
    return (_GM_INTENSITY * baseline).astype(np.float32)


@dataclass
class _Maps:
    """Spatial maps on one BOLD grid: baseline, named maps (absolute intensity per unit of the
    matching time course), the masks and the stored region."""

    grid: _Grid
    baseline: np.ndarray
    maps: dict
    brain: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    dseg: np.ndarray
    stored: np.ndarray

    @cached_property
    def voxels(self) -> tuple:
        """Indices of the stored voxels, brain-mask voxels first: the BOLD is handled as (T, V)
        arrays in this order, so brain-wide statistics read one contiguous block of columns."""
        inside, outside = np.nonzero(self.brain), np.nonzero(self.stored & ~self.brain)
        return tuple(np.r_[a, b] for a, b in zip(inside, outside))


def _mni_bold_maps(f: dict, grid: _Grid, target, decoy, signal_strength: float, rng) -> _Maps:
    """All spatial maps of the model on the MNI BOLD grid (see the module docstring)."""
    world = grid.world()
    baseline = _bold_baseline(f)
    # A soft coil-sensitivity profile: brighter posteriorly and superiorly by about 10 %.
    baseline *= 1.0 + 0.0005 * (-world[..., 1]) + 0.0004 * world[..., 2]
    gm_mask = (f["dseg"] == 1).astype(np.float32)
    seed = _blob(world, SGACC_MNI, 6.0)
    target_blob = _blob(world, target, 5.0) * gm_mask
    decoy_blob = _blob(world, decoy, 5.0) * gm_mask
    brainish = f["gm"] + 0.6 * f["wm"] + 0.6 * f["csf"]
    relative = {
        "neural": signal_strength * (_SEED_WEIGHT * seed - _TARGET_WEIGHT * target_blob),
        "decoy": _DECOY_WEIGHT * (seed - decoy_blob),
        "global": _GLOBAL_WEIGHT * brainish,
        "wm": _WM_WEIGHT * (f["wm"] + _LEAK * f["gm"]),
        "csf": _CSF_WEIGHT * (f["csf"] + _LEAK * f["gm"]),
        "drift": np.full(grid.shape, _DRIFT_WEIGHT, np.float32),
        # long-T1 CSF recovers last, so its non-steady-state excess is larger
        "non_steady": 1.0 + f["csf"],
    }
    for k in range(3):
        field = ndimage.gaussian_filter(rng.standard_normal(grid.shape).astype(np.float32),
                                        12.0 / grid.spacing)
        relative[f"structured{k}"] = _STRUCTURED_WEIGHT * field / np.abs(field).max() * brainish
    maps = {name: (m * baseline).astype(np.float32) for name, m in relative.items()}

    # Motion artefact, first order: I(x - d) - I(x) = -grad(B) . d, d = t + omega x (x - c).
    grad = np.stack(np.gradient(baseline, grid.spacing), axis=-1)  # intensity per mm
    rel = world - _HEAD_CENTRE_MNI.astype(np.float32)
    moment = np.cross(rel, grad)                                   # (x - c) x grad(B)
    for j, name in enumerate(MOTION_COLUMNS[:3]):
        maps[name] = -grad[..., j]
    for j, name in enumerate(MOTION_COLUMNS[3:]):
        # grad . (omega x r) = omega . (r x grad)
        maps[name] = -moment[..., j]
    maps["spin_history"] = -_SPIN_HISTORY_MM * np.linalg.norm(grad, axis=-1)

    brain = f["brain"]
    # Keep the brain and about 6 mm around it (motion artefacts live at its edge); zero beyond.
    stored = ndimage.binary_dilation(brain, iterations=max(1, int(round(6.0 / grid.spacing))))
    return _Maps(grid, baseline, maps, brain, f["gm"], f["wm"], f["csf"], f["dseg"], stored)


def _t1w_bold_maps(head, mni: _Maps, participant, target_t1w) -> _Maps:
    """The MNI BOLD maps resampled (linear) onto a participant's T1w BOLD grid.

    The grid is axis-aligned in T1w space with the MNI voxel size and covers the stored region;
    the tissue fields and masks come from the head itself at that resolution. Its origin puts the
    planted target on a voxel centre, as it is in MNI space, so that a recovered target's error
    measures the pipeline, not the grid. ``participant`` is the participant's map (a 4x4 MNI ->
    T1w matrix or a :class:`.warp._NonlinearMap`).
    """
    mni_to_t1w, t1w_to_mni = _point_maps(participant)
    spacing = mni.grid.spacing
    grid = _covering_grid(mni.grid.world(mni.stored, to_world=mni_to_t1w), spacing, 2 * spacing)
    origin = grid.affine[:3, 3]
    grid.affine[:3, 3] = origin + np.mod(np.asarray(target_t1w) - origin, spacing)
    f = _tissue_fields(head, grid, t1w_to_mni)
    through = _sampler(mni.grid.affine, grid, t1w_to_mni)
    stored = (through(mni.stored.astype(np.float32)) > 0.5) | f["brain"]
    return _Maps(grid, through(mni.baseline), {k: through(v) for k, v in mni.maps.items()},
                 f["brain"], f["gm"], f["wm"], f["csf"], f["dseg"], stored)



def _render(maps: _Maps, tcs: dict, noise_sd: float, rng) -> np.ndarray:
    """BOLD of ``maps.voxels``, (T, V) float32: baseline + maps @ time courses + AR(1) noise."""
    names = sorted(maps.maps)
    voxels = maps.voxels
    spatial = np.stack([maps.maps[k][voxels] for k in names], axis=0)  # (K, V)
    temporal = np.stack([tcs[k] for k in names], axis=1)               # (T, K)
    n = temporal.shape[0]
    data = rng.standard_normal((n, spatial.shape[1]), dtype=np.float32)
    innovation = np.float32(np.sqrt(1.0 - _NOISE_AR1**2))
    for t in range(1, n):  # AR(1) in place, one volume at a time (rows are contiguous)
        data[t] *= innovation
        data[t] += np.float32(_NOISE_AR1) * data[t - 1]
    data *= np.float32(noise_sd)
    data += maps.baseline[voxels]
    for start in range(0, n, 64):  # chunks keep the (T, V) temporaries small
        data[start:start + 64] += temporal[start:start + 64] @ spatial
    return data


