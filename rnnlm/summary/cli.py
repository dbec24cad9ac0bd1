"""``rnnlm summary DIR [DIR ...]``: aggregate finished runs over seeds.

stdout carries only the tables (in ``--format``); runs left out, files written
and errors go to stderr. Exit status: 0 on success (also when some runs
failed), 1 when no run is left to summarise, 2 for bad DIRs, keys or options.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import pandas as pd

from ..atomic import atomic_write_text
from . import compare, tables
from ..study.stats import DEFAULT_EFFECT
from .runs import RunsError, check_keys, filter_runs, load_runs
from .tables import Metric

PROG = "rnnlm summary"
GROUPING_HELP = textwrap.fill(
    f"grouping: by default, the config keys that differ between runs, except "
    f"{', '.join(tables.BOOKKEEPING_KEYS)} (and the keys below them). Numeric keys are rates; the others "
    "define a variant "
    "(best by validation is per variant).", width=74)
EPILOG = f"""\
metrics: a metric names a validation/test pair; the group with the lowest
MEAN validation value is "best" and its test value is reported, never
selected on. ppl = val_ppl/test_ppl (default), loss = val_loss/test_loss,
where val_* is the validation of the weights the test used (the best
epoch's, or the last with eval.test_weights=last); mc_ppl =
mc_val_ppl/mc_test_ppl; naming either column selects its pair.
From `rnnlm eval` rows (RUN_DIR/eval.csv): pointer_ppl, dynamic_ppl,
standard_ppl, mc_eval_ppl (<method>_val_ppl/<method>_test_ppl; see
rnnlm/summary/runs.py for which rows are used).
n counts completed runs having the validation value. The other pairs that
any run has (MC, rnnlm eval methods) are reported beside the selected one,
each value averaged over the runs that have it.

{GROUPING_HELP}

baseline: --baseline KEY=VALUE (repeatable, all must match) names one group;
every group is then compared with it, for the validation and for the test
value (two families, each adjusted on its own), with the seeds as blocks:
the same seed gives the same initial weights and BPTT schedule in every
variant. Shared seeds: OLS of log perplexity on group + seed, 95%
intervals Dunnett-type max-t adjusted over the m comparisons shown
(Hothorn, Bretz & Westfall 2008). Seeds not shared: Welch t on log
perplexity, max-t adjusted with each comparison's own df (Hasler &
Hothorn 2008). Printed: diff [low, high] (group - baseline in points: the
baseline's geometric mean x (ratio - 1)), ratio (group / baseline), p
(adjusted), perm p (exact sign-flip p over the shared seeds, unadjusted; at
least 2/2^seeds, 0.25 with 3 seeds) and a verdict: lower/higher (the
interval excludes 0), within ±3% (inside the --effect margin), unresolved,
or no interval. summary.csv adds the ratio interval, Bonferroni-adjusted
paired t-intervals, seeds_needed (seeds per group that would resolve
--effect at 80% power) and the critical values. --plot adds
diff_vs_baseline.png.

filters: --filter KEY=VALUE matches config/result values by type (0.5 ==
0.50, true/false, null); repeating a KEY matches any of its values,
different KEYs must all match.

examples:
  rnnlm summary multirun/2024-05-01/12-00-00
  rnnlm summary sweeps/ptb sweeps/wt2 --filter dropout.recurrent.kind=variational --plot
  rnnlm summary sweeps/ --group-by dropout.recurrent.kind dataset.name --format latex
  rnnlm summary sweeps/study --baseline dropout.recurrent.kind=none --plot
"""
DESCRIPTION = """\
Summarise rnnlm runs: mean and std over seeds per setting, and the best
rate per variant by validation. Writes summary.csv, summary.md and best.csv
into the first DIR."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="directories searched recursively for runs")
    parser.add_argument("--format", choices=tables.FORMATS, default="markdown",
                        help="stdout format (default: markdown)")
    parser.add_argument("--metric", choices=list(tables.METRIC_OF), default="ppl", metavar="NAME",
                        help="pair to aggregate and select on: ppl (default), loss, mc_ppl, an rnnlm eval "
                        "method's pointer_ppl, dynamic_ppl, ..., or one of their columns")
    parser.add_argument("--group-by", nargs="+", metavar="KEY", help="group by these keys instead of the "
                        "ones that differ (give DIRs before this option)")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="keep runs whose KEY equals VALUE (repeatable)")
    parser.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                        help="compare every group with the group these select (repeatable)")
    parser.add_argument("--effect", type=float, default=DEFAULT_EFFECT, metavar="FRACTION",
                        help="with --baseline: the equivalence margin of the verdict and the change that "
                        f"seeds_needed resolves, a fraction of perplexity (default {DEFAULT_EFFECT:g}: ±3%%)")
    parser.add_argument("--plot", action="store_true", help="also write PNG figures next to summary.csv")
    return parser


def _tables(summary: pd.DataFrame, best: pd.DataFrame, metrics: list[Metric], fmt: str,
            args: argparse.Namespace) -> str:
    """The summary table, under its baseline note if any, then the best-by-validation table
    where some variant has several settings to choose from (else it would repeat the first).
    Markdown and LaTeX show fewer comparison columns than summary.csv (:func:`compare.for_display`)."""
    prefix = {"markdown": "### ", "csv": "# ", "latex": "% "}[fmt]  # a heading in markdown, else a comment
    shown = (lambda t: t) if fmt == "csv" else (lambda t: compare.for_display(t, metrics[0]))
    note = ""
    if args.baseline:
        heading, *lines = compare.describe(metrics[0], args.baseline, summary, args.effect)
        below = "\n".join(lines if fmt == "markdown" else (prefix + line for line in lines))
        note = f"{prefix}{heading}\n\n{below}\n\n"
    text = note + tables.format_table(shown(summary), metrics, fmt)
    if len(best) < len(summary):
        caption = (f"best by validation: lowest mean {metrics[0].val} per variant "
                   f"({metrics[0].test} reported at that setting)")
        text += f"\n{prefix}{caption}\n\n{tables.format_table(shown(best), metrics, fmt)}"
    return text


