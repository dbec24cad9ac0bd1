"""``rnnlm train``: Hydra composes the config; nothing else in rnnlm knows about Hydra.

Only Hydra's public surface is used: ``@hydra.main``, one callback
(:class:`Guard`, listed under ``hydra.callbacks`` in configs/config.yaml) and the
task function. Every job checks its own config before it writes anything, so it
works with any sweeper or launcher:

* a single run is checked by :meth:`Guard.on_run_start`, before Hydra creates the
  run directory: bad input ends with one line, exit code 2 and no files;
* every job of a sweep (basic, Optuna, ...) is checked at the start of the task
  function, before its first write: a bad job fails alone and leaves nothing
  behind, and the other jobs run.

Then the job claims its directory (:mod:`rnnlm.rundir`) and only then writes
``.hydra/`` (Hydra's own copy is switched off, ``hydra.output_subdir: null``) and
its log file, so two runs never write into one directory.

A sweep whose jobs run in worker processes (``hydra/launcher=joblib``) stops as a whole:
its parent, signalled (SIGINT, SIGTERM, SIGUSR2), writes the sweep's stop file
(:class:`SweepStop`), every job watches it and saves and ends interrupted, a job that has
not started does not, and each job ends only once no other job of the sweep still holds
its directory (:func:`wait_for_other_jobs`), since joblib kills the other workers as soon
as one job ends with an error.

The task function returns the best validation perplexity: the objective of an
optimising sweeper (``sweep=optuna_dropout``, ``hydra/sweeper=rnnlm_optuna``), whose pruner, if
any, hears of every epoch through ``stop_early`` (:mod:`rnnlm.search.reporter`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from ..atomic import WriteError, atomic_write_text
from ..config import ConfigError, RunConfig
from ..data import DataError, load_dataset
from ..run import check_batch_sizes, train
from ..rundir import CLAIM, ClaimError, claim_held
from ..runtime import resolve_device, sweep_device
from ..search.reporter import job_reporter
from ..tracking import check as check_trackers
from ..tracking.config import LoggerConfig
from ..training import CheckpointError
from ..training.signals import (STOP_FILE, hand_on, install_handlers, request_stop, restore_handlers, stop_requested,
                                watch_stop_file)
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, describe, fail
from .resume import (AUTO, HYDRA_DIR, NAMED, RESUME_ENV, RunFinished, claim_run_dir, keep_saved_budget,
                     named_resume_argv, override_key)
from .sweepers import ensure_sweepers

log = logging.getLogger("rnnlm")

ConfigStore.instance().store(name="run_config_schema", node=RunConfig)
ensure_sweepers()  # hydra/sweeper=rnnlm_optuna and rnnlm_blocks, also from an editable install
# ${rnnlm.tag:} in the default run and sweep directories: a short random tag, so runs started
# in the same microsecond still get different directories. Cached, so it is one value per
# config (Hydra copies the cache into every job of a sweep).
OmegaConf.register_new_resolver("rnnlm.tag", lambda: secrets.token_hex(2), use_cache=True, replace=True)

CONFIG_MODULE = "rnnlm.configs"
# The keys a sweep's command line sets to one value for every job (a JSON list), for the jobs'
# tracker run names; the environment reaches the jobs of every launcher.
SWEEP_SHARED = "RNNLM_SWEEP_SHARED"


class JobRefused(Exception):
    """A job of a sweep whose config or directory was refused before it wrote anything."""


class JobFailed(Exception):
    """A run that stopped on a failed write; it can be resumed."""


class SweepStopped(Exception):
    """A job of a sweep that was asked to stop before the job claimed its directory."""


# How long an interrupted job of a sweep waits for the sweep's other jobs to save and let go
# of their directories before it ends (and joblib kills the workers that are still busy).
OTHER_JOBS_WAIT = 600.0


def launches_workers(launcher: Any) -> bool:
    """Whether a sweep's launcher runs its jobs in local worker processes that the parent
    kills when one job ends with an error: Hydra's joblib launcher (loky workers)."""
    target = str(launcher.get("_target_", "")) if launcher is not None else ""
    return "joblib" in target


