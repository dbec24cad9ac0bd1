"""The config of ``hydra/sweeper=rnnlm_optuna``, registered in Hydra's ConfigStore.

Hydra imports every module of the ``hydra_plugins`` namespace package at start-up (where an
editable install hides them from that scan, :func:`rnnlm.cli.sweepers.ensure_sweepers` imports
this one), which registers this node; Optuna itself is imported only when a search runs. The sweeper's
``_target_`` is :data:`rnnlm.search.reporter.SWEEPER_TARGET`, by which a job knows that its
search is this one and reports its epochs to its trial.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore

from rnnlm.search.reporter import SWEEPER_TARGET


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe (optuna.samplers.TPESampler) | random (RandomSampler)
    seed: Optional[int] = None  # the same trials for the same settings


@dataclass
class PrunerConf:
    """Stop hopeless trials at an epoch boundary, judged on each epoch's validation perplexity."""

    # none | median (optuna.pruners.MedianPruner) | hyperband (optuna.pruners.HyperbandPruner)
    name: str = "none"
    n_startup_trials: int = 5  # median: trials that finish unpruned before any is pruned
    n_warmup_steps: int = 0  # median: epochs a trial always trains
    min_resource: int = 1  # hyperband: epochs before the first pruning decision
    max_resource: Optional[int] = None  # hyperband: a trial's full length in epochs; None: learned
    reduction_factor: int = 3  # hyperband


@dataclass
class RnnlmOptunaSweeperConf:
    _target_: str = SWEEPER_TARGET
    direction: str = "minimize"  # of the task function's return: the best validation perplexity
    study_name: str = "rnnlm"
    # None: an Optuna journal file, SWEEP_DIR/optuna.journal; else an RDB URL (sqlite:///x.db,
    # postgresql://...) or the path of a journal file.
    storage: Optional[str] = None
    # trials in the study when the search ends, counting those of earlier sessions and of other
    # searches on the same study (each may ask for one more before it hears of the others')
    n_trials: int = 20
    n_jobs: int = 1  # trials launched together (with a parallel launcher: joblib, slurm)
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # key: a sweep in Hydra's override syntax: interval(0, 0.5), tag(log, interval(1e-3, 1)),
    # int(interval(1, 4)), range(0, 0.6, 0.1), choice(a, b)
    params: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="rnnlm_optuna", node=RnnlmOptunaSweeperConf,
                             provider="rnnlm")
