"""``rnnlm train``: Hydra composes the config; nothing else here knows about Hydra.

Before Hydra creates any directory, :func:`preflight` composes and validates the
config of every job (a sweep is expanded the way Hydra's basic sweeper does),
checks the device and the data, and refuses to reuse a directory that already
holds a run. Bad input therefore ends with one line, exit code 2 and no files.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ..config import ConfigError, RunConfig
from ..data import Corpus, DataError, load_corpus
from ..run import check_batch_sizes, holds_run, resolve_device, train
from .errors import EXIT_INTERRUPTED, UsageError, describe, fail

log = logging.getLogger("rnnlm")

ConfigStore.instance().store(name="run_config_schema", node=RunConfig)

CONFIG_MODULE = "rnnlm.configs"
# Flags after which Hydra prints something and trains nothing.
INFO_FLAGS = {"-h", "--help", "--hydra-help", "-i", "--info", "-c", "--cfg", "--resolve", "-sc",
              "--shell-completion", "-p", "--package", "--version"}


def to_run_config(cfg: DictConfig) -> RunConfig:
    """The validated dataclass of a composed config (runs every ``__post_init__`` check)."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")
def hydra_train(dcfg: DictConfig) -> None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    single_run = hc.mode == RunMode.RUN
    try:
        if holds_run(run_dir):  # preflight checks this too; two starts in one second can still meet
            raise ConfigError(f"{run_dir} already holds a run; choose a new hydra.run.dir")
        result = train(to_run_config(dcfg), run_dir, overrides=list(hc.overrides.task))
    except (ConfigError, DataError) as exc:
        if not single_run:
            raise  # Hydra marks this job failed and the sweep goes on
        raise SystemExit(fail(str(exc)))
    if result["status"] == "interrupted":
        raise SystemExit(EXIT_INTERRUPTED)  # also ends a sweep: the user or scheduler asked to stop
    if result["status"] == "diverged" and single_run:
        raise SystemExit(fail("training diverged (NaN/inf loss); lower optim.lr or raise optim.clip", 1))


def train_command(argv: list[str]) -> int:
    if any(arg.startswith("resume=") for arg in argv):
        from .resume import resume_command

        return resume_command(argv)
    if not any(arg.split("=")[0] in INFO_FLAGS for arg in argv):
        try:
            preflight(argv)
        except (UsageError, ConfigError, DataError) as exc:
            return fail(str(exc))
        except (HydraException, OmegaConfBaseException) as exc:
            return fail(describe(exc))
    sys.argv = ["rnnlm train", *argv]
    hydra_train()
    return 0


def parse_args(argv: list[str]) -> tuple[list[str], bool, str | None]:
    """Split Hydra's command line into (overrides, multirun, config_dir)."""
    overrides: list[str] = []
    multirun, config_dir = False, None
    args = iter(argv)
    for arg in args:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in ("-cd", "--config-dir"):
            config_dir = next(args, None)
            if config_dir is None:
                raise UsageError(f"{arg} needs a directory")
        elif arg.startswith("--config-dir="):
            config_dir = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise UsageError(f"unsupported option {arg}; see `rnnlm train --help`")
        else:
            overrides.append(arg)
    return overrides, multirun, config_dir


def expand_jobs(overrides: list[str], multirun: bool, search: list[str]) -> list[list[str]]:
    """The override list of every job, as Hydra's basic sweeper will launch them:
    ``hydra.sweeper.params`` from the config (e.g. ``sweep=...``) first, the command
    line after them (a key given twice keeps its last value)."""
    if not multirun:
        return [overrides]
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    cfg = compose("config", overrides=[*search, *fixed], return_hydra_config=True)
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.params or {}).items()]
    merged = parser.parse_overrides([*params, *overrides])
    return [job for batch in BasicSweeper.split_arguments(merged, None) for job in batch]


def preflight(argv: list[str]) -> None:
    """Validate every job of ``rnnlm train ARGV`` before anything is written."""
    overrides, multirun, config_dir = parse_args(argv)
    search = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    if config_dir and not Path(config_dir).is_dir():
        raise UsageError(f"--config-dir {config_dir} is not a directory")
    corpora: dict[tuple[Any, ...], Corpus] = {}
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        for job in expand_jobs(overrides, multirun, search):
            cfg = compose("config", overrides=[*search, *job], return_hydra_config=True)
            with open_dict(cfg):
                hydra_cfg = cfg.pop("hydra")
            run_cfg = to_run_config(cfg)
            resolve_device(run_cfg.device)
            ds = run_cfg.dataset
            key = (ds.name, ds.path, ds.cache_dir)
            if key not in corpora:
                corpora[key] = load_corpus(ds.name.value, path=ds.path, cache_dir=ds.cache_dir)
            check_batch_sizes(run_cfg, corpora[key])
            check_fresh_directory(hydra_cfg, multirun)


def check_fresh_directory(hydra_cfg: DictConfig, multirun: bool) -> None:
    """A new run never reuses a directory that holds a run."""
    if multirun:
        sweep = Path(hydra_cfg.sweep.dir)
        taken = sorted(p.parent for p in sweep.glob("**/result.csv")) if sweep.is_dir() else []
        if taken:
            raise UsageError(
                f"hydra.sweep.dir={sweep} already holds runs (e.g. {taken[0]}); choose a new "
                f"hydra.sweep.dir so they are not overwritten"
            )
    else:
        run_dir = Path(hydra_cfg.run.dir)
        if holds_run(run_dir):
            raise UsageError(
                f"hydra.run.dir={run_dir} already holds a run; choose a new hydra.run.dir, or "
                f"continue it with `rnnlm train resume={run_dir}`"
            )
