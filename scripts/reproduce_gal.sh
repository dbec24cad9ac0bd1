#!/usr/bin/env bash
# Reproduce Gal & Ghahramani 2016 (Table 1) on PTB: the variational LSTM of Gal's LM code
# (untied per-gate masks on x_t and h_{t-1}), medium and large, three seeds each, with the
# presets' MC-dropout evaluation (2000 samples per token: 100 passes of 20 copies of the
# stream, as Gal's code; it costs 2000 standard evaluations of validation and of test), then
# summarise standard and MC perplexities. Gal averaged the MC figure over 3 repeats.
#   published val / test (MC test): medium 81.9 / 79.7 (78.6), large 77.9 / 75.2 (73.4); the
#   validation figures are main.lua's average (val_ppl_main_lua), 83.1 and 79.0 as per-token means
#   usage: scripts/reproduce_gal.sh [extra overrides]
set -euo pipefail
sweep=outputs/reproduce/gal/$(date +%Y-%m-%d_%H-%M-%S)
rnnlm train -m experiment=gal_medium,gal_large seed=1,2,3 \
  hydra.sweep.dir="$sweep" "$@"
rnnlm summary "$sweep" --plot
rnnlm summary "$sweep" --metric mc_ppl
