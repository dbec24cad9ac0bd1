#!/usr/bin/env bash
# Reproduce Gal & Ghahramani 2016 (Table 1) on PTB: the variational LSTM of Gal's LM code
# (untied per-gate masks on x_t and h_{t-1}), medium and large, three seeds each, with
# MC-dropout evaluation (10 passes per seed; Gal's code draws MC_samples=100 passes of 20
# copies of the test stream), then summarise standard and MC perplexities.
#   published val / test (MC test): medium 81.9 / 79.7 (78.6), large 77.9 / 75.2 (73.4)
#   usage: scripts/reproduce_gal.sh [extra overrides]
set -euo pipefail
sweep=outputs/reproduce/gal/$(date +%Y-%m-%d_%H-%M-%S)
rnnlm train -m experiment=gal_medium,gal_large seed=1,2,3 eval.mc_samples=10 \
  hydra.sweep.dir="$sweep" "$@"
rnnlm summary "$sweep" --plot
rnnlm summary "$sweep" --metric mc_ppl
