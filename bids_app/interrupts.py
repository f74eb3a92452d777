"""Ctrl-C and stops: SIGINT and SIGTERM end a run the same way, with the exit code of the signal.

A terminal's Ctrl-C sends SIGINT; ``kill``, ``timeout``, ``docker stop`` and SLURM (``scancel``, the
end of a job's time) send SIGTERM. Python's default for SIGTERM ends the process at once, without
stopping its workers (they ran on, orphaned) and without the clean-up of its ``finally`` clauses;
and a container's first process, as the app is under ``docker run``, ignores a signal it has no
handler for, so ``docker stop`` waited its ten seconds and killed it. Here both raise
:class:`Interrupted`, which the CLI turns into one line and exit 128 + the signal's number (130,
143), as a shell reports a process ended by that signal.

This module imports nothing heavy: the CLI sets the handlers before anything else.
"""

from __future__ import annotations

import os
import signal


class Interrupted(KeyboardInterrupt):
    """The run was stopped by ``signum`` (SIGINT: Ctrl-C; SIGTERM: a stop)."""

    def __init__(self, signum=signal.SIGINT):
        self.signum = signal.Signals(signum)
        super().__init__(self.signum.name)

    @property
    def exit_code(self):
        """128 + the signal's number, as a shell reports a process that the signal ended."""
        return 128 + self.signum


class InterruptFlag:
    """While active, SIGINT and SIGTERM raise :class:`Interrupted`; ``signum`` records the first.

    The record matters because Nipype turns an exception raised inside a step into that step's
    failure (its interfaces catch every exception), and Python ignores one raised in an at-fork
    callback or a finalizer: without it, an interrupt could look like a data error, or be lost.

    A copy of this process forked while the flag is active (a Nipype worker starting) inherits
    the handler until it sets its own: there the signal ends it as Python's default would, since
    only the process that set the flag decides what an interrupt does.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.signum = None
        self._pid = os.getpid()
        self._previous = {signum: signal.signal(signum, self._handler) for signum in self.SIGNALS}
        return self

    @property
    def received(self):
        """True once SIGINT or SIGTERM has arrived."""
        return self.signum is not None

    def _handler(self, signum, frame):
        if os.getpid() != self._pid:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        if self.signum is None:
            self.signum = signal.Signals(signum)
        raise Interrupted(signum)

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            # None: a handler set outside Python, which cannot be put back; the default instead
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        return False
