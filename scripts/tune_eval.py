"""Tune the cache pointer (theta, lambda) and dynamic evaluation (lr, decay) on validation,
then score test once at the chosen setting.

    python scripts/tune_eval.py RUN_DIR [--method pointer,dynamic] [--theta 0.5,0.662,1]
        [--lambda 0.05,0.1,0.15] [--lr 3e-5,5e-5,7e-5,1e-4] [--decay 0.001,0.002,0.005]
        [--valid-tokens N] [KEY=VALUE ...]

KEY=VALUE are ``rnnlm eval`` keys that stay fixed (e.g. ``pointer.window=3785``,
``checkpoint=last``, ``device=cuda``, ``dynamic.stats_batches=500``). For each method the
grid is scored on the validation split (``--valid-tokens N``: on its first N tokens, as
dynamiceval.py ``--gridfast`` does with 30000), the setting with the lowest validation
perplexity is chosen -- test is never looked at -- and then the full validation split
(if it was cut) and the test split are scored once at that setting. Every score is
appended to ``RUN_DIR/eval.csv`` like ``rnnlm eval`` rows, so ``rnnlm summary --metric
pointer_ppl`` reports the chosen setting's validation and test perplexity. The last line
printed is a JSON object with the choice and its figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path

from rnnlm.cli.eval import UsageError, build_plan, parse_overrides
from rnnlm.evaluation.rows import append_rows
from rnnlm.evaluation.runner import Evaluator, Stream, check_sizes
from rnnlm.evaluation.runs import RunError, load_run

GRIDS = {"pointer": (("theta", "0.5,0.662,1.0"), ("lambda", "0.05,0.1,0.15")),
         "dynamic": (("lr", "3e-5,5e-5,7e-5,1e-4"), ("decay", "0.001,0.002,0.005"))}


def numbers(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one value")
    return values


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--method", default="pointer,dynamic", help="pointer, dynamic or both (default)")
    for method, grid in GRIDS.items():
        for name, default in grid:
            parser.add_argument(f"--{name}", type=numbers, default=numbers(default),
                                help=f"{method} {name} grid (default {default})")
    parser.add_argument("--valid-tokens", type=int, default=None,
                        help="tune on the first N validation tokens only (default: all)")
    return parser.parse_known_args(argv)


def setting(method: str, plan, a: float, b: float):
    if method == "pointer":
        return {"pointer": replace(plan.pointer, theta=a, lambd=b)}
    return {"dynamic": replace(plan.dynamic, lr=a, decay=b)}


def tune(evaluator: Evaluator, method: str, grid: list[tuple[float, float]], valid: Stream, full_valid: Stream,
         test: Stream, run_dir: Path, note: str) -> dict:
    names = [n for n, _ in GRIDS[method]]
    results = []
    for a, b in grid:
        score, row = evaluator.score(method, valid, **setting(method, evaluator.plan, a, b))
        append_rows(run_dir, [{**row, "overrides": f"{note} grid"}])
        results.append((score.ppl, a, b))
        print(f"{method:<8} valid  {names[0]} {a:<8g} {names[1]} {b:<8g} ppl {score.ppl:9.3f}  "
              f"({row['tokens']} tokens, {row['seconds']:.1f} s)", flush=True)
    best_ppl, a, b = min(results)
    chosen = setting(method, evaluator.plan, a, b)
    if full_valid is not valid:
        score, row = evaluator.score(method, full_valid, **chosen)
        append_rows(run_dir, [{**row, "overrides": f"{note} chosen"}])
        best_ppl = score.ppl
    test_score, row = evaluator.score(method, test, **chosen)
    append_rows(run_dir, [{**row, "overrides": f"{note} chosen"}])
    print(f"{method:<8} chosen on valid: {names[0]} {a:g}, {names[1]} {b:g}: valid ppl {best_ppl:.3f}, "
          f"test ppl {test_score.ppl:.3f}", flush=True)
    return {names[0]: a, names[1]: b, "valid_ppl": best_ppl, "test_ppl": test_score.ppl}


def main(argv: list[str] | None = None) -> int:
    args, keys_text = parse_args(argv)
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if not methods or any(m not in GRIDS for m in methods):
        print(f"tune_eval: error: --method {args.method}: choose pointer, dynamic or both", file=sys.stderr)
        return 2
    try:
        keys = parse_overrides(keys_text)
        if {"method", "split", "file"} & set(keys):
            raise UsageError("method, split and file are chosen by the script; give --method instead")
        run = load_run(args.run_dir, keys.get("checkpoint", "best"), keys.get("device", "auto"), keys.get("data"))
        plan = build_plan(run, {**keys, "method": methods, "split": ["valid", "test"]})
        full_valid = Stream("valid", run.corpus.valid)
        valid = full_valid
        if args.valid_tokens is not None and args.valid_tokens < full_valid.ids.numel():
            valid = Stream("valid", full_valid.ids[: args.valid_tokens])
        test = Stream("test", run.corpus.test)
        check_sizes(run, plan, [valid, test])
        grids = {m: list(itertools.product(*(getattr(args, n) for n, _ in GRIDS[m]))) for m in methods}
        for method in methods:
            for a, b in grids[method]:
                setting(method, plan, a, b)  # every grid point is checked before anything is scored
    except (UsageError, RunError, ValueError) as exc:
        print(f"tune_eval: error: {exc}", file=sys.stderr)
        return 2
    evaluator = Evaluator(run, plan)
    note = "tune_eval.py " + " ".join(argv if argv is not None else sys.argv[1:])
    chosen = {}
    for method in methods:
        chosen[method] = tune(evaluator, method, grids[method], valid, full_valid, test, args.run_dir, note)
    print(json.dumps(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
