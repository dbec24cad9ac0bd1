"""``rnnlm train resume=RUN_DIR [budget overrides]``: continue a run in its own directory.

The run's saved config (``RUN_DIR/.hydra/config.yaml``) is used as it is; only
budget keys may change. Hydra is not involved, so nothing in ``RUN_DIR/.hydra``
is rewritten and no new run directory appears.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import ConfigError, RunConfig
from ..data import DataError
from ..atomic import WriteError
from ..results import read_csv
from ..run import LAST, train
from ..rundir import ClaimError, claim_stopped
from ..training import CheckpointError
from ..tracking import missing_extra
from .errors import EXIT_INTERRUPTED, fail
from .train import log_file

BUDGET_KEYS = ("trainer.max_epochs", "trainer.max_minutes", "trainer.finetune_epochs", "trainer.progress", "device")


def may_differ_on_resume(key: str) -> bool:
    """Settings a continued run may have changed: its budget and where it runs (BUDGET_KEYS),
    and which trackers watch it (``logger.*``); none of them changes what is trained."""
    return key in BUDGET_KEYS or key.startswith("logger.")


def load_saved_config(run_dir: Path, changes: list[str]) -> RunConfig:
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    schema = OmegaConf.structured(RunConfig)
    merged = OmegaConf.merge(schema, saved, OmegaConf.from_dotlist(changes))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def resume_command(argv: list[str]) -> int:
    resumes = [a for a in argv if a.startswith("resume=")]
    changes = [a for a in argv if not a.startswith("resume=")]
    if len(resumes) > 1:
        return fail("give one resume=RUN_DIR")
    run_dir = Path(resumes[0].split("=", 1)[1]).expanduser()
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        return fail(f"resume={run_dir} is not a run directory (no .hydra/config.yaml); give the directory of the run to continue")
    if not (run_dir / LAST).is_file():
        return fail(f"resume={run_dir} has no checkpoint ({LAST}) to continue from; start a new run instead")
    for change in changes:
        key = change.split("=", 1)[0]
        if "=" not in change or key not in BUDGET_KEYS:
            return fail(f"{change!r} cannot change on resume: the run keeps its saved config; only {', '.join(BUDGET_KEYS)} may be given")
    if (run_dir / "result.csv").is_file():
        (row,) = read_csv(run_dir / "result.csv") or [{}]
        if row.get("status") == "completed":
            return fail(f"resume={run_dir}: that run already completed; nothing to resume")
    try:
        cfg = load_saved_config(run_dir, changes)
    except (ConfigError, OmegaConfBaseException) as exc:
        return fail(f"resume={run_dir}: {str(exc).strip().splitlines()[0]}")
    if missing := missing_extra(cfg.logger):
        return fail(missing)
    saved_overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    try:
        claim = claim_stopped(run_dir)  # refused while the run is still going
    except ClaimError as exc:
        return fail(f"resume={run_dir}: {exc}")
    with claim, log_file(run_dir / "rnnlm_train.log", console=True):
        try:
            result = train(cfg, run_dir, overrides=[*saved_overrides, *changes], resume=True)
        except (ConfigError, DataError, CheckpointError) as exc:
            return fail(str(exc))
        except WriteError as exc:
            return fail(f"{exc}; the previous file is intact: resume again with `rnnlm train resume={run_dir}`", 1)
    if result["status"] == "interrupted":
        return EXIT_INTERRUPTED
    return 1 if result["status"] == "diverged" else 0
