"""Graceful stop on SIGINT, SIGTERM and SIGUSR2.

SLURM sends SIGTERM before preemption or a time limit; Hydra's submitit launcher
asks SLURM for SIGUSR2 ninety seconds before the limit (``--signal=USR2@90``).

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

    signals = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR2] if hasattr(signal, "SIGUSR2") else [])
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield lambda: bool(received)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
