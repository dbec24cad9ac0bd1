"""Whether and how a run continues: one set of rules for both ways of asking.

* ``rnnlm train resume=auto [overrides]`` (single runs and every job of a sweep, also a
  requeued SLURM job): a directory that holds a stopped run of the same config is taken
  over and continued from its checkpoint, a finished one is passed over, and an unused
  one starts afresh.
* ``rnnlm train resume=RUN_DIR [budget or tracker overrides]``: the run's saved overrides,
  with its saved budget unless one is given, replayed by Hydra with ``hydra.run.dir=RUN_DIR``
  under the same rules, except that the run must exist, have a checkpoint and not be
  finished, since continuing it is what was asked for.

Both ways hold a continued run to one rule, :func:`may_change_on_resume`: only its
budget, where it runs and which trackers watch it may change (resume=RUN_DIR refuses any
other override before Hydra runs; resume=auto refuses a saved config that differs
elsewhere). :func:`claim_run_dir` decides, in the job, after Hydra has composed the
config: the claim, the config check and the status check live there and nowhere else.
"""

from __future__ import annotations

import math
from functools import reduce
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import ConfigError, RunConfig, settings
from ..results import current_status, read_csv
from ..run import LAST, holds_run
from ..rundir import Claim, ClaimError, claim_new, claim_stopped, is_claimed
from .errors import describe

HYDRA_DIR = ".hydra"
# How the job hears how it was asked to continue (hydra.job.env_set, so every launcher and a
# requeued job carry it): AUTO for resume=auto, NAMED for resume=RUN_DIR.
RESUME_ENV = "RNNLM_RESUME"
AUTO, NAMED = "auto", "named"
# A continued run's budget and where it runs: it may change them, and resume=RUN_DIR keeps the
# saved value of each one not given (keep_saved_budget).
BUDGET_KEYS = ("trainer.max_epochs", "trainer.max_minutes", "trainer.finetune_epochs", "trainer.progress", "device")
# The config group of the trackers (``logger=[tensorboard,mlflow]``, ``logger.mlflow.*``): a
# continued run may change it, and a run that gives none replays its saved one.
TRACKERS_KEY = "logger"
# The rule of may_change_on_resume, as both refusals state it.
RESUME_RULE = (f"a continued run may change only its budget and where it runs ({', '.join(BUDGET_KEYS)}) "
               f"and its trackers ({TRACKERS_KEY}=..., {TRACKERS_KEY}.*)")


class RunFinished(Exception):
    """The run asked to continue has already completed, diverged or been pruned (a search's
    pruner stopped it for good): nothing to do. ``best`` is the objective a sweep is told:
    the best validation perplexity of a completed run, else inf."""

    def __init__(self, run_dir: Path, status: str, best: float):
        super().__init__(f"{run_dir} holds a {status} run; nothing to do")
        self.status = status
        self.best = best


def may_change_on_resume(key: str) -> bool:
    """Whether a continued run may differ from its saved config at ``key``: its budget and
    where it runs (BUDGET_KEYS) and which trackers watch it (``logger`` and the keys below
    it), none of which changes what is trained. ``key`` is a flattened setting
    (``logger.mlflow.tracking_uri``, for resume=auto's config check) or the key an override
    sets (``logger`` of ``logger=[tensorboard,mlflow]``, for resume=RUN_DIR's changes)."""
    return key in BUDGET_KEYS or key == TRACKERS_KEY or key.startswith(f"{TRACKERS_KEY}.")


