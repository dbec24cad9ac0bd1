"""Which process runs which trial, so that several searches can work on one study at once.

A RUNNING trial is *held* while a live process holds either of two ``flock`` locks:

* the search's, on ``SWEEP_DIR/.optuna-trials/<N>``: taken right after ``study.ask`` creates
  trial N (or when a search takes over a trial left running) and kept until the search has
  told the study the trial's outcome;
* the job's, on ``SWEEP_DIR/<N>/.rnnlm-claim`` (:mod:`rnnlm.rundir`): held by the run's own
  process for as long as it lives, also after the search that launched it is gone (a SLURM
  job outlives a search killed on the login node).

A RUNNING trial that neither lock holds is *stale*: the search that ran it stopped. Taking
the search's lock is also how a process claims a trial, so of two searches that find one
stale trial at the same moment exactly one runs it, and a trial another search has just
asked for (and not yet locked) is either locked by that search or run by this one, never
by both. The kernel drops a flock when its process ends in any way (``kill -9``, the OOM
killer), so a lock never outlives its process; all searches of a study must see the same
``SWEEP_DIR`` on a file system with ``flock`` (a local disk, NFS and Lustre mounted with
their lock option).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from rnnlm.rundir import claim_held, try_lock

log = logging.getLogger(__name__)

LOCK_DIR = ".optuna-trials"
_said_unlocked = False


def _no_flock(where: Path) -> None:
    global _said_unlocked
    if not _said_unlocked:
        _said_unlocked = True
        log.warning("%s: this file system has no flock, so a search cannot tell a trial another search "
                    "is running from one left running; run one search per study here", where)


class TrialLocks:
    """The search's locks on the trials this process runs (see the module docstring)."""

    def __init__(self, sweep_dir: Path):
        self.dir = Path(sweep_dir) / LOCK_DIR
        self.held: dict[int, int] = {}  # trial number -> the locked descriptor

    def acquire(self, number: int) -> bool:
        """Lock trial ``number`` for this process: False if another process holds it. Where
        the file system has no flock the lock is taken as granted (one search per study)."""
        if number in self.held:
            return True
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / str(number), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = try_lock(fd)
        except OSError as exc:  # BlockingIOError: another process holds it
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                return False
            raise
        if not locked:
            _no_flock(self.dir)
        self.held[number] = fd
        return True

    def release(self, number: int) -> None:
        fd = self.held.pop(number, None)
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    def release_all(self) -> None:
        for number in list(self.held):
            self.release(number)


def job_alive(job_dir: Path) -> bool:
    """Whether a live process holds the run claim of ``job_dir`` (its job is still running),
    by :func:`rnnlm.rundir.claim_held`. Call it only while holding the trial's search lock,
    so that no job of this study is starting in ``job_dir`` meanwhile (a job starting at that
    moment could find its claim busy)."""
    held = claim_held(job_dir)
    if held is None:
        _no_flock(Path(job_dir))
    return bool(held)