"""Benchmark of the participant level against the floor (reading the BOLD) and other tools.

Run from the repository root (not part of the test suite)::

    python -u benchmarks/run.py              # the full table (about 20 min on 2 quiet cores)
    python benchmarks/run.py --quick         # 1 x 300 volumes only

For each synthetic participant (the package's generator, 2 mm MNI152NLin2009cAsym grid
97 x 115 x 97, TR 2 s) it prints, each measurement in a fresh process:

- the floor: every BOLD loaded as float32 with nibabel (``get_fdata(dtype=np.float32)``);
- ``tmstarget ... participant`` with ``--no-report`` (when the CLI offers it) and without it;
- the time of each stage (Nipype node durations; Denoise split into its steps);
- the peak resident memory (RSS) of the whole process tree, sampled every 50 ms;
- the ratios to the floor; and how time grows with volumes (300, 600, 1200) and runs (1, 2).

It also times the plain nilearn script of the same science (``benchmarks/nilearn_baseline.py``)
and, when installed (``--contarg PATH`` to its ``contarg`` executable), ConTarg.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SPACE = "MNI152NLin2009cAsym"
#: (runs, volumes per run): the two sizes of issue 8 first, then the scaling series.
SIZES = [(1, 300), (2, 600), (1, 600), (1, 1200)]
QUICK_SIZES = [(1, 300)]


def machine():
    """One line naming the CPU, cores and memory."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil
        memory = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        memory = "? GiB"
    load = ", load %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return (f"{cpu}, {os.cpu_count()} cores, {memory}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}{load}")


def measure(command, env=None, cwd=None):
    """Run ``command`` in a fresh process; return (wall s, peak RSS of its tree in MB, output, CPU s).

    CPU seconds (user + system of the whole tree, from ``getrusage``) are less sensitive than
    wall time to other work on a shared machine.

    The RSS of the process and all its descendants is summed every 50 ms with psutil (without
    psutil: the largest single child's peak from ``getrusage``, which misses parallel children).
    """
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=cwd)
    peak = [0]
    try:
        import psutil

        def sample():
            root = psutil.Process(proc.pid)
            while proc.poll() is None:
                try:
                    total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                    peak[0] = max(peak[0], total)
                except psutil.Error:
                    pass
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    except ImportError:
        sampler = None
    output, _ = proc.communicate()
    wall = time.perf_counter() - start
    if sampler is not None:
        sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if sampler is None:
        peak[0] = after.ru_maxrss * 1024
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({proc.returncode}):\n{output[-3000:]}")
    return wall, peak[0] / 2**20, output, cpu


def make_dataset(root, n_runs, n_volumes):
    """A synthetic participant (cached in ``root``): returns its folder and truth."""
    from tmstarget.synthetic import make_fmriprep_dataset

    folder = root / f"data_{n_runs}x{n_volumes}" / "fmriprep"
    truth_file = folder / "tmstarget_synthetic_truth.json"
    if not truth_file.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        make_fmriprep_dataset(folder, n_runs=n_runs, n_volumes=n_volumes, spaces=(SPACE,),
                              voxel_size=2.0, seed=n_runs * 10_000 + n_volumes)
    return folder, json.loads(truth_file.read_text())


FLOOR = """
import sys, nibabel as nb, numpy as np
for path in sys.argv[1:]:
    data = nb.load(path).get_fdata(dtype=np.float32)
    del data
"""


def stage_times(work_dir):
    """Seconds per Nipype node (summed over runs) and per Denoise step, from the work dir."""
    from nipype.utils.filemanip import loadpkl

    stages = {}
    for result in Path(work_dir).rglob("result_*.pklz"):
        node = result.parent.name
        duration = getattr(loadpkl(result).runtime, "duration", None) or 0.0
        stages[node] = stages.get(node, 0.0) + duration
    for timing in Path(work_dir).rglob("denoise/timings.json"):
        for step, seconds in json.loads(timing.read_text()).items():
            stages[f"  denoise.{step}"] = stages.get(f"  denoise.{step}", 0.0) + seconds
    return stages


def target_error(output_dir, truth):
    import pandas as pd

    table = pd.read_csv(next(Path(output_dir).rglob(f"*space-{SPACE}_targets.tsv")), sep="\t")
    row = table.set_index("name").loc["connectivity"]
    return float(np.linalg.norm(np.array([row.x, row.y, row.z]) - truth["target_mni"]))


