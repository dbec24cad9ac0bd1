"""A training job's reports to its trial: each epoch's validation perplexity goes to the
trial as an intermediate value, and the study's pruner says whether the job stops there.

This is what ``Trial.report`` and ``Trial.should_prune`` do, done with public Optuna APIs
from the job's own process (which has no ``Trial`` object): ``BaseStorage`` methods for the
trial's intermediate values and user attributes, and ``BasePruner.prune``, which is what
``Trial.should_prune`` asks (optuna/trial/_trial.py). A job reports only when its search is
``hydra/sweeper=rnnlm_optuna`` with a pruner; the trial is the job's number.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf

from .study import OBJECTIVE, PRUNED_AT, open_study, storage

log = logging.getLogger(__name__)

# The ``_target_`` of ``hydra/sweeper=rnnlm_optuna``: a job's sweeper config with it belongs
# to a search whose trials are these jobs.
SWEEPER_TARGET = "hydra_plugins.rnnlm_optuna_sweeper.optuna_sweeper.OptunaSweeper"

Reporter = Callable[[Mapping[str, Any]], bool]


def epoch_reporter(cfg: Mapping[str, Any], sweep_dir: str | Path, number: int) -> Reporter | None:
    """For the job of trial ``number``: a callable that reports an epoch's ``val_ppl`` to the
    trial and says whether the pruner stops it there; None when the search prunes nothing."""
    if (cfg.get("pruner") or {}).get("name", "none") == "none":
        return None
    store = storage(cfg.get("storage"), sweep_dir)
    study = open_study(cfg, store, create=False)
    trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(cfg["study_name"]), number)

    def report(row: Mapping[str, Any]) -> bool:
        epoch, value = int(row["epoch"]), float(row[OBJECTIVE])
        if not math.isfinite(value):
            return False
        try:
            store.set_trial_intermediate_value(trial_id, epoch, value)
            if study.pruner.prune(study, store.get_trial(trial_id)):
                store.set_trial_user_attr(trial_id, PRUNED_AT, epoch)
                log.info("trial %d pruned after epoch %d (%s %.2f)", number, epoch, OBJECTIVE, value)
                return True
        except Exception as exc:  # noqa: BLE001 - the study's storage failing must not stop training
            log.warning("cannot report epoch %d to the Optuna study (%s); trial %d trains on", epoch, exc, number)
        return False

    return report


def job_reporter(sweeper: Mapping[str, Any], sweep_dir: Any, job_num: Any) -> Reporter | None:
    """For a job of a sweep whose sweeper config is ``sweeper``: ``stop_early(metrics_row)``,
    which reports the epoch to trial ``job_num`` (the job's index is its trial number) and
    says whether the pruner stops it. None for other sweepers, or when nothing is pruned."""
    if sweeper.get("_target_") != SWEEPER_TARGET:
        return None
    settings = OmegaConf.to_container(sweeper, resolve=True) if isinstance(sweeper, DictConfig) else dict(sweeper)
    try:
        return epoch_reporter(settings, sweep_dir, int(job_num))
    except Exception as exc:  # noqa: BLE001 - without its study the trial still trains, unpruned
        log.warning("cannot open the Optuna study for pruning (%s); trial %s trains unpruned", exc, job_num)
        return None
