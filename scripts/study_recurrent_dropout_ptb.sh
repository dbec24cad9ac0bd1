#!/usr/bin/env bash
# The recurrent-dropout study on Penn Treebank (docs/studies/recurrent_dropout_ptb/README.md):
# train the 24 runs (8 recurrent dropouts x 3 seeds, two 1-thread jobs at a time), optionally
# score the Gal variants with MC dropout, summarise against the no-recurrent-dropout baseline,
# and copy the runs' small files (no checkpoints) into the docs.
#   usage: scripts/study_recurrent_dropout_ptb.sh [SWEEP_DIR] [MC_SAMPLES]
# MC scoring is opt-in (MC_SAMPLES > 0): scoring six runs with 50 samples took as much core
# time as about 15 training runs.
# The same command continues a study that was cut short (resume=auto: finished jobs are passed
# over, interrupted ones continue from their checkpoint).
set -euo pipefail
sweep=${1:-outputs/studies/recurrent_dropout_ptb}
# MC predictions per test token (Gal: 2000; his readme: 100 give 75.3, 2000 give 75.06); 0, the
# default, scores nothing. Each sample costs one standard test pass: the first edition used 50
# on the test split alone, about 10 minutes a run on one core.
samples=${2:-0}
docs=docs/studies/recurrent_dropout_ptb

rnnlm train -m experiment=recurrent_dropout_ptb sweep=recurrent_dropout_ptb trainer.progress=false \
  hydra.sweep.dir="$sweep" resume=auto

for config in "$sweep"/*/.hydra/config.yaml; do
  run=$(dirname "$(dirname "$config")")
  if [ "$samples" -gt 0 ] && grep -q "kind: variational" "$config" && ! grep -q "^mc," "$run/eval.csv" 2>/dev/null; then
    rnnlm eval "$run" method=mc mc.samples="$samples" split=test threads=1
  fi
done

for run in "$sweep"/*/; do
  dest="$docs/runs/$(basename "$run")"
  mkdir -p "$dest/.hydra"
  cp "$run/.hydra/config.yaml" "$run/.hydra/overrides.yaml" "$dest/.hydra/"
  for f in metrics.csv result.csv eval.csv; do if [ -f "$run/$f" ]; then cp "$run/$f" "$dest/"; fi; done
done
# The MC test perplexities of the Gal runs (eval.csv) are reported beside the standard ones.
rnnlm summary "$docs/runs" --group-by dropout.recurrent.kind dropout.recurrent.mask \
  --baseline dropout.recurrent.kind=none --plot > "$docs/summary.md"
