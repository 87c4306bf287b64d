#!/usr/bin/env bash
# Engram tables larger than RAM (spec ENGRAM.md "Idea": addresses depend only on the tokens): decode
# speed of one small V4 backbone with (a) a small Engram table in memory and (b) tables on disk
# larger than the machine's RAM, read from a cold page cache, with and without dsv4's row
# prefetch (MADV_WILLNEED on the next tokens' rows before the layers run; MADV_RANDOM on the
# mapping). Builds nothing: needs ./dsv4 and /usr/bin/python3. The big model is written once under
# bench/model-engram-big (DSV4_ENGRAM_GB sets its table size in GB; default 1.25 x RAM).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
RAM_GB=$(awk '/MemTotal/ {printf "%.1f", $2 / 1048576 * 1.073741824}' /proc/meminfo)
GB=${DSV4_ENGRAM_GB:-$($PY -c "print(round(1.25 * $RAM_GB + 0.5, 1))")}
N_GEN=${N_GEN:-128}
SMALL=bench/model-engram-small BIG=bench/model-engram-big
TMP=$(mktemp -d /tmp/dsv4-engram-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
# a tokenizer trained by dsv4 (Engram hashes its compressed ids)
./dsv4 tokenizer train --vocab 2048 --data tests/data/small.txt README.md docs/data.md --out "$TMP/tok.json" > /dev/null 2>&1
mkcfg() {   # OUT ROWS_PER_TABLE: the backbone of configs/default.json with Engram in layers 1 and 2
  $PY - "$1" "$2" <<'P'
import json, sys
c = json.load(open("configs/default.json"))
c.update({"dtype": "bf16", "engram_layer_ids": [1, 2], "engram_max_ngram_size": 3, "engram_n_heads": 8,
          "engram_head_dim": 64, "engram_vocab_size": int(sys.argv[2]), "engram_pad_token_id": 0,
          "engram_seed": 0, "engram_kernel_size": 4})
json.dump(c, open(sys.argv[1], "w"), indent=1)
P
}
# 2 layers x 16 sub-tables x rows x 64 values x 2 bytes
ROWS=$($PY -c "print(int($GB * 1e9 / (2 * 16 * 64 * 2)))")
mkcfg "$TMP/small.json" 1000
mkcfg "$TMP/big.json" "$ROWS"
if [ ! -f "$SMALL/config.json" ]; then ./dsv4 init --config "$TMP/small.json" --seed 1 --out "$SMALL" --dtype bf16 > /dev/null; fi
if [ ! -f "$BIG/config.json" ] || ! cmp -s "$TMP/big.json" "$BIG/config.json"; then
  echo "writing $GB GB of Engram tables to $BIG (once) ..." >&2
  rm -rf "$BIG"
  ./dsv4 init --config "$TMP/big.json" --seed 1 --out "$BIG" --dtype bf16 --shard-gb 4 > /dev/null
fi
cp "$TMP/tok.json" "$SMALL/tokenizer.json"; cp "$TMP/tok.json" "$BIG/tokenizer.json"
IDS=$($PY -c "import random; r = random.Random(5); print(','.join(str(r.randrange(4, 2000)) for _ in range(16)))")
drop() {   # the big model's pages out of the page cache (clean pages; no root needed)
  $PY -c "import glob, os
for f in glob.glob('$BIG/*.safetensors'):
    fd = os.open(f, os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)"
}
cached() { fincore -b "$BIG"/*.safetensors 2> /dev/null | awk 'NR > 1 {r += $1} END {printf "%.2f GB", r / 1e9}'; }
speed() {   # DIR [ENV...]: decode tokens/s of N_GEN sampled tokens
  local dir=$1; shift
  env "$@" ./dsv4 run -m "$dir" --ids "$IDS" -n "$N_GEN" --temp 1 --seed 3 --ignore-eos 2>&1 >/dev/null | awk '/^generate:/ {print $(NF-1)}' | tr -d '('
}
small=$(speed "$SMALL")
drop; before=$(cached); nopf=$(speed "$BIG" DSV4_ENGRAM_PREFETCH=0)
drop; pf=$(speed "$BIG")
after=$(cached)
$PY - "$small" "$nopf" "$pf" "$GB" "$RAM_GB" "$before" "$after" <<'P'
import sys
small, nopf, pf = map(float, sys.argv[1:4])
gb, ram, before, after = sys.argv[4:8]
print(f"engram decode: tables {gb} GB on disk (RAM {ram} GB; cached before a run {before}, after {after})")
print(f"  small in-RAM table   {small:8.1f} tok/s")
print(f"  on disk, no prefetch {nopf:8.1f} tok/s  ({small / nopf:.2f}x slower)")
print(f"  on disk, prefetch    {pf:8.1f} tok/s  ({small / pf:.2f}x slower; target <= 1.10x)")
P
