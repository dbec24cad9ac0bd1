"""A Hydra sweeper that searches with Optuna and keeps the study on disk, so a search that
stopped (Ctrl-C, a time limit, a crash) continues where it stopped, and several searches
started on one study share its trials (``hydra/sweeper=rnnlm_optuna``).

The search itself (the study, its trials, locks and outcomes) is
:class:`rnnlm.search.trials.OptunaSearch`, which knows nothing of Hydra. This module is the
Hydra side, with Hydra's public plugin interface only: a :class:`hydra.plugins.sweeper.Sweeper`
whose jobs go through whatever launcher is configured (``Plugins.instance().instantiate_launcher``;
trial N is launched as job N), the search space read from Hydra's override syntax
(``OverridesParser``: ``interval``, ``range``, ``choice``, ``tag(log, ...)``, ``int(...)``),
and the check of the space's corners, each corner's config composed by the context's
``ConfigLoader.load_sweep_config`` (as launchers do) and checked as a job checks its own
(:func:`rnnlm.search.space.check_corners`).

A search space Optuna cannot sample (an interval whose ends are reversed, or not positive on
a log scale) or that reaches a config rnnlm refuses (``dropout.output=interval(0.1,1.5)``),
or a bad sampler or pruner, stops the search with one line (:class:`SearchError`) and nothing
written. A failed job fails its trial alone; the search goes on, and its first failure is
raised at the end (as Hydra's basic sweeper does).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rnnlm.search.space import SettingsError, Space, check_corners
from rnnlm.search.trials import JobEnd, OptunaSearch

log = logging.getLogger(__name__)


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


class OptunaSweeper(OptunaSearch, Sweeper):
    def __init__(self, direction: str, study_name: str, storage: Optional[str], n_trials: int, n_jobs: int,
                 sampler: DictConfig, pruner: DictConfig, params: Optional[DictConfig] = None) -> None:
        OptunaSearch.__init__(self, {
            "direction": direction, "study_name": study_name, "storage": storage,
            "sampler": OmegaConf.to_container(sampler), "pruner": OmegaConf.to_container(pruner),
        }, n_trials, n_jobs)
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None
        space = search_space([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        try:  # before the study is created: nothing is written for a search that cannot run
            self.check(space)
            self.check_space(space)
        except SettingsError as exc:
            raise SearchError(str(exc)) from None
        failures: list[JobReturn] = []

        def launch(overrides: list[list[str]], first: int) -> Sequence[JobEnd]:
            returns = self.launcher.launch(overrides, initial_job_idx=first)
            failures.extend(ret for ret in returns if ret.status != JobStatus.COMPLETED)
            return [JobEnd(True, ret.return_value) if ret.status == JobStatus.COMPLETED else JobEnd(False)
                    for ret in returns]

        self.search(Path(str(self.config.hydra.sweep.dir)), space, launch)
        for ret in failures:
            _ = ret.return_value  # raises the job's exception: the search ends failed, as a basic sweep does
        return None

    def check_space(self, space: Space) -> None:
        """Check the corners of the search space as a job would check its config, before
        anything is written (:func:`rnnlm.search.space.check_corners`): compose the config
        (``ConfigLoader.load_sweep_config``, as a launcher does) with the corner's values and
        the fixed overrides, and build the typed, range-checked RunConfig from it
        (``to_run_config``). SettingsError (one line) for a refused corner."""
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

        check_corners(space, refused)