def _left_out(left: pd.DataFrame, total: int) -> str:
    """Lines for stderr naming every run left out of the statistics."""
    if left.empty:
        return ""
    counts = ", ".join(f"{n} {status}" for status, n in left["status"].value_counts().sort_index().items())
    lines = [f"{len(left)} of {total} runs not summarised ({counts}):"]
    lines += [f"  {r.status:<11} {r.run_dir}" + (f"  ({r.note})" if r.note else "")
              for r in left.itertuples()]
    return "\n".join(lines) + "\n"


def _markdown_file(text: str, left: pd.DataFrame, args: argparse.Namespace, metric: Metric) -> str:
    """summary.md: what was summarised, the tables, and the runs left out."""
    scope = [f"Runs below: {', '.join(args.dirs)}.",
             f"Metric: {metric.name} (selected on {metric.val}, reported {metric.test})."]
    scope += [f"Filters: {', '.join(args.filter)}."] if args.filter else []
    scope += [f"Grouped by: {', '.join(args.group_by)}."] if args.group_by else []
    scope += [f"Baseline: {', '.join(args.baseline)}.", f"Margin: ±{args.effect * 100:g}%."] if args.baseline else []
    parts = ["# rnnlm summary\n\n" + " ".join(scope) + "\n", text]
    parts += ["### runs not summarised\n\n" + left.to_markdown(index=False) + "\n"] if not left.empty else []
    return "\n".join(parts)


def _plot(summary: pd.DataFrame, best: pd.DataFrame, runs: pd.DataFrame, variant_keys: list[str],
          rate_keys: list[str], metric: Metric, out_dir: Path, baseline: list[str]) -> list[Path]:
    """Write the figures; plotting imports matplotlib, so only load it when asked."""
    from . import plots

    dataset = ", ".join(sorted(runs.get(plots.DATASET_KEY, pd.Series(dtype=str)).astype(str).unique()))
    written = []
    if rate_keys:
        written.append(plots.plot_rate(summary, best, variant_keys, rate_keys, metric,
                                       out_dir / f"{metric.name}_vs_rate.png", dataset))
    else:
        print(f"{PROG}: no numeric grouping key, so no {metric.name}_vs_rate.png", file=sys.stderr)
    curves = plots.plot_curves(runs, best, variant_keys, rate_keys, metric, out_dir / "learning_curves.png",
                               dataset)
    if curves is None:
        print(f"{PROG}: no metrics.csv with {metric.curve}, so no learning_curves.png", file=sys.stderr)
    if baseline:
        written.append(plots.plot_diff(summary, variant_keys + rate_keys, metric, baseline,
                                       out_dir / "diff_vs_baseline.png", dataset))
    return written + ([curves] if curves else [])


def _run(args: argparse.Namespace) -> int:
    frame, config_keys = load_runs(args.dirs)
    frame = filter_runs(frame, args.filter)
    check_keys(frame, args.group_by or [], "--group-by")
    if frame.empty:
        print(f"{PROG}: no runs match {' '.join('--filter ' + f for f in args.filter)}", file=sys.stderr)
        return 1
    compare.check_effect(args.effect)
    metric = tables.METRIC_OF[args.metric]
    frame = tables.with_metrics(frame, metric)
    used, left = tables.select_runs(frame, metric)
    if not used.any():
        sys.stderr.write(_left_out(left, len(frame)))
        print(f"{PROG}: no completed runs with {metric.val} below {', '.join(args.dirs)}", file=sys.stderr)
        return 1
    variant_keys, rate_keys = tables.split_keys(frame, config_keys, args.group_by)
    metrics = tables.reported_metrics(frame[used], metric)
    summary = tables.summarise(frame, used, variant_keys + rate_keys, metrics)
    if args.baseline:
        base = compare.baseline_group(frame[used], variant_keys + rate_keys, args.baseline)
        summary = compare.compare(summary, frame[used], variant_keys + rate_keys, base, metric, args.effect)
    best = tables.best_by_validation(summary, variant_keys, metric)
    sys.stdout.write(_tables(summary, best, metrics, args.format, args))
    sys.stdout.flush()
    sys.stderr.write(_left_out(left, len(frame)))

    out_dir = Path(args.dirs[0])
    written = [out_dir / name for name in ("summary.csv", "summary.md", "best.csv")]
    markdown = _markdown_file(_tables(summary, best, metrics, "markdown", args), left, args, metric)
    for path, text in zip(written, (summary.to_csv(index=False), markdown, best.to_csv(index=False))):
        atomic_write_text(path, text)
    if args.plot:
        written += _plot(summary, best, frame[used], variant_keys, rate_keys, metric, out_dir, args.baseline)
    print(f"{PROG}: wrote {', '.join(map(str, written))}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rnnlm summary``; returns the exit status."""
    try:
        return _run(build_parser().parse_args(argv))
    except SystemExit as exit_:  # from argparse: --help, or a bad option (status 2)
        return int(exit_.code or 0)
    except (RunsError, OSError) as err:  # OSError: e.g. the first DIR is read-only
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, RunsError) else 1
