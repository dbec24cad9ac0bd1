#!/usr/bin/env bash
# Reproduce Zaremba et al. 2014 (Table 1) on PTB: small (no dropout), medium and large
# (standard dropout on non-recurrent connections), three seeds each, then summarise.
#   published val / test: small 120.7 / 114.5, medium 86.2 / 82.7, large 82.2 / 78.4; the
#   validation figures are main.lua's average (metrics.csv val_ppl_main_lua); as per-token
#   means (val_ppl) they are 121.8, 87.5, 83.4
#   usage: scripts/reproduce_zaremba.sh [extra overrides]
set -euo pipefail
sweep=outputs/reproduce/zaremba/$(date +%Y-%m-%d_%H-%M-%S)
rnnlm train -m experiment=zaremba_small,zaremba_medium,zaremba_large seed=1,2,3 \
  hydra.sweep.dir="$sweep" "$@"
rnnlm summary "$sweep" --plot
