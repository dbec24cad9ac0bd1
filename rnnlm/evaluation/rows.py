"""``RUN_DIR/eval.csv``: one row per (method, split) scored by ``rnnlm eval``.

Rows are appended: the file is read, extended and written back atomically (temp file
+ rename, :func:`rnnlm.results.write_csv`) under an exclusive lock on the run
directory, so a crash leaves the old file or the new one and two concurrent
``rnnlm eval`` calls on one run do not lose each other's rows. ``result.csv``,
``metrics.csv`` and the checkpoints are never written. A method's parameters that do
not apply to a row are left empty; losses are nats per token and ppl = exp(loss).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..results import read_csv, write_csv

EVAL_FILE = "eval.csv"
METHODS = ("standard", "mc", "pointer", "dynamic")

EVAL_COLUMNS = (
    "method",  # standard | mc | pointer | dynamic
    "split",  # valid | test | file
    "file",  # the scored text file (split=file)
    "checkpoint",  # best | last (last: ASGD's averaged weights once it switched)
    "loss",  # mean nats per target token
    "ppl",
    "tokens",  # target tokens scored
    "oov_words",  # words of the file mapped to <unk> (0 for valid/test)
    "seconds",  # wall time of the scoring pass
    "tokens_per_second",  # target tokens scored per second of the pass (mc: stream tokens, whatever mc.samples)
    "token_samples_per_second",  # mc: predictions per second, tokens x mc.samples / seconds (empty otherwise)
    "setup_seconds",  # one-off work before scoring (dynamic rms: gradient statistics)
    "batch_size",  # streams the split was cut into (batchify)
    "bptt",  # segment length (dynamic: tokens per update)
    "mc.samples",  # predictions per token
    "mc.columns",  # copies of the stream per pass, each with its own masks
    "mc.seed",
    "mc.word_dropout",
    "pointer.window",
    "pointer.theta",
    "pointer.lambda",
    "pointer.start",  # full (after a full window, as awd-lstm-lm) | partial
    "dynamic.rule",  # rms (Krause et al.) | sgd
    "dynamic.lr",
    "dynamic.decay",
    "dynamic.epsilon",
    "dynamic.stats_batches",  # training segments in the gradient statistics (rms)
    "dynamic.stats_batch_size",
    "dataset",
    "device",
    "precision",  # fp32 | tf32 | bf16 | fp16 (rnnlm eval precision=, default the run's)
    "torch_version",
    "rnnlm_version",
    "git_revision",
    "source_hash",  # the installed rnnlm source (rnnlm.runtime.source_hash)
    "time",  # when the row was written (UTC, ISO 8601)
    "overrides",  # the command line of `rnnlm eval`, after RUN_DIR; tuning rows end in (tuning: grid|chosen)
)

# The parameters that make two rows of a method the same setting.
SETTING_KEYS = {
    "standard": ("checkpoint",),
    "mc": ("checkpoint", "mc.samples", "mc.columns", "mc.seed", "mc.word_dropout"),
    "pointer": ("checkpoint", "pointer.window", "pointer.theta", "pointer.lambda", "pointer.start"),
    "dynamic": ("checkpoint", "dynamic.rule", "dynamic.lr", "dynamic.decay", "dynamic.epsilon", "bptt",
                "dynamic.stats_batches", "dynamic.stats_batch_size"),
}


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``directory`` (POSIX; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    path = Path(run_dir) / EVAL_FILE
    return read_csv(path) if path.is_file() else []


def append_rows(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Append ``rows`` to ``run_dir/eval.csv`` atomically; returns the path."""
    path = Path(run_dir) / EVAL_FILE
    with locked(Path(run_dir)):
        old = [{k: r.get(k) for k in EVAL_COLUMNS} for r in read_rows(run_dir)]
        write_csv(path, [*old, *rows], EVAL_COLUMNS)
    return path
