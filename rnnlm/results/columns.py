"""The columns of a run's ``metrics.csv`` (one row per epoch) and ``result.csv``
(one row per run). docs/outputs.md documents each one; losses are in nats per
token and ppl = exp(loss).

Token counts have one name per meaning: ``dataset.train_tokens`` is the setting that
trains on a head of the training split, ``epoch_tokens`` (metrics.csv) the training
tokens an epoch saw, and ``train_split_tokens``, ``valid_split_tokens``,
``test_split_tokens`` (result.csv) the size of each split as the run used it. Runs
written by an older rnnlm name some columns differently; :func:`current_names` gives
their rows today's names (:data:`OLD_NAMES`).
"""

from __future__ import annotations

from typing import Any, Mapping

METRICS_COLUMNS = (
    "epoch",  # 1-based, counted across stages
    "stage",  # train | finetune
    "lr",  # base learning rate of the epoch (before variable-BPTT scaling)
    "optimizer",  # sgd | asgd
    "train_loss",  # mean per-token training loss (dropout on, without AR/TAR)
    "train_ppl",
    "val_loss",  # validation loss (batch dataset.eval_batch_size; ASGD: averaged weights)
    "val_ppl",
    "val_ppl_main_lua",  # eval.main_lua_val: validation averaged as main.lua (empty otherwise)
    "epoch_seconds",  # wall time of the epoch's training and validation
    "tokens_per_second",  # training tokens per second of training time
    "epoch_tokens",  # training tokens seen this epoch
    "validated",  # false: an epoch before trainer.validate_from, val_* left empty
    "weights",  # the weights validated: current | asgd | uniform | ema (trainer.average)
)

# Config keys copied into result.csv under their own names.
SETTING_COLUMNS = (
    "dataset.name",
    "dataset.train_tokens",  # empty: the whole training split
    "dataset.closed_vocab",
    "model.emsize",
    "model.nhid",
    "model.nlayers",
    "model.tie_weights",
    "dropout.embedding",
    "dropout.input",
    "dropout.hidden",
    "dropout.output",
    "dropout.locked",
    "dropout.recurrent.kind",
    "dropout.recurrent.rate",
    "dropout.recurrent.mask",
    "dropout.recurrent.cell_rate",
    "optim.name",
    "optim.lr",
    "trainer.bptt",
    "trainer.max_epochs",
    "trainer.alpha",
    "trainer.beta",
    "eval.mc_samples",
    "eval.test_weights",
    "dropout.recurrent.per_gate_input",
    "optim.weight_shrink",
    "precision",
    "deterministic",
    "dropout.embedding_mask",
    "trainer.loss_reduction",
    "eval.mc_columns",
    "trainer.compile",  # off | default (each step of the fused step loop under torch.compile)
    "trainer.average",  # none | uniform | ema: the weights validated and tested
    "trainer.average_from",
    "trainer.ema_decay",
    "trainer.validate_from",
    "trainer.patience",
)

RESULT_COLUMNS = (
    "seed",
    "status",  # running | completed | diverged | pruned (by a search: untested, finished) | interrupted | failed
    "stop_reason",  # max_epochs | max_minutes | finetune_converged | patience | diverged | pruned | interrupted_{train,finetune,test}
    "vocab_size",
    "train_split_tokens",  # tokens of the training split trained on: its first dataset.train_tokens when set
    "valid_split_tokens",
    "test_split_tokens",
    "n_params",
    "epochs_run",
    "asgd_epoch",  # first epoch trained with ASGD; empty if never switched
    "best_epoch",
    "best_val_loss",
    "best_val_ppl",
    "test_loss",
    "test_ppl",
    "mc_val_ppl",  # MC-dropout figures; empty unless eval.mc_samples > 0
    "mc_test_ppl",
    "eval_batch_size",
    "test_batch_size",
    "wall_seconds",
    "device",
    "torch_version",
    "rnnlm_version",
    "git_revision",  # git describe of the rnnlm checkout that ran (-dirty: uncommitted changes); empty from a wheel
    "source_hash",  # SHA-256 (12 hex digits) of the installed rnnlm source and configs (rnnlm.runtime.source_hash)
    "init_seed",  # the seed of each random stream (rnnlm/training/streams.py): seeds.* or derived from seed
    "data_seed",
    "dropout_seed",
    "recurrent_seed",
    "overrides",  # the command-line overrides of the run, space-separated
    "run_dir",  # relative to the working directory when below it
) + SETTING_COLUMNS

# file -> {name an older rnnlm wrote: today's name}; the same old name can mean different
# things in different files (``train_tokens``: an epoch's tokens in metrics.csv, the
# training split's in result.csv).
OLD_NAMES: dict[str, dict[str, str]] = {
    "metrics.csv": {"train_tokens": "epoch_tokens"},
    "result.csv": {"train_tokens": "train_split_tokens", "valid_tokens": "valid_split_tokens",
                   "test_tokens": "test_split_tokens"},
}


def current_name(column: str, file: str) -> str:
    """Today's name of ``column`` as read from a run's ``file`` (``metrics.csv`` or
    ``result.csv``, or a checkpoint's metrics rows: ``metrics.csv``)."""
    return OLD_NAMES[file].get(column, column)


def current_names(row: Mapping[str, Any], file: str) -> dict[str, Any]:
    """``row`` of a run's ``file`` with every column under today's name (:func:`current_name`)."""
    return {current_name(k, file): v for k, v in row.items()}


def current_status(row: Mapping[str, Any]) -> Any:
    """The ``status`` of a run's result.csv ``row`` as rnnlm writes it today: a run that a
    search's pruner stopped is ``pruned`` (its figures are an early epoch's), which an older
    rnnlm wrote as ``completed`` with ``stop_reason=pruned``."""
    status = row.get("status")
    return "pruned" if status == "completed" and row.get("stop_reason") == "pruned" else status
