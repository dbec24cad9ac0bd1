"""Running the ``rnnlm`` console script in tests, offline, against ../shared/data."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from conftest import SHARED_DATA

RNNLM = str(Path(sys.executable).parent / "rnnlm")


def rnnlm_env(cwd: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RNNLM_DATA_DIR": str(SHARED_DATA),
        "RNNLM_CACHE_DIR": str(cwd / ".cache"),
        **extra,
    }


def run_rnnlm(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``rnnlm ARGS`` to completion."""
    return subprocess.run(
        [RNNLM, *args], cwd=cwd, env=rnnlm_env(cwd), capture_output=True, text=True, timeout=timeout
    )


def start_rnnlm(*args: str, cwd: Path) -> subprocess.Popen:
    """Start ``rnnlm ARGS`` in the background (for signal tests)."""
    return subprocess.Popen(
        [RNNLM, *args], cwd=cwd, env=rnnlm_env(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
