"""Running the Nipype graph for the command line: scheduler, progress lines, crashes, interrupts.

All participants (and runs) of one invocation are one graph: ``--nprocs 1`` runs it with Nipype's
Linear plugin, ``--nprocs N`` with MultiProc, which then works on N steps of any participant at
once. MultiProc polls its workers every ``poll_sleep_duration`` (2 s by default: each step waited
for the next poll, 1.8 s on average here); :class:`WakingMultiProc` wakes when a step finishes.
MultiProc also runs a full garbage collection before every pass that may submit a step (and
after every step run in the main process); see :func:`frozen_garbage`.

The steps the graph marks ``run_without_submitting`` (the derivatives and the report: they use what
the main process imported ahead, matplotlib) run in forked copies of the main process, so that the
scheduler goes on while they work; Nipype would run them in its own loop, and nothing else would
start meanwhile (a participant's report held up the next participant's last steps for 3 s).
"""

from __future__ import annotations

import functools
import gc
import importlib
import logging
import multiprocessing as mp
import os
import re
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from nipype.pipeline.plugins.multiproc import MultiProcPlugin, process_initializer, run_node

from tmstarget.interrupts import InterruptFlag, Interrupted
from tmstarget.workflows.parallel import can_fork, end_with_parent, run_parts

LOGGER = logging.getLogger("tmstarget")


def configure_nipype(work_dir, verbose):
    """Nipype's settings for a tmstarget run (crash files in ``work_dir/crash``, quiet unless -v)."""
    from nipype import config, logging as nipype_logging

    level = ("CRITICAL", "WARNING", "INFO")[min(verbose, 2)]
    config.update_config({
        "execution": {"crashdump_dir": str(Path(work_dir) / "crash"), "crashfile_format": "txt",
                      "stop_on_first_crash": "true", "remove_unnecessary_outputs": "false",
                      "check_version": "false", "use_relative_paths": "false",
                      # WakingMultiProc waits for its workers itself (Linear never polls)
                      "poll_sleep_duration": "0"},
        # Nipype's own messages only with -v: a failing node is reported by tmstarget in one line.
        "logging": {"workflow_level": level, "interface_level": level, "utils_level": level},
        "monitoring": {"enabled": "false"},
    })
    nipype_logging.update_logging(config)


