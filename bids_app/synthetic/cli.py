"""The console script ``tmstarget-synth``."""

import argparse
import time
from pathlib import Path

from .constants import MNI_SPACES, PLANTED_TARGET_MNI, TEMPLATE, TRUTH_FILE
from .layout import make_fmriprep_dataset


def main(argv=None) -> int:
    """Console script ``tmstarget-synth``: write a synthetic dataset and say where the target is."""
    parser = argparse.ArgumentParser(
        prog="tmstarget-synth",
        description="Write synthetic fMRIPrep derivatives (resting-state BOLD, anatomy, transforms, "
                    "confounds) with a planted sgACC-anticorrelated left-DLPFC target.")
    parser.add_argument("out_dir", help="output folder (an fMRIPrep derivatives dataset)")
    parser.add_argument("--participants", nargs="+", default=["01"], metavar="LABEL")
    parser.add_argument("--sessions", nargs="+", default=None, metavar="LABEL",
                        help="session labels (default: no session level)")
    parser.add_argument("--runs", type=int, default=1, help="runs per session (default 1)")
    parser.add_argument("--volumes", type=int, default=240, help="volumes per run (default 240)")
    parser.add_argument("--tr", type=float, default=2.0, help="repetition time, s (default 2)")
    parser.add_argument("--voxel-size", type=float, default=2.0, help="BOLD voxel size, mm (default 2)")
    parser.add_argument("--anat-voxel-size", type=float, default=None,
                        help="anatomical voxel size, mm (default min(voxel size, 2))")
    parser.add_argument("--spaces", nargs="+", default=[TEMPLATE], choices=MNI_SPACES + ("T1w",))
    parser.add_argument("--target", nargs=3, type=float, default=PLANTED_TARGET_MNI,
                        metavar=("X", "Y", "Z"), help="planted target, MNI mm RAS (default %(default)s)")
    parser.add_argument("--signal-strength", type=float, default=1.0)
    parser.add_argument("--noise-level", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--templateflow-home", type=Path, default=None,
                        help="TemplateFlow home holding tpl-MNI152NLin2009cAsym (default: $TEMPLATEFLOW_HOME "
                             "or ../shared/data/templateflow when present, else the self-made head)")
    parser.add_argument("--confounds-tsv", type=Path, default=None,
                        help="real fMRIPrep confounds table to take motion from (default: the one in "
                             "../shared/data when present, else synthesized motion)")
    parser.add_argument("--warp", choices=("similarity", "nonlinear"), default="similarity",
                        help="each participant's T1w space: a similarity of MNI space (default), or an "
                             "anisotropic affine plus a smooth displacement field")
    parser.add_argument("--no-shared-data", action="store_true",
                        help="use the self-made head and synthesized motion whatever is available")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    truth = make_fmriprep_dataset(
        args.out_dir, participants=args.participants, sessions=args.sessions or (None,),
        n_runs=args.runs, n_volumes=args.volumes, tr=args.tr, spaces=args.spaces,
        voxel_size=args.voxel_size, anat_voxel_size=args.anat_voxel_size, target_mni=tuple(args.target),
        signal_strength=args.signal_strength, noise_level=args.noise_level, seed=args.seed,
        templateflow_home=False if args.no_shared_data else args.templateflow_home,
        confounds_tsv=False if args.no_shared_data else args.confounds_tsv, warp=args.warp)

    def fmt(xyz):
        return "(" + ", ".join(f"{v:.1f}" for v in xyz) + ")"

    print(f"wrote {args.out_dir} in {time.perf_counter() - start:.1f} s "
          f"(head: {truth['head']}, motion: {truth['motion_source']})")
    print(f"planted target: MNI152NLin2009cAsym {fmt(truth['target_mni'])} mm "
          f"(requested {fmt(args.target)}); decoy {fmt(truth['decoy_mni'])} mm")
    for label, info in truth["participants"].items():
        print(f"  sub-{label}: T1w {fmt(info['target_t1w'])} mm")
    print(f"truth: {Path(args.out_dir) / TRUTH_FILE}")
    return 0


