"""TensorBoard: event files written with ``torch.utils.tensorboard.SummaryWriter``.

A run's events go to ``<dir>/<run name>/`` (``dir``: ``logger.tensorboard.dir``, else
``RUN_DIR/tensorboard``), so ``tensorboard --logdir SWEEP_DIR`` lists every job of a sweep
under its overrides. The config is a markdown table (TEXT tab) at the start; at the end
the config and the result figures are one HParams session (``add_hparams``), so the HPARAMS
tab compares the jobs of a sweep side by side. A resumed run appends to the same
directory.

A resumed run opens its writer with ``purge_step`` at the training tokens of the checkpoint
it continues from: TensorBoard then hides every event of that directory logged before, at
that step or later. After a hard kill (``kill -9``, a node failure) that is the killed
process's progress points past the checkpoint, which the resumed run logs again, so each
curve shows the training the run actually kept. The purge applies to all tags, whatever
their axis; the other axes (``epoch``, ``eval/row``, the config at 0) stay far below any
token count and are kept. A run that starts afresh in a directory that had a tracker run
purges from 0. The purge is a ``SessionLog.START`` event that the reader applies:
TensorBoard's Python loader does (``tensorboard --load_fast=false``, ``EventAccumulator``,
which the tests read with); the Rust data server that ``--load_fast=auto`` may pick is not
checked here, and other readers of the event files may show both.

The reader applies a purge only to the files it reads before the one holding it, and it reads a
directory's event files in the order of their names, ``events.out.tfevents.<second>.<host>.<pid>.<n>``
(tensorboard's ``EventFileWriter``; ``DirectoryWatcher`` sorts them as strings). Two files made
in the same second therefore sort by host, pid and counter as text (``...9`` after ``...10``),
so a reopened run waits for the clock to pass the second of the directory's newest event file
before it opens its own: its file sorts last, and its purge applies to every earlier file.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Mapping

from torch.utils.tensorboard import SummaryWriter

from ..checks import ConfigError
from .config import TensorBoardConfig

log = logging.getLogger(__package__)

EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.")
SKEW_WAIT = 5.0  # seconds a reopened run waits at most for an event file stamped in its future


def newest_event_second(log_dir: Path) -> int | None:
    """The largest ``<second>`` field of the event files in ``log_dir`` (None: there are none)."""
    seconds = [int(m.group(1)) for p in log_dir.glob("events.out.tfevents.*") if (m := EVENT_FILE.match(p.name))]
    return max(seconds, default=None)


def wait_to_sort_last(log_dir: Path, max_wait: float = SKEW_WAIT) -> None:
    """Sleep until a file made now would be named in a later second than every event file in
    ``log_dir``, so that it sorts after them (at most ``max_wait`` s; a file stamped further
    in the future, another node's clock, is reported instead)."""
    newest = newest_event_second(log_dir)
    if newest is None:
        return
    wait = newest + 1 - time.time()
    if wait > max_wait:
        log.warning("logger=tensorboard: %s holds an event file stamped %.0f s in this machine's future; "
                    "the resumed run's file may sort before it, and TensorBoard may then show the points "
                    "the previous process logged past the checkpoint", log_dir, wait - 1)
        return
    while wait > 0:
        time.sleep(wait)
        wait = newest + 1 - time.time()


def safe_name(name: str) -> str:
    """A run name as one directory name (overrides such as ``dropout/recurrent=...`` hold '/')."""
    return name.replace("/", "_")[:200] or "run"


class TensorBoardRun:
    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        self.log_dir = log_dir
        self.purge_step = purge_step
        if purge_step is not None:
            wait_to_sort_last(log_dir)
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        self.params: dict[str, Any] = {}

    def state(self) -> dict[str, Any]:
        return {"dir": str(self.log_dir)}

    def start(self, params: Mapping[str, Any], resumed: bool) -> None:
        self.params = dict(params)
        if resumed and self.purge_step != 0:  # from 0, the purge hides the first table too
            return
        table = "\n".join(["| key | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in params.items())])
        self.writer.add_text("config", table, 0)
        self.writer.flush()

    def log_values(self, values: Mapping[str, Any], step_key: str, step: int) -> None:
        for key, value in values.items():
            if isinstance(value, str):
                self.writer.add_text(key, value, step)
            elif value is not None:
                self.writer.add_scalar(key, float(value), step)
        self.writer.flush()

    def log_result(self, figures: Mapping[str, float], status: Mapping[str, str]) -> None:
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in self.params.items()}
        hparams.update(status)
        # run_name ".": the session's files go into this run's own directory, not a new run.
        self.writer.add_hparams(hparams, dict(figures), run_name=".")

    def close(self, status: str | None) -> None:
        self.writer.close()


def check(cfg: TensorBoardConfig) -> None:
    """``logger.tensorboard.dir`` must be a directory, or a path one can be made at."""

    if cfg.dir is not None:
        path = Path(cfg.dir).expanduser()
        if path.exists() and not path.is_dir():
            raise ConfigError(f"logger.tensorboard.dir={cfg.dir} is a file, not a directory")
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise ConfigError(f"logger.tensorboard.dir={cfg.dir}: {existing} is a file, not a directory")


def open_run(cfg: TensorBoardConfig, run_dir: Path, name: str, group: str | None, saved: dict | None,
             purge_step: int | None = None) -> TensorBoardRun:
    if saved and saved.get("dir"):
        # A continued run replaces what a killed process logged past its checkpoint.
        return TensorBoardRun(Path(saved["dir"]), purge_step=purge_step)
    root = Path(cfg.dir) if cfg.dir else Path(run_dir) / "tensorboard"
    return TensorBoardRun(root / safe_name(name))
