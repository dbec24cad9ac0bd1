"""The columns of a run's ``metrics.csv`` (one row per epoch) and ``result.csv``
(one row per run). docs/outputs.md documents each one; losses are in nats per
token and ppl = exp(loss).
"""

from __future__ import annotations

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
    "train_tokens",  # training tokens seen this epoch
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
    "trainer.compile",  # off | default | reduce-overhead (torch.compile of the training forward)
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
    "train_tokens",
    "valid_tokens",
    "test_tokens",
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
