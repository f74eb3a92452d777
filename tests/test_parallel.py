"""Steps shared among processes: forked parts, their errors, and how --nprocs is shared out."""

import mmap
import os
import signal
import time

import numpy as np
import pytest

from tmstarget.workflows import parallel
from tmstarget.workflows.parallel import run_parts, shared_array


def _memory_of(array):
    """The object whose memory ``array`` views (an mmap for shared memory)."""
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array.obj if isinstance(array, memoryview) else array


def test_parts_run_in_other_processes_and_write_into_shared_memory():
    out = shared_array((3, 4), np.float32)
    assert isinstance(_memory_of(out), mmap.mmap)

    def part(row):
        out[row] = row + 1
        return os.getpid()

    pids = run_parts([lambda row=row: part(row) for row in range(3)])
    assert pids[0] == os.getpid() and len(set(pids)) == 3  # the first here, each other one forked
    np.testing.assert_array_equal(out, np.repeat([[1], [2], [3]], 4, axis=1))


def test_parts_all_forked_leave_this_process_waiting_and_an_interrupt_stops_them(tmp_path):
    """``here=False``: every part (one too) runs in a forked process, results in order; a
    KeyboardInterrupt while this process waits stops the parts instead of leaving them to run,
    and a stopped part runs its ``finally`` clauses."""
    assert run_parts([os.getpid], here=False)[0] != os.getpid()
    pids = run_parts([os.getpid, os.getpid], here=False)
    assert len(set(pids)) == 2 and os.getpid() not in pids

    started, cleaned_up = tmp_path / "started", tmp_path / "cleaned_up"

    def slow():
        started.write_text(str(os.getpid()))
        try:
            time.sleep(30)
        finally:  # as an atomic write removes its temporary file
            cleaned_up.write_text("yes")

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    begun = time.time()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_parts([slow], here=False)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.time() - begun < 10
    assert cleaned_up.is_file()  # the part ran its clean-up before it ended
    child = int(started.read_text())
    with pytest.raises(ProcessLookupError):  # stopped and reaped, not left sleeping
        os.kill(child, 0)


#: Armed by the tests below: the next fork of this process gets a signal in an at-fork callback
#: of the parent ("parent": after the fork) or of the forked child ("child": before its part).
_SIGNAL_IN_THE_NEXT_FORK = {"parent": [], "child": []}


def _signal_after_fork(side):
    armed = _SIGNAL_IN_THE_NEXT_FORK[side]
    if armed:
        signal.raise_signal(armed.pop())


os.register_at_fork(after_in_parent=lambda: _signal_after_fork("parent"),
                    after_in_child=lambda: _signal_after_fork("child"))


