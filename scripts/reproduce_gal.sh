#!/usr/bin/env bash
# Reproduce Gal & Ghahramani 2016 (Table 1) on PTB: variational LSTM, untied masks,
# medium and large, three seeds each, with MC-dropout evaluation (10 passes; the
# paper averaged 1000), then summarise standard and MC perplexities.
#   published val / test (MC test): medium 81.9 / 79.7 (78.6), large 77.9 / 75.2 (73.4)
#   usage: scripts/reproduce_gal.sh [extra overrides]
set -euo pipefail
sweep=outputs/reproduce/gal/$(date +%Y-%m-%d_%H-%M-%S)
rnnlm train -m experiment=gal_medium,gal_large seed=1,2,3 eval.mc_samples=10 \
  hydra.sweep.dir="$sweep" "$@"
rnnlm summary "$sweep" --plot
rnnlm summary "$sweep" --metric mc_ppl
