"""A Hydra sweeper that searches with Optuna and keeps the study on disk, so a search that
stopped (Ctrl-C, a time limit, a crash) continues where it stopped, and several searches
started on one study share its trials.

Hydra's public plugin interface: a :class:`hydra.plugins.sweeper.Sweeper` whose jobs go
through whatever launcher is configured (``Plugins.instance().instantiate_launcher``),
search space in Hydra's override syntax (``OverridesParser``), each job's config composed
by the context's ``ConfigLoader.load_sweep_config`` (as launchers do), and Optuna's
ask-and-tell interface (``Study.ask``/``Study.tell``).

* The search space is checked before the study is opened: an interval whose ends are
  reversed (or not positive on a log scale), or a dimension one of whose ends or choices
  makes a config that rnnlm refuses (``dropout.output=interval(0.1,1.5)``), stops the
  search with one line (:class:`SearchError`) and nothing written.
* Trial N runs as job N, in ``hydra.sweep.dir/N``: the launcher is given each trial's
  number as its job index.
* ``n_trials`` counts every trial of the study, those of earlier sessions and of other
  searches included; a continued search adds only the missing ones (with several searches
  at once, up to one more per extra search, since each asks before the others tell).
* A trial left running by a search that stopped (no live process holds it, see
  :mod:`._locks`) is run again with its own parameters in its own directory; with
  ``resume=auto`` its run continues from its last checkpoint. A trial whose run had
  finished is told its result without running it again. A trial another live search (or
  its job) holds is left to it, so several searches can run one study side by side.
* Each outcome is told as the run ended (:func:`finished_run`): completed, its best
  validation perplexity; pruned (the job's pruner stopped it, ``status=pruned``), PRUNED
  with its last reported perplexity, as Optuna records a pruned trial; diverged, COMPLETE
  but infeasible (:func:`._study.diverged`); anything else FAIL. A failed job fails its
  trial alone; the search goes on, and its first failure is raised at the end (as Hydra's
  basic sweeper does). A trial that another search told first is left as that search told it.

The best feasible trial's parameters and value are written to
``hydra.sweep.dir/optimization_results.yaml``; a diverged trial is never the best.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, List, NamedTuple, Optional, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import _study
from ._locks import TrialLocks, job_alive

log = logging.getLogger(__name__)

RESULTS = "optimization_results.yaml"
SWEEP_DIR = "sweep_dir"  # user attribute: the directory of the search that asked for the trial


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


class Space(NamedTuple):
    dimensions: dict[str, Any]  # key -> Optuna distribution
    fixed: list[str]  # the overrides that set one value
    sources: dict[str, str]  # key -> the override that defines its dimension


def search_space(arguments: Sequence[str]) -> Space:
    """The distributions by key and the fixed overrides of a search's params and command line;
    SearchError (one line) for a dimension Optuna cannot sample, e.g. a reversed interval."""
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    sources: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)  # the last one given wins
        if override.is_sweep_override():
            try:
                space[key] = distribution(override)
            except (ValueError, TypeError) as exc:  # Optuna's own checks: low <= high, low > 0 on a log scale
                raise SearchError(f"{override.input_line}: {exc}") from None
            sources[key] = override.input_line
        else:
            fixed[key] = override.input_line
    return Space(space, list(fixed.values()), sources)


def extremes(dist: Any) -> list[Any]:
    """The values of a distribution a check must try: an interval's two ends, every choice."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return list(dict.fromkeys((dist.low, dist.high)))


class Finished(NamedTuple):
    """How a run that will not change ended: ``state`` completed, pruned or diverged; ``value``
    the best validation perplexity (completed), the penalty (diverged), else None."""

    state: str
    value: Optional[float]