@pytest.fixture
def python_handles_ctrl_c():
    """Python's own SIGINT handler for the test: a pytest that a script starts in the background
    (as .ci/run starts the fresh-clone pass) inherits SIGINT ignored, and Python then sets none."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def stopped_as_a_part_is():
    """SIGTERM handled as in a forked part (whose parts may fork parts of their own: the report's
    figures), by raising SystemExit."""
    previous = signal.signal(signal.SIGTERM, parallel._stop)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)])
def test_a_ctrl_c_or_a_stop_during_a_fork_is_not_lost(tmp_path, python_handles_ctrl_c, stopped_as_a_part_is,
                                                      signum, raised):
    """A Ctrl-C or a stop whose handler runs in an at-fork callback (as it does when it arrives
    during the fork: logging registers one) would be printed and ignored there, and the run
    would go on (both happened in CI, in the report's figures); run_parts raises it once the fork
    is made, and stops the part."""
    started = tmp_path / "started"

    def slow():
        started.write_text(str(os.getpid()))
        time.sleep(20)

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    _SIGNAL_IN_THE_NEXT_FORK["parent"].append(signum)
    begun = time.time()
    with pytest.raises(raised):
        run_parts([slow], here=False)
    assert time.time() - begun < 10
    assert not _SIGNAL_IN_THE_NEXT_FORK["parent"]  # the signal was sent during the fork
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back
    part = started.read_text() if started.is_file() else ""  # empty: stopped as it wrote it
    if part:  # the part had begun: it was stopped, not left sleeping
        for _ in range(100):
            try:
                os.kill(int(part), 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the part outlived the interrupted run_parts")


def test_a_part_stopped_while_it_is_forked_does_not_run(tmp_path, stopped_as_a_part_is):
    """A stop that reaches the forked child before its part begins (its at-fork callbacks) ends
    it there: the part never runs, and the parent hears of a part that died."""
    ran = tmp_path / "ran"
    _SIGNAL_IN_THE_NEXT_FORK["child"].append(signal.SIGTERM)
    try:
        with pytest.raises(RuntimeError, match=r"died \(exit code 143\)"):
            run_parts([lambda: ran.write_text("yes")], here=False)
    finally:
        _SIGNAL_IN_THE_NEXT_FORK["child"].clear()  # this process's copy is still armed
    assert not ran.exists()


def test_the_error_of_a_forked_part_is_raised_here_with_its_message():
    def fails():
        raise ValueError("bold.nii.gz has NaN values")

    with pytest.raises(ValueError, match="bold.nii.gz has NaN values"):
        run_parts([lambda: 1, fails])


def test_a_part_that_dies_is_an_error_not_a_missing_result():
    with pytest.raises(RuntimeError, match=r"died \(exit code 3\)"):
        run_parts([lambda: 1, lambda: os._exit(3)])


def test_without_fork_the_parts_run_here_one_after_the_other(monkeypatch):
    monkeypatch.setattr(parallel, "can_fork", lambda: False)
    out = shared_array((2,), np.int64)
    assert not isinstance(_memory_of(out), mmap.mmap)  # ordinary memory
    assert run_parts([os.getpid, os.getpid]) == [os.getpid()] * 2


def test_nprocs_is_shared_out_among_the_runs_and_participants(one_run_dataset, tmp_path):
    """One run on 4 CPUs: its Denoise reads with 4 processes, and the scheduler reserves 4; two
    runs share them; the report (run from the main process) draws with every CPU, 8 at most."""
    import dataclasses

    from tmstarget.collect import collect_participant, load_layout
    from tmstarget.config import Options
    from tmstarget.participant import init_participants_wf

    root, _ = one_run_dataset
    inputs = collect_participant(load_layout(root, ["01"]), "01")
    for cpus, runs, expected in ((4, 1, 4), (4, 2, 2), (1, 1, 1), (64, 1, 8)):
        collected = [dataclasses.replace(inputs, runs=list(inputs.runs) * runs)]
        workflow = init_participants_wf(collected, Options(), tmp_path / "out", root, cpus=cpus)
        denoise = [workflow.get_node(name) for name in workflow.list_node_names() if name.endswith(".denoise")]
        assert len(denoise) == runs
        assert {node.n_procs for node in denoise} == {expected}
        assert {node.inputs.processes for node in denoise} == {expected}
        report = [workflow.get_node(name) for name in workflow.list_node_names() if name.endswith(".report")]
        assert [node.inputs.processes for node in report] == [min(cpus, 8)]


def test_default_nprocs_is_the_cpus_this_process_may_use():
    from tmstarget.cli import available_cpus, build_parser

    args = build_parser().parse_args(["in", "out", "participant"])
    assert args.nprocs == available_cpus() == len(os.sched_getaffinity(0))


def test_a_part_ends_when_its_parent_process_ends(tmp_path):
    """A step's process stopped after Ctrl-C (MultiProc terminates its workers) leaves no part
    running on: Linux ends the forked part with its parent."""
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "part.pid"
    script = f"""
import os, time
from tmstarget.workflows.parallel import run_parts
def part():
    open({str(pid_file)!r}, "w").write(str(os.getpid()))
    time.sleep(60)
run_parts([lambda: time.sleep(60), part])
"""
    parent = subprocess.Popen([sys.executable, "-c", script])
    for _ in range(200):
        if pid_file.is_file() and pid_file.read_text():
            break
        time.sleep(0.05)
    part = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    for _ in range(100):
        try:
            os.kill(part, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(part, 9)
        raise AssertionError("the forked part outlived its parent")


def test_the_process_counts_are_not_part_of_the_steps_hashes(tmp_path):
    """A run resumed with another --nprocs reuses Denoise and redraws nothing it need not: the
    process count changes no value, so Nipype does not hash it."""
    from tmstarget.reports import ParticipantReport
    from tmstarget.workflows.confounds import Denoise

    for name in ("bold.nii.gz", "mask.nii.gz", "info.json", "carpet.npz", "confounds.tsv"):
        (tmp_path / name).write_text("x")
    files = {name: str(tmp_path / name) for name in ("bold.nii.gz", "mask.nii.gz")}

    def denoise_hash(processes):
        return Denoise(bold_file=files["bold.nii.gz"], mask_file=files["mask.nii.gz"], t_r=2.0,
                       processes=processes).inputs.get_hashval()[1]

    def report_hash(processes):
        return ParticipantReport(output_dir=str(tmp_path), subject="01", space="MNI152NLin2009cAsym",
                                 task="rest", seed_name="sgACC", derivatives=[],
                                 info_files=[str(tmp_path / "info.json")],
                                 carpet_files=[str(tmp_path / "carpet.npz")],
                                 confounds_files=[str(tmp_path / "confounds.tsv")],
                                 processes=processes).inputs.get_hashval()[1]

    assert denoise_hash(1) == denoise_hash(4)
    assert report_hash(1) == report_hash(4)
    # the hash does see a change that matters
    assert Denoise(bold_file=files["bold.nii.gz"], mask_file=files["mask.nii.gz"], t_r=2.5,
                   processes=1).inputs.get_hashval()[1] != denoise_hash(1)


def test_the_scheduler_starts_the_widest_step_then_the_longest_chain(one_run_dataset, tmp_path):
    """On the participant graph with 2 CPUs: of the steps ready at the start, Denoise (both CPUs)
    goes first, not the one-CPU regions and scalp mesh before it in graph order (which would hold
    a CPU while it waits); once a target is selected, mapping it onto the head (the plan's chain)
    goes before the reliability step, which has a shorter chain of steps after it."""
    import itertools
    from copy import deepcopy

    from nipype.pipeline.engine.utils import generate_expanded_graph

    from tmstarget.collect import collect_participant, load_layout
    from tmstarget.config import Options
    from tmstarget.execution import WakingMultiProc
    from tmstarget.participant import init_participants_wf

    root, _ = one_run_dataset
    inputs = collect_participant(load_layout(root, ["01"]), "01")
    workflow = init_participants_wf([inputs], Options(), tmp_path / "out", root, cpus=2)
    workflow.base_dir = str(tmp_path / "work")
    graph = generate_expanded_graph(deepcopy(workflow._create_flat_graph()))
    scheduler = WakingMultiProc(plugin_args={"n_procs": 2})
    try:
        scheduler._generate_dependency_list(graph)
        names = [node.name for node in scheduler.procs]

        def order(*steps):
            """The steps as the scheduler orders them, the same whatever order they come in."""
            ids = [names.index(step) for step in steps]
            orders = {tuple(names[jobid] for jobid in scheduler._sort_jobs(list(given)))
                      for given in itertools.permutations(ids)}
            assert len(orders) == 1, orders
            return list(orders.pop())

        first = np.flatnonzero(np.asarray(scheduler.depidx.sum(axis=0)).ravel() == 0)
        assert {"denoise", "regions", "scalp_mesh"} <= {names[jobid] for jobid in first}
        assert order("regions", "scalp_mesh", "denoise") == ["denoise", "regions", "scalp_mesh"]
        assert order("target_reliability", "seed_quality", "map_target_to_T1w")[0] == \
            "map_target_to_T1w"
    finally:
        scheduler.pool.shutdown()


@pytest.mark.parametrize("native_head", [False, True])
def test_the_head_steps_do_not_wait_for_the_bold(native_head):
    """The scalp mesh and the scalp-based methods' points depend on the head alone (the graph's
    inputs, and the transforms read from them), not on any step of the BOLD or the target: the
    scheduler can run them beside those."""
    import networkx as nx

    from tmstarget.workflows.base import init_tmstarget_wf

    workflow = init_tmstarget_wf(space="MNI152NLin2009cAsym", native_head=native_head,
                                 other_space="T1w" if native_head else None)
    graph = workflow._create_flat_graph()
    named = {node.name: node for node in graph.nodes()}
    for step in ("scalp_mesh", "scalp_landmarks"):
        before = {node.name for node in nx.ancestors(graph, named[step])}
        reads = {name for name in before if name.startswith("read_")}
        assert before - reads <= {"inputnode", "scalp_mesh"}, (step, before)
        for read in reads:
            assert {node.name for node in nx.ancestors(graph, named[read])} == {"inputnode"}
    assert "scalp_landmarks" in {node.name for node in nx.ancestors(graph, named["scalp_targets"])}


def test_a_large_head_keeps_a_cpu_for_its_steps(tmp_path):
    """When the runs' Denoise would take every CPU and the head is a fine grid (fMRIPrep's 1 mm
    T1w), one CPU is kept for the head's steps, which then run beside Denoise; a 2 mm head, or a
    machine with CPUs to spare, keeps the share-out as it was."""
    import nibabel as nb

    from tmstarget.collect import ParticipantInputs
    from tmstarget.participant import LARGE_HEAD_VOXELS, _head_voxels, processes_per_step

    one_mm, two_mm = 193 * 229 * 193, 97 * 115 * 97
    assert two_mm < LARGE_HEAD_VOXELS < one_mm
    assert processes_per_step(2, 1, two_mm) == 2 and processes_per_step(2, 1, one_mm) == 1
    assert processes_per_step(4, 1, one_mm) == 3 and processes_per_step(16, 1, one_mm) == 8
    assert processes_per_step(2, 2, one_mm) == 1 and processes_per_step(3, 1) == 3
    # the head the plan is made on: the native T1w in an MNI computation that plans on it
    small, large = tmp_path / "small.nii", tmp_path / "large.nii"
    nb.Nifti1Image(np.zeros((97, 115, 97), np.uint8), np.eye(4)).to_filename(small)
    nb.Nifti1Image(np.zeros((193, 229, 193), np.uint8), np.eye(4)).to_filename(large)
    inputs = ParticipantInputs(subject="01", space="MNI152NLin2009cAsym", runs=[], t1w=str(small),
                               gm="gm.nii.gz", native_t1w=str(large), other_space="T1w",
                               to_other_xfm="a.h5", from_other_xfm="b.h5", native_gm="gm.nii.gz")
    assert _head_voxels(inputs) == one_mm
    inputs.native_gm = None  # no native head: the plan is made on the space's T1w
    assert _head_voxels(inputs) == two_mm


def _swallows_a_ctrl_c():
    """A step that catches the KeyboardInterrupt of a Ctrl-C (as Python does when it is raised
    in an at-fork callback or a finalizer) and ends well."""
    import os
    import signal
    import time

    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    return 1


def test_a_ctrl_c_swallowed_inside_a_step_still_ends_the_run(tmp_path):
    """run_graph records every SIGINT: a run whose steps all end well after one raises
    KeyboardInterrupt all the same (the CLI then exits 130), and leaves no crash report."""
    from nipype import Node, Workflow
    from nipype.interfaces.utility import Function

    from tmstarget.execution import run_graph

    workflow = Workflow(name="swallow_wf")
    workflow.add_nodes([Node(Function(function=_swallows_a_ctrl_c, output_names=["out"]), name="step")])
    with pytest.raises(KeyboardInterrupt):
        run_graph(workflow, tmp_path / "work", nprocs=1)
    assert not list((tmp_path / "work").glob("crash/crash-*"))


def test_a_part_may_run_parts_of_its_own():
    """A forked part forks parts of its own (the report, which the scheduler runs in a forked
    copy of the main process, draws its figures in forked copies): each in a process of its own,
    not one after the other in the part's."""
    def pid():
        return os.getpid()

    def part():
        return os.getpid(), run_parts([pid, pid])

    [(part_pid, (first, second))] = run_parts([part], here=False)
    assert part_pid != os.getpid()
    assert first == part_pid and second not in (part_pid, os.getpid())


