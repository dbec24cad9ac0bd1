"""MLflow: one MLflow run per rnnlm run, through ``mlflow.MlflowClient`` (no global state).

The experiment is ``logger.mlflow.experiment``, else the sweep directory's name for the
jobs of a sweep (one experiment per sweep), else ``rnnlm``. Parameters are the flattened
config; metrics are logged with their step (epoch, or training tokens for ``progress/*``);
a row's strings (``stage``, ``optimizer``) and the final ``status`` and ``stop_reason``
are tags. The MLflow run ends FINISHED (completed), KILLED (interrupted) or FAILED; a
resumed run sets it RUNNING again. The tracking URI is resolved once and kept in
``tracking.json``, so a resumed run and ``rnnlm eval`` reach the same store.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from .config import MlflowConfig

STATUS = {"completed": "FINISHED", "interrupted": "KILLED"}  # every other status: FAILED
BATCH = 100  # log_batch takes at most 100 params per call


class MlflowRun:
    def __init__(self, client: MlflowClient, tracking_uri: str, run_id: str) -> None:
        self.client, self.tracking_uri, self.run_id = client, tracking_uri, run_id

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri}

    def start(self, params: Mapping[str, Any], resumed: bool) -> None:
        if resumed:  # MLflow refuses a parameter logged twice with another value (a budget key)
            self.client.update_run(self.run_id, status="RUNNING")
            return
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + BATCH])

    def log_values(self, values: Mapping[str, Any], step_key: str, step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]
        tags = [RunTag(k, v) for k, v in values.items() if isinstance(v, str)]
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)

    def log_result(self, figures: Mapping[str, float], status: Mapping[str, str]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, 0) for k, v in figures.items()],
                              tags=[RunTag(k, v) for k, v in status.items()])

    def close(self, status: str | None) -> None:
        if status is not None:
            self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))


def experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another job of the sweep created it in between
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def open_run(cfg: MlflowConfig, run_dir: Path, name: str, group: str | None, saved: dict | None) -> MlflowRun:
    if saved and saved.get("run_id"):
        return MlflowRun(MlflowClient(tracking_uri=saved["tracking_uri"]), saved["tracking_uri"], saved["run_id"])
    uri = cfg.tracking_uri or mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    tags = {"rnnlm.run_dir": str(Path(run_dir).resolve())} | ({"rnnlm.group": group} if group else {})
    run = client.create_run(experiment_id(client, cfg.experiment or group or "rnnlm"), run_name=name, tags=tags)
    return MlflowRun(client, uri, run.info.run_id)
