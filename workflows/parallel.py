"""Run a step's independent parts at the same time, in forked copies of the process.

The BOLD read's smoothing (scipy.ndimage) and the report's figures (matplotlib) hold Python's
global interpreter lock, so threads would run them one after the other; processes do not. A forked
copy starts in milliseconds with every module and array of its parent already there (a fresh
interpreter would spend a second importing), and the parts can write into memory the parent shares
with it (an anonymous shared map, :func:`shared_array`, which unlike ``/dev/shm`` is not capped at
Docker's 64 MB). Off Linux (no fork on Windows; on macOS a forked child may abort), or when this
process is a daemonic worker that may not have children, the parts run one after the other here:
the results are the same.
"""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing
import os
import signal
import sys
import threading

import numpy as np


def can_fork():
    """True when :func:`run_parts` can run parts in forked processes: on Linux, in a process that
    may have children. (macOS has fork too, but its system libraries may abort a forked child;
    Python itself starts processes there with spawn.)"""
    return sys.platform.startswith("linux") and not multiprocessing.current_process().daemon


def shared_array(shape, dtype):
    """A zero-filled array in memory shared with the processes forked after it is made."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    if not can_fork() or size == 0:
        return np.zeros(shape, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, size), dtype=dtype).reshape(shape)


def end_with_parent(parent):
    """Have Linux end this process (SIGTERM) when its parent ``parent`` ends: stopped after an
    interrupt, or killed."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (AttributeError, OSError):  # not Linux: the part ends when it is done
        return
    if os.getppid() != parent:  # the parent ended before the request was made
        os._exit(1)


def _stop(signum, frame):
    """SIGTERM (the parent stopping the parts, or the parent's end) as an exception, so that the
    part's ``finally`` clauses run: an atomic write removes its temporary file."""
    raise SystemExit(128 + signum)


def _child(part, connection, parent):
    # Ctrl-C reaches the whole process group: the parent stops the parts and reports it once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    # a stop sent while this process was forked has waited for the handler (see _SignalsHeld)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SignalsHeld.SIGNALS)
    end_with_parent(parent)
    try:
        result = (True, part())
    except SystemExit:  # stopped: nobody waits for a result
        raise
    except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent
        result = (False, err)
    try:
        connection.send(result)
    except Exception as err:  # noqa: BLE001 - an error or result that cannot be pickled
        connection.send((False, RuntimeError(f"{type(result[1]).__name__}: {result[1]} ({err})")))
    connection.close()


class _SignalsHeld:
    """Hold a Ctrl-C or a stop (SIGINT, SIGTERM) that arrives while a process is forked, and act
    on it once the fork is made, in the parent and in the child.

    - **The parent.** Python runs a signal's handler at the next line of Python code, and during
      a fork that may be an at-fork callback (logging's lock release, registered by every program
      that imports logging), where the exception the handler raises is printed and ignored: the
      signal would be lost and the step would go on. (It happened in CI twice: a Ctrl-C, and
      the stop of a report that was forking its figures' processes, whose :func:`_stop` raised
      SystemExit.) Here a handler written in Python is replaced by one that only records the
      signal, and the previous one is called with it after the fork. (Only in the main thread,
      the only one that may set handlers and the one that runs them; a default or ignored
      signal runs no Python code.)
    - **The child.** CPython drops the signals that reach a new child before its interpreter is
      ready for them, so a stop sent at once to a part just forked was lost (the parent then
      waited ten seconds to kill it). Both signals are blocked in the forking thread while it
      forks; the child inherits that, and a signal sent to it waits until :func:`_child` has set
      its handlers and unblocks them.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.previous, self.held = {}, []
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                handler = signal.getsignal(signum)
                if callable(handler):
                    self.previous[signum] = handler
                    signal.signal(signum, self._hold)
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        return self

    def _hold(self, signum, frame):
        self.held.append((signum, frame))

    def __exit__(self, *exc):
        signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)  # runs the handlers of those held back
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        for signum, frame in self.held:
            self.previous[signum](signum, frame)  # raises (KeyboardInterrupt, SystemExit)
        return False


def run_parts(parts, here=True):
    """Call every function of ``parts`` (no arguments) at the same time; their results, in order.

    The first runs in this process (with ``here``; otherwise it too runs in a forked copy, and
    this process only waits), each other one in a forked copy of it; a result travels back
    pickled, so a large one should be written into a :func:`shared_array` instead. The first error
    of any part is raised here, after every part has stopped; an interrupt while waiting stops
    the parts.

    Parameters
    ----------
    parts : sequence of callable
    here : bool
        Run the first part in this process. False for parts whose objects' finalizers could swallow
        a KeyboardInterrupt (matplotlib's figures: Python ignores an exception raised in a weakref
        callback), so that Ctrl-C finds this process waiting.

    Returns
    -------
    list
        ``[part() for part in parts]``.
    """
    parts = list(parts)
    if (here and len(parts) < 2) or not can_fork():
        return [part() for part in parts]
    context = multiprocessing.get_context("fork")
    children = []
    try:
        for part in parts[1:] if here else parts:
            receive, send = context.Pipe(duplex=False)
            # not daemonic, so that a part may run parts of its own (the report, which the
            # scheduler runs in a forked copy, draws its figures in forked copies); every child
            # is joined here, and ends with this process (end_with_parent)
            process = context.Process(target=_child, args=(part, send, os.getpid()), daemon=False)
            with _SignalsHeld():
                process.start()
                send.close()
                children.append((process, receive))
        results = [parts[0]()] if here else []
        errors = []
        for process, receive in children:
            try:
                ok, value = receive.recv()
            except EOFError:  # it ended without a word: killed (-9 is often a lack of memory)
                process.join()
                ok, value = False, RuntimeError(f"a worker process died (exit code {process.exitcode})")
            process.join()
            (results if ok else errors).append(value)
    except BaseException:
        # Stop the parts; each runs its own clean-up on the way out (see _stop). One whose stop
        # was swallowed (an exception raised in a finalizer is ignored) is killed after a while.
        for process, _ in children:
            process.terminate()
        for process, _ in children:
            process.join(timeout=10.0)
            if process.is_alive():
                process.kill()
                process.join()
        raise
    if errors:
        raise errors[0]
    return results
