"""Find run directories and load them into a DataFrame (one row per run).

A run directory is any directory holding ``.hydra/config.yaml``. Its row has
``run_dir`` (where it was found), ``status`` and ``note``, every flattened config
key (``dropout.recurrent.kind``, ...) and every ``result.csv`` column. The config
is the source of truth for its keys: a result column of the same name is kept as
``result.<key>`` only where it differs (e.g. ``result.device=cuda:0`` when the
config says ``device=auto``, or ``result.run_dir`` for a moved sweep). A run
without a readable ``result.csv`` counts as ``failed`` and ``note`` says why.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass
from numbers import Number
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import flatten

CONFIG_FILE = Path(".hydra") / "config.yaml"
RESULT_FILE = "result.csv"
METRICS_FILE = "metrics.csv"
NULL_WORDS = frozenset({"null", "none", "~", ""})


class RunsError(Exception):
    """A problem with the user's DIRs, keys or filters; the message says which."""


@dataclass
class Runs:
    """Loaded runs: the per-run frame and which of its columns are config keys."""

    frame: pd.DataFrame
    config_keys: list[str]


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_run_dirs(root: Path) -> list[Path]:
    """Every directory below ``root`` (itself included) with ``.hydra/config.yaml``."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".hydra"]
        if (Path(dirpath) / CONFIG_FILE).is_file():
            found.append(Path(dirpath))
    return sorted(found, key=_natural_key)


def load_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``.hydra/config.yaml`` as ``{"dotted.key": value}``.

    Interpolations are resolved where possible; ones that need Hydra's runtime
    (``${hydra:...}``) stay as their text. Raises RunsError if it cannot be read.
    """
    try:
        cfg = OmegaConf.load(run_dir / CONFIG_FILE)
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as err:
        raise RunsError(f"cannot read {run_dir / CONFIG_FILE}: {str(err).splitlines()[0]}") from err
    if not isinstance(cfg, DictConfig):
        raise RunsError(f"cannot read {run_dir / CONFIG_FILE}: not a mapping")
    raw = OmegaConf.to_container(cfg, resolve=False)
    flat = {}
    for key, value in flatten(raw).items():
        value = str(value) if isinstance(value, list) else value
        if isinstance(value, str) and "${" in value:
            resolved = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
            value = value if resolved is None else resolved
        flat[key] = value
    return flat


def load_result(run_dir: Path) -> tuple[dict[str, Any], str]:
    """The single row of ``result.csv`` and a note (empty when it loaded)."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return {}, "no result.csv"
    try:
        rows = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        return {}, f"unreadable result.csv ({type(err).__name__})"
    if rows.empty:
        return {}, "empty result.csv"
    return rows.iloc[0].to_dict(), ""


def load_metrics(run_dir: Path) -> pd.DataFrame | None:
    """The run's per-epoch ``metrics.csv``, or None when missing or unreadable."""
    try:
        return pd.read_csv(run_dir / METRICS_FILE)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def is_missing(value: Any) -> bool:
    """None or NaN (a scalar; strings and booleans are never missing)."""
    return value is None or (not isinstance(value, (str, bool)) and bool(pd.isna(value)))


def matches(value: Any, text: str) -> bool:
    """Whether a config/result value equals ``text`` as typed on the command line.

    Numbers compare numerically (``0.5`` == ``0.50``), booleans as true/false,
    missing values match null/none/~/empty, anything else as a string.
    """
    word = text.strip().lower()
    if is_missing(value):
        return word in NULL_WORDS
    if isinstance(value, (bool, np.bool_)):
        return word == str(bool(value)).lower()
    if isinstance(value, Number):
        try:
            return math.isclose(float(value), float(text), rel_tol=1e-9, abs_tol=1e-12)
        except ValueError:
            return False
    return str(value) == text


def same_value(a: Any, b: Any) -> bool:
    """Type-aware equality of two loaded values (missing equals missing)."""
    return matches(a, "null" if is_missing(b) else str(b))


def _record(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    result, note = load_result(run_dir)
    status = result.pop("status", None)
    record = {"run_dir": str(run_dir), "status": "unknown" if is_missing(status) else str(status), "note": note}
    if note:
        record["status"] = "failed"
    record.update(config)
    for key, value in result.items():
        if key not in record:
            record[key] = value
        elif not same_value(record[key], value):
            record[f"result.{key}"] = value
    return record


def load_runs(dirs: Iterable[str | Path]) -> Runs:
    """Load every run below each of ``dirs``.

    Raises RunsError when a DIR does not exist or holds no run.
    """
    run_dirs: list[Path] = []
    seen: set[Path] = set()
    for d in map(Path, dirs):
        if not d.is_dir():
            raise RunsError(f"{d}: no such directory")
        found = find_run_dirs(d)
        if not found:
            raise RunsError(f"{d}: no runs found (no .hydra/config.yaml below it)")
        for run_dir in found:
            if run_dir.resolve() not in seen:
                seen.add(run_dir.resolve())
                run_dirs.append(run_dir)
    configs = [load_config(r) for r in run_dirs]
    records = [_record(r, c) for r, c in zip(run_dirs, configs)]
    config_keys = list(dict.fromkeys(k for c in configs for k in c))
    return Runs(pd.DataFrame(records), config_keys)


def check_keys(frame: pd.DataFrame, keys: Iterable[str], option: str) -> None:
    """Raise RunsError naming the first key that is not a column, with suggestions."""
    columns = [c for c in frame.columns if c not in ("run_dir", "note")]
    for key in keys:
        if key in frame.columns:
            continue
        similar = [c for c in columns if c.endswith(f".{key}") or (len(key) > 2 and key in c)]
        similar = list(dict.fromkeys(similar + difflib.get_close_matches(key, columns, n=3, cutoff=0.6)))[:8]
        hint = f"did you mean: {', '.join(similar)}" if similar else f"available keys: {', '.join(columns)}"
        if Path(key).is_dir():
            hint += f" ('{key}' is a directory: put DIRs before {option})"
        raise RunsError(f"unknown key '{key}' in {option}; {hint}")


def parse_filters(filters: Iterable[str]) -> dict[str, list[str]]:
    """``["a=1", "a=2", "b=x"]`` -> ``{"a": ["1", "2"], "b": ["x"]}``."""
    parsed: dict[str, list[str]] = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RunsError(f"--filter {item!r} is not KEY=VALUE, e.g. --filter dataset.name=ptb")
        parsed.setdefault(key.strip(), []).append(value)
    return parsed


def filter_runs(frame: pd.DataFrame, filters: dict[str, list[str]]) -> pd.DataFrame:
    """Rows matching every key; a key given several values matches any of them."""
    check_keys(frame, filters, "--filter")
    keep = pd.Series(True, index=frame.index)
    for key, values in filters.items():
        keep &= frame[key].map(lambda v: any(matches(v, text) for text in values)).astype(bool)
    return frame[keep]
