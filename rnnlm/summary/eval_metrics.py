"""Perplexities from ``rnnlm eval`` (``RUN_DIR/eval.csv``) as summary metrics.

``--metric pointer_ppl`` (or ``dynamic_ppl``, ``standard_ppl``, ``mc_eval_ppl``) selects
on ``<method>_val_ppl`` and reports ``<method>_test_ppl``, next to the training
perplexities. Per run and method, from the rows of eval.csv:

- test: the latest ``split=test`` row of the method;
- valid: the latest ``split=valid`` row with the same setting (checkpoint and method
  parameters, :data:`rnnlm.evaluation.rows.SETTING_KEYS`) as that test row, or the
  latest valid row when the method has no test row.

So after a tuning grid on validation and one test run at the chosen setting
(``scripts/tune_eval.py``), both columns describe that setting. Runs without such rows
are left out of the statistics like runs without a validation value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from .tables import Metric

EVAL_FILE = "eval.csv"
# summary metric name -> eval.csv method ("mc_ppl" already names result.csv's MC pair).
METHOD_OF = {"standard_ppl": "standard", "mc_eval_ppl": "mc", "pointer_ppl": "pointer", "dynamic_ppl": "dynamic"}
LABELS = {"standard": "perplexity (rnnlm eval)", "mc": "MC-dropout perplexity (rnnlm eval)",
          "pointer": "perplexity with cache pointer", "dynamic": "perplexity with dynamic evaluation"}


def _metric(name: str, method: str) -> Metric:
    stem = name[: -len("_ppl")]
    return Metric(name, f"{stem}_val_ppl", f"{stem}_test_ppl", f"{stem}_val_ppl", f"{stem}_test_ppl",
                  LABELS[method], "val_ppl", 2)


EVAL_METRICS = tuple(_metric(name, method) for name, method in METHOD_OF.items())
METRIC_NAMES = tuple(n for m in EVAL_METRICS for n in dict.fromkeys((m.name, m.val, m.test)))


def resolve(name: str) -> Optional[Metric]:
    """The eval metric that ``name`` (pair name or either column) names, else None."""
    return next((m for m in EVAL_METRICS if name in (m.name, m.val, m.test)), None)


def _setting_keys(method: str) -> tuple[str, ...]:
    from ..evaluation.rows import SETTING_KEYS  # imported late: the summary need not load torch

    return SETTING_KEYS[method]


def eval_pair(run_dir: Path, method: str) -> tuple[Optional[float], Optional[float]]:
    """(valid ppl, test ppl) of ``method`` in ``run_dir/eval.csv`` by the rule above."""
    try:
        rows = pd.read_csv(Path(run_dir) / EVAL_FILE, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None, None
    if "method" not in rows or "split" not in rows:
        return None, None
    rows = rows[rows["method"] == method]
    tests, valids = rows[rows["split"] == "test"], rows[rows["split"] == "valid"]
    test = tests.iloc[-1] if len(tests) else None
    if test is not None:
        keys = [k for k in _setting_keys(method) if k in rows]
        same = pd.Series(True, index=valids.index)
        for key in keys:
            same &= valids[key] == test[key]
        valids = valids[same]
    valid = valids.iloc[-1] if len(valids) else None

    def ppl(row) -> Optional[float]:
        return None if row is None else pd.to_numeric(row.get("ppl"), errors="coerce")

    return ppl(valid), ppl(test)


def add_eval_columns(frame: pd.DataFrame, metric: Metric) -> pd.DataFrame:
    """``frame`` with ``metric.val``/``metric.test`` filled from each run's eval.csv."""
    method = METHOD_OF[metric.name]
    pairs = [eval_pair(Path(d), method) for d in frame["run_dir"]]
    frame = frame.copy()
    frame[metric.val] = [v for v, _ in pairs]
    frame[metric.test] = [t for _, t in pairs]
    return frame
