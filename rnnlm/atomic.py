"""Crash-safe writes: every file goes to a temporary file in the same directory and
is renamed over the target (``os.replace`` is atomic on POSIX), so a crash or
``kill -9`` at any moment leaves either the old file or the new one, never a
truncated one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable


class WriteError(OSError):
    """Writing ``filename`` failed (no space, I/O error, read-only, ...); the file that was
    there, if any, is the previous one, intact."""

    def __init__(self, path: Path, cause: BaseException):
        if isinstance(cause, OSError) and cause.strerror:
            reason = cause.strerror
        else:  # e.g. torch.save's stream writer reports a failed write as a RuntimeError
            reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(getattr(cause, "errno", None), reason, str(path))

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then atomically rename the temp file to ``path``.

    A failed write raises :class:`WriteError` naming ``path`` and leaves the old file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give it a normal file's mode
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, WriteError):
            raise WriteError(path, exc) from exc
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
