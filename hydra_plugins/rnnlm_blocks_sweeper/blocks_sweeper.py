"""A Hydra sweeper that runs a study in blocks of seeds and stops when its comparisons resolve.

Hydra's public plugin interface only: a :class:`hydra.plugins.sweeper.Sweeper` whose jobs go
through whatever launcher is configured (``Plugins.instance().instantiate_launcher``), one
``launcher.launch(jobs, initial_job_idx=...)`` per block, so that a parallel launcher
(joblib, SLURM) runs the variants of a block together. Overrides are parsed with Hydra's
``OverridesParser``. The study itself (job numbering, what is finished, the looks and the
stopping rule) is :class:`rnnlm.study.blocks.BlockStudy`, which reads everything from the
sweep directory:

* block b (from 0) runs variant v as job ``b * V + v``, in ``hydra.sweep.dir/<job>``;
* a block whose runs all completed (or diverged) is never launched again; a block with an
  unfinished run is launched whole, and with ``resume=auto`` its finished runs are passed
  over and its stopped ones continue from their checkpoints;
* on start, the looks of the blocks already finished are computed again (the same way, so
  with the same result) and the stopping rule applied to them, so the same command with
  ``resume=auto`` goes on where the study stood, or stops at once if it had finished;
* a failed job stops the study after its block, with that job's error (the block cannot be
  analysed without it).

A config that cannot run (no variants, an unknown baseline, min_blocks < 2, max_blocks <
min_blocks, fewer seeds than max_blocks, a sweep on the command line) raises
:class:`BlocksError` before any job runs; ``rnnlm train`` prints its one line and exits 2.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)


class BlocksError(HydraException):
    """A study that cannot run as configured (a Hydra error: ``rnnlm train`` prints its one line)."""


def override_key(override: str) -> str:
    """The key an override sets: ``+a.b=1``, ``~a.b`` and ``a.b=1`` all name ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def parse_one(text: str, where: str) -> Any:
    """The parsed override ``text`` (Hydra's grammar); BlocksError naming ``where`` if it is none."""
    try:
        (override,) = OverridesParser.create().parse_overrides([text])
    except HydraException as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BlocksError(f"{where}: cannot parse {text!r}: {detail}") from None
    return override


def variant_table(variants: Any) -> dict[str, list[str]]:
    """``hydra.sweeper.variants`` as ``{label: [override, ...]}``, each override one value."""
    if variants is None:
        return {}
    if not isinstance(variants, (DictConfig, dict)):
        raise BlocksError("hydra.sweeper.variants must map each label to a list of overrides, "
                          "e.g. {none: [dropout.recurrent.rate=0.0], wd: [dropout.recurrent.rate=0.3]}")
    table: dict[str, list[str]] = {}
    raw = OmegaConf.to_container(variants, resolve=False) if isinstance(variants, DictConfig) else variants
    for label, overrides in raw.items():
        if isinstance(overrides, str):
            overrides = [overrides]
        if overrides is None:
            overrides = []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise BlocksError(f"hydra.sweeper.variants.{label} must be a list of overrides such as "
                              f"[dropout.recurrent.rate=0.3], not {overrides!r}")
        for text in overrides:
            if parse_one(text, f"variant {label}").is_sweep_override():
                raise BlocksError(f"variant {label}: {text!r} is a sweep; a variant sets one value per key "
                                  f"(make each value a variant of its own)")
        table[str(label)] = list(overrides)
    return table


def seed_list(spec: Any, block_key: str, max_blocks: int) -> list[Any]:
    """The block key's values: a list, a sweep in Hydra's syntax ('range(1,21)', '1,2,3'), or
    None for 1..max_blocks."""
    if spec is None:
        return list(range(1, max_blocks + 1))
    if isinstance(spec, (ListConfig, list, tuple)):
        values = OmegaConf.to_container(spec) if isinstance(spec, ListConfig) else list(spec)
        if not all(isinstance(v, (int, float, str, bool)) for v in values):
            raise BlocksError(f"hydra.sweeper.seeds must list plain values, not {values!r}")
        return list(values)
    override = parse_one(f"{block_key}={spec}", "hydra.sweeper.seeds")
    if override.is_sweep_override():
        return list(override.sweep_iterator())
    return [override.value()]


