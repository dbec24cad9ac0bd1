"""Experiment trackers beside a run's CSV files: TensorBoard, MLflow, Weights & Biases.

The CSV files stay the record (``rnnlm summary`` reads them); a tracker gets a copy of the
same numbers, where researchers watch and compare runs. :class:`Tracking` is what a run
calls, at four points:

* start: the flattened config (``dropout.recurrent.rate``, ...) as parameters;
* every tenth of an epoch: ``progress/train_loss`` (the epoch's mean training loss so
  far) and ``progress/tokens_per_second``, against ``progress/tokens`` (training tokens
  since the start of the run);
* each epoch's end: every column of its ``metrics.csv`` row, against ``epoch``;
* the end: the numbers of ``result.csv`` that are not settings as ``result/<column>``
  (``result/test_ppl``; ``result/train_tokens`` is the corpus's, ``train_tokens`` an
  epoch's), with ``status`` and ``stop_reason``.

``rnnlm eval`` adds its rows to the same tracker run (``eval/<method>_<split>_ppl`` and
``_loss``). One module per tracker (:mod:`.tensorboard`, :mod:`.mlflow`, :mod:`.wandb`)
holds everything that knows that tracker; each is an optional extra of the package
(``pip install "rnnlm[mlflow]"``).

``RUN_DIR/tracking.json`` keeps the run's name and group and each tracker's run id, so a
resumed run, and ``rnnlm eval``, log to the same tracker run. A tracker that fails (full
disk, unreachable server, bad credentials) logs one warning and is dropped for the rest of
the run; training, the CSV files and the checkpoints never depend on it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

from .config import LoggerConfig

log = logging.getLogger(__name__)

STATE_FILE = "tracking.json"
# logger option -> the module it needs; the extra that installs it has the option's name
EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


class Tracker(Protocol):
    """One tracker's run; every method may raise (:class:`Tracking` isolates failures)."""

    def state(self) -> dict[str, Any]:
        """What ``tracking.json`` keeps to reopen this run (e.g. its id)."""

    def start(self, params: Mapping[str, Any], resumed: bool) -> None:
        """The run's config as parameters (a new run), or the same run continuing (``resumed``)."""

    def log_values(self, values: Mapping[str, Any], step_key: str, step: int) -> None:
        """Numbers (and a few strings: a row's ``stage``) at ``step`` of the axis ``step_key``."""

    def log_result(self, figures: Mapping[str, float], status: Mapping[str, str]) -> None: ...

    def close(self, status: str | None) -> None:
        """End this process's hold on the run; ``status`` is result.csv's, None after ``rnnlm eval``."""


def chosen(cfg: LoggerConfig) -> list[str]:
    """The trackers ``cfg`` asks for, in a fixed order."""
    return [f.name for f in fields(cfg) if getattr(cfg, f.name) is not None]


def missing_extra(cfg: LoggerConfig) -> str | None:
    """One line naming the extra to install, if a chosen tracker's package is missing."""
    for name in chosen(cfg):
        if importlib.util.find_spec(EXTRAS[name]) is None:
            return f'logger={name} needs the {name} package, which is not installed: pip install "rnnlm[{name}]"'
    return None


def _open(name: str, cfg: Any, run_dir: Path, run_name: str, group: str | None, saved: dict | None) -> Tracker:
    module = importlib.import_module(f"{__name__}.{name}")
    return module.open_run(cfg, run_dir=run_dir, name=run_name, group=group, saved=saved)


def read_state(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a row (booleans and empty values left out)."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Tracking:
    """The trackers of one run (possibly none), each failure isolated.

    ``name`` and ``group`` label a new tracker run (a sweep's jobs share the group); a run
    directory whose ``tracking.json`` exists continues the tracker runs it names.
    ``attach_only`` (``rnnlm eval``) opens only tracker runs that already exist.
    """

    def __init__(self, cfg: LoggerConfig, run_dir: Path, name: str, group: str | None = None,
                 attach_only: bool = False) -> None:
        self.run_dir = Path(run_dir)
        saved = read_state(self.run_dir)
        self.name, self.group = saved.get("name", name), saved.get("group", group)
        self.trackers: dict[str, Tracker] = {}
        self.reopened = {key for key in chosen(cfg) if key in saved}
        for key in chosen(cfg):
            if attach_only and key not in saved:
                continue
            self._call(key, lambda k=key: self.trackers.__setitem__(
                k, _open(k, getattr(cfg, k), self.run_dir, self.name, self.group, saved.get(k))), opening=True)
        if self.trackers and not attach_only:
            self._save_state()

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def _call(self, key: str, action: Callable[[], Any], opening: bool = False) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - any tracker failure: warn once, train on
            log.warning("logger=%s %s failed (%s: %s); the run goes on without it (CSV files and checkpoints "
                        "are unaffected)", key, "start" if opening else "logging", type(exc).__name__, exc)
            self.trackers.pop(key, None)

    def _each(self, method: str, *args: Any) -> None:
        for key, tracker in list(self.trackers.items()):
            self._call(key, lambda t=tracker: getattr(t, method)(*args))

    def _save_state(self) -> None:
        from ..atomic import atomic_write_text

        state: dict[str, Any] = {"name": self.name, "group": self.group}
        for key, tracker in list(self.trackers.items()):
            self._call(key, lambda k=key, t=tracker: state.__setitem__(k, t.state()))
        try:
            atomic_write_text(self.run_dir / STATE_FILE, json.dumps(state, indent=1) + "\n")
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop the run here
            log.warning("cannot write %s (%s); a resumed run will start new tracker runs", STATE_FILE, exc)

    def start(self, params: Mapping[str, Any]) -> None:
        """The config as parameters of each new tracker run; a reopened one continues."""
        for key, tracker in list(self.trackers.items()):
            self._call(key, lambda k=key, t=tracker: t.start(params, k in self.reopened))

    def progress(self, tokens: int, train_loss: float, tokens_per_second: float) -> None:
        values = {"progress/train_loss": train_loss, "progress/tokens_per_second": tokens_per_second}
        self._each("log_values", values, "progress/tokens", tokens)

    def epoch(self, row: Mapping[str, Any]) -> None:
        """One ``metrics.csv`` row, every column, at its epoch."""
        values = {k: v for k, v in row.items() if k != "epoch" and v is not None}  # None: a column not computed
        self._each("log_values", values, "epoch", int(row["epoch"]))

    def end(self, result: Mapping[str, Any], settings: Iterable[str]) -> None:
        """``result.csv``'s figures (its numbers that are not ``settings``, as ``result/<column>``)
        and status; closes the tracker runs."""
        skip = {*settings, "seed"}
        figures = numbers({f"result/{k}": v for k, v in result.items() if k not in skip})
        status = {k: str(result.get(k) or "") for k in ("status", "stop_reason")}
        self._each("log_result", figures, status)
        self.close(str(result.get("status")))

    def eval_rows(self, rows: Iterable[Mapping[str, Any]], step: int) -> None:
        """``rnnlm eval`` rows as ``eval/<method>_<split>_{ppl,loss}`` at ``step``."""
        values: dict[str, float] = {}
        for row in rows:
            prefix = f"eval/{row['method']}_{row['split']}"
            values.update({f"{prefix}_ppl": float(row["ppl"]), f"{prefix}_loss": float(row["loss"])})
        self._each("log_values", values, "eval/row", step)

    def close(self, status: str | None = None) -> None:
        self._each("close", status)
        self.trackers.clear()


__all__ = ["EXTRAS", "LoggerConfig", "STATE_FILE", "Tracker", "Tracking", "chosen", "missing_extra", "read_state"]
