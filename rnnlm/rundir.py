"""One run, one directory: a run claims its directory before it writes anything.

The claim is the file ``RUN_DIR/.rnnlm-claim``. A new run creates it atomically
(a hard link of an already-locked temporary file, which fails if the name
exists), so of any number of runs started on one directory at the same moment
exactly one gets it; the others get :class:`ClaimError`. The claiming process
holds an exclusive ``flock`` on the file for as long as it runs; the kernel drops
the lock when the process ends in any way (signal, ``kill -9``, OOM kill), so a
resume can tell a stopped run from one that is still running and take over its
claim.

Where the file system has no hard links the claim falls back to an exclusive
create (``O_EXCL``). Where it has no ``flock`` (some network or parallel file
systems without their lock option) fresh starts stay exclusive, but a resume
cannot see whether the run it continues is still alive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)
_said_unlocked = False  # the file system's missing flock is said once per process

CLAIM = ".rnnlm-claim"


class ClaimError(Exception):
    """The directory cannot be claimed; the message is one line for the user."""


class Claim:
    """A held claim on a run directory; :meth:`release` (or leaving ``with``) drops the lock."""

    def __init__(self, run_dir: Path, fd: int, locked: bool):
        global _said_unlocked
        self.dir = run_dir
        self.fd: int | None = fd
        self.locked = locked
        if not locked and not _said_unlocked:
            _said_unlocked = True
            log.warning("%s: this file system has no flock, so a claim cannot tell a live run from a stopped "
                        "one; continue a run (resume) only once you know its process has ended", run_dir)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# What flock raises on a file system that has none (some network or parallel file systems).
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def try_lock(fd: int) -> bool:
    """Lock ``fd`` exclusively without waiting: True if locked, False where the file system
    has no flock; :class:`BlockingIOError` if another process holds the lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno in NO_FLOCK:
            return False
        raise
    return True


def claim_held(run_dir: Path) -> bool | None:
    """Whether a live process holds ``run_dir``'s claim: True, False (also when there is no
    claim file), or None where the file system has no flock and it cannot be told. A probe,
    not a take-over: a shared lock tried without waiting and dropped at once."""
    try:
        fd = os.open(Path(run_dir) / CLAIM, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as exc:
        if exc.errno in NO_FLOCK:
            return None
        raise
    finally:
        os.close(fd)
    return False


def _owner_line() -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode()


def owner(run_dir: Path) -> str:
    """Who claimed ``run_dir`` (``pid N on HOST since TIME``), or '' if unknown."""
    try:
        return (Path(run_dir) / CLAIM).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _create_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClaimError(f"{run_dir} cannot be created: {exc.strerror or exc}") from None
    if not run_dir.is_dir():
        raise ClaimError(f"{run_dir} is not a directory")


def claim_new(run_dir: Path) -> Claim:
    """Claim ``run_dir`` (created if missing) for a new run; :class:`ClaimError` if any other
    run has ever claimed it, whether it is still running or not."""
    run_dir = Path(run_dir)
    _create_dir(run_dir)
    path = run_dir / CLAIM
    try:
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f"{CLAIM}.", suffix=".tmp")
    except OSError as exc:
        raise ClaimError(f"{run_dir} is not writable: {exc.strerror or exc}") from None
    try:
        locked = try_lock(fd)  # a new inode: nobody else can hold it
        os.write(fd, _owner_line())
        try:
            os.link(tmp, path)  # atomic; the claim appears already locked
        except FileExistsError:
            os.close(fd)
            raise ClaimError(_taken(run_dir)) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                os.close(fd)
                raise ClaimError(f"cannot claim {run_dir}: {exc.strerror or exc}") from None
            os.close(fd)  # no hard links here: an exclusive create instead
            fd, locked = _create_exclusive(path, run_dir)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return Claim(run_dir, fd, locked)


def _create_exclusive(path: Path, run_dir: Path) -> tuple[int, bool]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ClaimError(_taken(run_dir)) from None
    locked = try_lock(fd)
    os.write(fd, _owner_line())
    return fd, locked


def _taken(run_dir: Path) -> str:
    who = owner(run_dir)
    return f"{run_dir} is already claimed by another run" + (f" ({who})" if who else "")


def claim_stopped(run_dir: Path) -> Claim:
    """Take over the claim of the run in ``run_dir`` to continue it; :class:`ClaimError` if a
    live process still holds it. A directory written before claims existed gets one now."""
    run_dir = Path(run_dir)
    path = run_dir / CLAIM
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ClaimError(f"cannot claim {run_dir}: {exc.strerror or exc}") from None
    try:
        locked = try_lock(fd)
    except BlockingIOError:
        os.close(fd)
        who = owner(run_dir)
        raise ClaimError(f"{run_dir} is in use by a running process" + (f" ({who})" if who else "")) from None
    os.ftruncate(fd, 0)
    os.write(fd, _owner_line())
    return Claim(run_dir, fd, locked)


def is_claimed(run_dir: Path) -> bool:
    return (Path(run_dir) / CLAIM).exists()
