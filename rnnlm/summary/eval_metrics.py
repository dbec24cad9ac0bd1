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

import pandas as pd

from .tables import Metric

# summary metric name -> eval.csv method ("mc_ppl" already names result.csv's MC pair).
METHOD_OF = {"standard_ppl": "standard", "mc_eval_ppl": "mc", "pointer_ppl": "pointer", "dynamic_ppl": "dynamic"}
LABELS = {"standard": "perplexity (rnnlm eval)", "mc": "MC-dropout perplexity (rnnlm eval)",
          "pointer": "perplexity with cache pointer", "dynamic": "perplexity with dynamic evaluation"}
EVAL_METRICS = tuple(Metric(name, f"{name[:-4]}_val_ppl", f"{name[:-4]}_test_ppl", LABELS[method])
                     for name, method in METHOD_OF.items())
METRIC_NAMES = tuple(n for m in EVAL_METRICS for n in (m.name, m.val, m.test))


def resolve(name: str) -> Metric | None:
    """The eval metric that ``name`` (pair name or either column) names, else None."""
    return next((m for m in EVAL_METRICS if name in (m.name, m.val, m.test)), None)


def eval_pair(run_dir: Path, method: str) -> tuple[float | None, float | None]:
    """(valid ppl, test ppl) of ``method`` in ``run_dir/eval.csv`` by the rule above."""
    from ..evaluation.rows import SETTING_KEYS  # imported late: the summary need not load torch

    try:
        rows = pd.read_csv(Path(run_dir) / "eval.csv", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None, None
    if "method" not in rows or "split" not in rows:
        return None, None
    rows = rows[rows["method"] == method]
    tests, valids = rows[rows["split"] == "test"], rows[rows["split"] == "valid"]
    if len(tests):
        keys = [k for k in SETTING_KEYS[method] if k in rows]
        valids = valids[(valids[keys] == tests[keys].iloc[-1]).all(axis=1)]
    ppl = [pd.to_numeric(split["ppl"].iloc[-1], errors="coerce") if len(split) and "ppl" in split else None
           for split in (valids, tests)]
    return ppl[0], ppl[1]


def add_eval_columns(frame: pd.DataFrame, metric: Metric) -> pd.DataFrame:
    """``frame`` with ``metric.val``/``metric.test`` filled from each run's eval.csv."""
    pairs = [eval_pair(Path(d), METHOD_OF[metric.name]) for d in frame["run_dir"]]
    return frame.assign(**{metric.val: [v for v, _ in pairs], metric.test: [t for _, t in pairs]})
