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

A stop can also come from a file: inside :func:`watch_stop_file`, :func:`stop_on_signals`
watches the file (every :data:`POLL_SECONDS`) and, once it appears, stops the run as the
signal named in it would, except that nothing is passed on (no signal reached this
process). That is how the parent of a sweep whose jobs run in worker processes
(``hydra/launcher=joblib``) stops them all: it writes the sweep's stop file
(:func:`request_stop`) when it is signalled itself. A file, not a signal to the workers'
pids, because it reaches every job however it was started (the loky workers are not in a
process group of the sweep's own, and signalling the parent's group would also hit the
shell or batch script that started it), it also stops jobs that start after the signal
(joblib may still hand out queued jobs), and it survives the parent.
"""

from __future__ import annotations

import _thread
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

SIGNALS = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR2] if hasattr(signal, "SIGUSR2") else [])
STOP_FILE = ".rnnlm-stop"  # in a sweep directory: the sweep was asked to stop (request_stop)
POLL_SECONDS = 0.5  # how often a watched stop file is looked for

_watched: list[Path] = []  # the stop files that stop_on_signals watches (watch_stop_file)


class Interrupted(Exception):
    """A stop signal arrived inside :meth:`StopSignals.abortable`."""


class StopSignals:
    """``stop()`` tells whether a stop signal has arrived (it is the training loop's poll)."""

    def __init__(self) -> None:
        self.received: list[int] = []  # every stop: signals, and a stop file's
        self.signalled: list[int] = []  # the signals that reached this process (passed on)
        self.from_file: str = ""  # the signal named in a stop file that stopped the run
        self._abortable = 0
        self._raised = False
        self._poke = False  # the next SIGTERM handled is the stop file's interrupt_main

    def __call__(self) -> bool:
        return bool(self.received)

    @property
    def name(self) -> str:
        if not self.received:
            return ""
        if self.from_file and not self.signalled:
            return f"{self.from_file} to the sweep"
        return signal.Signals(self.received[0]).name

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
        if self._poke and signum == signal.SIGTERM:  # the stop file, in an abortable section
            self._poke = False
            if self._abortable and not self._raised:
                self._raised = True
                raise Interrupted(self.name)
            return
        if self.received and signum == signal.SIGINT and self.signalled:
            raise KeyboardInterrupt
        self.received.append(signum)
        self.signalled.append(signum)
        if self._abortable and not self._raised:
            self._raised = True
            raise Interrupted(signal.Signals(signum).name)

    def _stop_file(self, name: str) -> None:
        """From the watcher thread: a stop file naming the signal ``name`` has appeared."""
        if self.received:
            return
        self.from_file = name
        self.received.append(getattr(signal, name, signal.SIGTERM))
        if self._abortable and not self._raised:  # abandon the section now, as a signal would
            self._poke = True
            _thread.interrupt_main(signal.SIGTERM)


def request_stop(path: Path, signum: int) -> None:
    """Write the stop file ``path``, naming ``signum`` (who and when on the same line)."""
    from ..atomic import atomic_write_text

    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_text(Path(path), f"{signal.Signals(signum).name} pid {os.getpid()} on {socket.gethostname()} "
                                  f"at {stamp}\n")


def stop_requested(path: Path) -> str:
    """The signal named in the stop file ``path`` (``SIGTERM``), or '' if there is none."""
    try:
        words = Path(path).read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return ""
    return words[0] if words and words[0] in signal.Signals.__members__ else ("SIGTERM" if words else "")


@contextmanager
def watch_stop_file(path: Path) -> Iterator[None]:
    """While inside, :func:`stop_on_signals` also stops the run when ``path`` appears."""
    _watched.append(Path(path))
    try:
        yield
    finally:
        _watched.remove(Path(path))


def _watch(stop: StopSignals, paths: list[Path], done: threading.Event, lock: threading.Lock) -> None:
    while not done.wait(POLL_SECONDS):
        for path in paths:
            name = stop_requested(path) if path.exists() else ""
            if name:
                with lock:
                    if not done.is_set():
                        stop._stop_file(name)
                return


def _let_pending_handlers_run() -> None:
    """A Python-level call: a signal handler made pending by interrupt_main runs at its start."""


def install_handlers(handle: Callable[[int, Any], None]) -> dict[int, Any]:
    """``handle`` for every stop signal (:data:`SIGNALS`); -> the handlers it replaced."""
    return {sig: signal.signal(sig, handle) for sig in SIGNALS}


def restore_handlers(previous: dict[int, Any]) -> None:
    """The handlers ``previous`` (from :func:`install_handlers`) back."""
    for sig, old in previous.items():
        signal.signal(sig, old)


def hand_on(previous: dict[int, Any], signum: int) -> None:
    """``signum``, received while our handlers were installed, handed to the handler it had
    replaced: a Python handler other than the default SIGINT one (which would raise
    KeyboardInterrupt here); a default or ignored one is left alone."""
    handler = previous.get(signum)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signum, None)


@contextmanager
def stop_on_signals(pass_on: bool = True) -> Iterator[StopSignals]:
    """Yield a :class:`StopSignals`; restore the previous handlers on exit and, with
    ``pass_on``, hand a received signal to the previous Python handler."""
    stop = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # handlers can only be installed from the main thread
        return
    previous = install_handlers(stop._handle)
    done, lock, watcher = threading.Event(), threading.Lock(), None
    if _watched:
        watcher = threading.Thread(target=_watch, args=(stop, list(_watched), done, lock), daemon=True,
                                   name="rnnlm-stop-file")
        watcher.start()
    try:
        yield stop
    finally:
        if watcher is not None:
            with lock:
                done.set()
            watcher.join()
            try:
                _let_pending_handlers_run()
            except Interrupted:
                pass
        restore_handlers(previous)
    if pass_on and stop.signalled:
        hand_on(previous, stop.signalled[0])
