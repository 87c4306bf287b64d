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
# Engram: a tiny model with Engram in layers 0 and 2 (n-grams 2..3, 2 heads of 8 dims, tables of
# primes from 101 / 103 rows, short conv of kernel 4), its own BPE tokenizer (the hash needs it:
# reference/v4_ref.py reads DIR/tokenizer.json; init neither copies nor removes it) and 200 ids of
# tests/data/small.txt; vocab_size = the tokenizer's id count when that is below tiny.json's 512
E="$F/engram-tiny"
rm -rf "$E"
mkdir -p "$E"
./dsv4 tokenizer train --vocab 512 --data tests/data/small.txt --out "$E/tokenizer.json"
ECFG=$(mktemp)
trap 'rm -f "$ECFG"' EXIT
$PY - "$E/tokenizer.json" > "$ECFG" <<'EOF'
import json, re, sys
sys.path.insert(0, "reference")
import engram_ref
n_ids = len(engram_ref.load_tokenizer(sys.argv[1]))
t = open("configs/tiny.json").read()
v = min(json.loads(t)["vocab_size"], n_ids)
t = re.sub(r'"vocab_size": [0-9]+', f'"vocab_size": {v}', t, count=1)
t = (t.rstrip()[:-1].rstrip() + ',\n'
     '  "engram_layer_ids": [0, 2], "engram_max_ngram_size": 3, "engram_n_heads": 2, "engram_head_dim": 8,\n'
     '  "engram_vocab_size": [101, 103], "engram_pad_token_id": 0, "engram_seed": 3, "engram_kernel_size": 4\n}\n')
json.loads(t)
sys.stdout.write(t)
EOF
./dsv4 init --config "$ECFG" --seed 9 --out "$E" --dtype f32
./dsv4 tokenize --tokenizer "$E/tokenizer.json" < tests/data/small.txt \
  | $PY -c "import sys; print(' '.join(sys.stdin.read().split()[:200]))" > "$E/tokens.txt"
$PY reference/v4_ref.py -m "$E" --tokens "$E/tokens.txt" --out "$E/ref_logits.f32" --mtp-out "$E/ref_mtp.f32"
$PY reference/v4_ref.py -m "$E" --tokens "$E/tokens.txt" --grad-out "$E/ref_grads.safetensors" > /dev/null

# the first 21 tokens: every gate dot |s| > 3e-3 there (at t = 21 of the full sequence, s = -9.85e-5 in
# layer 0, where the signed square root magnifies float32 rounding: d sqrt|s| / ds = 1 / (2 sqrt|s|) ~ 50)
$PY -c "import sys; print(' '.join(open(sys.argv[1]).read().split()[:21]))" "$E/tokens.txt" > "$E/tokens-21.txt"
$PY reference/v4_ref.py -m "$E" --tokens "$E/tokens-21.txt" --grad-out "$E/ref_grads_21.safetensors" > /dev/null
