"""Running the ``rnnlm`` console script in tests, offline, on the tiny corpus; facts about it."""

from __future__ import annotations

import csv
import functools
import importlib
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

from tiny_corpus import tiny_splits

from rnnlm.config import DropoutConfig, ModelConfig
from rnnlm.data import Corpus
from rnnlm.model import AWDLSTM

RNNLM = str(Path(sys.executable).parent / "rnnlm")


def rnnlm_env(cwd: Path, **extra: str) -> dict[str, str]:
    """The environment of a test's ``rnnlm`` process: offline, reading the tiny corpus that
    the session fixture ``tiny_data`` (conftest.py) wrote, with a corpus cache under ``cwd``."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RNNLM_DATA_DIR": os.environ["RNNLM_DATA_DIR"],
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


@functools.cache
def tiny() -> Corpus:
    """The tiny corpus as every dataset preset reads it (for its vocabulary size and token counts)."""
    return Corpus.from_lines(tiny_splits())


def config_options(group: str) -> list[str]:
    """The presets of a config group, from the YAML files Hydra composes (``rnnlm.configs``)."""
    import rnnlm.configs

    directory = Path(rnnlm.configs.__file__).parent / group
    return sorted(p.stem for p in directory.glob("*.yaml"))


def tiny_lm(vocab: int, nhid: int, dropout: DropoutConfig | None = None, seed: int = 0) -> AWDLSTM:
    """A 2-layer AWD-LSTM with 8-dim (tied) embeddings, initialised after torch.manual_seed(seed)."""
    import torch

    torch.manual_seed(seed)
    return AWDLSTM(vocab, ModelConfig(emsize=8, nhid=nhid, nlayers=2), dropout or DropoutConfig())


def sigterm_on_call(monkeypatch, target: str, nth: int) -> None:
    """Make the ``nth`` call of the function ``target`` (module.name) first send this process SIGTERM."""
    module_name, name = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    real, calls = getattr(module, name), itertools.count(1)

    def wrapper(*args, **kwargs):
        if next(calls) == nth:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
