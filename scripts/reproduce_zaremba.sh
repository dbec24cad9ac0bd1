#!/usr/bin/env bash
# Reproduce Zaremba et al. 2014 (Table 1) on PTB: small (no dropout), medium and large
# (standard dropout on non-recurrent connections), three seeds each, then summarise.
#   published val / test: small 120.7 / 114.5, medium 86.2 / 82.7, large 82.2 / 78.4
#   usage: scripts/reproduce_zaremba.sh [extra overrides]
set -euo pipefail
sweep=outputs/reproduce/zaremba/$(date +%Y-%m-%d_%H-%M-%S)
rnnlm train -m experiment=zaremba_small,zaremba_medium,zaremba_large seed=1,2,3 \
  hydra.sweep.dir="$sweep" "$@"
rnnlm summary "$sweep" --plot
