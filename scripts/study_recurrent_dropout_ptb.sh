#!/usr/bin/env bash
# The recurrent-dropout study on Penn Treebank, second edition
# (docs/studies/recurrent_dropout_ptb/README.md): the eight recurrent dropouts run one seed
# block at a time (two 1-thread jobs side by side) until every comparison with the
# no-recurrent-dropout baseline has resolved, or 12 blocks, or MAX_MINUTES; then the runs'
# small files (no checkpoints) and the looks are copied into the docs and summarised.
#   usage: RNNLM_DATA_DIR=/path/to/data scripts/study_recurrent_dropout_ptb.sh [SWEEP_DIR] [MAX_MINUTES] [MC_SAMPLES]
# The same command continues a study that was cut short (resume=auto: finished blocks are kept,
# interrupted runs continue from their checkpoints, the looks are recomputed).
# MC scoring of the Gal runs is opt-in (MC_SAMPLES > 0; Gal used 2000 per token): each sample
# costs one standard test pass, and 50 samples on six runs took as much core time as about 15
# training runs in the first edition.
set -euo pipefail
sweep=${1:-outputs/studies/recurrent_dropout_ptb}
minutes=${2:-150}
samples=${3:-0}
docs=docs/studies/recurrent_dropout_ptb

rnnlm train -m experiment=recurrent_dropout_ptb sweep=recurrent_dropout_blocks trainer.progress=false \
  hydra.sweep.dir="$sweep" hydra.sweeper.max_minutes="$minutes" resume=auto

for config in "$sweep"/*/.hydra/config.yaml; do
  run=$(dirname "$(dirname "$config")")
  if [ "$samples" -gt 0 ] && grep -q "kind: variational" "$config" && ! grep -q "^mc," "$run/eval.csv" 2>/dev/null; then
    rnnlm eval "$run" method=mc mc.samples="$samples" split=test threads=1
  fi
done

mkdir -p "$docs/runs" "$docs/looks"
for run in "$sweep"/*/; do
  [ -f "$run/result.csv" ] || continue
  dest="$docs/runs/$(basename "$run")"
  mkdir -p "$dest/.hydra"
  cp "$run/.hydra/config.yaml" "$run/.hydra/overrides.yaml" "$dest/.hydra/"
  for f in metrics.csv result.csv eval.csv; do if [ -f "$run/$f" ]; then cp "$run/$f" "$dest/"; fi; done
done
cp "$sweep"/looks/* "$docs/looks/" 2>/dev/null || true
rnnlm summary "$docs/runs" --group-by dropout.recurrent.kind dropout.recurrent.mask \
  --baseline dropout.recurrent.kind=none --plot > "$docs/summary.md"
