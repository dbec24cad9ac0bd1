"""The Optuna study of a search: where it is stored, how it is opened, its sampler and pruner,
and how a diverged trial counts.

Only public Optuna APIs: ``optuna.create_study``/``load_study``, the storages
(``JournalStorage`` over ``JournalFileBackend``, or an RDB URL) and ``BaseStorage`` methods.
The samplers are TPE (Bergstra et al. 2011, "Algorithms for Hyper-Parameter Optimization",
NeurIPS) and random search; a diverged trial is COMPLETE with a penalty value and a violated
constraint (:func:`diverged`), which TPE handles as Optuna's ``TPESampler`` documents for
``constraints_func`` (its own variant of constrained TPE, not the c-TPE of Watanabe & Hutter
2023). The pruners are Optuna's median and Hyperband (Li et al. 2018, JMLR 18(185)) pruners.
Optuna is imported only when a study is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

JOURNAL = "optuna.journal"
PRUNED_AT = "pruned_at_epoch"  # user attribute of a trial its job stopped early
DIVERGED = "diverged"  # user attribute (True) of a trial whose run diverged: infeasible, see diverged()
OBJECTIVE = "val_ppl"  # the metrics.csv column reported at each epoch's end


def storage(spec: str | None, sweep_dir: str | Path) -> Any:
    """The study's storage: a journal file in the sweep directory unless ``spec`` names an
    RDB URL (``sqlite:///...``) or another journal file."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if spec and "://" in spec:
        return optuna.storages.RDBStorage(spec)
    path = Path(spec) if spec else Path(sweep_dir) / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def diverged(trial: Any) -> list[float]:
    """The constraint of a finished trial: ``[1.0]`` (violated) for a diverged run, else ``[0.0]``.

    A diverged run has no perplexity to report. Told FAIL, TPE would ignore it (it models
    only COMPLETE and PRUNED trials) and keep sampling the region that diverges. Instead the
    trial is COMPLETE, marked ``diverged``, with the perplexity of a uniform model over the
    vocabulary as its value (``vocab_size``: what a model that learned nothing scores) and
    this constraint violated. When TPE splits the trials into a good and a bad group it ranks
    every infeasible trial after every feasible and pruned one (Optuna's constrained TPE, see
    the ``TPESampler`` documentation), so the region that diverges weighs on the bad side
    however its value compares, and ``Study.best_trial`` skips infeasible trials. The value
    keeps the trial readable by tools that want a finite number (plots, dashboards). Given as
    ``TPESampler(constraints_func=...)``, the form both Optuna 4 and 5 read (5 prefers
    ``Trial.set_constraint``, to the same effect)."""
    return [1.0 if trial.user_attrs.get(DIVERGED) else 0.0]


def sampler(cfg: Mapping[str, Any], trials_before: int = 0) -> Any:
    """The sampler; a seeded one continuing a study with ``trials_before`` trials is seeded
    ``seed + trials_before``, else it would draw its first points again (the seed fixes the
    sequence of random draws, not where the study stands). TPE learns of diverged trials
    through the constraint :func:`diverged`."""
    import warnings

    import optuna

    kinds = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    if cfg["name"] not in kinds:
        raise ValueError(f"hydra.sweeper.sampler.name={cfg['name']} is not one of {', '.join(kinds)}")
    seed = cfg.get("seed")
    seed = None if seed is None else seed + trials_before
    if cfg["name"] != "tpe":
        return kinds[cfg["name"]](seed=seed)
    with warnings.catch_warnings():  # Optuna 5 deprecates constraints_func in favour of Trial.set_constraint
        warnings.filterwarnings("ignore", message=".*constraints_func.*", category=FutureWarning)
        return optuna.samplers.TPESampler(seed=seed, constraints_func=diverged)


def trial_count(store: Any, study_name: str) -> int:
    """How many trials the study named ``study_name`` already has in ``store`` (0: none yet)."""
    try:
        return len(store.get_all_trials(store.get_study_id_from_name(study_name), deepcopy=False))
    except KeyError:
        return 0


def pruner(cfg: Mapping[str, Any] | None) -> Any:
    import optuna

    name = (cfg or {}).get("name", "none")
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg["n_startup_trials"], n_warmup_steps=cfg["n_warmup_steps"])
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg["min_resource"],
                                              max_resource=cfg["max_resource"] or "auto",
                                              reduction_factor=cfg["reduction_factor"])
    raise ValueError(f"hydra.sweeper.pruner.name={name} is not one of none, median, hyperband")


def open_study(cfg: Mapping[str, Any], store: Any, create: bool = True) -> Any:
    """The study ``cfg`` names in ``store``: created if ``create`` and new, else loaded."""
    import optuna

    kwargs = dict(study_name=cfg["study_name"], storage=store,
                  sampler=sampler(cfg["sampler"], trial_count(store, cfg["study_name"])), pruner=pruner(cfg.get("pruner")))
    if create:
        return optuna.create_study(direction=cfg["direction"], load_if_exists=True, **kwargs)
    return optuna.load_study(**kwargs)
