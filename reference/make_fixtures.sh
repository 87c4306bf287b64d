#!/usr/bin/env bash
# Regenerates tests/fixtures/: tiny random models written by `dsv4 init` in three storage
# layouts, a token sequence, and the logits of the independent PyTorch reference
# (reference/v4_ref.py, float64, non-incremental). Run from the project root: make fixtures.
set -euo pipefail
F=tests/fixtures
PY=/usr/bin/python3
rm -rf "$F/tiny-bf16" "$F/tiny-fp8" "$F/alt-f32"
./dsv4 init --config configs/tiny.json --seed 7 --out "$F/tiny-bf16" --dtype bf16
./dsv4 init --config configs/tiny.json --seed 11 --out "$F/tiny-fp8" --dtype fp8
./dsv4 init --config "$F/alt-hf.json" --seed 5 --out "$F/alt-f32" --dtype f32
# 300 tokens: long enough for windows (16, 8), ratio-128 entries and index_topk < visible entries
$PY -c "import random; r=random.Random(1234); print(' '.join(str(r.randrange(512)) for _ in range(300)))" > "$F/tokens.txt"
for m in tiny-bf16 tiny-fp8 alt-f32; do
  $PY reference/v4_ref.py -m "$F/$m" --tokens "$F/tokens.txt" --out "$F/$m/ref_logits.f32" --mtp-out "$F/$m/ref_mtp.f32"
done
$PY reference/v4_ref.py -m "$F/tiny-fp8" --tokens "$F/tokens.txt" --out "$F/tiny-fp8/ref_logits_quant.f32" --quant
# gradients of the mean next-token cross-entropy (float64 autograd), for `dsv4 grad`
for m in tiny-fp8 alt-f32; do
  $PY reference/v4_ref.py -m "$F/$m" --tokens "$F/tokens.txt" --grad-out "$F/$m/ref_grads.safetensors" > /dev/null
done
# the same with the MTP term: loss = CE_main + 0.3 * CE_mtp (MTP logits at i predict token i+2)
for m in tiny-fp8 alt-f32; do
  $PY reference/v4_ref.py -m "$F/$m" --tokens "$F/tokens.txt" --grad-out "$F/$m/ref_grads_mtp.safetensors" --mtp-weight 0.3 > /dev/null
done
# the indexer's KL term of the DeepSeek V3.2 recipe (loss += 1.0 * sum over indexer layers of the
# mean KL(main attention || indexer) over the selected compressed entries): sparse stage, dense
# warm-up stage (the main attention reads every visible entry), and with the MTP term (whose
# block has its own indexer in alt-f32)
for m in tiny-fp8 alt-f32; do
  $PY reference/v4_ref.py -m "$F/$m" --tokens "$F/tokens.txt" --grad-out "$F/$m/ref_grads_idx.safetensors" --indexer-weight 1.0 > /dev/null
  $PY reference/v4_ref.py -m "$F/$m" --tokens "$F/tokens.txt" --grad-out "$F/$m/ref_grads_idx_dense.safetensors" --indexer-weight 1.0 --indexer-dense > /dev/null
  $PY reference/v4_ref.py -m "$F/$m" --tokens "$F/tokens.txt" --grad-out "$F/$m/ref_grads_idx_mtp.safetensors" --indexer-weight 1.0 --mtp-weight 0.3 > /dev/null
done
