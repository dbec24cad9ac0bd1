#!/usr/bin/env bash
# The recurrent-dropout study on Penn Treebank (docs/studies/recurrent_dropout_ptb/README.md):
# train the 24 runs (8 recurrent dropouts x 3 seeds, two 1-thread jobs at a time), score the
# Gal variants with MC dropout, summarise against the no-recurrent-dropout baseline, and copy
# the runs' small files (no checkpoints) into the docs.
#   usage: scripts/study_recurrent_dropout_ptb.sh [SWEEP_DIR] [MC_SAMPLES]
# The same command continues a study that was cut short (resume=auto: finished jobs are passed
# over, interrupted ones continue from their checkpoint).
set -euo pipefail
sweep=${1:-outputs/studies/recurrent_dropout_ptb}
samples=${2:-100}  # MC predictions per token (Gal: 2000; his readme: 100 give 75.3, 2000 give 75.06)
docs=docs/studies/recurrent_dropout_ptb

rnnlm train -m experiment=recurrent_dropout_ptb sweep=recurrent_dropout_ptb trainer.progress=false \
  hydra.sweep.dir="$sweep" resume=auto

for config in "$sweep"/*/.hydra/config.yaml; do
  run=$(dirname "$(dirname "$config")")
  if grep -q "kind: variational" "$config" && ! grep -q "^mc," "$run/eval.csv" 2>/dev/null; then
    rnnlm eval "$run" method=standard,mc mc.samples="$samples" split=valid,test threads=2
  fi
done

for run in "$sweep"/*/; do
  dest="$docs/runs/$(basename "$run")"
  mkdir -p "$dest/.hydra"
  cp "$run/.hydra/config.yaml" "$run/.hydra/overrides.yaml" "$dest/.hydra/"
  for f in metrics.csv result.csv eval.csv; do if [ -f "$run/$f" ]; then cp "$run/$f" "$dest/"; fi; done
done
groups=(--group-by dropout.recurrent.kind dropout.recurrent.mask)
# MC first: rnnlm summary writes its files into the first DIR, and the main summary's are kept.
rnnlm summary "$docs/runs" --metric mc_eval_ppl --filter dropout.recurrent.kind=variational "${groups[@]}" \
  > "$docs/mc_summary.md"
rnnlm summary "$docs/runs" "${groups[@]}" --baseline dropout.recurrent.kind=none --plot > "$docs/summary.md"
