#!/usr/bin/env bash
# Reproduce AWD-LSTM on WikiText-2 (awd-lstm-lm README command), three seeds, then
# summarise. GPU work: 750 epochs x ~2 min per run.
#   published (no finetune, README): val 68.7 / test 65.6; with finetune (paper): 68.6 / 65.8
#   usage: scripts/reproduce_awd_wt2.sh [extra overrides]
set -euo pipefail
sweep=outputs/reproduce/awd_wt2/$(date +%Y-%m-%d_%H-%M-%S)
rnnlm train -m experiment=awd_lstm_wt2 seed=1882,1883,1884 hydra.sweep.dir="$sweep" "$@"
rnnlm summary "$sweep" --plot
