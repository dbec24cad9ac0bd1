#!/usr/bin/env bash
# Reproduce Gal & Ghahramani 2016 on PTB: the variational LSTM of Gal's LM code
# (untied per-gate masks on x_t and h_{t-1}), medium and large, three seeds each, with the
# presets' MC-dropout evaluation (2000 samples per token: 100 passes of 20 copies of the
# stream, as Gal's code; it costs 2000 standard evaluations of validation and of test), then
# summarise standard and MC perplexities. Gal averaged the MC figure over 3 repeats.
#   As is, word dropout per sequence (Gal's script since its January 2017 fix). Published
#   val / test (MC test), BayesianRNN readme update 4: large 77.457 / 75.112 (73.318975131);
#   medium: none (not re-run).
#   With dropout.embedding_mask=token, word dropout per token, as Table 1 was produced (the
#   gal_*_table1 presets): medium 81.9 / 79.7 (78.6), large 77.9 / 75.2 (73.4).
#   Validation figures are main.lua's average (val_ppl_main_lua); as per-token means:
#   77.457 -> 78.56, 81.9 -> 83.1, 77.9 -> 79.0.
#   usage: scripts/reproduce_gal.sh [extra overrides]
set -euo pipefail
sweep=outputs/reproduce/gal/$(date +%Y-%m-%d_%H-%M-%S)
rnnlm train -m experiment=gal_medium,gal_large seed=1,2,3 \
  hydra.sweep.dir="$sweep" "$@"
rnnlm summary "$sweep" --plot
rnnlm summary "$sweep" --metric mc_ppl
