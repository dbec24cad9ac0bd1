"""Score a loaded run with one method on one stream, timed, as an ``eval.csv`` row.

The data of a split is the run's own split (``valid``/``test``) or a user's file,
batchified into ``batch_size`` streams. Default batch sizes follow the references:
the standard and MC evaluations use the run's own (``dataset.eval_batch_size`` for
valid, ``dataset.test_batch_size`` for test), so they reproduce the training-time
figures; the pointer and dynamic evaluation use batch 1, as awd-lstm-lm
``pointer.py`` and benkrause ``dynamiceval.py`` do for both splits; a user's file is
read as one stream (batch 1) by every method.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import EvalConfig
from ..data import batchify
from ..runtime import provenance
from ..training import evaluate, evaluate_mc
from ..training.evaluate import GAL_MC_SAMPLES
from ..training.progress import WorkProgress
from .dynamic import DynamicSettings, GradientStats, evaluate_dynamic, gradient_statistics
from .pointer import PointerSettings, evaluate_pointer
from .runs import LoadedRun, RunError, encode_text
from .scoring import Score

SPLITS = ("valid", "test")


@dataclass(frozen=True)
class McSettings:
    """MC dropout: ``samples`` predictions per token from passes of ``columns`` copies of the
    stream (:func:`rnnlm.training.evaluate_mc`)."""

    samples: int = GAL_MC_SAMPLES
    columns: int = EvalConfig.mc_columns
    seed: int = 0
    word_dropout: bool = False

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"mc.samples={self.samples} must be >= 1, e.g. {GAL_MC_SAMPLES}")
        if self.columns < 1:
            raise ValueError(f"mc.columns={self.columns} must be >= 1, e.g. {EvalConfig.mc_columns}")


@dataclass
class Plan:
    """What one ``rnnlm eval`` call scores, with every parameter resolved."""

    methods: list[str]
    splits: list[str]  # valid | test | file
    file: Optional[Path] = None
    batch_size: Optional[int] = None  # None: per method and split (module docstring)
    bptt: Optional[int] = None  # None: the run's trainer.bptt (not dynamic)
    mc: McSettings = field(default_factory=McSettings)
    pointer: PointerSettings = field(default_factory=PointerSettings)
    dynamic: DynamicSettings = field(default_factory=DynamicSettings)
    dynamic_bptt: int = 5
    stats_batches: Optional[int] = None  # None: the whole training split
    stats_batch_size: int = 100
    progress: bool = True  # a bar (terminal) or lines (elsewhere) while MC scores; stderr


@dataclass
class Stream:
    name: str  # valid | test | file
    ids: torch.Tensor  # (N,)
    oov: int = 0
    file: Optional[Path] = None


def streams(run: LoadedRun, plan: Plan) -> list[Stream]:
    """The token streams to score (reads and checks a user's file)."""
    out = []
    for split in plan.splits:
        if split == "file":
            if plan.file is None:
                raise RunError("split=file needs file=PATH")
            ids, oov = encode_text(plan.file, run.vocab)
            out.append(Stream("file", ids, oov, plan.file))
        else:
            out.append(Stream(split, getattr(run.corpus, split)))
    return out


def batch_size_for(run: LoadedRun, plan: Plan, method: str, split: str) -> int:
    if plan.batch_size is not None:
        return plan.batch_size
    if method in ("pointer", "dynamic") or split == "file":
        return 1
    ds = run.cfg.dataset
    return ds.eval_batch_size if split == "valid" else ds.test_batch_size


def bptt_for(run: LoadedRun, plan: Plan, method: str) -> int:
    if method == "dynamic":
        return plan.dynamic_bptt
    return plan.bptt if plan.bptt is not None else run.cfg.trainer.bptt


def check_sizes(run: LoadedRun, plan: Plan, data: list[Stream]) -> None:
    """Every stream gives each batch column an input and a target; so does train for statistics."""
    for stream in data:
        for method in plan.methods:
            size = batch_size_for(run, plan, method, stream.name)
            if stream.ids.numel() < 2 * size:
                raise RunError(
                    f"batch_size={size} is too large for the {stream.ids.numel()}-token {stream.name} split "
                    f"({method}); use at most {stream.ids.numel() // 2}"
                )
    if "dynamic" in plan.methods and plan.dynamic.rule == "rms":
        n = run.corpus.train.numel()
        if n < 2 * plan.stats_batch_size:
            raise RunError(
                f"dynamic.stats_batch_size={plan.stats_batch_size} is too large for the {n}-token train split; "
                f"use at most {n // 2}"
            )


@functools.cache
def _provenance() -> dict[str, str]:
    return provenance()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Evaluator:
    """Runs the methods of a plan on one loaded run; gradient statistics are gathered once."""

    def __init__(self, run: LoadedRun, plan: Plan) -> None:
        self.run, self.plan = run, plan
        self._stats: Optional[GradientStats] = None
        self.stats_seconds = 0.0

    def gradient_stats(self) -> GradientStats:
        if self._stats is None:
            plan, run = self.plan, self.run
            train = batchify(run.corpus.train, plan.stats_batch_size, run.device)
            start = time.perf_counter()
            self._stats = gradient_statistics(run.model, train, plan.dynamic_bptt, plan.stats_batches)
            _sync(run.device)
            self.stats_seconds = time.perf_counter() - start
        return self._stats

    def score(self, method: str, stream: Stream, **overrides: Any) -> tuple[Score, dict[str, Any]]:
        """Score ``stream`` with ``method``; ``overrides`` replace the plan's ``pointer``,
        ``dynamic`` or ``mc`` settings (tuning). Returns the score and its eval.csv row."""
        plan, run = self.plan, self.run
        mc = overrides.get("mc", plan.mc)
        pointer = overrides.get("pointer", plan.pointer)
        dynamic = overrides.get("dynamic", plan.dynamic)
        size = batch_size_for(run, plan, method, stream.name)
        bptt = bptt_for(run, plan, method)
        data = batchify(stream.ids, size, run.device)
        setup = 0.0
        stats = None
        if method == "dynamic":
            if dynamic.rule == "rms":
                fresh = self._stats is None
                stats = self.gradient_stats()
                setup = self.stats_seconds if fresh else 0.0
            dynamic = dynamic.resolved(stats)  # the values used, as eval.csv records them
        _sync(run.device)
        start = time.perf_counter()
        if method == "standard":
            score = Score(evaluate(run.model, data, bptt), data[1:].numel())
        elif method == "mc":
            extra = {"word_dropout": True} if mc.word_dropout else {}  # the keyword only when it matters
            targets = data[1:].numel()
            passes = -(-mc.samples // mc.columns)
            bar = WorkProgress(f"mc {stream.name}", mc.samples, "samples", targets, "token-samples",
                               enabled=plan.progress,
                               detail=f", {passes} passes of up to {mc.columns} columns")
            try:
                loss = evaluate_mc(run.model, data, bptt, samples=mc.samples, columns=mc.columns, seed=mc.seed,
                                   progress=bar.update, **extra)
            finally:
                bar.close()
            score = Score(loss, targets)
        elif method == "pointer":
            score = evaluate_pointer(run.model, data, bptt, pointer)
        elif method == "dynamic":
            score = evaluate_dynamic(run.model, data, bptt, dynamic, stats)
        else:
            raise ValueError(f"unknown method {method!r}")
        _sync(run.device)
        seconds = time.perf_counter() - start
        row: dict[str, Any] = {
            "method": method, "split": stream.name, "file": str(stream.file) if stream.file else None,
            "checkpoint": run.checkpoint, "loss": score.loss, "ppl": score.ppl, "tokens": score.tokens,
            "oov_words": stream.oov, "seconds": round(seconds, 3),
            "tokens_per_second": round(score.tokens / seconds, 1) if seconds > 0 else None,
            # MC predicts each token mc.samples times: the work done per second
            "token_samples_per_second": (round(score.tokens * mc.samples / seconds, 1)
                                         if method == "mc" and seconds > 0 else None),
            "setup_seconds": round(setup, 3) if setup else None, "batch_size": size, "bptt": bptt,
            "dataset": run.cfg.dataset.name, "device": str(run.device), "torch_version": torch.__version__,
            **_provenance(),
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if method == "mc":
            row.update({"mc.samples": mc.samples, "mc.columns": mc.columns, "mc.seed": mc.seed,
                        "mc.word_dropout": mc.word_dropout})
        if method == "pointer":
            row.update({"pointer.window": pointer.window, "pointer.theta": pointer.theta,
                        "pointer.lambda": pointer.lambd, "pointer.start": pointer.start})
        if method == "dynamic":
            row.update({"dynamic.rule": dynamic.rule, "dynamic.lr": dynamic.lr, "dynamic.decay": dynamic.decay})
            if dynamic.rule == "rms":
                row.update({"dynamic.epsilon": dynamic.epsilon, "dynamic.stats_batches": stats.batches,
                            "dynamic.stats_batch_size": plan.stats_batch_size})
        return score, row