def finished_run(job_dir: Path) -> Optional[Finished]:
    """The outcome of the run in ``job_dir`` if it has finished, from its result.csv; None
    while it can still change (running, interrupted, failed) or when there is none.

    A pruned run (``status=pruned``, or ``completed`` with ``stop_reason=pruned`` as older
    rnnlm wrote it) is pruned, never completed: its perplexity is an early epoch's. A
    diverged run's value is its ``vocab_size``, the perplexity of a uniform model."""
    from rnnlm.results import read_csv

    try:
        (row,) = read_csv(job_dir / "result.csv")
    except (OSError, ValueError):
        return None
    status = row.get("status")
    if status == "pruned" or (status == "completed" and row.get("stop_reason") == "pruned"):
        return Finished("pruned", None)
    if status == "completed" and row.get("best_val_ppl"):
        return Finished("completed", float(row["best_val_ppl"]))
    if status == "diverged":
        return Finished("diverged", float(row["vocab_size"]) if row.get("vocab_size") else None)
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
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None
        self.sweep_dir = Path()
        self.store: Any = None  # the study's storage and id, for single trials (BaseStorage's public methods)
        self.study_id = -1

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None
        space = search_space([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        if not space.dimensions:
            raise SearchError("the search has no dimension: give hydra.sweeper.params or an override "
                              "such as 'dropout.output=interval(0,0.6)'")
        try:  # a bad sampler or pruner stops the search before its study is created
            _study.sampler(self.settings["sampler"])
            _study.pruner(self.settings["pruner"])
        except (ValueError, TypeError) as exc:
            raise SearchError(str(exc)) from None
        self.check_space(space)
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir))
        self.store = _study.storage(self.settings["storage"], self.sweep_dir)
        study = _study.open_study(self.settings, self.store)
        self.study_id = self.store.get_study_id_from_name(study.study_name)
        locks = TrialLocks(self.sweep_dir)
        failures: list[JobReturn] = []
        try:
            while True:
                batch = self._take_over(study, locks)
                while len(batch) < self.n_jobs and self._counted(study) < self.n_trials:
                    trial = study.ask(space.dimensions)
                    if locks.acquire(trial.number):  # else another search took it over already and runs it
                        trial.set_user_attr(SWEEP_DIR, str(self.sweep_dir.resolve()))
                        batch.append((trial.number, dict(trial.params)))
                if not batch:
                    break
                failures += self._run(study, batch, space.fixed, locks)
        finally:
            locks.release_all()
        self._write_results(study)
        for ret in failures:
            _ = ret.return_value  # raises the job's exception: the search ends failed, as a basic sweep does
        return None

    def _trial_id(self, number: int) -> int:
        return self.store.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def _trial(self, number: int) -> Any:
        """Trial ``number`` as the storage has it now."""
        return self.store.get_trial(self._trial_id(number))

    @staticmethod
    def _counted(study: Any) -> int:
        """Trials that count towards ``n_trials``: all but those enqueued and not yet asked for."""
        from optuna.trial import TrialState

        return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))

    def check_space(self, space: Space) -> None:
        """Check the corners of the search space as a job would check its config, before
        anything is written: compose the config (``ConfigLoader.load_sweep_config``, as a
        launcher does) with every dimension at its lower end, then at its upper end (and at
        each further choice), with the fixed overrides, and build the typed, range-checked
        RunConfig from it (``to_run_config``). A refused corner is traced to the fixed
        overrides, else to the one dimension whose value alone is refused, else to the
        combination, and stops the search with one line (:class:`SearchError`)."""
        from rnnlm.cli.errors import describe
        from rnnlm.cli.train import task_part, to_run_config
        from rnnlm.config import ConfigError

        if self.hydra_context is None or self.config is None:
            return
        loader, config = self.hydra_context.config_loader, self.config

        def refused(point: dict[str, Any]) -> Optional[str]:
            """Why rnnlm refuses a job at ``point`` (key -> value), or None."""
            try:
                to_run_config(task_part(loader.load_sweep_config(
                    config, [*(f"{k}={v}" for k, v in point.items()), *space.fixed])))
            except ConfigError as exc:
                return str(exc)
            except (HydraException, OmegaConfBaseException) as exc:
                return describe(exc)
            return None

        ends = {key: extremes(dist) for key, dist in space.dimensions.items()}
        for i in range(max(len(values) for values in ends.values())):
            corner = {key: values[min(i, len(values) - 1)] for key, values in ends.items()}
            detail = refused(corner)
            if detail is None:
                continue
            if (alone := refused({})) is not None:
                raise SearchError(alone)
            for key, value in corner.items():
                if (alone := refused({key: value})) is not None:
                    raise SearchError(f"the search dimension '{space.sources[key]}' reaches a value rnnlm "
                                      f"refuses: {alone}")
            where = " ".join(f"{k}={v}" for k, v in corner.items())
            raise SearchError(f"the search space reaches a config rnnlm refuses at {where}: {detail}")

    def _take_over(self, study: Any, locks: TrialLocks) -> list[tuple[int, dict[str, Any]]]:
        """Trials left running that no live process holds (up to ``n_jobs``), now locked by this
        search to be run again; those whose run had finished are told its outcome instead."""
        from optuna.trial import TrialState

        here = str(self.sweep_dir.resolve())
        todo = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if len(todo) >= self.n_jobs:
                break
            there = trial.user_attrs.get(SWEEP_DIR)
            if there and there != here and Path(there).is_dir():
                continue  # a trial of a search in another directory, whose locks are not these
            if trial.number in locks.held or not locks.acquire(trial.number):
                continue  # this search or another live one runs it
            job_dir = self.sweep_dir / str(trial.number)
            if self._trial(trial.number).state != TrialState.RUNNING or job_alive(job_dir):
                locks.release(trial.number)  # told meanwhile, or its job outlived its search and still runs
                continue
            finished = finished_run(job_dir)
            if finished is not None:
                log.info("trial %d had finished (%s); telling the study", trial.number, finished.state)
                self._tell(study, trial.number, finished)
                locks.release(trial.number)
                continue
            todo.append((trial.number, dict(trial.params)))
        if todo:
            log.info("study %s: running again %d trials left running (%s)", study.study_name, len(todo),
                     ", ".join(str(n) for n, _ in todo))
        return todo

    def _tell(self, study: Any, number: int, finished: Optional[Finished]) -> None:
        """Tell the study how trial ``number`` ended (FAIL when ``finished`` is None). A trial
        another search has already told is left as it is, with a warning: the search goes on."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        trial = self._trial(number)
        if trial.state.is_finished():
            log.warning("trial %d was already told %s by another search; keeping that", number, trial.state.name)
            return
        try:
            if finished is None or (finished.state != "pruned" and finished.value is None):
                study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            elif finished.state == "pruned":  # Optuna records the last intermediate value as its value
                study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
            else:
                if finished.state == "diverged":  # before tell: the sampler reads it there (_study.diverged)
                    self.store.set_trial_user_attr(self._trial_id(number), _study.DIVERGED, True)
                study.tell(number, finished.value, skip_if_finished=True)
        except (UpdateFinishedTrialError, ValueError) as exc:
            log.warning("trial %d: cannot tell the study (%s); another search has told it; the search goes on",
                        number, exc)

    def _run(self, study: Any, batch: list[tuple[int, dict[str, Any]]], fixed: list[str],
             locks: TrialLocks) -> list[JobReturn]:
        """Launch a batch of trials, each as the job with its trial number; tell the study."""
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
                self._tell(study, number, self._outcome(number, ret))
                if ret.status != JobStatus.COMPLETED:
                    failures.append(ret)
                locks.release(number)
            start = end
        return failures

    def _outcome(self, number: int, ret: JobReturn) -> Optional[Finished]:
        """How trial ``number``'s job ended: its result.csv says whether it was pruned or
        diverged (the task function returns inf for both), its return value is the objective."""
        if ret.status != JobStatus.COMPLETED:
            return None
        finished = finished_run(self.sweep_dir / str(number))
        if _study.PRUNED_AT in self._trial(number).user_attrs or (finished and finished.state == "pruned"):
            return Finished("pruned", None)
        value = ret.return_value
        if value is not None and math.isfinite(float(value)):
            return Finished("completed", float(value))
        return finished if finished is not None and finished.state == "diverged" else None

    def _write_results(self, study: Any) -> None:
        """The best completed trial that did not diverge (the lowest value, or the highest when
        maximising) to ``optimization_results.yaml``; nothing while there is none."""
        from optuna.study import StudyDirection
        from optuna.trial import TrialState

        from rnnlm.atomic import atomic_write_text

        feasible = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if not t.user_attrs.get(_study.DIVERGED)]
        if not feasible:
            return
        pick = max if study.direction == StudyDirection.MAXIMIZE else min
        best = pick(feasible, key=lambda t: t.value)
        log.info("best trial %d: %s -> %s", best.number, best.params, best.value)
        atomic_write_text(self.sweep_dir / RESULTS, OmegaConf.to_yaml(OmegaConf.create({
            "name": "optuna", "study_name": study.study_name, "best_trial": best.number,
            "best_params": best.params, "best_value": best.value, "n_trials": len(study.trials)})))


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
