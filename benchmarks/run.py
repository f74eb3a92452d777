"""Benchmark of issue 13: the participant level against the read floor, a large dataset, --nprocs.

Run from the repository root (not part of the test suite; 4-8 minutes on 2 quiet cores, the
synthetic data made once and kept in ``--data-dir``)::

    python -u benchmarks/run.py                 # the table of the README
    python -u benchmarks/run.py --repeats 1     # quicker, noisier

Every measurement runs in a fresh process; each is repeated and the median is kept (the machine
may be shared: wall times are noisy, the ratios and CPU times less so). It prints, in one run:

- **floor**: nibabel loads the BOLD as float32 (``get_fdata(dtype=np.float32)``) of a 2 mm
  participant of 300 volumes (97 x 115 x 97, TR 2 s, the package's generator, real MNI head when
  ``../shared/data`` is there), whose anatomy is 1 mm as fMRIPrep's (T1w, masks, MNI res-1
  outputs and 1 mm displacement fields);
- **default run**: ``tmstarget DIR OUT participant`` as a user runs it (report and 1000-sample
  bootstrap on), its stages and peak memory (PSS of the process tree, against one float32 copy of
  the BOLD), and its longest chain of steps that wait for each other (:func:`longest_chain`);
- **no report**: the same with ``--no-report``;
- **1,000 participants**: one small participant (4 mm, 160 volumes) alone, then inside a tree of
  1,000 fMRIPrep-shaped participants (``benchmarks/large_tree.py``, 66,000 files), the extra wall
  time and peak memory; and with a shared ``--bids-database-dir`` (its one-off build is timed too
  when ``--database`` is given: minutes);
- **--nprocs 1 vs 2** on two participants of two runs each (2 mm, 150 volumes), the ratio of wall
  times.

Each figure is printed as a ratio against its goal (issue 13). ``--baselines`` also times the plain
nilearn script of the same science (``benchmarks/nilearn_baseline.py``) and ConTarg when installed.
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
#: Seconds between two samples of the memory of the measured process tree.
SAMPLE_S = 0.25


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
    """Run ``command`` in a fresh process; return (wall s, peak memory of its tree in MB, output, CPU s).

    CPU seconds (user + system of the whole tree, from ``getrusage``) are less sensitive than
    wall time to other work on a shared machine.

    The memory of the process and all its descendants is summed every 0.25 s with psutil, as PSS
    where Linux gives it (proportional set size: a page shared by forked processes counted once,
    split among them; their RSS would count it in each), else RSS. Without psutil: the largest
    single child's peak RSS from ``getrusage``, which misses parallel children.
    """
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=cwd)
    peak = [0]
    try:
        import psutil

        def memory(process):
            try:
                return process.memory_full_info().pss
            except (AttributeError, psutil.AccessDenied):
                return process.memory_info().rss

        def sample():
            root = psutil.Process(proc.pid)
            while proc.poll() is None:
                try:
                    total = sum(memory(p) for p in [root, *root.children(recursive=True)])
                    peak[0] = max(peak[0], total)
                except psutil.Error:
                    pass
                # Reading every process's PSS costs CPU (about a third of a core every 50 ms,
                # taken from the run measured on 2 cores): a peak lasts seconds, 0.25 s finds it.
                time.sleep(SAMPLE_S)

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


def make_dataset(root, name, participants=("01",), n_runs=1, n_volumes=300, voxel_size=2.0,
                 anat_voxel_size=None):
    """A synthetic fMRIPrep folder (made once, cached in ``root``): its path and truth."""
    from tmstarget.synthetic import make_fmriprep_dataset

    folder = root / name / "fmriprep"
    truth_file = folder / "tmstarget_synthetic_truth.json"
    if not truth_file.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        make_fmriprep_dataset(folder, participants=participants, n_runs=n_runs, n_volumes=n_volumes,
                              spaces=(SPACE,), voxel_size=voxel_size, anat_voxel_size=anat_voxel_size,
                              seed=n_runs * 10_000 + n_volumes)
    return folder, json.loads(truth_file.read_text())


#: Runs of the floor at least (see main).
FLOOR_REPEATS = 5

FLOOR = """
import sys, nibabel as nb, numpy as np
for path in sys.argv[1:]:
    data = nb.load(path).get_fdata(dtype=np.float32)
    del data
