"""A study run in blocks of seeds, analysed after each block until its comparisons resolve.

A study compares V variants (each a list of Hydra overrides) with one of them, the baseline.
A *block* is every variant run at one seed: the seed is the block, and what one seed fixes
(initial weights, data order, dropout masks, as far as the variants share them) is held
equal within the block, so the comparisons are paired by seed. Blocks run one after the
other; from ``min_blocks`` on, each finished block is followed by a *look*: every variant is
compared with the baseline by :func:`rnnlm.study.stats.compare_groups` at the nominal level
that :func:`rnnlm.study.sequential.look_level` gives the look (Lan-DeMets alpha spending of
an O'Brien-Fleming type over the looks, i.e. repeated confidence intervals, Jennison &
Turnbull 1989, JRSS B 51(3)), so that the intervals of every look hold together at
``1 - alpha``. The study stops when

1. every comparison has resolved (verdict ``lower``, ``higher`` or ``within ±effect``):
   ``resolved``;
2. ``max_blocks`` blocks have run: ``max_blocks``;
3. this session has run longer than ``max_minutes`` (checked between blocks): ``max_minutes``.

Everything is read back from the sweep directory, so a stopped study continues where it
stood: job ``block * V + variant`` runs in ``SWEEP_DIR/<job>`` (Hydra's
``${hydra.job.num}``), a block is finished when each of its runs has a ``result.csv`` with
status ``completed`` or ``diverged`` (a diverged run's value is infinite, and
``compare_groups`` leaves it out with a note), and the looks depend only on the finished
blocks and the settings, so they come out the same when they are computed again. Look k
after b blocks writes ``SWEEP_DIR/looks/look_<b>.csv`` and ``.md``; a stop writes
``SWEEP_DIR/looks/stop.yaml``.

This module knows nothing of Hydra (``hydra_plugins/rnnlm_blocks_sweeper`` launches the
jobs) and nothing of torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from ..atomic import atomic_write_text
from ..results import read_csv
from ..results.columns import RESULT_COLUMNS
from .maxt import simultaneous_critical
from .sequential import look_level
from .stats import DEFAULT_EFFECT, compare_groups

LOOKS = "looks"  # SWEEP_DIR/looks/: one CSV and one Markdown file per look, stop.yaml
STOP_FILE = "stop.yaml"
DONE = ("completed", "diverged")  # a run with one of these statuses will not change
RESOLVED = ("lower", "higher")  # with texts starting "within": a resolved comparison
# The result.csv columns a study can compare: positive figures where lower is better.
METRICS = tuple(c for c in RESULT_COLUMNS if c.endswith("_ppl") or c.endswith("_loss"))


class StudyError(ValueError):
    """A study that cannot run as configured; the message is one line and says what to change."""


def is_resolved(verdict: Any) -> bool:
    """Whether a comparison's verdict settles it: lower, higher, or equivalent within ±effect."""
    return isinstance(verdict, str) and (verdict in RESOLVED or verdict.startswith("within"))


@dataclass(frozen=True)
class Look:
    """One look: after ``blocks`` blocks, the ``number``-th of the study, at nominal ``level``."""

    number: int
    blocks: int
    level: float
    table: pd.DataFrame  # compare_groups' frame, one row per variant (index: label) in study order
    baseline: str

    @property
    def comparisons(self) -> pd.DataFrame:
        """The rows of the variants compared with the baseline (all but the baseline's)."""
        return self.table.drop(index=self.baseline)

    @property
    def resolved(self) -> dict[str, bool]:
        return {label: is_resolved(v) for label, v in self.comparisons["verdict"].items()}

    @property
    def all_resolved(self) -> bool:
        return all(self.resolved.values())


