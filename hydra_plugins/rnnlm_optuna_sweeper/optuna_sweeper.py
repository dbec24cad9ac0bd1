"""A Hydra sweeper that searches with Optuna and keeps the study on disk, so a search that
stopped (Ctrl-C, a time limit, a crash) continues where it stopped.

Hydra's public plugin interface: a :class:`hydra.plugins.sweeper.Sweeper` whose jobs go
through whatever launcher is configured (``Plugins.instance().instantiate_launcher``),
search space in Hydra's override syntax (``OverridesParser``), and Optuna's ask-and-tell
interface (``Study.ask``/``Study.tell``).

* Trial N runs as job N, in ``hydra.sweep.dir/N``: the launcher is given each trial's
  number as its job index.
* ``n_trials`` counts every trial of the study, those of earlier sessions included; a
  continued search adds only the missing ones.
* A trial left running by a search that stopped is run again with its own parameters in
  its own directory; with ``resume=auto`` its run continues from its last checkpoint. A
  trial whose run had finished is told its result without running it again.
* A failed job fails its trial alone; the search goes on, and its first failure is raised
  at the end (as Hydra's basic sweeper does). A diverged run (objective inf) is a failed
  trial. A job that sets the trial's ``pruned_at_epoch`` (see ``_study.epoch_reporter``)
  makes it a pruned trial.

The best trial's parameters and value are written to ``hydra.sweep.dir/optimization_results.yaml``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from . import _study

log = logging.getLogger(__name__)

RESULTS = "optimization_results.yaml"


class SearchError(HydraException):
    """A search that cannot run as configured (a Hydra error: ``rnnlm train`` prints its one line)."""


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override (``interval``, ``range``, ``choice``;
    ``tag(log, ...)`` samples on a log scale, ``int(interval(...))`` integers)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        numbers = (value.start, value.stop, value.step)
        if all(isinstance(x, int) for x in numbers):
            return IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step))
        points = list(override.sweep_iterator())  # the exact points of range(), as the basic sweeper runs them
        return CategoricalDistribution(points)
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise SearchError(f"{override.input_line} is not a search dimension: use interval(), range() or choice()")


def search_space(arguments: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``(distributions by key, fixed overrides)`` of a search's params and command line."""
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)  # the last one given wins
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed[key] = override.input_line
    return space, list(fixed.values())


def finished_value(job_dir: Path) -> Optional[float]:
    """The objective of a run that finished in ``job_dir`` before its trial was told it."""
    from rnnlm.results import read_csv

    try:
        (row,) = read_csv(job_dir / "result.csv")
    except (OSError, ValueError):
        return None
    if row.get("status") == "completed" and row.get("best_val_ppl"):
        return float(row["best_val_ppl"])
    return None


class OptunaSweeper(Sweeper):
    def __init__(self, direction: str, study_name: str, storage: Optional[str], n_trials: int, n_jobs: int,
                 sampler: DictConfig, pruner: DictConfig, params: Optional[DictConfig] = None) -> None:
        self.settings = {
            "direction": direction, "study_name": study_name, "storage": storage,
            "sampler": OmegaConf.to_container(sampler), "pruner": OmegaConf.to_container(pruner),
        }
        self.n_trials, self.n_jobs = n_trials, max(1, n_jobs)
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.config: Optional[DictConfig] = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: List[str]) -> Any:
        from optuna.trial import TrialState

        assert self.config is not None
        space, fixed = search_space([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        if not space:
            raise SearchError("the search has no dimension: give hydra.sweeper.params or an override "
                              "such as 'dropout.output=interval(0,0.6)'")
        try:  # a bad sampler or pruner stops the search before its study is created
            _study.sampler(self.settings["sampler"])
            _study.pruner(self.settings["pruner"])
        except (ValueError, TypeError) as exc:
            raise SearchError(str(exc)) from None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        study = _study.open_study(self.settings, _study.storage(self.settings["storage"], sweep_dir))
        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        done = len(study.trials) - len(stale)
        if done or stale:
            log.info("study %s: %d trials finished, %d to run again, %d new", study.study_name, done, len(stale),
                     max(0, self.n_trials - len(study.trials)))
        failures: list[JobReturn] = []
        todo = [(t.number, dict(t.params)) for t in stale]
        for number, params in list(todo):
            value = finished_value(sweep_dir / str(number))
            if value is not None:
                study.tell(number, value)
                todo.remove((number, params))
        while todo or len(study.trials) < self.n_trials:
            batch = todo[: self.n_jobs]
            todo = todo[len(batch):]
            while len(batch) < self.n_jobs and len(study.trials) < self.n_trials:
                trial = study.ask(space)
                batch.append((trial.number, dict(trial.params)))
            failures += self._run(study, batch, fixed)
        self._write_results(study, sweep_dir)
        for ret in failures:
            _ = ret.return_value  # raises the job's exception: the search ends failed, as a basic sweep does
        return None

    def _run(self, study: Any, batch: list[tuple[int, dict[str, Any]]], fixed: list[str]) -> list[JobReturn]:
        """Launch a batch of trials, each as the job with its trial number; tell the study."""
        from optuna.trial import TrialState

        failures = []
        start = 0
        while start < len(batch):  # runs of consecutive trial numbers, one launch each
            end = start + 1
            while end < len(batch) and batch[end][0] == batch[end - 1][0] + 1:
                end += 1
            part = batch[start:end]
            overrides = [[*(f"{k}={v}" for k, v in params.items()), *fixed] for _, params in part]
            returns = self.launcher.launch(overrides, initial_job_idx=part[0][0])
            for (number, _), ret in zip(part, returns):
                value = ret.return_value if ret.status == JobStatus.COMPLETED else None
                if value is None or not math.isfinite(float(value)):
                    study.tell(number, state=TrialState.FAIL)
                    if ret.status != JobStatus.COMPLETED:
                        failures.append(ret)
                elif _study.PRUNED_AT in study.trials[number].user_attrs:
                    study.tell(number, state=TrialState.PRUNED)
                else:
                    study.tell(number, float(value))
            start = end
        return failures

    def _write_results(self, study: Any, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            return
        best = study.best_trial
        log.info("best trial %d: %s -> %s", best.number, best.params, best.value)
        OmegaConf.save(OmegaConf.create({"name": "optuna", "study_name": study.study_name, "best_trial": best.number,
                                         "best_params": best.params, "best_value": best.value,
                                         "n_trials": len(study.trials)}), sweep_dir / RESULTS)


def job_pruner(sweeper: DictConfig, sweep_dir: Any, job_num: int) -> Optional[Callable[[Any], bool]]:
    """For a job of this sweeper whose search prunes: ``stop_early(metrics_row)``, which
    reports the epoch to trial ``job_num`` (the job's index is its trial number) and says
    whether the pruner stops it. None for other sweepers, or when nothing is pruned."""
    if sweeper.get("_target_") != f"{OptunaSweeper.__module__}.{OptunaSweeper.__name__}":
        return None
    settings = OmegaConf.to_container(sweeper, resolve=True)
    try:
        return _study.epoch_reporter(settings, sweep_dir, int(job_num))
    except Exception as exc:  # noqa: BLE001 - without its study the trial still trains, unpruned
        log.warning("cannot open the Optuna study for pruning (%s); trial %s trains unpruned", exc, job_num)
        return None
