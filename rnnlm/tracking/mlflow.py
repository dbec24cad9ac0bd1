"""MLflow: one MLflow run per rnnlm run, through ``mlflow.MlflowClient`` (no global state).

The experiment is ``logger.mlflow.experiment``, else the sweep directory's name for the
jobs of a sweep (one experiment per sweep), else ``rnnlm``. Parameters are the flattened
config; metrics are logged with their step (epoch, or training tokens for ``progress/*``);
a row's strings (``stage``, ``optimizer``) and the final ``status`` and ``stop_reason``
are tags. The MLflow run ends FINISHED (completed, pruned), KILLED (interrupted) or FAILED
(diverged, failed; any other status too); a resumed run sets it RUNNING again. The tracking URI is resolved once
and kept in ``tracking.json``, so a resumed run and ``rnnlm eval`` reach the same store.

Calls come from the tracker's own thread (:mod:`rnnlm.tracking.dispatch`), which retries what
fails; so MLflow's own HTTP retries (7 by default, minutes of back-off) are off and a
request times out after 10 s, unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and
``MLFLOW_HTTP_REQUEST_TIMEOUT`` are set in the environment: a run's end then waits
seconds, not minutes, for a server that does not answer.

A run resumed after a hard kill logs its progress points again from its checkpoint on.
MLflow keeps every point it was sent and has no call that deletes one, so the metric
history then holds the killed process's points past the checkpoint as well (same steps,
earlier timestamps); the tag ``rnnlm.resumed_at_tokens`` records the step the run last
resumed at, so a reader can tell them apart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from ..checks import ConfigError
from .config import MlflowConfig

# result.csv's status -> the MLflow run's (a pruned run ended as its search decided: finished);
# any other status (diverged, failed) ends it FAILED
STATUS = {"completed": "FINISHED", "pruned": "FINISHED", "interrupted": "KILLED"}
PARAMS_PER_CALL = 100  # log_batch takes at most 100 params,
METRICS_PER_CALL = 1000  # 1000 metrics and 100 tags per call
TAGS_PER_CALL = 100
# The client's HTTP settings unless the environment sets them (read by MLflow at each request).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# MLflow error codes that say the request itself is wrong: sending it again cannot help.
REFUSALS = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "MALFORMED_REQUEST", "INVALID_STATE",
            "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "RESOURCE_CONFLICT", "FEATURE_DISABLED"}


def _http_defaults() -> None:
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def permanent(exc: BaseException) -> bool:
    """Whether retrying cannot help: MLflow refusing the request as such. A connection
    error, a timeout, a 5xx or 429, a locked sqlite database or bad credentials are
    retried (credentials can be renewed while the run trains)."""
    if isinstance(exc, MlflowException):
        return exc.error_code in REFUSALS
    return isinstance(exc, (TypeError, ValueError, KeyError, AttributeError))


def _stores() -> set[str] | None:
    """The URI schemes that have a tracking store in this MLflow (None: unknown)."""
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        return set(_tracking_store_registry._registry)
    except (ImportError, AttributeError):  # a private name; another MLflow: skip that check
        return None


def check(cfg: MlflowConfig) -> None:
    """Refuse a tracking URI that cannot work, before the run writes anything: a file store
    that MLflow 3 refuses without ``MLFLOW_ALLOW_FILE_STORE=true``, a scheme no tracking
    store handles, an HTTP URI without a host, a sqlite file in a missing directory. Opens
    nothing and reaches no server."""

    if cfg.experiment is not None and not cfg.experiment.strip():
        raise ConfigError("logger.mlflow.experiment is empty; give a name, or null for the default")
    if cfg.tracking_uri is not None:
        uri, source = cfg.tracking_uri, "logger.mlflow.tracking_uri"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri, source = os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    else:
        uri, source = mlflow.get_tracking_uri(), "MLflow's default tracking URI"
    scheme = urlparse(uri).scheme
    if len(scheme) == 1:  # a Windows drive letter: a path
        scheme = ""
    stores = _stores()
    if stores is not None and scheme not in stores:
        known = ", ".join(f"{s}:" for s in sorted(stores) if s)
        raise ConfigError(f"{source}={uri}: MLflow has no tracking store for '{scheme}:' URIs; use one of {known} "
                          f"(e.g. sqlite:///mlruns.db or http://HOST:5000)")
    if scheme in ("", "file"):
        allow = _allow_file_store(source, uri)
        if not allow:
            raise ConfigError(f"{source}={uri} is a file store, which MLflow 3 refuses: set "
                              f"MLFLOW_ALLOW_FILE_STORE=true, or use a database, e.g. "
                              f"logger.mlflow.tracking_uri=sqlite:///mlruns.db")
    elif scheme in ("http", "https") and not urlparse(uri).hostname:
        raise ConfigError(f"{source}={uri} names no host; e.g. http://127.0.0.1:5000")
    elif scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if path and path != ":memory:" and not Path(path).expanduser().resolve().parent.is_dir():
            raise ConfigError(f"{source}={uri}: the directory {Path(path).parent} does not exist")


def _allow_file_store(source: str, uri: str) -> bool:

    try:
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    except ImportError:  # MLflow 2: file stores are allowed
        return True
    try:
        return bool(MLFLOW_ALLOW_FILE_STORE.get())
    except MlflowException as exc:  # a value it cannot read, e.g. "yes"
        raise ConfigError(f"{source}={uri}: {exc.message}") from None


class MlflowRun:
    def __init__(self, client: MlflowClient, tracking_uri: str, run_id: str, purge_step: int | None = None) -> None:
        self.client, self.tracking_uri, self.run_id = client, tracking_uri, run_id
        self.resume_step = purge_step

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri}

    def start(self, params: Mapping[str, Any], resumed: bool) -> None:
        if resumed:  # MLflow refuses a parameter logged twice with another value (a budget key)
            self.client.update_run(self.run_id, status="RUNNING")
            if self.resume_step is not None:
                self.client.set_tag(self.run_id, "rnnlm.resumed_at_tokens", str(self.resume_step))
            return
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[i:i + PARAMS_PER_CALL])

    def log_values(self, values: Mapping[str, Any], step_key: str, step: int) -> None:
        self.log_many([(values, step_key, step)])

    def log_many(self, records: Iterable[tuple[Mapping[str, Any], str, int]]) -> None:
        """Several ``log_values`` records in as few calls as MLflow allows; a tag set twice
        keeps its last value (the last epoch's ``stage``)."""
        now = int(time.time() * 1000)
        metrics: list[Metric] = []
        tags: dict[str, str] = {}
        for values, _, step in records:
            metrics += [Metric(k, float(v), now, step) for k, v in values.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)]
            tags.update({k: v for k, v in values.items() if isinstance(v, str)})
        tag_list = [RunTag(k, v) for k, v in tags.items()]
        calls = max(1, -(-len(metrics) // METRICS_PER_CALL), -(-len(tag_list) // TAGS_PER_CALL))
        for i in range(calls):
            self.client.log_batch(self.run_id, metrics=metrics[i * METRICS_PER_CALL:(i + 1) * METRICS_PER_CALL],
                                  tags=tag_list[i * TAGS_PER_CALL:(i + 1) * TAGS_PER_CALL])

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


def open_run(cfg: MlflowConfig, run_dir: Path, name: str, group: str | None, saved: dict | None,
             purge_step: int | None = None) -> MlflowRun:
    _http_defaults()
    if saved and saved.get("run_id"):
        client = MlflowClient(tracking_uri=saved["tracking_uri"])
        return MlflowRun(client, saved["tracking_uri"], saved["run_id"], purge_step)
    uri = cfg.tracking_uri or mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    tags = {"rnnlm.run_dir": str(Path(run_dir).resolve())} | ({"rnnlm.group": group} if group else {})
    run = client.create_run(experiment_id(client, cfg.experiment or group or "rnnlm"), run_name=name, tags=tags)
    return MlflowRun(client, uri, run.info.run_id)