class WakingMultiProc(MultiProcPlugin):
    """Nipype's MultiProc, woken by its workers instead of sleeping between polls.

    Nipype's scheduling loop sleeps until ``poll_sleep_duration`` has passed since the loop began
    (set to 0 by :func:`configure_nipype`); here the loop instead waits, after a pass that
    changed nothing, until a worker reports a finished step (or 1 s has passed, as a safeguard),
    unless every step is done.
    Nipype offers no hook for this, so the wait sits at the end of ``_send_procs_to_workers``,
    which the loop calls on every pass.

    A step marked ``run_without_submitting`` runs in a forked copy of this process (with the
    modules this one holds, :class:`ImportAhead`'s included), started from a thread that waits for
    it, and counts as one CPU while it runs: Nipype would run it in the scheduling loop itself.
    """

    def __init__(self, plugin_args=None):
        super().__init__(plugin_args=plugin_args)
        self._finished = threading.Event()
        self._stopping = False
        # The same pool, with workers that ignore SIGINT: a Ctrl-C reaches the whole process
        # group, and the main process alone decides what an interrupt does (stop_workers).
        self.pool.shutdown(wait=False)
        context = mp.get_context(self.plugin_args.get("mp_context"))
        # the process whose end ends a worker: this one, or the server that starts the workers
        # (forkserver, Python 3.14's default), which ends with this one
        parent = os.getpid() if context.get_start_method() == "fork" else None
        self.pool = ProcessPoolExecutor(
            max_workers=self.processors, initializer=_worker_initializer,
            initargs=(self._cwd, parent), mp_context=context)
        #: the full names of the steps run in forked copies of this process; the threads that
        #: start each and wait for it
        self._forked_steps = set()
        self._forking = ThreadPoolExecutor(max_workers=self.processors, thread_name_prefix="forked-step")

    def _async_callback(self, args):
        try:
            super()._async_callback(args)
        except Exception:  # noqa: BLE001  a worker ended by stop_workers: nothing to report
            if not self._stopping:
                raise
        finally:  # the result is stored before the loop is woken to read it
            self._finished.set()

    def _generate_dependency_list(self, graph):
        super()._generate_dependency_list(graph)
        # The longest chain of steps from each step to the end of the graph (itself included):
        # self.procs is in topological order, so every step's dependents come after it.
        dependents = self.depidx.tocsr()
        self._chain_lengths = np.ones(len(self.procs), dtype=int)
        for jobid in range(len(self.procs) - 1, -1, -1):
            after = dependents.indices[dependents.indptr[jobid]:dependents.indptr[jobid + 1]]
            if after.size:
                self._chain_lengths[jobid] = 1 + self._chain_lengths[after].max()
        if can_fork():  # elsewhere Nipype runs them in its loop, as it would
            for proc in self.procs:
                if proc.run_without_submitting:
                    proc.run_without_submitting = False
                    self._forked_steps.add(proc.fullname)

    def _submit_job(self, node, updatehash=False):
        if node.fullname not in self._forked_steps:
            return super()._submit_job(node, updatehash=updatehash)
        self._taskid += 1
        future = self._forking.submit(_run_node_forked, node, updatehash, self._taskid)
        future.add_done_callback(self._async_callback)
        self._task_obj[self._taskid] = future
        return self._taskid

    def _postrun_check(self):
        super()._postrun_check()
        self._forking.shutdown()

    def _sort_jobs(self, jobids, scheduler="tsort"):
        """The ready steps in the order they get the free CPUs: widest first, then the longest
        chain of steps still to come after them, then graph order.

        - **Widest first.** A step using every CPU (a run's Denoise) starts only when all are
          free; in graph order a one-CPU step ready beside it (the regions, the scalp mesh) would
          start first and hold a CPU while Denoise waits.
        - **Longest chain next** (the critical path of list scheduling; every step counts as
          one). Once a target is selected, mapping it onto the head has the plan's eight steps
          after it, down to the report; the reliability step, ready at the same moment and before
          it in graph order, has five, and is the one that waits for a CPU. When Denoise ends,
          the same rule puts the regions (fourteen after them) before the scalp mesh (seven).
        """
        jobids = super()._sort_jobs(jobids, scheduler=scheduler)
        lengths = getattr(self, "_chain_lengths", None)
        if lengths is None or len(lengths) != len(self.procs):  # MapNodes expanded: graph order
            lengths = np.ones(len(self.procs), dtype=int)
        return sorted(jobids, key=lambda jobid: (-self.procs[jobid].n_procs, -lengths[jobid]))

    def _send_procs_to_workers(self, updatehash=False, graph=None):
        before = self.proc_done.copy(), self.proc_pending.copy()
        super()._send_procs_to_workers(updatehash=updatehash, graph=graph)
        unchanged = (np.array_equal(before[0], self.proc_done)
                     and np.array_equal(before[1], self.proc_pending))
        # Once every step is done, no worker will report again: the loop ends at its next test
        # (waiting here cost every run its last second).
        all_done = self.proc_done.all() and not self.proc_pending.any()
        if unchanged and not all_done:
            self._finished.wait(timeout=1.0)
        self._finished.clear()

    def stop_workers(self):
        """End the worker processes now (after an interrupt: their steps are redone next time)."""
        # concurrent.futures has no public way to stop running tasks: end this process's
        # children, the pool's workers and the forked steps (a part a step forked ends with it:
        # run_parts)
        self._stopping = True
        processes = mp.active_children()
        for process in processes:
            process.terminate()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._forking.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():  # its stop was swallowed
                process.kill()
                process.join()


def _run_node_forked(node, updatehash, taskid):
    """Nipype's ``run_node`` in a forked copy of this process; its result as a worker's."""
    try:
        return run_parts([functools.partial(run_node, node, updatehash, taskid)], here=False)[0]
    except Exception:  # noqa: BLE001  the copy died (killed, out of memory): the step failed
        return dict(result=None, traceback=traceback.format_exception(*sys.exc_info()), taskid=taskid)


