"""The ``logger`` config group: the experiment trackers a run logs to beside its CSV files.

``configs/logger/<name>.yaml`` fills in one field; ``logger=[tensorboard,mlflow]`` fills in
several. A field left ``None`` is a tracker the run does not use. The CSV files are not a
field: every run writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..checks import ConfigError

WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class TensorBoardConfig:
    # Directory under which the run's event files go, in a subdirectory named after the
    # run; None: RUN_DIR/tensorboard.
    dir: Optional[str] = None


@dataclass
class MlflowConfig:
    # None: MLflow's own choice ($MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the
    # working directory).
    tracking_uri: Optional[str] = None
    # None: the sweep directory's name for the jobs of a sweep, "rnnlm" for a single run.
    experiment: Optional[str] = None


@dataclass
class WandbConfig:
    project: str = "rnnlm"
    entity: Optional[str] = None  # None: the account's default entity
    mode: Optional[str] = None  # online | offline | disabled; None: $WANDB_MODE, else online
    dir: Optional[str] = None  # where wandb keeps its run files; None: RUN_DIR

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in WANDB_MODES:
            raise ConfigError(f"logger.wandb.mode={self.mode} is not one of {', '.join(WANDB_MODES)}.")


@dataclass
class LoggerConfig:
    tensorboard: Optional[TensorBoardConfig] = None
    mlflow: Optional[MlflowConfig] = None
    wandb: Optional[WandbConfig] = None
