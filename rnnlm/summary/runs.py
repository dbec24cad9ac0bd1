"""Find run directories and load them into a DataFrame (one row per run); filters; eval.csv.

A run directory is any directory holding ``.hydra/config.yaml``, the one source of a
run's settings. Its row has ``run_dir`` (where it was found), ``status`` and ``note``,
every flattened config key (``dropout.recurrent.kind``, ...) and the outcome columns of
``result.csv``. The settings that result.csv repeats are not read from it; its columns
that share a name with a config key or ``run_dir`` are renamed ``result.<name>``
(``result.device``: the device used where the config may say ``auto``;
``result.run_dir``: where the run was written); ``dropout.recurrent.mask`` is ``—`` for a
scheme without a mask. Columns that an older rnnlm named differently are read under
today's names (:func:`rnnlm.results.current_name`). A run without a readable result.csv
counts as ``failed`` and ``note`` says why. :func:`eval_pair` reads the perplexities
that ``rnnlm eval`` wrote to ``eval.csv``.
"""

from __future__ import annotations

import difflib
import math
import re
from numbers import Number
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import flatten
from ..results import SETTING_COLUMNS, current_name, current_status

CONFIG_FILE = Path(".hydra") / "config.yaml"
# result.csv columns that copy the config
COPIED = frozenset({*SETTING_COLUMNS, "seed"})
NULL_WORDS = frozenset({"null", "none", "~", ""})


class RunsError(Exception):
    """A problem with the user's DIRs, keys or filters; the message says which."""


class Runs(NamedTuple):
    frame: pd.DataFrame  # one row per run
    config_keys: list[str]


def find_run_dirs(root: Path) -> list[Path]:
    """Every directory below ``root`` (itself included) with ``.hydra/config.yaml``, in natural order."""
    found = {p.parent.parent for p in root.rglob(str(CONFIG_FILE)) if p.is_file()}
    return sorted(found, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))])


def load_config(run_dir: Path) -> dict[str, Any]:
    """``.hydra/config.yaml`` as ``{"dotted.key": value}``; interpolations that need Hydra's
    runtime (``${hydra:...}``) stay as their text, lists become their text."""
    try:
        cfg = OmegaConf.load(run_dir / CONFIG_FILE)
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as err:
        raise RunsError(f"cannot read {run_dir / CONFIG_FILE}: {str(err).splitlines()[0]}") from err
    if not isinstance(cfg, DictConfig):
        raise RunsError(f"cannot read {run_dir / CONFIG_FILE}: not a mapping")
    flat = flatten(OmegaConf.to_container(cfg, resolve=False))
    for key, value in flat.items():
        if isinstance(value, str) and "${" in value:
            resolved = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
            flat[key] = value if resolved is None else resolved
    return {k: str(v) if isinstance(v, list) else v for k, v in flat.items()}


UNREAD = "—"  # a setting the run's recurrent dropout scheme does not read