def load_saved_config(run_dir: Path, changes: list[str]) -> RunConfig:
    """The typed config a run saved in ``RUN_DIR/.hydra/config.yaml``, with ``changes`` (dotlist)."""
    saved = OmegaConf.load(run_dir / HYDRA_DIR / "config.yaml")
    schema = OmegaConf.structured(RunConfig)
    merged = OmegaConf.merge(schema, saved, OmegaConf.from_dotlist(changes))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def override_key(override: str) -> str:
    """The key a Hydra override sets: ``+a.b=1``, ``~a.b`` and ``a.b=1`` all name ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def named_resume_argv(run_dir: Path, changes: list[str]) -> list[str]:
    """The Hydra command line that continues the run in ``run_dir``: its saved overrides,
    ``changes`` (``KEY=VALUE`` overrides of keys that :func:`may_change_on_resume`, each in
    place of a saved override of the same key) and its directory; the job keeps the saved
    budget where ``changes`` give none (:func:`keep_saved_budget`). ConfigError, in one
    line, when ``run_dir`` is no run or a change is not one a continued run may make."""
    if not (run_dir / HYDRA_DIR / "config.yaml").is_file():
        raise ConfigError(f"resume={run_dir} is not a run directory (no {HYDRA_DIR}/config.yaml); "
                          f"give the directory of the run to continue")
    for change in changes:
        if "=" not in change or not may_change_on_resume(override_key(change)):
            raise ConfigError(f"{change!r} cannot change on resume: the run keeps its saved config; "
                              f"{RESUME_RULE}")
    try:
        replayed = [str(o) for o in OmegaConf.load(run_dir / HYDRA_DIR / "overrides.yaml")]
    except (OSError, OmegaConfBaseException) as exc:
        raise ConfigError(f"resume={run_dir}: cannot read {HYDRA_DIR}/overrides.yaml: {describe(exc)}") from None
    given = {override_key(c) for c in changes}
    kept = [o for o in replayed if override_key(o) not in given]
    quoted = "'" + str(run_dir).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return [*kept, *changes, f"hydra.run.dir={quoted}", f"++hydra.job.env_set.{RESUME_ENV}={NAMED}"]


def keep_saved_budget(cfg: RunConfig, run_dir: Path, overrides: list[str]) -> None:
    """For resume=RUN_DIR: each budget key that ``overrides`` does not set takes the run's saved
    value, so a run continues to its own budget even if the presets' defaults have changed."""
    if not (run_dir / HYDRA_DIR / "config.yaml").is_file():
        return
    given = {override_key(o) for o in overrides}
    saved = load_saved_config(run_dir, [])
    for key in BUDGET_KEYS:
        if key not in given:
            *path, name = key.split(".")
            setattr(reduce(getattr, path, cfg), name, getattr(reduce(getattr, path, saved), name))


def claim_run_dir(run_dir: Path, cfg: RunConfig, how: str | None) -> tuple[Claim, bool]:
    """Claim ``run_dir`` for a job: ``(claim, resume)``; ``how`` is None, AUTO or NAMED.

    A new run needs a directory no run has claimed. To continue, the directory must hold a
    stopped run of ``cfg``'s config; it is taken over, and ``resume`` says whether there is
    a checkpoint to continue from (with AUTO a run stopped before its first checkpoint
    starts afresh; NAMED requires one). A finished run raises :class:`RunFinished`.
    """
    used = is_claimed(run_dir) or holds_run(run_dir) or (run_dir / HYDRA_DIR).exists()
    if how is None:
        if used:
            raise ClaimError(
                f"hydra.run.dir={run_dir} already holds a run; choose a new hydra.run.dir, or continue "
                f"it with `rnnlm train resume={run_dir}` (or resume=auto)"
            )
        return claim_new(run_dir), False
    if not used:
        return claim_new(run_dir), False
    claim = claim_stopped(run_dir)  # refused while the run is still going
    try:
        check_same_config(run_dir, cfg)
        check_not_finished(run_dir)
        if how == NAMED and not (run_dir / LAST).is_file():
            raise ClaimError(f"resume={run_dir} has no checkpoint ({LAST}) to continue from; start a new run instead")
    except (ClaimError, RunFinished):
        claim.release()
        raise
    return claim, (run_dir / LAST).is_file()


FINISHED = ("completed", "diverged", "pruned")  # statuses of runs that will not change


def check_not_finished(run_dir: Path) -> None:
    """RunFinished if the run in ``run_dir`` has completed, diverged or been pruned."""
    if (run_dir / "result.csv").is_file():
        (row,) = read_csv(run_dir / "result.csv") or [{}]
        status = current_status(row)
        if status in FINISHED:
            best = row.get("best_val_ppl")
            raise RunFinished(run_dir, status, float(best) if best and status == "completed" else math.inf)


def check_same_config(run_dir: Path, cfg: RunConfig) -> None:
    """ClaimError unless ``run_dir`` is empty of run files or holds a run of ``cfg``'s config."""
    if not (run_dir / HYDRA_DIR / "config.yaml").is_file():
        if holds_run(run_dir):
            raise ClaimError(f"{run_dir} holds run files but no {HYDRA_DIR}/config.yaml; choose a new hydra.run.dir")
        return  # claimed, but stopped before it wrote anything: start afresh
    try:
        saved = settings(load_saved_config(run_dir, []))
    except (ConfigError, OmegaConfBaseException) as exc:
        raise ClaimError(f"cannot read {run_dir}/{HYDRA_DIR}/config.yaml: {describe(exc)}") from None
    new = settings(cfg)
    differ = [k for k in new if not may_change_on_resume(k) and saved.get(k) != new[k]]
    if differ:
        key = differ[0]
        raise ClaimError(
            f"{run_dir} holds a run with a different config ({key}={saved.get(key)}, not {new[key]}): "
            f"{RESUME_RULE}; choose a new hydra.run.dir"
        )