class BlockStudy:
    """The plan of a study in blocks, and its state as read from ``sweep_dir``.

    ``variants``: ``{label: [override, ...]}`` in study order (or ``(label, overrides)`` pairs);
    ``baseline``: the baseline's index in that order, or its label; ``seeds``: the value of
    ``block_key`` for each block, in order (at least ``max_blocks`` of them; the default
    ``max_blocks`` is their number). StudyError (one line) for a plan that cannot run.
    """

    def __init__(self, sweep_dir: str | Path,
                 variants: Mapping[str, Sequence[str]] | Sequence[tuple[str, Sequence[str]]],
                 baseline: int | str, seeds: Sequence[Any], *, block_key: str = "seed", metric: str = "test_ppl",
                 min_blocks: int = 3, max_blocks: int | None = None, max_minutes: float | None = None,
                 alpha: float = 0.05, effect: float = DEFAULT_EFFECT) -> None:
        pairs = list(variants.items()) if isinstance(variants, Mapping) else list(variants)
        if not pairs:
            raise StudyError("the study has no variants: give {label: [override, ...]} with at least two labels, "
                             "as configs/sweep/recurrent_dropout_blocks.yaml does")
        self.labels = [str(label) for label, _ in pairs]
        if len(set(self.labels)) != len(self.labels):
            raise StudyError(f"variant labels must differ: {', '.join(self.labels)}")
        if len(pairs) < 2:
            raise StudyError(f"the study has one variant ({self.labels[0]}): "
                             f"a study compares at least two, one of them the baseline")
        self.variant_overrides = [list(overrides) for _, overrides in pairs]
        if isinstance(baseline, str):
            if baseline not in self.labels:
                raise StudyError(f"baseline {baseline!r} is not a variant; choose one of: {', '.join(self.labels)}")
            baseline = self.labels.index(baseline)
        if not 0 <= baseline < len(self.labels):
            raise StudyError(f"baseline index {baseline} is not one of 0..{len(self.labels) - 1}")
        self.baseline_index = baseline
        self.seeds = list(seeds)
        if len(set(map(str, self.seeds))) != len(self.seeds):
            raise StudyError(f"the seeds repeat a value ({', '.join(map(str, self.seeds))}): each block needs its own")
        max_blocks = len(self.seeds) if max_blocks is None else max_blocks
        if min_blocks < 2:
            raise StudyError(f"min_blocks={min_blocks}: the first look needs at least 2 blocks (a spread over seeds)")
        if max_blocks < min_blocks:
            raise StudyError(f"max_blocks={max_blocks} is below min_blocks={min_blocks}")
        if len(self.seeds) < max_blocks:
            raise StudyError(f"{len(self.seeds)} seeds for max_blocks={max_blocks}: give at least {max_blocks} seeds")
        if not 0 < alpha < 1:
            raise StudyError(f"alpha={alpha} is not in (0, 1)")
        if not 0 < effect < 1:
            raise StudyError(f"effect={effect} is not in (0, 1): "
                             f"it is the equivalence margin as a fraction (0.03: ±3 %)")
        if max_minutes is not None and not max_minutes > 0:
            raise StudyError(f"max_minutes={max_minutes} is not positive (null: no limit)")
        if metric not in METRICS:
            raise StudyError(f"metric={metric} is not a perplexity or loss column of result.csv; choose one of: "
                             f"{', '.join(METRICS)}")
        for label, overrides in zip(self.labels, self.variant_overrides):
            if any(_key(o) == block_key for o in overrides):
                raise StudyError(f"variant {label} sets {block_key}, the block key: the blocks set it")
        self.sweep_dir = Path(sweep_dir)
        self.block_key, self.metric = block_key, metric
        self.min_blocks, self.max_blocks, self.max_minutes = min_blocks, max_blocks, max_minutes
        self.alpha, self.effect = alpha, effect
        self._levels: dict[int, float] = {}  # block count -> its look's level (level())

    # -- the plan -------------------------------------------------------------------------

    @property
    def baseline(self) -> str:
        return self.labels[self.baseline_index]

    @property
    def n_variants(self) -> int:
        return len(self.labels)

    def job_index(self, block: int, variant: int) -> int:
        """Job ``block * V + variant`` (blocks and variants counted from 0)."""
        return block * self.n_variants + variant

    def job_dir(self, block: int, variant: int) -> Path:
        return self.sweep_dir / str(self.job_index(block, variant))

    def job_overrides(self, block: int, variant: int) -> list[str]:
        """The variant's overrides and the block's seed (the command line's come after them)."""
        return [*self.variant_overrides[variant], f"{self.block_key}={self.seeds[block]}"]

    def block_jobs(self, block: int) -> list[list[str]]:
        """Every job of ``block``, in variant order: job ``block * V`` onwards."""
        return [self.job_overrides(block, v) for v in range(self.n_variants)]

    def look_blocks(self, blocks: int) -> list[int]:
        """The block counts of the looks up to ``blocks``: one after each block from min_blocks."""
        return list(range(self.min_blocks, blocks + 1))

    # -- the state on disk ----------------------------------------------------------------

    def result(self, block: int, variant: int) -> dict[str, str] | None:
        """The job's result.csv row, or None (not started, or stopped before it wrote one)."""
        try:
            rows = read_csv(self.job_dir(block, variant) / "result.csv")
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        return rows[0] if len(rows) == 1 else None

    def status(self, block: int, variant: int) -> str | None:
        row = self.result(block, variant)
        return None if row is None else row.get("status") or None

    def block_finished(self, block: int) -> bool:
        return all(self.status(block, v) in DONE for v in range(self.n_variants))

    def finished_blocks(self) -> int:
        """How many blocks, from the first, are finished (a later finished block after an
        unfinished one does not count: blocks are analysed in order)."""
        done = 0
        while done < len(self.seeds) and self.block_finished(done):
            done += 1
        return done

    def without_metric(self, block: int) -> list[int]:
        """The jobs of ``block`` that completed with no number in the metric's column (a metric
        the runs do not report, e.g. mc_test_ppl without eval.mc_samples): the study cannot use them."""
        return [self.job_index(block, v) for v in range(self.n_variants)
                if (row := self.result(block, v)) is not None and row.get("status") == "completed"
                and math.isnan(_number(row.get(self.metric)))]

    def check_jobs(self) -> None:
        """StudyError if a job directory holds a run other than the one the plan puts there
        (the variants, their order or the seeds changed since the study started)."""
        for block in range(len(self.seeds)):
            for variant in range(self.n_variants):
                path = self.job_dir(block, variant) / ".hydra" / "overrides.yaml"
                if not path.is_file():
                    continue
                try:
                    saved = [str(o) for o in yaml.safe_load(path.read_text()) or []]
                except (OSError, yaml.YAMLError, TypeError):
                    continue  # resume=auto's own checks judge an unreadable run
                missing = [o for o in self.job_overrides(block, variant) if o not in saved]
                if missing:
                    raise StudyError(
                        f"{path.parent.parent} is not job {self.job_index(block, variant)} of this study "
                        f"(variant {self.labels[variant]}, {self.block_key}={self.seeds[block]}): its run lacks "
                        f"{missing[0]}; the variants, their order or the seeds changed since the study started: "
                        f"restore them, or use a new sweep directory")

    def runs(self, blocks: int) -> pd.DataFrame:
        """The finished runs of the first ``blocks`` blocks: ``group`` (variant label), ``block``
        (seed), ``value`` (the metric; inf for a diverged run, NaN where it is empty), ``status``."""
        rows = []
        for block in range(blocks):
            for variant, label in enumerate(self.labels):
                row = self.result(block, variant) or {}
                status = row.get("status")
                if status not in DONE:
                    continue
                value = math.inf if status == "diverged" else _number(row.get(self.metric))
                rows.append({"group": label, "block": self.seeds[block], "value": value, "status": status})
        return pd.DataFrame(rows, columns=["group", "block", "value", "status"])

    # -- looks and the stopping rule ------------------------------------------------------

    def level(self, blocks: int) -> float:
        """The nominal level of the look after ``blocks`` blocks (computed once per plan: it
        takes multivariate normal probabilities of every look before it)."""
        if blocks not in self._levels:
            self._levels[blocks] = float(look_level(self.look_blocks(blocks), self.max_blocks, self.alpha))
        return self._levels[blocks]

    def analyse(self, blocks: int, write: bool = True) -> Look:
        """The look after ``blocks`` finished blocks (``blocks >= min_blocks``); with ``write``,
        its files SWEEP_DIR/looks/look_<blocks>.csv and .md (atomically)."""
        if blocks < self.min_blocks:
            raise ValueError(f"the first look is after {self.min_blocks} blocks, not {blocks}")
        runs = self.runs(blocks)
        level = self.level(blocks)
        table = compare_groups(runs[["group", "block", "value"]], self.baseline, level=level, effect=self.effect)
        table = table.reindex([label for label in self.labels if label in table.index])
        table.index.name = "variant"
        look = Look(number=blocks - self.min_blocks + 1, blocks=blocks, level=level, table=table,
                    baseline=self.baseline)
        if write:
            self.write_look(look)
        return look

    def blocks_to_resolve(self, look: Look) -> dict[str, int | None]:
        """For each unresolved comparison of ``look``, the first block count up to ``max_blocks``
        at which it would resolve if its estimate stayed where it is and its standard error
        shrank as 1/sqrt(blocks) (a complete, balanced design); None: not within ``max_blocks``.
        Each later look is judged at its own nominal level and its max-t critical value with
        (groups - 1)(blocks - 1) residual df (equicorrelated comparisons, correlation 1/2)."""
        table = look.comparisons
        m, margin = len(table), math.log1p(self.effect)
        corr = np.full((m, m), 0.5) + np.eye(m) * 0.5
        out: dict[str, int | None] = {}
        for label, r in table.iterrows():
            if is_resolved(str(r["verdict"])):
                continue
            ratio, high, crit = (float(r.get(k, math.nan)) for k in ("ratio", "ratio_high", "crit"))
            if not all(math.isfinite(v) and v > 0 for v in (ratio, high, crit)):
                out[label] = None
                continue
            estimate, se = abs(math.log(ratio)), math.log(high / ratio) / crit
            out[label] = None
            for blocks in range(look.blocks + 1, self.max_blocks + 1):
                c = float(simultaneous_critical(corr, m * (blocks - 1), self.level(blocks)))
                half = c * se * math.sqrt(look.blocks / blocks)
                if estimate > half or estimate + half < margin:
                    out[label] = blocks
                    break
        return out

    def decide(self, look: Look | None, blocks: int, elapsed_minutes: float = 0.0) -> str | None:
        """Why the study stops after ``blocks`` finished blocks (``resolved``, ``max_blocks``,
        ``max_minutes``), or None to run the next block."""
        if look is not None and look.all_resolved:
            return "resolved"
        if blocks >= self.max_blocks:
            return "max_blocks"
        if self.max_minutes is not None and elapsed_minutes > self.max_minutes:
            return "max_minutes"
        return None

    # -- reports --------------------------------------------------------------------------

    def looks_dir(self) -> Path:
        return self.sweep_dir / LOOKS

    def level_reason(self, look: Look) -> str:
        seen = self.look_blocks(look.blocks)
        return (f"Lan-DeMets alpha spending of O'Brien-Fleming type, alpha = {self.alpha:g} over the looks after "
                f"{_counts(seen)} of at most {self.max_blocks} blocks (repeated confidence intervals, "
                f"Jennison & Turnbull 1989): all looks' intervals together cover with {_level(1 - self.alpha)}")

    def header(self, look: Look) -> str:
        seeds = ", ".join(str(s) for s in self.seeds[:look.blocks])
        last = self.max_blocks - self.min_blocks + 1
        return (f"# Look {look.number} of at most {last}: {look.blocks} blocks ({self.block_key} {seeds})\n\n"
                f"- metric: `{self.metric}`, each variant against the baseline `{self.baseline}`, paired by "
                f"{self.block_key}\n"
                f"- nominal level {_level(look.level)}, simultaneous over the {len(look.comparisons)} comparisons "
                f"(max-t), for the intervals of this look: {self.level_reason(look)}\n"
                f"- resolved: the ratio's interval lies below 1 (lower) or above 1 (higher), or within "
                f"±{_percent(self.effect)} of the baseline (effect = {self.effect:g})\n")

    def markdown(self, look: Look) -> str:
        rows = []
        for label, r in look.table.iterrows():
            if label == self.baseline:
                rows.append([label, _int(r.get("n")), "—", "—", "—", "—", "baseline"])
                continue
            rows.append([label, _int(r.get("n")),
                         _interval(r.get("ratio"), r.get("ratio_low"), r.get("ratio_high"), "{:.3f}"),
                         _interval(r.get("diff"), r.get("low"), r.get("high"), "{:+.2f}"),
                         _p(r.get("p_adj")), _p(r.get("perm_p")), _verdict(r)])
        head = ["variant", "n", "ratio [low, high]", "diff [low, high] points", "p_adj", "perm_p", "verdict"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
        return f"{self.header(look)}\n" + "\n".join(lines) + f"\n\n{self.paragraph(look)}\n"

    def paragraph(self, look: Look) -> str:
        """One paragraph: which comparisons resolved and how, which not, and the seeds they need."""
        comparisons = look.comparisons
        by_verdict: dict[str, list[str]] = {}
        open_ones, needed = [], {}
        for label, r in comparisons.iterrows():
            verdict = str(r["verdict"])
            shown = _interval(r.get("ratio"), r.get("ratio_low"), r.get("ratio_high"), "{:.3f}")
            if is_resolved(verdict):
                by_verdict.setdefault("within" if verdict.startswith("within") else verdict, []).append(
                    f"{label} ({shown})")
                continue
            detail = verdict if shown == "—" else f"ratio {shown}" + ("" if verdict == "unresolved" else f", {verdict}")
            note = r.get("note")
            if isinstance(note, str) and note and note not in detail:
                detail += f": {note}"
            open_ones.append(f"{label} ({detail})")
            if _finite(r.get("seeds_needed")):
                needed[label] = math.ceil(float(r["seeds_needed"]))
        text = (f"Look {look.number} after {look.blocks} blocks, at nominal level {_level(look.level)}: "
                f"{sum(look.resolved.values())} of {len(comparisons)} comparisons with {self.baseline} resolved")
        names = {"lower": f"lower {self.metric}", "higher": f"higher {self.metric}",
                 "within": f"within ±{_percent(self.effect)}"}
        parts = [f"{names[v]}: {', '.join(by_verdict[v])}" for v in ("lower", "higher", "within") if v in by_verdict]
        if parts:
            text += " (ratio to the baseline [interval]) — " + "; ".join(parts)
        if not open_ones:
            return text + "."
        text += f". Unresolved: {'; '.join(open_ones)}."
        projected = self.blocks_to_resolve(look)
        if projected:
            soon = [f"{label} after {n}" for label, n in projected.items() if n is not None]
            never = [label for label, n in projected.items() if n is None]
            text += " If the estimates stayed where they are and the noise shrank with more blocks: "
            text += "; ".join(([f"resolved {', '.join(soon)} blocks"] if soon else [])
                              + ([f"not within {self.max_blocks} blocks: {', '.join(never)}"] if never else [])) + "."
        if needed:
            counts = (f"about {next(iter(needed.values()))}" if len(set(needed.values())) == 1
                      else ", ".join(f"{label} about {n}" for label, n in needed.items()))
            text += (f" (A fixed design, one look, would need {counts} seeds per variant to resolve a "
                     f"{_percent(self.effect)} difference with 80 % power at this noise.)")
        return text

    def write_look(self, look: Look) -> None:
        stem = self.looks_dir() / f"look_{look.blocks}"
        table = look.table.reset_index()
        table.insert(1, "look", look.number)
        table.insert(2, "blocks", look.blocks)
        table.insert(3, "level", look.level)
        _write_if_changed(stem.with_suffix(".csv"), table.to_csv(index=False))
        _write_if_changed(stem.with_suffix(".md"), self.markdown(look))

    def write_stop(self, reason: str, blocks: int, look: Look | None) -> None:
        """SWEEP_DIR/looks/stop.yaml: why and where the study stopped, and each verdict."""
        record: dict[str, Any] = {
            "stop": reason, "blocks": blocks, "seeds": [_plain(s) for s in self.seeds[:blocks]],
            "max_blocks": self.max_blocks, "baseline": self.baseline, "metric": self.metric,
            "look": None if look is None else look.number,
            "level": None if look is None else look.level,
            "verdicts": None if look is None else {str(k): str(v) for k, v in look.table["verdict"].items()},
        }
        _write_if_changed(self.looks_dir() / STOP_FILE, yaml.safe_dump(record, sort_keys=False, allow_unicode=True))

    def clear_stop(self) -> None:
        """Remove a stop record of an earlier session (the study is going on)."""
        (self.looks_dir() / STOP_FILE).unlink(missing_ok=True)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _int(x: Any) -> str:
    return str(int(x)) if _finite(x) else "—"


def _p(x: Any) -> str:
    return f"{float(x):.3g}" if _finite(x) else "—"


def _interval(mid: Any, low: Any, high: Any, fmt: str) -> str:
    if not _finite(mid):
        return "—"
    if not (_finite(low) and _finite(high)):
        return fmt.format(float(mid))
    return f"{fmt.format(float(mid))} [{fmt.format(float(low))}, {fmt.format(float(high))}]"


def _verdict(row: pd.Series) -> str:
    note = row.get("note")
    verdict = str(row.get("verdict"))
    return f"{verdict} ({note})" if isinstance(note, str) and note and note not in verdict else verdict


def _percent(level: float) -> str:
    return f"{100 * level:.4g} %"


def _level(level: float) -> str:
    """A confidence level with the digits that show how far it is from 100 % (99.9985 %, 96.4 %)."""
    miss = 100 * (1 - level)
    digits = max(1, 1 - math.floor(math.log10(miss))) if miss > 0 else 1
    return f"{100 * level:.{digits}f} %"


def _counts(blocks: Sequence[int]) -> str:
    return ", ".join(map(str, blocks)) if len(blocks) <= 6 else f"{blocks[0]}, {blocks[1]}, ..., {blocks[-1]}"


def _plain(x: Any) -> Any:
    return x if isinstance(x, (int, float, str, bool)) or x is None else str(x)


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` atomically unless ``path`` already holds it (a look computed again
    leaves its file, and its time stamp, as it was)."""
    try:
        if path.read_text() == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)


__all__ = ["BlockStudy", "DONE", "LOOKS", "Look", "METRICS", "STOP_FILE", "StudyError", "is_resolved"]