def run_tmstarget(data, scratch, flags, label):
    out, work = scratch / f"out_{label}", scratch / f"work_{label}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    wall, rss, _, cpu = measure([sys.executable, "-m", "tmstarget.cli", str(data), str(out),
                                 "participant", "-w", str(work), *flags], cwd=REPO)
    return wall, rss, out, work, cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description="tmstarget participant-level benchmark")
    parser.add_argument("--quick", action="store_true", help="1 x 300 volumes only")
    parser.add_argument("--sizes", nargs="+", metavar="RUNSxVOLUMES",
                        help="participants to time, e.g. 1x300 2x600 (default: 1x300 2x600 1x600 1x1200)")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "tmstarget_bench",
                        help="where the synthetic participants are made (kept between runs)")
    parser.add_argument("--baselines", choices=["first", "all", "none"], default="first",
                        help="time nilearn/ConTarg on the first size only (default), all, or none")
    parser.add_argument("--contarg", default=shutil.which("contarg"),
                        help="ConTarg's executable (default: on PATH)")
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[],
                        help="extra tmstarget flags, e.g. --flags --omp-nthreads 2")
    args = parser.parse_args(argv)
    # pybids reads datatypes from the whole path: keep the data away from folders named like one.
    args.data_dir.mkdir(parents=True, exist_ok=True)
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.sizes:
        sizes = [tuple(int(n) for n in size.lower().split("x")) for size in args.sizes]

    help_text = subprocess.run([sys.executable, "-m", "tmstarget.cli", "--help"], capture_output=True,
                               text=True, cwd=REPO).stdout
    has_no_report = "--no-report" in help_text
    print(f"# tmstarget participant benchmark\nmachine: {machine()}")
    print("report flag: " + ("--no-report offered" if has_no_report else
                             "no --no-report flag in this build: the graph has no report, run once"))
    rows, scaling = [], []
    for index, (n_runs, n_volumes) in enumerate(sizes):
        label = f"{n_runs}x{n_volumes}"
        print(f"\n## {n_runs} run(s) x {n_volumes} volumes (2 mm, TR 2 s)", flush=True)
        data, truth = make_dataset(args.data_dir, n_runs, n_volumes)
        bolds = sorted(str(p) for p in data.rglob(f"*space-{SPACE}_desc-preproc_bold.nii.gz"))
        floor, floor_rss, _, floor_cpu = measure([sys.executable, "-c", FLOOR, *bolds])
        array_mb = max(np.prod(__import__("nibabel").load(b).shape) * 4 for b in bolds) / 2**20
        scratch = args.data_dir / f"runs_{label}"
        scratch.mkdir(exist_ok=True)
        no_report = ["--no-report"] if has_no_report else []
        wall, rss, out, work, cpu = run_tmstarget(data, scratch, [*args.flags, *no_report], "noreport")
        stages = stage_times(work)
        error = target_error(out, truth)
        if has_no_report:
            wall_r, rss_r, _, _, cpu_r = run_tmstarget(data, scratch, args.flags, "report")
        else:  # the same graph: running it twice would only measure the machine's noise
            wall_r, rss_r, cpu_r = wall, rss, cpu
        budget = 1.5 * array_mb + 500
        print(f"{'':31s}{'wall':>9s} {'CPU':>8s} {'peak RSS':>10s}  wall/floor CPU/floor")
        print(f"floor (nibabel float32 read)   {floor:7.1f} s {floor_cpu:6.1f} s {floor_rss:7.0f} MB")
        print(f"participant, no report         {wall:7.1f} s {cpu:6.1f} s {rss:7.0f} MB  {wall / floor:6.2f}x "
              f"{cpu / floor_cpu:6.2f}x  (goal <= 2; memory goal <= {budget:.0f} MB)")
        print(f"participant, with report       {wall_r:7.1f} s {cpu_r:6.1f} s {rss_r:7.0f} MB  {wall_r / floor:6.2f}x "
              f"{cpu_r / floor_cpu:6.2f}x  (report {100 * (wall_r - wall) / wall:+.0f} % wall, "
              f"{100 * (cpu_r - cpu) / cpu:+.0f} % CPU; goal <= +30 %)")
        print(f"target error vs planted        {error:7.1f} mm")
        print("stages (s):")
        for name, seconds in sorted(stages.items(), key=lambda kv: (kv[0].strip().split(".")[0], kv[0])):
            if seconds >= 0.05:
                print(f"  {name:30s} {seconds:7.2f}")
        print(f"  {'startup, pybids, Nipype':30s} {wall - sum(v for k, v in stages.items() if not k.startswith(' ')):7.2f}")
        row = dict(size=label, floor=floor, floor_rss=floor_rss, floor_cpu=floor_cpu, wall=wall, rss=rss,
                   cpu=cpu, wall_r=wall_r, rss_r=rss_r, cpu_r=cpu_r, array_mb=array_mb, error=error)
        if args.baselines == "all" or (args.baselines == "first" and index == 0):
            t, m, output, _ = measure([sys.executable, str(HERE / "nilearn_baseline.py"), str(data)])
            found = [line for line in output.splitlines() if line.startswith("target_mni")]
            nilearn_error = (np.linalg.norm(np.array(found[-1].split()[1:], float) - truth["target_mni"])
                             if found else float("nan"))
            print(f"nilearn script                 {t:7.1f} s  {m:7.0f} MB   {t / floor:4.2f} x floor"
                  f"  (target error {nilearn_error:.1f} mm)")
            row.update(nilearn=t, nilearn_rss=m)
            row.update(contarg_time(args.contarg, data, scratch, floor))
        rows.append(row)
        print("row: " + markdown_row(row), flush=True)
        if n_runs == 1:
            scaling.append((n_volumes, wall, cpu))

    print("\n## summary (the README table)")
    print(TABLE_HEADER)
    for r in rows:
        print(markdown_row(r))
    if len(scaling) > 1:
        print("\nscaling with volumes (1 run): " + ", ".join(
            f"{v} vols {t:.1f} s wall, {c:.1f} s CPU ({1000 * c / v:.0f} ms CPU/vol)"
            for v, t, c in sorted(scaling)))
    by_size = {r["size"]: r for r in rows}
    if "1x600" in by_size and "2x600" in by_size:
        one, two = by_size["1x600"], by_size["2x600"]
        print(f"scaling with runs (600 vols): 1 run {one['wall']:.1f} s wall, {one['cpu']:.1f} s CPU; "
              f"2 runs {two['wall']:.1f} s wall, {two['cpu']:.1f} s CPU ({two['cpu'] / one['cpu']:.2f}x CPU)")
    return 0


