"""``rnnlm eval RUN_DIR [KEY=VALUE ...]``: score a finished run's checkpoint.

Plain key=value overrides (no Hydra: the run's own ``.hydra/config.yaml`` is read, never
recomposed or rewritten). Everything is checked before anything is scored: a bad key,
value, run, checkpoint or file gives one line on stderr, exit 2, and no file written.
Results go to stdout and are appended to ``RUN_DIR/eval.csv`` (see
:mod:`rnnlm.evaluation.rows`). Several values for a tunable setting make a grid that is
tuned on validation before test is scored once (:mod:`rnnlm.evaluation.tuning`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from ..evaluation.dynamic import RULES, DynamicSettings
from ..evaluation.pointer import STARTS, PointerSettings
from ..evaluation.rows import METHODS, append_rows, read_rows
from ..evaluation.runner import Evaluator, McSettings, Plan, check_sizes, streams
from ..evaluation.runs import RunError, load_run
from ..evaluation.tuning import TUNABLE, grid_points, tune
from ..results import read_csv
from ..training.evaluate import GAL_MC_SAMPLES
from ..config import ConfigError, Precision
from ..precision import autocast, check_device
from ..runtime import DEVICE_FORMS, execution, is_device_name
from ..tracking import Tracking
from .errors import fail

# Pointer defaults per dataset: awd-lstm-lm README (pointer.py commands).
POINTER_DEFAULTS = {
    "ptb": PointerSettings(window=500, theta=1.0, lambd=0.1),
    "wikitext2": PointerSettings(window=3785, theta=0.662, lambd=0.1279),
}

USAGE = """\
usage: rnnlm eval RUN_DIR [KEY=VALUE ...]