def without_unread_mask(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``dropout.recurrent.mask`` shown as UNREAD where the run's scheme has no
    mask (``kind=none``), so that a table or legend does not name a mask that was never drawn."""
    kind = config.get("dropout.recurrent.kind")
    if "dropout.recurrent.mask" in config and isinstance(kind, str):
        from ..dropout.scheme import registered_schemes  # torch: only for runs that have a scheme

        scheme = registered_schemes().get(kind)
        if scheme is not None and not scheme.masks:
            config["dropout.recurrent.mask"] = UNREAD
    return config


def _record(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The run's row: where, status and note, its config, then its result.csv outcomes."""
    result, note = {}, ""
    try:
        rows = pd.read_csv(run_dir / "result.csv").rename(columns=lambda c: current_name(c, "result.csv"))
        result, note = (rows.iloc[0].to_dict(), "") if len(rows) else ({}, "empty result.csv")
    except FileNotFoundError:
        note = "no result.csv"
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        note = f"unreadable result.csv ({type(err).__name__})"
    status = "failed" if note else current_status(result)
    result.pop("status", None)
    record = {"run_dir": str(run_dir), "status": "unknown" if is_missing(status) else str(status),
              "note": note}
    outcome = {f"result.{k}" if k in config or k in record else k: v
               for k, v in result.items() if k not in COPIED}
    return {**record, **config, **outcome, **tested_validation(run_dir, config, result)}


def tested_validation(run_dir: Path, config: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """``val_loss`` and ``val_ppl`` of the weights the test used, so each test figure is paired
    with the validation figure of the same weights: the best epoch's (``eval.test_weights=best``)
    or the last validation in metrics.csv (``last``: the final weights, ASGD's averaged ones)."""
    if config.get("eval.test_weights") != "last":
        return {"val_loss": result.get("best_val_loss"), "val_ppl": result.get("best_val_ppl")}
    metrics = read_metrics(run_dir)
    if metrics is None or metrics.empty or not {"val_loss", "val_ppl"} <= set(metrics.columns):
        return {"val_loss": None, "val_ppl": None}
    last = metrics.iloc[-1]
    return {"val_loss": last["val_loss"], "val_ppl": last["val_ppl"]}


def read_metrics(run_dir: str | Path) -> pd.DataFrame | None:
    """A run's metrics.csv, one row per epoch (a resumed run may have written an epoch's row
    twice: the last is kept); None when it is missing or unreadable."""
    try:
        metrics = pd.read_csv(Path(run_dir) / "metrics.csv").rename(columns=lambda c: current_name(c, "metrics.csv"))
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if {"stage", "epoch"} <= set(metrics.columns):
        metrics = metrics.drop_duplicates(["stage", "epoch"], keep="last")
    return metrics


def load_runs(dirs: Iterable[str | Path]) -> Runs:
    """Every run below each of ``dirs``.

    Raises RunsError when a DIR does not exist or holds no run.
    """
    run_dirs: dict[Path, Path] = {}
    for d in map(Path, dirs):
        if not d.is_dir():
            raise RunsError(f"{d}: no such directory")
        found = find_run_dirs(d)
        if not found:
            raise RunsError(f"{d}: no runs found (no .hydra/config.yaml below it)")
        run_dirs.update({r.resolve(): r for r in found if r.resolve() not in run_dirs})
    configs = {r: without_unread_mask(load_config(r)) for r in run_dirs.values()}
    frame = pd.DataFrame([_record(r, c) for r, c in configs.items()])
    return Runs(frame, list(dict.fromkeys(k for c in configs.values() for k in c)))


def is_missing(value: Any) -> bool:
    """None or NaN (a scalar; strings and booleans are never missing)."""
    return value is None or (not isinstance(value, (str, bool)) and bool(pd.isna(value)))


def matches(value: Any, text: str) -> bool:
    """Whether a loaded value equals ``text`` as typed: numbers numerically (0.5 == 0.50),
    booleans as true/false, missing values as null/none/~/empty, the rest as strings."""
    if is_missing(value):
        return text.strip().lower() in NULL_WORDS
    if isinstance(value, (bool, np.bool_)):
        return text.strip().lower() == str(bool(value)).lower()
    if isinstance(value, Number):
        try:
            return math.isclose(float(value), float(text), rel_tol=1e-9, abs_tol=1e-12)
        except ValueError:
            return False
    return str(value) == text


def check_keys(frame: pd.DataFrame, keys: Iterable[str], option: str) -> None:
    """Raise RunsError naming the first key that is not a column, with suggestions."""
    columns = [c for c in frame.columns if c not in ("run_dir", "note")]
    for key in (k for k in keys if k not in frame.columns):
        similar = [c for c in columns if c.endswith(f".{key}") or (len(key) > 2 and key in c)]
        similar = list(dict.fromkeys(similar + difflib.get_close_matches(key, columns, n=3, cutoff=0.6)))[:8]
        hint = f"did you mean: {', '.join(similar)}" if similar else f"available keys: {', '.join(columns)}"
        if Path(key).is_dir():
            hint += f" ('{key}' is a directory: put DIRs before {option})"
        raise RunsError(f"unknown key '{key}' in {option}; {hint}")


def filter_runs(frame: pd.DataFrame, filters: Iterable[str]) -> pd.DataFrame:
    """Rows matching ``KEY=VALUE`` filters: every KEY must match, a repeated KEY any of its values."""
    wanted: dict[str, list[str]] = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RunsError(f"--filter {item!r} is not KEY=VALUE, e.g. --filter dataset.name=ptb")
        wanted.setdefault(key.strip(), []).append(value)
    check_keys(frame, wanted, "--filter")
    keep = pd.Series(True, index=frame.index)
    for key, values in wanted.items():
        keep &= frame[key].map(lambda v: any(matches(v, text) for text in values)).astype(bool)
    return frame[keep]


def eval_pair(run_dir: str | Path, method: str) -> tuple[float | None, float | None]:
    """(valid, test) perplexity of ``method`` from the rows of ``run_dir/eval.csv`` (``rnnlm eval``).

    - test: the latest ``split=test`` row of the method;
    - valid: the latest ``split=valid`` row with the same setting (checkpoint and method
      parameters, :data:`rnnlm.evaluation.rows.SETTING_KEYS`) as that test row, or the
      latest valid row when the method has no test row.

    So after a tuning grid on validation and one test run at the chosen setting (``rnnlm
    eval`` with several values for a setting), both describe that setting. None where there
    is no such row.
    """
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
    return tuple(pd.to_numeric(split["ppl"].iloc[-1], errors="coerce") if len(split) and "ppl" in split
                 else None for split in (valids, tests))
