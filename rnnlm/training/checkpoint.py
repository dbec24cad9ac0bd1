"""Checkpoints as plain state dicts and tensors.

Saved atomically (temp file + rename) and loaded only with
``torch.load(weights_only=True)``: loading never executes code from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or not an rnnlm checkpoint."""


FORMAT = "rnnlm-checkpoint-1"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    def write(tmp: str) -> None:
        # Through a file object, so the archive's inner name is fixed (not the temporary file's
        # random name): equal payloads give byte-identical checkpoints.
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)

    atomic_write(path, write)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated or carrying pickled code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot load checkpoint {path}: it is corrupt or not a plain-tensor rnnlm "
            f"checkpoint ({first})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rnnlm checkpoint (format {FORMAT} expected)")
    return payload
