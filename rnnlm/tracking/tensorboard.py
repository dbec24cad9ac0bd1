"""TensorBoard: event files written with ``torch.utils.tensorboard.SummaryWriter``.

A run's events go to ``<dir>/<run name>/`` (``dir``: ``logger.tensorboard.dir``, else
``RUN_DIR/tensorboard``), so ``tensorboard --logdir SWEEP_DIR`` lists every job of a sweep
under its overrides. The config is a markdown table (TEXT tab) at the start; at the end
the config and the result figures are one HParams session (``add_hparams``), so the HPARAMS
tab compares the jobs of a sweep side by side. A resumed run appends to the same
directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch.utils.tensorboard import SummaryWriter

from .config import TensorBoardConfig


def safe_name(name: str) -> str:
    """A run name as one directory name (overrides such as ``dropout/recurrent=...`` hold '/')."""
    return name.replace("/", "_")[:200] or "run"


class TensorBoardRun:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.params: dict[str, Any] = {}

    def state(self) -> dict[str, Any]:
        return {"dir": str(self.log_dir)}

    def start(self, params: Mapping[str, Any], resumed: bool) -> None:
        self.params = dict(params)
        if resumed:
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


def open_run(cfg: TensorBoardConfig, run_dir: Path, name: str, group: str | None, saved: dict | None) -> TensorBoardRun:
    if saved and saved.get("dir"):
        return TensorBoardRun(Path(saved["dir"]))
    root = Path(cfg.dir) if cfg.dir else Path(run_dir) / "tensorboard"
    return TensorBoardRun(root / safe_name(name))
