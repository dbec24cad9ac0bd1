"""A search space and its check before a search starts.

A space is a set of Optuna distributions by config key (its dimensions) and the overrides
that set one value for every trial. It is checked at its corners, before anything is
written: every dimension at its lower end, then at its upper end (and at each further
choice), each corner as a job would check its config. A refused corner is traced to the
fixed overrides, else to the one dimension whose value alone is refused, else to the
combination, and reported in one line (:class:`SettingsError`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional


class SettingsError(ValueError):
    """A search that cannot run as configured (its space, sampler or pruner); the message is
    one line and says what to change."""


class Space(NamedTuple):
    dimensions: dict[str, Any]  # key -> Optuna distribution
    fixed: list[str]  # the overrides that set one value
    sources: dict[str, str]  # key -> the override that defines its dimension


def extremes(dist: Any) -> list[Any]:
    """The values of a distribution a check must try: an interval's two ends, every choice."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return list(dict.fromkeys((dist.low, dist.high)))


def check_corners(space: Space, refused: Callable[[dict[str, Any]], Optional[str]]) -> None:
    """Check the corners of ``space``; ``refused(point)`` says why a job whose dimensions
    ``point`` sets (key -> value; the others at their defaults), with the fixed overrides,
    cannot run, or None. SettingsError (one line) at the first refused corner."""
    ends = {key: extremes(dist) for key, dist in space.dimensions.items()}
    for i in range(max(len(values) for values in ends.values())):
        corner = {key: values[min(i, len(values) - 1)] for key, values in ends.items()}
        detail = refused(corner)
        if detail is None:
            continue
        if (alone := refused({})) is not None:
            raise SettingsError(alone)
        for key, value in corner.items():
            if (alone := refused({key: value})) is not None:
                raise SettingsError(f"the search dimension '{space.sources[key]}' reaches a value rnnlm "
                                    f"refuses: {alone}")
        where = " ".join(f"{k}={v}" for k, v in corner.items())
        raise SettingsError(f"the search space reaches a config rnnlm refuses at {where}: {detail}")