TABLE_HEADER = (
    "| participant | floor: wall, CPU, RSS | tmstarget no report: wall (x floor), CPU (x floor) "
    "| with report: wall, CPU | peak RSS (goal) | target error | nilearn script | ConTarg |\n"
    "|---|---|---|---|---|---|---|---|")


def markdown_row(r):
    """One row of the README table."""
    nil = (f"{r['nilearn']:.0f} s ({r['nilearn'] / r['floor']:.1f}x), {r['nilearn_rss']:.0f} MB"
           if "nilearn" in r else "-")
    return (f"| {r['size']} vols | {r['floor']:.1f} s, {r['floor_cpu']:.1f} s, {r['floor_rss']:.0f} MB "
            f"| {r['wall']:.1f} s ({r['wall'] / r['floor']:.2f}x), {r['cpu']:.1f} s "
            f"({r['cpu'] / r['floor_cpu']:.2f}x) | {r['wall_r']:.1f} s, {r['cpu_r']:.1f} s "
            f"| {r['rss']:.0f} MB ({1.5 * r['array_mb'] + 500:.0f} MB) | {r['error']:.1f} mm "
            f"| {nil} | {r.get('contarg', '-')} |")


def contarg_time(contarg, data, scratch, floor):
    """Time ConTarg's ``hierarchical run`` on the same participant, or say why it was not."""
    if not contarg:
        print("ConTarg                        not installed (pip install contarg in a separate venv, "
              "then --contarg PATH)")
        return {"contarg": "not installed"}
    if not shutil.which("antsApplyTransforms"):
        print("ConTarg                        not run: it calls ANTs' antsApplyTransforms, which is "
              "not on PATH (ANTs is not on PyPI)")
        return {"contarg": "not run (needs ANTs)"}
    # ConTarg works in MNI152NLin6Asym/T1w and needs a raw BIDS root beside the derivatives.
    if not any(data.rglob("*space-MNI152NLin6Asym_desc-preproc_bold.nii.gz")):
        reason = "needs BOLD in MNI152NLin6Asym or T1w space; this participant has MNI152NLin2009cAsym only"
        print(f"ConTarg                        not run: {reason}")
        return {"contarg": "not run (space)"}
    raw = scratch / "contarg_raw"
    raw.mkdir(exist_ok=True)
    (raw / "dataset_description.json").write_text('{"Name": "raw", "BIDSVersion": "1.8.0"}')
    try:
        t, m, _, _ = measure([contarg, "hierarchical", "run", "--bids-dir", str(raw), "--derivatives-dir",
                           str(data.parent), "--database-file", str(scratch / "contarg_db"),
                           "--space", "T1w", "--smoothing-fwhm", "6", "--ndummy", "3", "--tr", "2",
                           "--subject", "01", "--stimroi-name", "DLPFCspheres", "--refroi-name",
                           "SGCsphere"])
    except RuntimeError as err:
        last = str(err).strip().splitlines()[-1]
        print(f"ConTarg                        failed: {last}")
        return {"contarg": "failed"}
    print(f"ConTarg                        {t:7.1f} s  {m:7.0f} MB   {t / floor:4.2f} x floor")
    return {"contarg": f"{t:.0f} s ({t / floor:.1f}x), {m:.0f} MB"}


if __name__ == "__main__":
    sys.exit(main())