class BlocksSweeper(Sweeper):
    def __init__(self, variants: Any = None, baseline: Optional[str] = None, block_key: str = "seed",
                 seeds: Any = None, min_blocks: int = 3, max_blocks: int = 10, max_minutes: Optional[float] = None,
                 alpha: float = 0.05, effect: float = 0.03, metric: str = "test_ppl") -> None:
        # Checked in sweep(), where an error is one line (Hydra wraps errors raised here).
        self.variants, self.baseline, self.block_key, self.seeds = variants, baseline, block_key, seeds
        self.min_blocks, self.max_blocks, self.max_minutes = min_blocks, max_blocks, max_minutes
        self.alpha, self.effect, self.metric = alpha, effect, metric
        self.config: Optional[DictConfig] = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def study(self) -> Any:
        """The study as configured (BlocksError, one line, if it cannot run)."""
        from rnnlm.study.blocks import BlockStudy, StudyError

        assert self.config is not None
        variants = variant_table(self.variants)
        baseline: Any = self.baseline if self.baseline is not None else 0
        try:
            return BlockStudy(Path(str(self.config.hydra.sweep.dir)), variants, baseline,
                              seed_list(self.seeds, self.block_key, self.max_blocks), block_key=self.block_key,
                              metric=self.metric, min_blocks=self.min_blocks, max_blocks=self.max_blocks,
                              max_minutes=self.max_minutes, alpha=self.alpha, effect=self.effect)
        except StudyError as exc:
            raise BlocksError(f"hydra/sweeper=rnnlm_blocks: {exc}") from None

    def shared_overrides(self, arguments: List[str], study: Any) -> list[str]:
        """The command line's overrides, given to every job: one value each, and no key that
        the block or a variant sets (it would make the variants alike)."""
        variant_keys: dict[str, str] = {}  # key: the first variant that sets it
        for label, overrides in zip(study.labels, study.variant_overrides):
            for o in overrides:
                variant_keys.setdefault(override_key(o), label)
        shared = []
        for text in arguments:
            override = parse_one(text, "the command line")
            key = override_key(text)
            if override.is_sweep_override():
                raise BlocksError(f"{text!r} is a sweep: hydra/sweeper=rnnlm_blocks runs the variants of "
                                  f"hydra.sweeper.variants, one block per {study.block_key}; give one value")
            if key == study.block_key:
                raise BlocksError(f"{text!r} sets the block key: give the values as hydra.sweeper.seeds")
            if key in variant_keys:
                raise BlocksError(f"{text!r} sets {key}, which variant {variant_keys[key]} sets: "
                                  f"it would override the variants")
            shared.append(text)
        return shared

    def sweep(self, arguments: List[str]) -> Any:
        from rnnlm.study.blocks import DONE, StudyError

        start = time.monotonic()
        study = self.study()
        shared = self.shared_overrides(list(arguments), study)
        try:
            study.check_jobs()
        except StudyError as exc:
            raise BlocksError(str(exc)) from None
        done = study.finished_blocks()
        if done:
            log.info("study in %s: %d blocks finished before; computing their looks again", study.sweep_dir, done)
        for blocks in study.look_blocks(min(done, study.max_blocks)):  # the looks already made, made again
            look = study.analyse(blocks)
            log.info(study.paragraph(look))
            reason = study.decide(look, blocks)
            if reason:
                return self.stop(study, reason, blocks, look)
        study.clear_stop()
        block = done
        while True:
            jobs = [[*job, *shared] for job in study.block_jobs(block)]
            first = study.job_index(block, 0)
            log.info("block %d of at most %d (%s=%s): jobs %d-%d", block + 1, study.max_blocks, study.block_key,
                     study.seeds[block], first, first + len(jobs) - 1)
            returns = self.launcher.launch(jobs, initial_job_idx=first)
            failed = [ret for ret in returns if ret.status != JobStatus.COMPLETED]
            if failed:
                log.error("block %d: %d of %d jobs failed; the study stops (continue it with resume=auto once "
                          "they can run)", block + 1, len(failed), len(jobs))
                _ = failed[0].return_value  # raises the job's exception, as Hydra's basic sweeper does
            if not study.block_finished(block):
                unfinished = [study.job_index(block, v) for v in range(study.n_variants)
                              if study.status(block, v) not in DONE]
                stopped = [study.job_index(block, v) for v in range(study.n_variants)
                           if study.status(block, v) in ("interrupted", None)]
                if stopped:  # a signal (or a stop of the sweep) ended them: nothing is wrong with the study
                    log.warning("block %d stopped before it finished (jobs %s); continue the study with the same "
                                "command and resume=auto", block + 1, ", ".join(map(str, stopped)))
                    return None
                raise BlocksError(f"block {block + 1}: job {unfinished[0]} left no completed run in "
                                  f"{study.sweep_dir / str(unfinished[0])}; the study cannot analyse the block")
            empty = study.without_metric(block)
            if empty:
                raise BlocksError(f"job {empty[0]} completed without a value of {study.metric} in its result.csv: "
                                  f"compare a column its runs report (hydra.sweeper.metric, e.g. test_ppl)")
            block += 1
            look = study.analyse(block) if block >= study.min_blocks else None
            if look is not None:
                log.info(study.paragraph(look))
            reason = study.decide(look, block, (time.monotonic() - start) / 60)
            if reason:
                return self.stop(study, reason, block, look)

    @staticmethod
    def stop(study: Any, reason: str, blocks: int, look: Any) -> None:
        study.write_stop(reason, blocks, look)
        why = {"resolved": "every comparison resolved", "max_blocks": f"max_blocks={study.max_blocks} reached",
               "max_minutes": f"max_minutes={study.max_minutes:g} passed"
               if study.max_minutes is not None else ""}[reason]
        log.info("study stopped after %d blocks: %s; looks in %s", blocks, why, study.looks_dir())
        return None