def _waits_for(path, seconds):
    """A step that waits until ``path`` exists (``seconds`` at most): whether it came, and the
    step's process."""
    import os
    import time

    deadline = time.time() + seconds
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.05)
    return os.path.exists(path), os.getpid()


def _writes(path):
    open(path, "w").close()
    return path


def _passes(value):
    return value


def _sleeps(seconds):
    import time

    time.sleep(seconds)
    return seconds


def _dies():
    import os

    os._exit(3)


def _graph_of(name, *nodes, connections=()):
    from nipype import Workflow

    workflow = Workflow(name=name)
    workflow.add_nodes(list(nodes))
    workflow.connect(list(connections))
    return workflow


def _step(function, name, outputs=("out",), main=False, **inputs):
    """A Function node; ``main``: marked to run from the main process (as the report is)."""
    from nipype import Node
    from nipype.interfaces.utility import Function

    node = Node(Function(function=function, input_names=list(inputs) or None, output_names=list(outputs)),
                name=name, run_without_submitting=main)
    for field, value in inputs.items():
        setattr(node.inputs, field, value)
    return node


def test_a_step_of_the_main_process_does_not_hold_up_the_others(tmp_path):
    """With --nprocs 2 a step marked run_without_submitting (the derivatives, the report) runs in
    a forked copy of the main process while the scheduler goes on: here it waits for a file that
    a worker's step writes, a step ready at the same moment and sorted after it (its chain is
    shorter). Nipype would run the marked step in its scheduling loop, and the file would never
    come (two participants: the first one's report held up the second one's last steps)."""
    from nipype.utils.filemanip import loadpkl

    from tmstarget.execution import run_graph

    flag = str(tmp_path / "written")
    waits = _step(_waits_for, "main_waits", ("seen", "pid"), main=True, path=flag, seconds=30.0)
    after, last = _step(_passes, "after", value=None), _step(_passes, "last", value=None)
    workflow = _graph_of("hold_wf", waits, _step(_writes, "writes", path=flag), connections=[
        (waits, after, [("seen", "value")]), (after, last, [("out", "value")])])
    run_graph(workflow, tmp_path / "work", nprocs=2)
    result = loadpkl(next((tmp_path / "work").rglob("main_waits/result_main_waits.pklz")))
    assert result.outputs.seen
    assert result.outputs.pid != os.getpid()  # a forked copy, not this process