Score a run's checkpoint with one or more methods; rows are appended to
RUN_DIR/eval.csv and printed. Keys (default in brackets):

  method=M[,M...]        standard, mc, pointer, dynamic [standard]
  split=S[,S...]         valid, test, file [valid,test; file when file= is given]
  file=PATH              score a text file (one sentence per line; words outside
                         the vocabulary become <unk> and are counted)
  checkpoint=best|last   best by validation, or the last epoch's weights (ASGD:
                         averaged, as eval.test_weights=last) [best]
  batch_size=N           streams [standard, mc: the run's eval_batch_size for
                         valid, test_batch_size for test; pointer, dynamic, file: 1]
  bptt=N                 segment length of standard/mc/pointer [run's trainer.bptt]
  device=auto|cpu|cuda|cuda:N [auto]    threads=N   CPU threads [torch default]
  precision=fp32|tf32|bf16|fp16  arithmetic of the forward passes [the run's
                         precision]; fp16 needs CUDA
  data=DIR               the run's corpus files, if they moved [run's dataset.path]
  progress=true|false    show how far MC scoring is, with an ETA: a bar on a
                         terminal, a line per tenth otherwise (stderr) [true]

  mc.samples=S           MC predictions per token [run's eval.mc_samples, else
                         2000 as Gal]. Cost: S x the arithmetic of a standard
                         evaluation, in ceil(S / C) sequential passes; its
                         throughput is in token-samples/s (tokens x S per second)
  mc.columns=C           copies of the stream read side by side in a pass, each
                         with its own masks [run's eval.mc_columns, else 20]
  mc.seed=N [run's seed]  mc.word_dropout=true|false [run's eval.mc_word_dropout]
  pointer.window=N pointer.theta=X pointer.lambda=X
                         [PTB 500 1.0 0.1; WT2 3785 0.662 0.1279 (awd-lstm-lm)]
  pointer.start=full|partial   use the pointer only after a full window (as
                         awd-lstm-lm), or from the second token on [full]
  dynamic.rule=rms|sgd   Krause et al.'s RMS rule, or SGD [rms]
  dynamic.lr=X dynamic.decay=X dynamic.epsilon=X
                         [rms: Krause et al.'s 0.002 / sqrt(B), 0.02 / N, 0.001 /
                         sqrt(B), B statistics batches, N parameter tensors, as
                         dynamiceval.py --oldhyper; sgd: lr required, decay 0]
  dynamic.bptt=N         tokens per update [5]
  dynamic.stats_batches=N  training segments for the RMS statistics [all]
  dynamic.stats_batch_size=N [100]

tuning: several values for pointer.window, pointer.theta, pointer.lambda,
dynamic.lr, dynamic.decay or dynamic.epsilon (e.g. pointer.theta=0.5,1) make a
grid of that method's settings. Every point is scored on valid, the lowest
validation perplexity chooses, then test (and full valid, if cut) is scored
once at that point. Rows are marked (tuning: grid) or (tuning: chosen).
  tune.valid_tokens=N    tune on the first N validation tokens [all]

examples:
  rnnlm eval outputs/runs/ptb method=standard,pointer split=test
  rnnlm eval outputs/runs/ptb method=dynamic dynamic.lr=6e-5 split=valid
  rnnlm eval outputs/runs/ptb method=standard file=my_text.txt
  rnnlm eval outputs/runs/ptb method=pointer pointer.theta=0.5,0.662,1 pointer.lambda=0.05,0.1,0.15
"""


def _int(text: str) -> int:
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if math.isnan(value):
        raise ValueError(text)
    return value


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(text)
        return text

    parse.__doc__ = " or ".join(choices)
    return parse


def _choices(*choices: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.strip("[]").split(",") if t.strip()]
        if not items or any(t not in choices for t in items):
            raise ValueError(text)
        return list(dict.fromkeys(items))

    parse.__doc__ = f"a comma-separated list of {', '.join(choices)}"
    return parse


def _device(text: str) -> str:
    if not is_device_name(text):
        raise ValueError(text)
    return text


_int.__doc__, _float.__doc__, _bool.__doc__ = "an integer", "a number", "true or false"
_device.__doc__ = f"a device: {DEVICE_FORMS}"

KEYS: dict[str, Callable[[str], Any]] = {
    "method": _choices(*METHODS),
    "split": _choices("valid", "test", "file"),
    "file": str,
    "checkpoint": _choice("best", "last"),
    "batch_size": _int,
    "bptt": _int,
    "device": _device,
    "threads": _int,
    "precision": _choice(*(p.value for p in Precision)),
    "data": str,
    "progress": _bool,
    "mc.samples": _int,
    "mc.columns": _int,
    "mc.seed": _int,
    "mc.word_dropout": _bool,
    "pointer.window": _int,
    "pointer.theta": _float,
    "pointer.lambda": _float,
    "pointer.start": _choice(*STARTS),
    "dynamic.rule": _choice(*RULES),
    "dynamic.lr": _float,
    "dynamic.decay": _float,
    "dynamic.epsilon": _float,
    "dynamic.bptt": _int,
    "dynamic.stats_batches": _int,
    "dynamic.stats_batch_size": _int,
    "tune.valid_tokens": _int,
}
POSITIVE = ("batch_size", "bptt", "threads", "mc.samples", "mc.columns", "dynamic.bptt", "dynamic.stats_batches",
            "dynamic.stats_batch_size", "tune.valid_tokens")


class UsageError(Exception):
    pass


def parse_overrides(args: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep:
            raise UsageError(f"{arg!r} is not KEY=VALUE; see `rnnlm eval --help` for the keys")
        if key not in KEYS:
            raise UsageError(f"{key} is not a key of rnnlm eval; see `rnnlm eval --help` for the keys")
        parse = KEYS[key]
        try:
            if key in TUNABLE and "," in text:  # a grid: its values, in order, without repeats
                value = list(dict.fromkeys(parse(t.strip()) for t in text.strip("[]").split(",") if t.strip()))
                value = value if len(value) > 1 else value[0]
            else:
                value = parse(text)
        except (ValueError, IndexError):
            raise UsageError(f"{key}={text} is not {parse.__doc__ or 'valid'}") from None
        if key in POSITIVE and value < 1:
            raise UsageError(f"{key}={text} must be a positive integer")
        values[key] = value
    return values


def build_plan(run, keys: dict[str, Any]) -> Plan:
    """The plan of one call, with the run's and the dataset's defaults filled in."""
    cfg = run.cfg
    dataset = cfg.dataset.name
    methods = keys.get("method", ["standard"])
    splits = keys.get("split", ["file"] if "file" in keys else ["valid", "test"])
    if "file" in splits and "file" not in keys:
        raise RunError("split=file needs file=PATH")
    if "file" in keys and "file" not in splits:
        raise RunError(f"file={keys['file']} is given but split={','.join(splits)} leaves it out; add file to split")
    mc = McSettings(
        samples=keys.get("mc.samples", cfg.eval.mc_samples or GAL_MC_SAMPLES),
        columns=keys.get("mc.columns", cfg.eval.mc_columns),
        seed=keys.get("mc.seed", cfg.seed),
        word_dropout=keys.get("mc.word_dropout", bool(getattr(cfg.eval, "mc_word_dropout", False))),
    )
    pointer = POINTER_DEFAULTS.get(dataset, PointerSettings())
    pointer = replace(
        pointer,
        window=keys.get("pointer.window", pointer.window), theta=keys.get("pointer.theta", pointer.theta),
        lambd=keys.get("pointer.lambda", pointer.lambd), start=keys.get("pointer.start", pointer.start),
    )
    rule = keys.get("dynamic.rule", "rms")
    if rule == "sgd" and "dynamic" in methods and "dynamic.lr" not in keys:
        raise RunError("dynamic.rule=sgd needs dynamic.lr (the RMS rule's default does not suit plain SGD)")
    # Unset values are derived from the gradient statistics when the method runs.
    dynamic = DynamicSettings(rule=rule, lr=keys.get("dynamic.lr"), decay=keys.get("dynamic.decay"),
                              epsilon=keys.get("dynamic.epsilon"))
    return Plan(
        methods=methods, splits=splits, file=Path(keys["file"]) if "file" in keys else None,
        batch_size=keys.get("batch_size"), bptt=keys.get("bptt"), mc=mc, pointer=pointer, dynamic=dynamic,
        dynamic_bptt=keys.get("dynamic.bptt", 5), stats_batches=keys.get("dynamic.stats_batches"),
        stats_batch_size=keys.get("dynamic.stats_batch_size", 100),
        progress=keys.get("progress", True),
    )


def _run_status(run_dir: Path) -> Optional[str]:
    try:
        rows = read_csv(run_dir / "result.csv")
    except (OSError, ValueError):
        return None
    return rows[0].get("status") if rows else None


def _line(row: dict[str, Any]) -> str:
    what = row["split"] if row["split"] != "file" else f"file {row['file']}"
    extra = f"  {row['oov_words']} words -> <unk>" if row["split"] == "file" else ""
    setup = f" (+{row['setup_seconds']:.1f} s statistics)" if row.get("setup_seconds") else ""
    samples = (f" ({row['token_samples_per_second']} token-samples/s, {row['mc.samples']} per token)"
               if row.get("token_samples_per_second") is not None else "")
    return (f"{row['method']:<9} {what:<6} ppl {row['ppl']:10.3f}  loss {row['loss']:.4f}  "
            f"{row['tokens']} tokens  batch {row['batch_size']}  {row['seconds']:.1f} s{setup}  "
            f"{row['tokens_per_second']} tok/s{samples}{extra}")


def eval_command(argv: list[str]) -> int:
    """``rnnlm eval RUN_DIR [KEY=VALUE ...]``; returns the exit status."""
    if any(arg in ("-h", "--help") for arg in argv):
        print(USAGE, end="")
        return 0
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        got = f", got {argv[0]!r}" if argv else ""
        return fail(f"give the run directory first{got}: rnnlm eval RUN_DIR [KEY=VALUE ...] (--help lists the keys)")
    run_dir, rest = Path(argv[0]), argv[1:]
    try:
        keys = parse_overrides(rest)
    except (UsageError, ValueError) as exc:
        return fail(str(exc))
    return _score(run_dir, rest, keys)


def _check_grid(keys: dict[str, Any], grid: dict[str, list[Any]]) -> None:
    """A grid needs its method and the valid and test splits; tune.valid_tokens needs a grid."""
    if not grid:
        if "tune.valid_tokens" in keys:
            raise UsageError("tune.valid_tokens needs a grid: give a setting several values, e.g. pointer.theta=0.5,1")
        return
    methods = keys.get("method", ["standard"])
    for key, values in grid.items():
        if TUNABLE[key][0] not in methods:
            raise UsageError(f"{key}={','.join(map(str, values))} is a grid for {TUNABLE[key][0]}, but "
                             f"method={','.join(methods)} leaves it out; add {TUNABLE[key][0]} to method")
    if "file" in keys or keys.get("split", ["valid", "test"]) != ["valid", "test"]:
        raise UsageError("a grid is tuned on valid and scored once on test; leave out split= and file=")


def _score(run_dir: Path, rest: list[str], keys: dict[str, Any]) -> int:
    """Load the run, score each method on each stream (a method with a grid: tune it on
    valid, then score test at the chosen point), append and print the rows."""
    grid = {k: v for k, v in keys.items() if isinstance(v, list) and k in TUNABLE}
    try:
        _check_grid(keys, grid)
        run = load_run(run_dir, keys.get("checkpoint", "best"), keys.get("device", "auto"), keys.get("data"))
        plan = build_plan(run, {**keys, **{k: v[0] for k, v in grid.items()}})
        data = streams(run, plan)
        cut = data[0]  # the validation stream the grid is scored on
        if grid and keys.get("tune.valid_tokens", cut.ids.numel()) < cut.ids.numel():
            cut = replace(cut, ids=cut.ids[: keys["tune.valid_tokens"]])
        check_sizes(run, plan, [*data, cut])
        points = {m: grid_points(plan, m, grid) for m in plan.methods if any(TUNABLE[k][0] == m for k in grid)}
    except (UsageError, RunError, ValueError) as exc:
        return fail(str(exc))
    status = _run_status(run_dir)
    if status != "completed":
        print(f"rnnlm eval: note: {run_dir} has status {status or 'unknown'}; scoring its "
              f"{run.checkpoint} checkpoint as it is now", file=sys.stderr)
    precision = Precision(keys.get("precision", run.cfg.precision))
    try:
        check_device(precision, run.device)
    except ConfigError as exc:  # a precision the device cannot run
        return fail(str(exc))
    evaluator = Evaluator(run, plan)
    path = None
    written = []

    def emit(row: dict[str, Any], role: str = "") -> None:
        nonlocal path
        row.update(precision=precision.value, overrides=" ".join(rest) + (f" (tuning: {role})" if role else ""))
        path = append_rows(run_dir, [row])
        written.append(row)
        print(_line(row) + (f"  ({role})" if role else ""), flush=True)

    with execution(run.device, precision, False, keys.get("threads")), autocast(precision, run.device):
        for method in plan.methods:
            if method not in points:
                for stream in data:
                    emit(evaluator.score(method, stream)[1])
                continue
            for role, _, row in tune(evaluator, method, points[method], cut, data[0], data[1]):
                emit(row, role)
            setting = " ".join(f"{k}={row.get(k)}" for k in grid if TUNABLE[k][0] == method)
            print(f"{method:<9} chosen on valid: {setting}", flush=True)
    tracking = Tracking(run.cfg.logger, run_dir, name=run_dir.name, attach_only=True)  # the run's own tracker runs
    tracking.eval_rows(written, step=len(read_rows(run_dir)))
    tracking.close()
    print(f"rnnlm eval: appended {len(written)} rows to {path}", file=sys.stderr)
    return 0
