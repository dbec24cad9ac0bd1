"""Tuning a method's settings on validation, then scoring test once.

Every point of a grid (the product of the values given for a method's settings) is scored
on the validation split, or on its first ``valid_tokens`` tokens; the point with the lowest
validation perplexity is chosen, and test is never looked at for that choice. The full
validation split (when it was cut) and the test split are then scored once at the chosen
point.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any, Iterator, Optional

from .runner import Evaluator, Plan, Stream
from .scoring import Score

# The settings a grid may range over: command-line key -> (Plan field, settings field).
TUNABLE = {
    "pointer.window": ("pointer", "window"),
    "pointer.theta": ("pointer", "theta"),
    "pointer.lambda": ("pointer", "lambd"),
    "dynamic.lr": ("dynamic", "lr"),
    "dynamic.decay": ("dynamic", "decay"),
    "dynamic.epsilon": ("dynamic", "epsilon"),
}


def grid_points(plan: Plan, method: str, values: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``values`` (key -> values, keys of ``method`` only) as
    :meth:`Evaluator.score` overrides. Each point's settings are built here, so a bad value
    raises ValueError before anything is scored."""
    keys = [k for k in values if TUNABLE[k][0] == method]
    points = []
    for combo in itertools.product(*(values[k] for k in keys)):
        settings = getattr(plan, method)
        settings = replace(settings, **{TUNABLE[k][1]: v for k, v in zip(keys, combo)})
        points.append({method: settings})
    return points


def tune(evaluator: Evaluator, method: str, points: list[dict[str, Any]], valid: Stream,
         full_valid: Stream, test: Stream) -> Iterator[tuple[str, Score, dict[str, Any]]]:
    """Yield ``(role, score, row)`` for each grid point on ``valid`` (role ``grid``), then,
    at the point of lowest validation perplexity, for ``full_valid`` if it differs from
    ``valid`` and for ``test`` (role ``chosen``)."""
    best: Optional[tuple[float, int]] = None
    for i, point in enumerate(points):
        score, row = evaluator.score(method, valid, **point)
        if best is None or score.ppl < best[0]:
            best = (score.ppl, i)
        yield "grid", score, row
    chosen = points[best[1]]
    for stream in ([full_valid] if full_valid is not valid else []) + [test]:
        score, row = evaluator.score(method, stream, **chosen)
        yield "chosen", score, row