def test_a_forked_step_that_dies_is_a_failed_step(tmp_path):
    """A step of the main process's copies that dies (killed, out of memory) fails the run with a
    message, as a worker's would, instead of leaving the scheduler waiting for it."""
    from tmstarget.execution import StepFailed, run_graph

    workflow = _graph_of("dies_wf", _step(_dies, "main_dies", main=True))
    # where the command line has Nipype write its crash reports (configure_nipype)
    workflow.config["execution"] = {"crashdump_dir": str(tmp_path / "work" / "crash"),
                                    "crashfile_format": "txt"}
    with pytest.raises(StepFailed, match=r"a worker process died \(exit code 3\)"):
        run_graph(workflow, tmp_path / "work", nprocs=2)


def test_the_scheduler_waits_for_its_workers_but_not_once_every_step_is_done(tmp_path, monkeypatch):
    """After a scheduling pass that changed nothing the loop waits for a worker to report a
    finished step; after the last step no worker is left to report, and that wait would last its
    whole safeguard second at the end of every run."""
    from tmstarget import execution

    waits = []  # for each wait of the loop: whether every step was done then

    class Recorded(execution.WakingMultiProc):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            wait = self._finished.wait

            def recorded(timeout=None):
                waits.append(bool(self.proc_done.all() and not self.proc_pending.any()))
                return wait(timeout)

            self._finished.wait = recorded

    monkeypatch.setattr(execution, "WakingMultiProc", Recorded)
    first = _step(_sleeps, "first", seconds=0.3)
    second = _step(_sleeps, "second", seconds=None)
    workflow = _graph_of("waits_wf", first, second, connections=[(first, second, [("out", "seconds")])])
    workflow.config["execution"] = {"poll_sleep_duration": "0"}  # as the command line sets it
    execution.run_graph(workflow, tmp_path / "work", nprocs=2)
    assert waits, "the loop never waited for a running step"
    assert not any(waits), "the loop waited after the last step had ended"
