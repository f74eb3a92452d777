"""Benchmark of issue 14: what the E-field plan (``EfieldPlan``) adds to a participant.

Run from the repository root (not part of the test suite; about 2 minutes on 2 cores, the data
made once in ``--data-dir``)::

    python -u benchmarks/efield.py
    python -u benchmarks/efield.py --repeats 1

Two participants of the package's generator at the demo's 2 mm BOLD grid (real MNI head when
``../shared/data`` is there): the demo's (``tmstarget-synth``'s defaults: a similarity T1w
space) and a generated participant whose T1w space is a nonlinear warp of MNI. For each, the
scalp stage (ScalpMesh, ScalpProjection, ScalpLandmarks, ScalpTargets) runs once on the native T1w, as the graph runs it;
then, timed (median of ``--repeats``): ``EfieldPlan`` with ``orientation`` clinical and efield,
its map on the MNI BOLD brain mask through the grid-to-plan transform; and, on the same grid and
pose, the map alone as written (``efield_map_interpolated``, 8 mm dipoles on a 4 mm lattice)
against the voxel-by-voxel map of the same dipoles (``efield_map``) and of the table's 4 mm
dipoles, with their largest difference in % of the map's maximum. The issue's goal: a
participant costs at most a few seconds more.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # helpers.REAL_DATA: the shared head if present

from helpers import REAL_DATA  # noqa: E402
from tmstarget.synthetic import make_fmriprep_dataset  # noqa: E402
from tmstarget.workflows.coil_models import DEFAULT_COIL, coil_model  # noqa: E402
from tmstarget.workflows.comparators import ScalpLandmarks, ScalpTargets  # noqa: E402
from tmstarget.workflows.efield import efield_magnitude, efield_map_interpolated  # noqa: E402
from tmstarget.workflows.efield_plan import MAP_DIPOLE_SPACING_MM, EfieldPlan  # noqa: E402
from tmstarget.workflows.scalp import ScalpMesh, ScalpProjection  # noqa: E402
from tmstarget.workflows.transforms import map_points  # noqa: E402

MNI = "MNI152NLin2009cAsym"
PARTICIPANTS = {"demo": dict(warp="similarity", seed=0), "nonlinear": dict(warp="nonlinear", seed=7)}


def median_time(function, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def scalp_stage(root, truth, work):
    anat, func = root / "sub-01" / "anat", root / "sub-01" / "func"
    target = truth["participants"]["01"]["target_t1w"]
    points = work / "targets.tsv"
    points.write_text("name\tx\ty\tz\tseed_correlation_z\tcluster_size\n"
                      "connectivity\t{:.2f}\t{:.2f}\t{:.2f}\t-0.3\t10\n".format(*target))
    brain = anat / "sub-01_desc-brain_mask.nii.gz"
    start = time.perf_counter()
    mesh_file = ScalpMesh(t1w_file=str(anat / "sub-01_desc-preproc_T1w.nii.gz"),
                          brain_mask_files=[str(brain)]).run(cwd=str(work)).outputs.mesh_file
    projection = ScalpProjection(mesh_file=mesh_file, points_file=str(points)).run(
        cwd=str(work)).outputs
    z_file = work / "z.nii.gz"
    like = nb.load(brain)
    nb.Nifti1Image(np.full(like.shape, -0.2, np.float32), like.affine).to_filename(z_file)
    xfm = anat / f"sub-01_from-T1w_to-{MNI}_mode-image_xfm.h5"  # MNI points -> T1w points
    gm_file = str(anat / "sub-01_label-GM_probseg.nii.gz")
    landmarks = ScalpLandmarks(mesh_file=mesh_file, gm_file=gm_file,
                               from_mni_xfm=str(xfm)).run(cwd=str(work)).outputs
    targets = ScalpTargets(targets_file=projection.out_file, mesh_file=mesh_file,
                           landmarks_file=landmarks.landmarks_file, z_file=str(z_file),
                           mask_files=[str(brain)]).run(cwd=str(work)).outputs
    elapsed = time.perf_counter() - start
    mask = sorted(func.glob(f"*space-{MNI}_desc-brain_mask.nii.gz"))[0]
    return elapsed, dict(targets_file=targets.out_file, mesh_file=mesh_file,
                         measurements_file=targets.measurements_file, reference_file=str(mask),
                         grid_to_plan_xfm=str(xfm))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "tmstarget_efield_bench")
    args = parser.parse_args(argv)
    head = "real MNI152NLin2009cAsym head" if REAL_DATA["templateflow_home"] else "self-made head"
    print(f"E-field plan benchmark ({head}, 2 mm BOLD grid, median of {args.repeats})")
    for name, settings in PARTICIPANTS.items():
        root = args.data_dir / name / "fmriprep"
        if not (root / "tmstarget_synthetic_truth.json").is_file():
            truth = make_fmriprep_dataset(root, n_volumes=30, voxel_size=2.0,
                                          templateflow_home=REAL_DATA["templateflow_home"],
                                          confounds_tsv=REAL_DATA["confounds_tsv"], **settings)
        else:
            truth = json.loads((root / "tmstarget_synthetic_truth.json").read_text())
        work = args.data_dir / name / "work"
        work.mkdir(parents=True, exist_ok=True)
        scalp_s, files = scalp_stage(root, truth, work)
        print(f"\n{name} ({settings['warp']} T1w space): scalp stage {scalp_s:.2f} s")
        for orientation in ("clinical", "efield"):
            folder = work / orientation
            folder.mkdir(exist_ok=True)

            def node():
                return EfieldPlan(orientation=orientation, **files).run(cwd=str(folder)).outputs

            seconds, outputs = median_time(node, args.repeats)
            table = pd.read_csv(outputs.out_file, sep="\t", na_values="n/a").set_index("name")
            row, motor = table.loc["connectivity"], table.loc["motor_hand"]
            print(f"  EfieldPlan {orientation:8s} {seconds:5.2f} s   connectivity: "
                  f"{row.efield_target_v_per_m:.3f} V/m at {row.handle_angle_deg:.0f} deg "
                  f"(clinical {row.efield_clinical_v_per_m:.3f}, best "
                  f"{row.efield_optimal_angle_deg:.0f} deg {row.efield_optimal_v_per_m:.3f}), "
                  f"dose {row.efield_dose_pct_mt:.1f} % MT; Stokes "
                  f"{row.depth_adjustment_pct_mso:+.1f} % MSO; motor_hand "
                  f"{motor.efield_target_v_per_m:.3f} V/m; depths {row.scalp_distance_mm:.1f} / "
                  f"{motor.scalp_distance_mm:.1f} mm")

        # The map alone on the same grid and pose: as written, and voxel by voxel.
        reference = nb.load(files["reference_file"])
        mask = np.asanyarray(reference.dataobj) > 0
        clinical = pd.read_csv(work / "clinical" / "efield_targets.tsv", sep="\t",
                               na_values="n/a").set_index("name").loc["connectivity"]
        info = json.loads((work / "clinical" / "efield.json").read_text())
        centre = info["Spheres"]["connectivity"]["Centre_mm"]
        pose = np.eye(4)
        columns = ["coil_x", "coil_y", "coil_z"] + [f"coil_{a}axis_{c}" for a in "xyz"
                                                    for c in "xyz"]
        values = clinical[columns].to_numpy(float)
        pose[:3, 3], pose[:3, 0], pose[:3, 1], pose[:3, 2] = (values[:3], values[3:6],
                                                              values[6:9], values[9:])
        xfm = files["grid_to_plan_xfm"]
        ijk = np.argwhere(mask)
        world = nb.affines.apply_affine(reference.affine, ijk)
        planned = map_points(world, xfm)
        coarse, fine = coil_model(DEFAULT_COIL, MAP_DIPOLE_SPACING_MM), coil_model(DEFAULT_COIL)
        cheap_s, cheap = median_time(lambda: efield_map_interpolated(
            reference.shape, reference.affine, coarse, pose, centre, mask=mask,
            to_field_space=lambda p: map_points(p, xfm)), args.repeats)
        # the voxel-by-voxel maps on the points already mapped (the transform's time left out)
        full8_s, full8 = median_time(lambda: efield_magnitude(planned, coarse, pose, centre),
                                     args.repeats)
        full4_s, full4 = median_time(lambda: efield_magnitude(planned, fine, pose, centre), 1)
        written = cheap[tuple(ijk.T)]
        print(f"  map of {len(ijk)} voxels: as written {cheap_s:.2f} s (transform included); "
              f"voxel by voxel {full8_s:.2f} s ({len(coarse.positions_mm)} dipoles), "
              f"{full4_s:.2f} s ({len(fine.positions_mm)} dipoles), transform not included")
        print(f"  largest difference, % of the maximum: {100 * np.abs(written - full8).max() / full8.max():.2f} "
              f"(same dipoles), {100 * np.abs(written - full4).max() / full4.max():.2f} (4 mm dipoles)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
