"""Weights & Biases: one W&B run per rnnlm run, in ``logger.wandb.project``.

The jobs of a sweep share a W&B group (the sweep directory's name); each run is named
after its overrides. Parameters go to ``run.config``; each logged key is tied to its own
x-axis with ``define_metric`` (``epoch``, ``progress/tokens``, ``eval/row``), and the
result figures and status go to ``run.summary``. A resumed run reopens the same id
(``resume="allow"``). With ``logger.wandb.mode=offline`` (or ``WANDB_MODE=offline``) the
run stays in ``<dir>/wandb/offline-run-*`` until ``wandb sync``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import wandb

from .config import WandbConfig


class WandbRun:
    def __init__(self, run: Any) -> None:
        self.run = run
        self.axes: set[str] = set()

    def state(self) -> dict[str, Any]:
        return {"id": self.run.id, "project": self.run.project}

    def start(self, params: Mapping[str, Any], resumed: bool) -> None:
        self.run.config.update(dict(params), allow_val_change=True)  # offline, a resumed run's file needs it too

    def log_values(self, values: Mapping[str, Any], step_key: str, step: int) -> None:
        if step_key not in self.axes:
            self.run.define_metric(step_key)
            self.axes.add(step_key)
        for key in values:
            if key not in self.axes:
                self.run.define_metric(key, step_metric=step_key)
                self.axes.add(key)
        self.run.log({step_key: step, **values})

    def log_result(self, figures: Mapping[str, float], status: Mapping[str, str]) -> None:
        self.run.summary.update({**figures, **status})

    def close(self, status: str | None) -> None:
        if status == "interrupted":
            self.run.mark_preempting()
        self.run.finish(exit_code=0 if status in (None, "completed") else 1)


def open_run(cfg: WandbConfig, run_dir: Path, name: str, group: str | None, saved: dict | None) -> WandbRun:
    run = wandb.init(
        project=(saved or {}).get("project", cfg.project), entity=cfg.entity, dir=str(cfg.dir or run_dir),
        mode=cfg.mode, name=name, group=group, id=(saved or {}).get("id"), resume="allow" if saved else None,
        reinit="create_new",
    )
    return WandbRun(run)