@contextmanager
def frozen_garbage():
    """Keep the objects alive now out of every garbage collection until the block ends.

    Nipype's MultiProc calls ``gc.collect()`` before each scheduling pass that may submit a step
    and after each step run in the main process. A full collection walks every object of the
    main process, which by then holds pybids' index, nilearn, scipy and Nipype's graph: 0.33 s
    each, 52 of them (17 s of the main process's CPU) for two participants of two runs, during
    which no step is submitted. ``gc.freeze()`` moves the objects that exist before the graph
    runs (after one collection, so no garbage is kept) to a permanent generation that collections
    skip, so each collection walks only what the run has made since; it also spares the forked
    workers the copy-on-write of pages that the collector would touch. Nothing is computed
    differently: only when unreachable objects are freed.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class ImportAhead:
    """Import modules in a thread of the main process once a named step has finished.

    In a MultiProc run the main process only waits while the workers compute, and then draws
    the report itself, whose first act is to import matplotlib and nilearn's plotting (1.5-2.8 s
    measured). Started when the first step named ``after`` finishes (the command line names the
    reliability step: from there the plan's steps run one after another, leaving a CPU free), a
    daemon thread imports them beforehand. Importing changes nothing computed.

    A process forked while another thread imports can inherit a half-imported module and the
    lock of a thread it does not have. Every fork of the main process (the pool's workers, the
    report's drawing processes) therefore waits for the imports to end (``os.register_at_fork``).

    Use it as (part of) Nipype's ``status_callback``: it is called, in the main thread, at every
    step's start and end.

    Parameters
    ----------
    modules : sequence of str
        Modules to import, in order.
    after : str
        Name of the step (``node.name``) whose first end starts the imports.
    """

    #: the threads importing now, which every fork waits for
    _running = set()

    def __init__(self, modules, after):
        self.modules, self.after = tuple(modules), after
        self._thread = None
        self._frozen = False

    def __call__(self, node, status):
        if self._thread is None:
            if status == "end" and node.name == self.after:
                self._thread = threading.Thread(target=self._import, name="import-ahead", daemon=True)
                self._running.add(self._thread)
                self._thread.start()
        elif not self._frozen and not self._thread.is_alive():
            # The modules stay: spare them the collections MultiProc runs between steps (0.07 s
            # each once matplotlib is in); frozen_garbage unfreezes when the graph ends.
            gc.freeze()
            self._frozen = True

    def _import(self):
        for module in self.modules:
            try:
                importlib.import_module(module)
            except Exception as err:  # noqa: BLE001  the step that needs it will say why
                LOGGER.debug("import ahead of %s failed: %s", module, err)
                return

    @classmethod
    def wait(cls):
        """Return once every import ahead has ended (at once if none runs)."""
        for thread in list(cls._running):
            if thread is not threading.current_thread():
                thread.join()
            cls._running.discard(thread)


os.register_at_fork(before=ImportAhead.wait)


def _worker_initializer(cwd, parent):
    """Nipype's set-up of a MultiProc worker: SIGINT ignored (see WakingMultiProc), SIGTERM
    ends it (stop_workers), and so does the end of the main process ``parent``, however it ends
    (killed, it could not stop its workers, which ran on, orphaned); None: the worker's parent."""
    process_initializer(cwd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    end_with_parent(os.getppid() if parent is None else parent)


def _subject_of(name):
    match = re.search(r"_sub_([A-Za-z0-9]+)_wf", name)
    return match.group(1) if match else None


class NodeProgress:
    """Nipype ``status_callback``: one line per finished step, so a long run says what it does.

    Steps that compute or write something are logged at INFO (``sub-01  run-01 denoise  12.3 s``,
    ``(reused)`` when the result came from the work dir: its run began before this invocation);
    the plumbing nodes (identity, merge) only with ``-v``, so the console is not flooded.
    """

    PLUMBING = ("IdentityInterface", "Merge")

    def __init__(self, interrupted=lambda: False, run_labels=None, also=None):
        self.since = datetime.now(timezone.utc)
        #: called with every (node, status) too (an :class:`ImportAhead`)
        self.also = also
        #: (subject, graph run number) -> the run's entities as its file name spells them
        #: (``run-1`` stays ``run-1``; the graph numbers runs 01, 02, ...)
        self.run_labels = run_labels or {}
        self.started = {}
        #: whether SIGINT or SIGTERM arrived: a step it stopped did not fail
        self.interrupted = interrupted

    @staticmethod
    def _runtime(node):
        """When the node's result was computed and how long it took, from its result file."""
        try:
            runtime = node.result.runtime
            began = datetime.fromisoformat(str(runtime.startTime))
            return (began if began.tzinfo else began.replace(tzinfo=timezone.utc)), float(runtime.duration)
        except Exception:  # noqa: BLE001  no result (interrupted, failed): not a reused step
            return None, None

    def __call__(self, node, status):
        if self.also is not None:
            self.also(node, status)
        key = node.fullname
        if status == "start":
            self.started[key] = time.time()
            return
        # MultiProc calls "start" only for steps it sends to a worker
        started = self.started.pop(key, None)
        seconds = time.time() - started if started is not None else 0.0
        subject = _subject_of(key)
        run = re.search(r"run_(\d+)_wf", key)
        run = self.run_labels.get((subject, int(run.group(1))), f"run-{run.group(1)}") if run else ""
        label = f"sub-{subject}  {run + ' ' if run else ''}{node.name.replace('_', ' ')}"
        if status == "exception":
            after = f" after {seconds:.1f} s" if started is not None else ""
            if self.interrupted():
                LOGGER.debug("%s interrupted%s", label, after)
            else:
                LOGGER.error("%s failed%s", label, after)
            return
        began, duration = self._runtime(node)
        reused = began is not None and began < self.since
        if duration is not None and not reused:
            seconds = duration
        level = logging.DEBUG if type(node.interface).__name__ in self.PLUMBING else logging.INFO
        LOGGER.log(level, "%-36s %6.1f s%s", label, seconds, " (reused)" if reused else "")


class StepFailed(Exception):
    """A step of the graph failed; ``subject`` names the participant when known."""

    def __init__(self, message, subject=None):
        super().__init__(message)
        self.subject = subject


def crash_message(crash_dir, since):
    """(subject, last line) of the newest Nipype crash report written after ``since``, or None."""
    reports = sorted((p for p in Path(crash_dir).glob("crash-*.txt") if p.stat().st_mtime >= since),
                     key=lambda p: p.stat().st_mtime)
    if not reports:
        return None
    text = reports[-1].read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error: " in line or "Exception: " in line]
    message = (errors or lines)[-1]
    node = re.search(r"^Node: (\S+)", text, re.MULTILINE)
    return (_subject_of(node.group(1)) if node else None,
            message.split(": ", 1)[1] if ": " in message else message)


def run_graph(workflow, work_dir, nprocs=1, mem_gb=None, run_labels=None, import_ahead=None):
    """Run ``workflow`` in ``work_dir``; return the time it began.

    ``import_ahead`` is an :class:`ImportAhead` for a MultiProc run (``nprocs`` > 1): with one
    process everything runs in this one, and nothing is free to import ahead.

    Raises
    ------
    tmstarget.interrupts.Interrupted
        On SIGINT or SIGTERM at any moment; finished steps stay in the work dir (a re-run
        resumes), the workers are stopped, and the interrupted steps' crash reports are removed
        (they are not errors).
    StepFailed
        When a step fails: the last line of its crash report, and the participant.
    """
    workflow.base_dir = str(work_dir)
    crash_dir = Path(work_dir) / "crash"
    start = time.time()
    runner = None
    with InterruptFlag() as interrupt:
        plugin_args = {"status_callback": NodeProgress(
            interrupted=lambda: interrupt.received, run_labels=run_labels,
            also=import_ahead if nprocs > 1 else None)}
        if nprocs > 1:
            plugin_args.update(n_procs=nprocs, raise_insufficient=False)
            if mem_gb:
                plugin_args["memory_gb"] = mem_gb
        try:
            if nprocs > 1:
                with frozen_garbage():
                    runner = WakingMultiProc(plugin_args=plugin_args)
                    workflow.run(plugin=runner)
            else:
                workflow.run(plugin="Linear", plugin_args=plugin_args)
            if interrupt.received:
                # an interrupt whose exception was swallowed on its way (Python ignores one
                # raised in an at-fork callback or a finalizer) still ends the run as one
                raise Interrupted(interrupt.signum)
        except BaseException as err:
            if interrupt.received or isinstance(err, KeyboardInterrupt):
                if runner is not None:
                    runner.stop_workers()
                for report in crash_dir.glob("crash-*.txt"):
                    if report.stat().st_mtime >= start:
                        report.unlink(missing_ok=True)
                raise Interrupted(interrupt.signum or signal.SIGINT) from None
            if isinstance(err, RuntimeError):
                found = crash_message(crash_dir, start)
                subject, message = found if found else (None, str(err))
                raise StepFailed(message, subject) from None
            raise
    return start