def _held(run_dir: Path) -> bool:
    """:func:`rnnlm.rundir.claim_held`, False where it cannot tell or cannot read the claim."""
    try:
        return bool(claim_held(run_dir))
    except OSError:
        return False


def wait_for_other_jobs(sweep_dir: Path, run_dir: Path, timeout: float | None = None) -> None:
    """Wait (at most ``timeout`` s, default OTHER_JOBS_WAIT) until no other job directory of
    the sweep is held by a live job: every job stopping with this one has saved its
    checkpoint and result. Under joblib the first job to end with an error makes the parent
    kill every other worker, so an interrupted job ends only after the others have saved."""
    timeout = OTHER_JOBS_WAIT if timeout is None else timeout
    try:
        depth = len(Path(run_dir).resolve().relative_to(Path(sweep_dir).resolve()).parts)
    except ValueError:
        return  # a job directory outside the sweep directory: nothing to look at
    pattern = "/".join(["*"] * max(depth, 1) + [CLAIM])
    own = Path(run_dir).resolve()
    deadline, said = time.monotonic() + timeout, False
    while True:
        held = [p.parent for p in Path(sweep_dir).glob(pattern) if p.parent.resolve() != own and _held(p.parent)]
        if not held:
            return
        if time.monotonic() >= deadline:
            log.warning("%d other jobs of the sweep still hold their directories after %.0f s (e.g. %s); ending "
                        "anyway: a job that is killed now resumes from its last checkpoint", len(held), timeout,
                        held[0])
            return
        if not said:
            said = True
            log.info("waiting for %d other jobs of the sweep to save (e.g. %s)", len(held), held[0])
        time.sleep(0.25)


class SweepStop:
    """The signal handlers of a sweep's parent under a launcher of worker processes: the
    first SIGINT, SIGTERM or SIGUSR2 writes the sweep's stop file, which every job watches
    (:func:`~rnnlm.training.signals.watch_stop_file`), and the parent waits for the jobs'
    ends as usual; a second SIGINT stops the parent at once (joblib then kills the
    workers). Without it the parent dies at SIGTERM and its workers train on, and at SIGINT
    it kills its workers while they save."""

    def __init__(self, sweep_dir: Path) -> None:
        self.path = Path(sweep_dir) / STOP_FILE
        self.received: list[int] = []
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        self.previous = install_handlers(self._handle)

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        first = not self.received
        self.received.append(signum)
        if not first:
            return
        name = signal.Signals(signum).name
        try:
            request_stop(self.path, signum)
        except OSError as exc:
            log.error("%s: cannot write %s (%s), so the sweep's jobs cannot be told to stop; signal them "
                      "yourself", name, self.path, exc.strerror or exc)
            return
        log.warning("%s: stopping the sweep: every job saves a checkpoint and ends interrupted; the same "
                    "command with resume=auto continues it", name)

    def restore(self) -> None:
        """The handlers as before; a signal received is passed on to the handler before."""
        restore_handlers(self.previous)
        if self.received:
            hand_on(self.previous, self.received[0])


_sweep_stop: list[SweepStop] = []  # the parent's handlers while a sweep runs (restored by train_command)


def unknown_keys(cfg: DictConfig, schema: DictConfig | None = None, prefix: str = "") -> list[str]:
    """Keys of ``cfg`` that the RunConfig schema does not have. Hydra's ``+key=value`` adds
    a key past the schema's checks, so a typo such as ``+trainer.max_epoch=3`` would
    otherwise be carried along and never read."""
    schema = OmegaConf.structured(RunConfig) if schema is None else schema
    found = []
    for key in cfg:
        if key not in schema:
            found.append(f"{prefix}{key}")
        elif isinstance(schema[key], DictConfig) and isinstance(cfg[key], DictConfig):
            found += unknown_keys(cfg[key], schema[key], f"{prefix}{key}.")
    return found


def to_run_config(cfg: DictConfig) -> RunConfig:
    """The validated dataclass of a composed config (runs every ``__post_init__`` check)."""
    extra = unknown_keys(cfg)
    if extra:
        raise ConfigError(f"{extra[0]} is not a config key (a leading + adds keys that nothing reads); "
                          f"see `rnnlm train --help` for the keys")
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


