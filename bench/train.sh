#!/usr/bin/env bash
# Training throughput of dsv4's trainer beside PyTorch (reference/train_torch.py: the float64
# reference model of reference/v4_ref.py run in float32 with autograd + torch.optim.AdamW) on the
# same small DeepSeek V4 config (configs/train-bench.json), same sequence length and batch, same
# initial weights, 2 threads each, in one run. Builds nothing: needs ./dsv4 and /usr/bin/python3
# with torch. Both sides: main-head next-token cross-entropy only (dsv4: --mtp-weight 0 --indexer-weight 0
# --balance-alpha 0 --bias-update 0), AdamW, gradient clipping at 1; step 1 is not timed.
set -euo pipefail
cd "$(dirname "$0")/.."
CFG=configs/train-bench.json
SEQ=${SEQ:-512} BATCH=${BATCH:-1} STEPS=${STEPS:-5} THREADS=2
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT

# data: Python's library sources -> a 4096-id BPE tokenizer -> token shards
cat /usr/lib/python3*/*.py > "$TMP/text.txt"
./dsv4 tokenizer train --vocab 4096 --data "$TMP/text.txt" --out "$TMP/tok.json" >/dev/null 2>&1
./dsv4 data prepare --tokenizer "$TMP/tok.json" --data "$TMP/text.txt" --out "$TMP/data" >/dev/null 2>&1
./dsv4 init --config "$CFG" --seed 1 --out "$TMP/model" --dtype f32 >/dev/null 2>&1
active=$(./dsv4 plan "$CFG" --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["active_params"])')

echo "dsv4 train: $STEPS steps, seq $SEQ, batch $BATCH, $THREADS threads ..." >&2
./dsv4 train --config "$CFG" --init-from "$TMP/model" --data "$TMP/data" --out "$TMP/run" \
  --steps "$STEPS" --seq "$SEQ" --batch "$BATCH" --eval-every 0 --ckpt-every 0 --optimizer adamw \
  --mtp-weight 0 --balance-alpha 0 --bias-update 0 --indexer-weight 0 --warmup 1 --lr 3e-4 > "$TMP/dsv4.log" 2>&1
grep '^step ' "$TMP/dsv4.log" >&2
# timed: steps 2..N, total tokens / total time (harmonic mean of the per-step tok/s)
ours=$(grep '^step ' "$TMP/dsv4.log" | tail -n +2 | /usr/bin/python3 -c '
import sys
r = [float(l.split()[-2]) for l in sys.stdin]
print(len(r) / sum(1 / x for x in r))')

echo "PyTorch: $STEPS steps, seq $SEQ, batch $BATCH, $THREADS threads ..." >&2
/usr/bin/python3 reference/train_torch.py -m "$TMP/model" --data "$TMP/data/train.bin" \
  --seq "$SEQ" --batch "$BATCH" --steps "$STEPS" --threads "$THREADS" --lr 3e-4 > "$TMP/torch.log" 2>&1
grep '^step ' "$TMP/torch.log" >&2
ref=$(tail -1 "$TMP/torch.log" | awk '$1 == "tok/s" {print $2}')

# the machine's sgemm rate on the same threads: best of 5 2048x2048 float32 matmuls (torch/OpenBLAS)
sgemm=$(/usr/bin/python3 -c '
import time, torch
torch.set_num_threads('"$THREADS"')
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
a @ b
best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(5))
print(2 * 2048 ** 3 / best / 1e9)' 2>/dev/null || echo 0)

/usr/bin/python3 - "$ours" "$ref" "$active" "$sgemm" "$SEQ" "$BATCH" "$THREADS" <<'P'
import sys
ours, ref, active, sgemm = (float(v) for v in sys.argv[1:5])
seq, batch, threads = sys.argv[5:8]
print(f"training throughput, configs/train-bench.json ({active / 1e6:.2f}M active parameters), "
      f"seq {seq}, batch {batch}, {threads} threads, float32:")
for name, tps in (("dsv4", ours), ("PyTorch", ref)):
    gf = 6 * active * tps / 1e9
    frac = f"   {100 * gf / sgemm:5.1f}% of sgemm" if sgemm > 0 else ""
    print(f"  {name:8s} {tps:9.1f} tok/s   {gf:7.2f} GFLOP/s (6 x active params x tok/s){frac}")
print(f"  dsv4 / PyTorch = {ours / ref:.2f}x")
if sgemm > 0:
    print(f"  sgemm 2048^3 float32, {threads} threads: {sgemm:.1f} GFLOP/s")
P
