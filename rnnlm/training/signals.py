"""Graceful stop on SIGINT / SIGTERM (SLURM sends SIGTERM before preemption).

The first signal only raises a flag; the training loop polls it after each BPTT
segment (a safe point), saves a resumable checkpoint and ends the run with
``status=interrupted``. A second SIGINT interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """Yield a ``requested()`` poll; restore the previous handlers on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False  # handlers can only be installed from the main thread
        return
    received: list[int] = []

    def handler(signum, frame):  # noqa: ARG001
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(received)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