"""


def step_runtimes(work_dir):
    """{step's folder: Nipype's runtime of the step (its result file's)} of a work dir."""
    from nipype.utils.filemanip import loadpkl

    return {result.parent: loadpkl(result).runtime for result in Path(work_dir).rglob("result_*.pklz")}


def _seconds(runtime):
    return getattr(runtime, "duration", None) or 0.0


def stage_times(runtimes, work_dir):
    """Seconds per Nipype node (summed over runs) and per Denoise step, from the steps' runtimes
    (:func:`step_runtimes`) and the work dir; and when the first step began (s since the epoch)."""
    from datetime import datetime

    stages, first = {}, float("inf")
    for folder, runtime in runtimes.items():
        stages[folder.name] = stages.get(folder.name, 0.0) + _seconds(runtime)
        if getattr(runtime, "startTime", None):  # Nipype's local time, as datetime.now() gives it
            first = min(first, datetime.fromisoformat(str(runtime.startTime)).timestamp())
    for timing in Path(work_dir).rglob("denoise/timings.json"):
        for step, seconds in json.loads(timing.read_text()).items():
            stages[f"  denoise.{step}"] = stages.get(f"  denoise.{step}", 0.0) + seconds
    return stages, first


def longest_chain(runtimes):
    """The longest chain of steps of a run, each waiting for the one before (Nipype's
    ``input_source`` of each step's ``_node.pklz``), by the steps' durations (``runtimes``, of
    :func:`step_runtimes`): no number of CPUs runs the graph in less. Returns
    (seconds, [(step name, seconds), ...]) in run order."""
    from nipype.utils.filemanip import loadpkl

    duration = {folder: _seconds(runtime) for folder, runtime in runtimes.items()}
    parents = {folder: {Path(source[0]).parent for source in
                        getattr(loadpkl(folder / "_node.pklz"), "input_source", {}).values()}
               for folder in duration}
    chains = {}

    def chain(folder):  # the longest chain that ends with this step: (seconds, folders)
        if folder not in chains:
            seconds, before = max((chain(p) for p in parents[folder] if p in duration),
                                  default=(0.0, []), key=lambda c: c[0])
            chains[folder] = (seconds + duration[folder], [*before, folder])
        return chains[folder]

    seconds, folders = max((chain(folder) for folder in duration), key=lambda c: c[0], default=(0.0, []))
    return seconds, [(folder.name, duration[folder]) for folder in folders]


def target_error(output_dir, truth):
    import pandas as pd

    table = pd.read_csv(next(Path(output_dir).rglob(f"*space-{SPACE}_targets.tsv")), sep="\t")
    row = table.set_index("name").loc["connectivity"]
    return float(np.linalg.norm(np.array([row.x, row.y, row.z]) - truth["target_mni"]))


def run_tmstarget(data, scratch, flags, label):
    """One ``tmstarget ... participant`` in a fresh process, fresh output and work dirs."""
    out, work = scratch / f"out_{label}", scratch / f"work_{label}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    launched = time.time()
    wall, memory, _, cpu = measure([sys.executable, "-m", "tmstarget.cli", str(data), str(out),
                                 "participant", "-w", str(work), *flags], cwd=REPO)
    return dict(wall=wall, memory=memory, cpu=cpu, out=out, work=work, launched=launched)


def repeated(repeats, run):
    """``run()`` ``repeats`` times: the medians of wall, CPU and memory, and the last result."""
    results = [run() for _ in range(repeats)]
    median = {key: float(np.median([r[key] for r in results])) for key in ("wall", "cpu", "memory")}
    median["walls"] = [r["wall"] for r in results]
    return {**results[-1], **median}


def floor_time(bolds):
    wall, memory, _, cpu = measure([sys.executable, "-c", FLOOR, *bolds])
    return dict(wall=wall, memory=memory, cpu=cpu)


def line(name, result, ratio=None, goal=None, extra=""):
    text = f"{name:34s} {result['wall']:7.1f} s {result['cpu']:7.1f} s {result['memory']:7.0f} MB"
    if ratio is not None:
        verdict = "" if goal is None else ("  meets" if ratio <= goal else "  misses") + f" goal {goal:g}x"
        text += f"  {ratio:5.2f}x{verdict}"
    print(text + extra, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description="tmstarget benchmark (issue 13)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median kept)")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "tmstarget_bench",
                        help="where the synthetic data are made (kept between runs)")
    parser.add_argument("--participants", type=int, default=1000, help="participants of the large tree")
    parser.add_argument("--database", action="store_true",
                        help="also build and time a shared --bids-database-dir of the large tree (minutes)")
    parser.add_argument("--skip", nargs="+", default=[], choices=["tree", "nprocs"],
                        help="leave out a part")
    parser.add_argument("--baselines", action="store_true", help="also time the nilearn script and ConTarg")
    parser.add_argument("--contarg", default=shutil.which("contarg"),
                        help="ConTarg's executable (default: on PATH)")
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[],
                        help="extra tmstarget flags for every run, e.g. --flags --omp-nthreads 2")
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"# tmstarget benchmark (issue 13)\nmachine: {machine()}\nmedian of {args.repeats} run(s) "
          "each; wall, CPU (user + system of the process tree), peak memory (PSS)")
    summary = {}

    # 1. the default run against the floor
    # fMRIPrep's anatomy is the T1w's own grid, usually 1 mm, and its MNI outputs res-1: the head's
    # steps (mesh, transforms) cost what they cost on such a head
    data, truth = make_dataset(args.data_dir, "one_2mm_300_t1w1mm", anat_voxel_size=1.0)
    bolds = sorted(str(p) for p in data.rglob(f"*space-{SPACE}_desc-preproc_bold.nii.gz"))
    bold_mb = max(np.prod(__import__("nibabel").load(b).shape) * 4 for b in bolds) / 2**20
    scratch = args.data_dir / "runs"
    scratch.mkdir(exist_ok=True)
    print(f"\n## one participant, 1 run x 300 volumes, 2 mm BOLD (float32 {bold_mb:.0f} MB), 1 mm T1w")
    print(f"{'':34s} {'wall':>9s} {'CPU':>9s} {'peak memory':>11s}  wall/floor")
    # The floor is the denominator of two goals and moves the most (mostly system time: the page
    # faults of nibabel's 3.7 GB of arrays; 3.9 to 12.3 s on one file in one afternoon): at
    # least 5 runs, and their range printed.
    floor = repeated(max(args.repeats, FLOOR_REPEATS), lambda: floor_time(bolds))
    line("floor (nibabel float32 read)", floor,
         extra=f"  runs {min(floor['walls']):.1f}-{max(floor['walls']):.1f} s")
    default = repeated(args.repeats, lambda: run_tmstarget(data, scratch, args.flags, "default"))
    line("default run (report, bootstrap)", default, default["wall"] / floor["wall"], 1.5,
         f"  CPU {default['cpu'] / floor['cpu']:.2f}x")
    no_report = repeated(args.repeats, lambda: run_tmstarget(data, scratch, [*args.flags, "--no-report"],
                                                             "noreport"))
    line("--no-report", no_report, no_report["wall"] / floor["wall"], 1.2,
         f"  CPU {no_report['cpu'] / floor['cpu']:.2f}x")
    print(f"peak memory {default['memory']:.0f} MB: {default['memory'] / bold_mb:.2f} of one float32 copy of the "
          f"BOLD (goal < 1); target {target_error(default['out'], truth):.1f} mm from the planted one")
    runtimes = step_runtimes(default["work"])
    stages, first_step = stage_times(runtimes, default["work"])
    print("stages of the last default run (s): " + ", ".join(
        f"{name.strip()} {seconds:.2f}" for name, seconds in
        sorted(stages.items(), key=lambda kv: (kv[0].strip().split(".")[0], kv[0])) if seconds >= 0.05))
    # the steps overlap (--nprocs): the start-up is until the first one began
    start_up = first_step - default["launched"]
    print(f"start-up (imports, pybids, checks, the graph) until the first step: {start_up:.2f} s")
    # What more CPUs could not shorten: the start-up, then the steps that wait for each other.
    chain_s, chain = longest_chain(runtimes)
    print(f"longest chain of steps: {chain_s:.2f} s; with the start-up {start_up + chain_s:.2f} s, "
          f"{(start_up + chain_s) / floor['wall']:.2f}x the floor: " + ", ".join(
              f"{name} {seconds:.2f}" for name, seconds in chain if seconds >= 0.05))
    summary.update(floor=floor, default=default, no_report=no_report, bold_mb=bold_mb)

    # 2. the indexing tax of a large dataset
    if "tree" not in args.skip:
        small, _ = make_dataset(args.data_dir, "one_4mm_160", n_volumes=160, voxel_size=4.0)
        tree = args.data_dir / "large_tree" / "fmriprep"
        sys.path.insert(0, str(HERE))
        from large_tree import make_large_tree

        n_files = make_large_tree(tree, args.participants, real_dataset=small)
        print(f"\n## one participant (4 mm, 160 volumes) alone and in a tree of {args.participants} "
              f"participants ({n_files} files)")
        flags = [*args.flags, "--participant-label", "01"]
        alone = repeated(args.repeats, lambda: run_tmstarget(small, scratch, flags, "alone"))
        line("alone", alone)
        inside = repeated(args.repeats, lambda: run_tmstarget(tree, scratch, flags, "tree"))
        line(f"in the {args.participants}-participant tree", inside,
             extra=f"  {inside['wall'] - alone['wall']:+.1f} s, {inside['memory'] - alone['memory']:+.0f} MB "
             f"(goal +2 s, +100 MB)")
        summary.update(alone=alone, tree=inside, n_files=n_files)
        if args.database:
            database = args.data_dir / "large_tree_db"
            shutil.rmtree(database, ignore_errors=True)
            wall, memory, _, cpu = measure([sys.executable, "-m", "tmstarget.collect", str(tree), str(database)])
            line("build --bids-database-dir (once)", dict(wall=wall, memory=memory, cpu=cpu))
            shared = repeated(args.repeats, lambda: run_tmstarget(
                tree, scratch, [*flags, "--bids-database-dir", str(database)], "database"))
            line("in the tree, shared database", shared,
                 extra=f"  {shared['wall'] - alone['wall']:+.1f} s, {shared['memory'] - alone['memory']:+.0f} MB")
            summary.update(database=shared)

    # 3. --nprocs on two participants
    if "nprocs" not in args.skip:
        two, _ = make_dataset(args.data_dir, "two_2mm_2x150", participants=("01", "02"), n_runs=2,
                              n_volumes=150)
        print("\n## two participants x 2 runs x 150 volumes, 2 mm")
        repeats = max(1, min(args.repeats, 2))
        one_proc = repeated(repeats, lambda: run_tmstarget(two, scratch, [*args.flags, "--nprocs", "1"],
                                                           "np1"))
        line("--nprocs 1", one_proc)
        two_procs = repeated(repeats, lambda: run_tmstarget(two, scratch, [*args.flags, "--nprocs", "2"],
                                                            "np2"))
        line("--nprocs 2", two_procs, two_procs["wall"] / one_proc["wall"], 0.55, "  (of --nprocs 1)")
        summary.update(np1=one_proc, np2=two_procs)

    if args.baselines:
        t, m, output, _ = measure([sys.executable, str(HERE / "nilearn_baseline.py"), str(data)])
        found = [x for x in output.splitlines() if x.startswith("target_mni")]
        error = (np.linalg.norm(np.array(found[-1].split()[1:], float) - truth["target_mni"])
                 if found else float("nan"))
        print(f"\nnilearn script {t:7.1f} s {m:7.0f} MB {t / floor['wall']:5.2f}x floor (target error "
              f"{error:.1f} mm)")
        contarg_time(args.contarg, data, scratch, floor["wall"])

    print("\n## summary (the README table)")
    print(markdown_table(summary))
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")
    return 0