@contextlib.contextmanager
def quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


_checked_data: set[tuple[Any, ...]] = set()


def validate(task_cfg: DictConfig) -> RunConfig:
    """Everything that can be checked before a run writes anything: the typed, range-checked
    config, the device, and that the data exist and fit the batch sizes."""
    try:
        cfg = to_run_config(task_cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(describe(exc)) from None
    resolve_device(cfg.device)
    check_trackers(cfg.logger)  # a tracker's configuration error, before anything is written
    ds = cfg.dataset
    key = (ds.name, ds.path, ds.cache_dir, ds.train_tokens, ds.closed_vocab, ds.batch_size, ds.eval_batch_size, ds.test_batch_size)
    if key not in _checked_data:  # a single run is checked twice: by Guard, then by the job
        with quiet("rnnlm"):  # the run loads the data again and says so then
            corpus = load_dataset(ds)
        check_batch_sizes(cfg, corpus)
        _checked_data.add(key)
    return cfg


def task_part(config: DictConfig) -> DictConfig:
    """The job's own config: ``config`` without its ``hydra`` node."""
    task = copy.deepcopy(config)  # as Hydra's run_job makes it
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


_new_sweep_dirs: list[Path] = []  # the sweep directory and its parents that did not exist yet


def remove_empty_sweep() -> None:
    """A sweep whose sweeper refused a job before any ran (a composition error) leaves only
    Hydra's multirun.yaml in a new sweep directory: remove them, so bad input leaves nothing."""
    if not _new_sweep_dirs:
        return
    sweep = _new_sweep_dirs[0]
    if sweep.is_dir() and [p.name for p in sweep.iterdir()] == ["multirun.yaml"]:
        (sweep / "multirun.yaml").unlink()
        for directory in _new_sweep_dirs:
            with contextlib.suppress(OSError):
                directory.rmdir()


class Guard(Callback):
    """Checks before Hydra creates anything (public callback API, any sweeper or launcher)."""

    started = False  # whether Hydra got as far as a run or a sweep (else: its command line failed)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        Guard.started = True
        try:
            validate(task_part(config))
        except (ConfigError, DataError) as exc:
            raise SystemExit(fail(str(exc))) from None
        # Hydra creates the directory next, and a failure there would be a traceback. The value is
        # the one Hydra will use: ${now:} and ${rnnlm.tag:} are cached on this config object.
        run_dir = Path(str(config.hydra.run.dir))
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SystemExit(fail(f"hydra.run.dir={run_dir} cannot be created: {exc.strerror or exc}")) from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Guard.started = True
        sweep = Path(str(config.hydra.sweep.dir))
        _new_sweep_dirs[:] = [p for p in (sweep, *sweep.parents) if not p.exists()]
        try:  # the trackers every job shares (a swept logger is checked by each job)
            logger = OmegaConf.to_object(config.logger)
            if isinstance(logger, LoggerConfig):
                check_trackers(logger)
        except ConfigError as exc:
            raise SystemExit(fail(str(exc))) from None
        except (OmegaConfBaseException, ValueError):
            pass  # each job checks its own config and says what is wrong
        if config.hydra.job.env_set.get(RESUME_ENV) != AUTO:  # with resume=auto, continuing its jobs is asked for
            taken = sorted(p.parent for p in sweep.glob("**/result.csv")) if sweep.is_dir() else []
            if taken:
                raise SystemExit(fail(
                    f"hydra.sweep.dir={sweep} already holds runs (e.g. {taken[0]}); choose a new "
                    f"hydra.sweep.dir, or add resume=auto to continue its interrupted jobs"
                ))
        with contextlib.suppress(OSError):
            (sweep / STOP_FILE).unlink()  # an earlier stop of this sweep, now continued
        if launches_workers(config.hydra.get("launcher")) and not _sweep_stop:
            stop = SweepStop(sweep)
            stop.install()
            _sweep_stop.append(stop)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")
def hydra_train(dcfg: DictConfig) -> float:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    single_run = hc.mode == RunMode.RUN
    overrides = list(hc.overrides.task)
    how = os.environ.get(RESUME_ENV) or None  # AUTO, NAMED or None
    # A sweep in worker processes stops as a whole: every job watches the sweep's stop file.
    sweep_dir = None if single_run else Path(str(hc.sweep.dir))
    stop_file = sweep_dir / STOP_FILE if sweep_dir is not None and launches_workers(hc.launcher) else None
    try:
        cfg = validate(dcfg)  # before anything is written
        if not single_run:  # job i of a sweep on GPU i mod G, unless pinned
            cfg.device = sweep_device(cfg.device, hc.job.num, torch.cuda.device_count())
        if stop_file is not None and (stopped_by := stop_requested(stop_file)):
            raise SweepStopped(stopped_by)
        claim, resume = claim_run_dir(run_dir, cfg, how)
        if how == NAMED:
            keep_saved_budget(cfg, run_dir, overrides)
    except RunFinished as done:
        if how == NAMED:  # continuing this very run was asked for
            raise SystemExit(fail(f"resume={run_dir}: that run already {done.status}; nothing to resume")) from None
        log.info("resume=auto: %s", done)  # a sweep continued with resume=auto passes over its finished jobs
        return done.best
    except SweepStopped as stopped:
        with contextlib.suppress(OSError):
            run_dir.rmdir()  # the empty directory Hydra made: resume=auto starts this job afresh
        log.warning("job %s not started: the sweep was stopped (%s); the same command with resume=auto runs it",
                    hc.job.num, stopped)
        wait_for_other_jobs(sweep_dir, run_dir)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except (ConfigError, DataError, ClaimError) as exc:
        with contextlib.suppress(OSError):
            run_dir.rmdir()  # the empty directory Hydra made for a refused job (never a non-empty one)
        if single_run:
            raise SystemExit(fail(str(exc))) from None
        log.error("job %s refused: %s", hc.job.num, exc)
        raise JobRefused(f"job {hc.job.num} ({' '.join(overrides)}): {exc}") from None
    with claim:
        if not resume:
            save_hydra_files(run_dir / HYDRA_DIR, dcfg, overrides)
        watching = watch_stop_file(stop_file) if stop_file is not None else contextlib.nullcontext()
        with log_file(run_dir / f"{hc.job.name}.log"), watching:
            try:
                # A sweep is one group of tracker runs, named after its directory.
                group = None if sweep_dir is None else sweep_dir.name
                result = train(cfg, run_dir, overrides=overrides, resume=resume, name=run_name(overrides, single_run),
                               group=group,
                               stop_early=None if single_run else job_reporter(hc.sweeper, hc.sweep.dir, hc.job.num))
            except CheckpointError as exc:  # the checkpoint to continue from cannot be read
                if single_run:
                    raise SystemExit(fail(str(exc))) from None
                raise JobRefused(f"job {hc.job.num}: {exc}") from None
            except WriteError as exc:  # recorded as status=failed where the disk still allowed it
                message = f"{exc}; the previous file is intact: continue with `rnnlm train resume={run_dir}`"
                if single_run:
                    raise SystemExit(fail(message, 1)) from None
                raise JobFailed(f"job {hc.job.num}: {message}") from None
    if result["status"] == "interrupted":
        if stop_file is not None:
            if not stop_requested(stop_file):  # this job alone was signalled: its end ends the sweep, so stop all
                with contextlib.suppress(OSError):
                    request_stop(stop_file, signal.SIGTERM)
            wait_for_other_jobs(sweep_dir, run_dir)  # before joblib, seeing this job's end, kills the others
        raise SystemExit(EXIT_INTERRUPTED)  # also ends a sweep: the user or scheduler asked to stop
    if result["status"] == "diverged" and single_run:
        raise SystemExit(fail("training diverged (NaN/inf loss); lower optim.lr or raise optim.clip", 1))
    best = result.get("best_val_ppl")
    return float(best) if best is not None and result["status"] == "completed" else math.inf


def run_name(overrides: list[str], single_run: bool) -> str | None:
    """A tracker run's name: the job's overrides, less the logger's own and, in a sweep, those
    its command line gives every job alike (so the name is what varies); None: none left."""
    shared = set() if single_run else set(json.loads(os.environ.get(SWEEP_SHARED, "[]")))
    kept = [o for o in overrides if override_key(o) not in shared and not override_key(o).startswith("logger")]
    return " ".join(kept) or None


def save_hydra_files(directory: Path, task_cfg: DictConfig, overrides: list[str]) -> None:
    """What Hydra would write to ``.hydra/``, written after the claim (and atomically)."""
    atomic_write_text(directory / "config.yaml", OmegaConf.to_yaml(task_cfg))
    atomic_write_text(directory / "hydra.yaml", OmegaConf.to_yaml(HydraConfig.instance().cfg))
    atomic_write_text(directory / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))


