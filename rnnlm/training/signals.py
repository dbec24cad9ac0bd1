"""Graceful stop on SIGINT, SIGTERM and SIGUSR2, whatever the run is doing.

SLURM sends SIGTERM before preemption or a time limit; Hydra's submitit launcher
asks SLURM for SIGUSR2 before the limit.

The first signal raises a flag. The training loop polls it after each BPTT
segment (a safe point), saves a resumable checkpoint and ends the run with
``status=interrupted``; validation and checkpoint writes run to their end first.
Work that is safe to abandon and redo (the final test evaluation) runs inside
:meth:`StopSignals.abortable`, where the signal raises :class:`Interrupted` at once.
A second SIGINT interrupts at once.

When the run has saved its state and leaves :func:`stop_on_signals`, the signal is
passed on to the Python handler that was installed before, if any: that is how a
job scheduler's own handler (submitit's requeue on SIGUSR2) still runs.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

SIGNALS = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR2] if hasattr(signal, "SIGUSR2") else [])


class Interrupted(Exception):
    """A stop signal arrived inside :meth:`StopSignals.abortable`."""


class StopSignals:
    """``stop()`` tells whether a stop signal has arrived (it is the training loop's poll)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._abortable = 0
        self._raised = False

    def __call__(self) -> bool:
        return bool(self.received)

    @property
    def name(self) -> str:
        return signal.Signals(self.received[0]).name if self.received else ""

    @contextmanager
    def abortable(self) -> Iterator[None]:
        """A section that a stop signal abandons at once with :class:`Interrupted`
        (also on entry, if one has already arrived)."""
        if self.received:
            self._raised = True
            raise Interrupted(self.name)
        self._abortable += 1
        try:
            yield
        finally:
            self._abortable -= 1

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received.append(signum)
        if self._abortable and not self._raised:
            self._raised = True
            raise Interrupted(signal.Signals(signum).name)


@contextmanager
def stop_on_signals(pass_on: bool = True) -> Iterator[StopSignals]:
    """Yield a :class:`StopSignals`; restore the previous handlers on exit and, with
    ``pass_on``, hand a received signal to the previous Python handler."""
    stop = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # handlers can only be installed from the main thread
        return
    previous = {sig: signal.signal(sig, stop._handle) for sig in SIGNALS}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if pass_on and stop.received:
        handler = previous.get(stop.received[0])
        if callable(handler) and handler is not signal.default_int_handler:
            handler(stop.received[0], None)
