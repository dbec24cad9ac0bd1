"""A search that keeps its Optuna study on disk: which trials to run, how each ended, what
the study is told, and the best trial.

The search asks Optuna for trials (ask-and-tell: ``Study.ask``/``Study.tell``) and runs
each through a ``launch`` callable, which runs a batch of jobs and says how each returned:

* Trial N runs as job N, in ``SWEEP_DIR/N``: ``launch`` is given each trial's number as its
  job index.
* ``n_trials`` counts every trial of the study, those of earlier sessions and of other
  searches included; a continued search adds only the missing ones (with several searches
  at once, up to one more per extra search, since each asks before the others tell).
* A trial left running by a search that stopped (no live process holds it, see
  :mod:`rnnlm.search.locks`) is run again with its own parameters in its own directory;
  with ``resume=auto`` its run continues from its last checkpoint. A trial whose run had
  finished is told its result without running it again. A trial another live search (or
  its job) holds is left to it, so several searches can run one study side by side.
* Each outcome is told as the run ended (:func:`finished_run`): completed, its best
  validation perplexity; pruned (the job's pruner stopped it, ``status=pruned``), PRUNED
  with its last reported perplexity, as Optuna records a pruned trial; diverged, COMPLETE
  but infeasible (:func:`rnnlm.search.study.diverged`); anything else FAIL. A trial that
  another search told first is left as that search told it.

The best feasible trial's parameters and value are written to
``SWEEP_DIR/optimization_results.yaml``; a diverged trial is never the best.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

from omegaconf import OmegaConf

from ..atomic import atomic_write_text
from ..results import current_status, read_csv
from . import study as _study
from .locks import TrialLocks, job_alive
from .space import SettingsError, Space

log = logging.getLogger(__name__)

RESULTS = "optimization_results.yaml"
SWEEP_DIR = "sweep_dir"  # user attribute: the directory of the search that asked for the trial


class Finished(NamedTuple):
    """How a run that will not change ended: ``state`` completed, pruned or diverged; ``value``
    the best validation perplexity (completed), the penalty (diverged), else None."""

    state: str
    value: Optional[float]


class JobEnd(NamedTuple):
    """How a launched job returned: ``completed`` when its task function returned ``value``
    (the best validation perplexity; inf for a pruned or diverged run), else it failed."""

    completed: bool
    value: Any = None


# launch(overrides of each job, the first job's number) -> how each job returned, in order
Launch = Callable[[list[list[str]], int], Sequence[JobEnd]]


def finished_run(job_dir: Path) -> Optional[Finished]:
    """The outcome of the run in ``job_dir`` if it has finished, from its result.csv; None
    while it can still change (running, interrupted, failed) or when there is none.

    A pruned run (:func:`~rnnlm.results.columns.current_status`, older rows included) is
    pruned, never completed: its perplexity is an early epoch's. A diverged run's value is
    its ``vocab_size``, the perplexity of a uniform model."""
    try:
        (row,) = read_csv(job_dir / "result.csv")
    except (OSError, ValueError):
        return None
    status = current_status(row)
    if status == "pruned":
        return Finished("pruned", None)
    if status == "completed" and row.get("best_val_ppl"):
        return Finished("completed", float(row["best_val_ppl"]))
    if status == "diverged":
        return Finished("diverged", float(row["vocab_size"]) if row.get("vocab_size") else None)
    return None


class OptunaSearch:
    """A search on the study that ``settings`` names (direction, study_name, storage, sampler,
    pruner: the keys of ``hydra.sweeper``), kept in ``sweep_dir``, until the study has
    ``n_trials`` trials, ``n_jobs`` trials launched together."""

    def __init__(self, settings: Mapping[str, Any], n_trials: int, n_jobs: int) -> None:
        self.settings = dict(settings)
        self.n_trials, self.n_jobs = n_trials, max(1, n_jobs)
        self.sweep_dir = Path()
        self.store: Any = None  # the study's storage and id, for single trials (BaseStorage's public methods)
        self.study_id = -1

    def check(self, space: Space) -> None:
        """SettingsError (one line) for a search without a dimension or with a sampler or
        pruner Optuna cannot make, before its study is created."""
        if not space.dimensions:
            raise SettingsError("the search has no dimension: give hydra.sweeper.params or an override "
                                "such as 'dropout.output=interval(0,0.6)'")
        try:
            _study.sampler(self.settings["sampler"])
            _study.pruner(self.settings["pruner"])
        except (ValueError, TypeError) as exc:
            raise SettingsError(str(exc)) from None

    def search(self, sweep_dir: Path, space: Space, launch: Launch) -> None:
        """Run the search in ``sweep_dir``: take over the trials left running, ask for new ones
        until the study has ``n_trials``, launch each batch, tell each outcome, and write the
        best trial. A failed job fails its trial alone; the search goes on."""
        self.sweep_dir = Path(sweep_dir)
        self.store = _study.storage(self.settings["storage"], self.sweep_dir)
        study = _study.open_study(self.settings, self.store)
        self.study_id = self.store.get_study_id_from_name(study.study_name)
        locks = TrialLocks(self.sweep_dir)
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
                self._run(study, batch, space.fixed, locks, launch)
        finally:
            locks.release_all()
        self._write_results(study)

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
                if finished.state == "diverged":  # before tell: the sampler reads it there (study.diverged)
                    self.store.set_trial_user_attr(self._trial_id(number), _study.DIVERGED, True)
                study.tell(number, finished.value, skip_if_finished=True)
        except (UpdateFinishedTrialError, ValueError) as exc:
            log.warning("trial %d: cannot tell the study (%s); another search has told it; the search goes on",
                        number, exc)

    def _run(self, study: Any, batch: list[tuple[int, dict[str, Any]]], fixed: list[str],
             locks: TrialLocks, launch: Launch) -> None:
        """Launch a batch of trials, each as the job with its trial number; tell the study."""
        start = 0
        while start < len(batch):  # runs of consecutive trial numbers, one launch each
            end = start + 1
            while end < len(batch) and batch[end][0] == batch[end - 1][0] + 1:
                end += 1
            part = batch[start:end]
            overrides = [[*(f"{k}={v}" for k, v in params.items()), *fixed] for _, params in part]
            returns = launch(overrides, part[0][0])
            for (number, _), job in zip(part, returns):
                self._tell(study, number, self._outcome(number, job))
                locks.release(number)
            start = end

    def _outcome(self, number: int, job: JobEnd) -> Optional[Finished]:
        """How trial ``number``'s job ended: its result.csv says whether it was pruned or
        diverged (the task function returns inf for both), its return value is the objective."""
        if not job.completed:
            return None
        finished = finished_run(self.sweep_dir / str(number))
        if _study.PRUNED_AT in self._trial(number).user_attrs or (finished and finished.state == "pruned"):
            return Finished("pruned", None)
        value = job.value
        if value is not None and math.isfinite(float(value)):
            return Finished("completed", float(value))
        return finished if finished is not None and finished.state == "diverged" else None

    def _write_results(self, study: Any) -> None:
        """The best completed trial that did not diverge (the lowest value, or the highest when
        maximising) to ``optimization_results.yaml``; nothing while there is none."""
        from optuna.study import StudyDirection
        from optuna.trial import TrialState

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
