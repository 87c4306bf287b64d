#!/usr/bin/env bash
# `dsv4 quantize` measured (make bench):
#  1. the bundled model (models/default) to Q8 and Q4: size, and the loss/perplexity change over
#     the whole validation split (data/brown-4096/val.bin; made by scripts/prepare-brown-4096.sh
#     when missing, or over README prose when that cannot run);
#  2. the ~1B random model (configs/bench-1b.json, FP8 with FP4 experts, as `dsv4 bench` makes
#     it) to Q8 and Q4: decode speed before and after in the same run, exact and with int8
#     activations, and `dsv4 bench` on the result (share of the read bandwidth).
set -euo pipefail
cd "$(dirname "$0")/.."
D=./dsv4
OUT=${QUANT_OUT:-bench/quantized}
mkdir -p "$OUT"

EVAL=data/brown-4096/val.bin
[ -f "$EVAL" ] || scripts/prepare-brown-4096.sh > /dev/null 2>&1 || EVAL=README.md
echo "== models/default: perplexity over $EVAL =="
for to in q8 q4; do
  $D quantize -m models/default --out "$OUT/default-$to" --to $to --force --eval "$EVAL" --decode 256 2> /dev/null
done

[ -f bench/model-1b/config.json ] || $D bench --decode 1 --prefill 16 > /dev/null 2>&1
echo "== configs/bench-1b.json (FP8 + FP4 experts) requantised =="
for to in q8 q4; do
  $D quantize -m bench/model-1b --out "$OUT/model-1b-$to" --to $to --force --decode 32 2> /dev/null
  $D bench --model-dir "$OUT/model-1b-$to" --fast 2> /dev/null | grep -E "^(model|decode|fast)"
done