@contextlib.contextmanager
def log_file(path: Path, console: bool = False) -> Iterator[None]:
    """The job's log file (appended) while the job runs, beside Hydra's console log, or with
    ``console`` beside a console handler of its own (a resumed run, which Hydra does not
    start); the root logger is as before afterwards."""
    handlers = [logging.FileHandler(path)] + ([logging.StreamHandler(sys.stdout)] if console else [])
    root = logging.getLogger()
    level = root.level
    for handler in handlers:
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root.addHandler(handler)
    if console:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)


def train_command(argv: list[str]) -> int:
    resumes = [arg for arg in argv if arg.startswith("resume=")]
    argv = [arg for arg in argv if not arg.startswith("resume=")]
    if len(resumes) > 1:
        return fail("give resume= once: resume=auto, or resume=RUN_DIR to continue that run")
    if resumes == ["resume=auto"]:  # the job's environment carries it, to every launcher and to a requeued job
        argv.append(f"++hydra.job.env_set.{RESUME_ENV}={AUTO}")
    elif resumes:
        if any(arg.startswith("-") for arg in argv):
            return fail("resume=RUN_DIR continues one run: give it no Hydra flags (-m, --cfg, ...)")
        try:
            argv = named_resume_argv(Path(resumes[0].split("=", 1)[1]).expanduser(), argv)
        except ConfigError as exc:
            return fail(str(exc))
    sys.argv = ["rnnlm train", *argv]
    _checked_data.clear()
    Guard.started = False
    _new_sweep_dirs.clear()
    _sweep_stop.clear()
    logging.getLogger("alembic").setLevel(logging.WARNING)  # optuna's import chatter
    # Hydra re-raises instead of printing a traceback, so every error becomes one line here.
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    saved_shared = os.environ.get(SWEEP_SHARED)
    os.environ[SWEEP_SHARED] = json.dumps(shared_keys(argv))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # Hydra configures logging for the process
    try:
        hydra_train()
    except ValueError as exc:
        if Guard.started:
            raise  # from a job: a fault of rnnlm, shown in full
        # Hydra's command line (e.g. --cfg with -m, --resolve without --cfg): no job has begun
        return fail(f"{exc}; see `rnnlm train --help`")
    except (HydraException, OmegaConfBaseException) as exc:
        remove_empty_sweep()
        return fail(describe(exc))
    except (ConfigError, DataError, JobRefused) as exc:
        return fail(str(exc))
    except JobFailed as exc:
        return fail(str(exc), 1)
    except SystemExit as exc:  # from Hydra (--help, argparse) or from a job, with its message printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else fail(str(exc.code), 1))
    finally:
        root.handlers[:] = handlers  # for callers in the same process (tests)
        root.setLevel(level)
        while _sweep_stop:
            _sweep_stop.pop().restore()
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved
        if saved_shared is None:
            os.environ.pop(SWEEP_SHARED, None)
        else:
            os.environ[SWEEP_SHARED] = saved_shared
    return 0


def shared_keys(argv: list[str]) -> list[str]:
    """The keys of the command line's overrides that set one value (no sweep syntax)."""
    parser = OverridesParser.create()
    keys = []
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        try:
            (override,) = parser.parse_overrides([arg])
        except HydraException:
            continue  # Hydra reports it when it parses the command line
        if not override.is_sweep_override():
            keys.append(override_key(arg))
    return keys


__all__ = ["EXIT_USAGE", "Guard", "JobRefused", "hydra_train", "to_run_config", "train_command", "validate"]
