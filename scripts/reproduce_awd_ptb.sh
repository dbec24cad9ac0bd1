#!/usr/bin/env bash
# Reproduce AWD-LSTM on Penn Treebank (Merity et al. 2017; awd-lstm-lm README command),
# three seeds, then summarise. GPU work: ~500 epochs x ~1 min per run.
#   published (no finetune, README): val 61.2 / test 58.8; with finetune (paper): 60.0 / 57.3
#   usage: scripts/reproduce_awd_ptb.sh [extra overrides, e.g. hydra/launcher=slurm]
set -euo pipefail
sweep=outputs/reproduce/awd_ptb/$(date +%Y-%m-%d_%H-%M-%S)
rnnlm train -m experiment=awd_lstm_ptb seed=141,142,143 hydra.sweep.dir="$sweep" "$@"
rnnlm summary "$sweep" --plot
