#!/usr/bin/env bash
# CPU inference against the machine's limits, measured in one run (make bench):
#  1. each decode kernel alone (BF16, FP8, FP4 weights) against the read bandwidth measured at
#     the same thread count, 1..N threads;
#  2. the ~1B-parameter random model (configs/bench-1b.json) stored as FP8 with FP4 experts (the
#     official layout), as FP8 with FP8 experts, and as BF16: prefill and decode at 1 thread and
#     at all threads, the prefill speed-up from threads, and the int8-activation fast mode with
#     how far it moves the logits;
#  3. MTP speculative decoding on the bundled model: acceptance and speed against plain
#     decoding (the outputs are compared: they must be identical).
set -euo pipefail
cd "$(dirname "$0")/.."
D=./dsv4
THREADS=${OMP_NUM_THREADS:-$(nproc)}

echo "== decode kernels (1 GiB of weights each) =="
$D bench --kernels

for v in fp8:fp4 fp8:fp8 bf16:bf16; do
  dt=${v%:*} ex=${v#*:}
  echo "== configs/bench-1b.json stored as $dt, experts $ex =="
  opts=(--dtype "$dt")
  [ "$dt" = fp8 ] && opts+=(--expert-dtype "$ex")
  j1=$(OMP_NUM_THREADS=1 $D bench --json "${opts[@]}" 2> /dev/null)
  jn=$(OMP_NUM_THREADS=$THREADS $D bench --json "${opts[@]}" $([ "$ex" = fp4 ] && echo --fast) 2> /dev/null)
  /usr/bin/python3 - "$j1" "$jn" <<'P'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"weights {a['weights']}, {a['decode_weight_bytes_per_token'] / 1e6:.1f} MB read per decoded token")
for r in (a, b):
    print(f"{r['threads']} thread(s): read {r['read_gbps']:.1f} GB/s, sgemm {r['sgemm_gflops']:.0f} GFLOP/s | "
          f"prefill {r['prefill_tok_s']:.1f} tok/s = {r['prefill_gflops']:.1f} GFLOP/s ({100 * r['prefill_gflops'] / r['sgemm_gflops']:.0f}% of sgemm) | "
          f"decode {r['decode_tok_s']:.2f} tok/s = {r['decode_gbps']:.1f} GB/s ({100 * r['decode_gbps'] / r['read_gbps']:.0f}% of read)")
if b['threads'] > 1:
    print(f"prefill speed-up 1 -> {b['threads']} threads: {b['prefill_tok_s'] / a['prefill_tok_s']:.2f}x; "
          f"decode: {b['decode_tok_s'] / a['decode_tok_s']:.2f}x")
if 'fast_decode_tok_s' in b:
    print(f"fast mode (int8 activations for the FP4 experts): decode {b['fast_decode_tok_s']:.2f} tok/s "
          f"({100 * b['fast_decode_gbps'] / b['read_gbps']:.0f}% of read); logits: max difference {b['fast_logit_max_diff']:.4f} "
          f"(largest |logit| {b['fast_logit_max_abs']:.2f}), mean KL {b['fast_kl_nats']:.2e} nats, same top token {100 * b['fast_top1_agree']:.0f}%")
P
done

echo "== MTP speculative decoding, models/default =="
ids=$(for i in $(seq 1 4); do echo "The committee said that the new law would take effect next year."; done |
  $D tokenize -m models/default | tr ' ' ',')
for opts in "" "--temp 0.8 --seed 3"; do
  # shellcheck disable=SC2086
  plain=$($D run -m models/default --ids "$ids" -n 512 --ignore-eos $opts 2> /tmp/dsv4-bench-plain.txt)
  # shellcheck disable=SC2086
  spec=$($D run -m models/default --ids "$ids" -n 512 --ignore-eos --speculative $opts 2> /tmp/dsv4-bench-spec.txt)
  [ "$plain" = "$spec" ] || { echo "speculative output differs from plain decoding" >&2; exit 1; }
  p=$(sed -n 's/^generate: .*(\([0-9.]*\) tok\/s)/\1/p' /tmp/dsv4-bench-plain.txt)
  s=$(sed -n 's/^generate: .*(\([0-9.]*\) tok\/s)/\1/p' /tmp/dsv4-bench-spec.txt)
  echo "${opts:-greedy}: plain $p tok/s, speculative $s tok/s ($(/usr/bin/python3 -c "print(f'{$s / $p:.2f}x')")), identical output; $(grep -o 'drafts accepted.*' /tmp/dsv4-bench-spec.txt)"
done
rm -f /tmp/dsv4-bench-plain.txt /tmp/dsv4-bench-spec.txt