def markdown_table(s):
    """The README's Performance table from the measurements."""
    f, d, n = s["floor"], s["default"], s["no_report"]
    rows = ["| what | wall (median) | CPU | peak memory | ratio | goal |", "|---|---|---|---|---|---|",
            f"| floor: nibabel reads the BOLD as float32 ({len(f['walls'])} runs: "
            f"{min(f['walls']):.1f}–{max(f['walls']):.1f} s) | {f['wall']:.1f} s | {f['cpu']:.1f} s "
            f"| {f['memory']:.0f} MB | 1 | |",
            f"| default run (report, bootstrap) | {d['wall']:.1f} s | {d['cpu']:.1f} s | {d['memory']:.0f} MB "
            f"| {d['wall'] / f['wall']:.2f}x floor (CPU {d['cpu'] / f['cpu']:.2f}x) | 1.5x |",
            f"| `--no-report` | {n['wall']:.1f} s | {n['cpu']:.1f} s | {n['memory']:.0f} MB "
            f"| {n['wall'] / f['wall']:.2f}x floor (CPU {n['cpu'] / f['cpu']:.2f}x) | 1.2x |",
            f"| peak memory of the default run | | | {d['memory']:.0f} MB | {d['memory'] / s['bold_mb']:.2f} of the "
            f"float32 BOLD ({s['bold_mb']:.0f} MB) | < 1 |"]
    if "tree" in s:
        a, t = s["alone"], s["tree"]
        rows.append(f"| one participant in a 1,000-participant tree ({s['n_files']} files) vs alone "
                    f"| {t['wall']:.1f} s vs {a['wall']:.1f} s | {t['cpu']:.1f} s vs {a['cpu']:.1f} s "
                    f"| {t['memory']:.0f} vs {a['memory']:.0f} MB | {t['wall'] - a['wall']:+.1f} s, "
                    f"{t['memory'] - a['memory']:+.0f} MB | +2 s, +100 MB |")
    if "database" in s:
        a, t = s["alone"], s["database"]
        rows.append(f"| the same with a shared `--bids-database-dir` | {t['wall']:.1f} s | {t['cpu']:.1f} s "
                    f"| {t['memory']:.0f} MB | {t['wall'] - a['wall']:+.1f} s, "
                    f"{t['memory'] - a['memory']:+.0f} MB | |")
    if "np1" in s:
        one, two = s["np1"], s["np2"]
        rows.append(f"| two participants x 2 runs: `--nprocs 2` vs `1` | {two['wall']:.1f} s vs "
                    f"{one['wall']:.1f} s | {two['cpu']:.1f} s vs {one['cpu']:.1f} s | {two['memory']:.0f} vs "
                    f"{one['memory']:.0f} MB | {two['wall'] / one['wall']:.2f}x | about 0.5x |")
    return "\n".join(rows)


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
