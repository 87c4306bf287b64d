#!/usr/bin/env bash
# Training with Engram tables larger than the memory the process may use (train --engram-on-disk):
# the backbone of configs/default.json with Engram in layers 1 and 2, tables of DSV4_TRAIN_TABLE_GB
# (default 6) GB as F32, trained on Brown inside a memory cgroup of DSV4_TRAIN_MEM_GB (default 2) GB
# (page cache included: the tables cannot all be cached), against the same model with a small
# table trained in memory without a limit. Reports tokens/s of both, the cgroup's peak memory and
# the store's disk use. Needs root for the cgroup (v1 memory controller); without it, runs
# unlimited and says so. Writes under bench/engram-train (removed afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
GB=${DSV4_TRAIN_TABLE_GB:-6}
MEM_GB=${DSV4_TRAIN_MEM_GB:-2}
STEPS=${STEPS:-12}
W=bench/engram-train
need=$($PY -c "print(int(4 * $GB + 2))")   # the F32 starting model, the store's table, moments touched, margin
free=$(df -P --block-size=1G bench | awk 'NR == 2 {print $4}')
if [ "$free" -lt "$need" ]; then echo "bench/engram-train.sh: skipped: needs about $need GB free on $(df -P bench | awk 'NR == 2 {print $6}'), has $free GB"; exit 0; fi
scripts/prepare-brown-4096.sh > /dev/null
rm -rf "$W"
mkdir -p "$W"
trap 'rm -rf "$W"; [ -n "${CG:-}" ] && rmdir "$CG" 2> /dev/null || true' EXIT
mkcfg() {   # OUT ROWS_PER_TABLE
  $PY - "$1" "$2" <<'P'
import json, sys
c = json.load(open("configs/default.json"))
c.update({"engram_layer_ids": [1, 2], "engram_max_ngram_size": 3, "engram_n_heads": 8, "engram_head_dim": 64,
          "engram_vocab_size": int(sys.argv[2]), "engram_pad_token_id": 0, "engram_seed": 0, "engram_kernel_size": 4})
json.dump(c, open(sys.argv[1], "w"), indent=1)
P
}
ROWS=$($PY -c "print(int($GB * 1e9 / (2 * 16 * 64 * 4)))")   # 2 layers x 16 sub-tables x rows x 64 floats
mkcfg "$W/small.json" 1000
mkcfg "$W/big.json" "$ROWS"
ARGS="--data data/brown-4096 --steps $STEPS --seq 256 --batch 4 --eval-every 0 --ckpt-every 4 --warmup 2"
tps() { awk -F, 'NR > 2 {s += $5; n++} END {printf "%.1f", s / n}' "$1/log.csv"; }   # steps after the first

./dsv4 train --config "$W/small.json" $ARGS --out "$W/small" > /dev/null 2>&1
small=$(tps "$W/small")

CG=/sys/fs/cgroup/memory/dsv4-engram-train
limited=no
if mkdir -p "$CG" 2> /dev/null && echo $((MEM_GB << 30)) > "$CG/memory.limit_in_bytes" 2> /dev/null; then limited=yes; else CG=; fi
( [ -n "$CG" ] && echo $BASHPID > "$CG/cgroup.procs"
  exec ./dsv4 train --config "$W/big.json" $ARGS --engram-on-disk --out "$W/big" ) > "$W/big.txt" 2>&1
big=$(tps "$W/big")
peak=$([ -n "$CG" ] && awk '{printf "%.2f", $1 / 2^30}' "$CG/memory.max_usage_in_bytes" || echo "n/a")
gbdu() { du -s --block-size=1 "$@" | awk '{s = $1} END {printf "%.2f", s / 1e9}'; }
total=$(gbdu "$W/big"); init=$(gbdu "$W/big/init"); store=$(gbdu "$W/big/engram")
apparent=$(du -s --block-size=1 --apparent-size "$W/big/engram" | awk '{printf "%.2f", $1 / 1e9}')
rest=$($PY -c "print(f'{$total - $init - $store:.2f}')")
echo "engram training with the tables on disk: $STEPS steps x 4 x 256 tokens of Brown"
echo "  small table in memory              $small tok/s"
echo "  $GB GB F32 tables on disk           $big tok/s ($($PY -c "print(f'{$small / $big:.2f}')")x slower); memory limit ${MEM_GB} GiB: $limited, peak $peak GiB"
echo "  run directory $total GB: the F32 starting model $init GB, the store $store GB allocated of $apparent GB"
echo "  (moments of rows never updated are holes), checkpoint and log $rest GB (the checkpoint's tables are hard links)"
grep -a "Engram tables on disk" "$W/big.txt" | sed 's/^/  /'
