#!/usr/bin/env bash
# Engram tables larger than RAM (spec ENGRAM.md "Idea": addresses depend only on the tokens): decode
# speed of a V4 backbone with (a) a small Engram table in memory and (b) tables on disk larger
# than the machine's RAM, read from a cold page cache, with and without dsv4's row prefetch
# (MADV_WILLNEED on the next tokens' rows from a prefetch thread before the layers run;
# MADV_RANDOM on the mapping). Two backbones with Engram in layers 1 and 2: configs/default.json
# (1.2 ms a token here: the worst case, little compute to hide the reads behind) and a wider one
# (dim 768). They share the same table files (hard links), written once under
# bench/model-engram-big (DSV4_ENGRAM_GB sets their size in GB; default 1.25 x RAM).
# Builds nothing: needs ./dsv4 and /usr/bin/python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
RAM_GB=$(awk '/MemTotal/ {printf "%.1f", $2 / 1048576 * 1.073741824}' /proc/meminfo)
GB=${DSV4_ENGRAM_GB:-$($PY -c "print(round(1.25 * $RAM_GB + 0.5, 1))")}
N_GEN=${N_GEN:-256}
REPEAT=${REPEAT:-3}
BIG=bench/model-engram-big
TMP=$(mktemp -d /tmp/dsv4-engram-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
# a tokenizer trained by dsv4 (Engram hashes its compressed ids)
./dsv4 tokenizer train --vocab 2048 --data tests/data/small.txt README.md docs/data.md --out "$TMP/tok.json" > /dev/null 2>&1
mkcfg() {   # OUT ROWS_PER_TABLE WIDE: the backbone (default or wide) with Engram in layers 1 and 2
  $PY - "$1" "$2" "$3" <<'P'
import json, sys
c = json.load(open("configs/default.json"))
if sys.argv[3] == "1":
    c.update({"dim": 768, "moe_inter_dim": 512, "n_heads": 12, "q_lora_rank": 384, "o_lora_rank": 384, "o_groups": 4})
c.update({"dtype": "bf16", "engram_layer_ids": [1, 2], "engram_max_ngram_size": 3, "engram_n_heads": 8,
          "engram_head_dim": 64, "engram_vocab_size": int(sys.argv[2]), "engram_pad_token_id": 0,
          "engram_seed": 0, "engram_kernel_size": 4})
json.dump(c, open(sys.argv[1], "w"), indent=1)
P
}
# 2 layers x 16 sub-tables x rows x 64 values x 2 bytes
ROWS=$($PY -c "print(int($GB * 1e9 / (2 * 16 * 64 * 2)))")
mkcfg "$TMP/big.json" "$ROWS" 0
if [ ! -f "$BIG/config.json" ] || ! cmp -s "$TMP/big.json" "$BIG/config.json"; then
  echo "writing $GB GB of Engram tables to $BIG (once) ..." >&2
  rm -rf "$BIG" bench/model-engram-wide-big
  ./dsv4 init --config "$TMP/big.json" --seed 1 --out "$BIG" --dtype bf16 --shard-gb 4 > /dev/null
fi
# NAME-small and NAME-big share one backbone file (hard links: the same bytes, the same layout);
# NAME-small has 1,000-row tables, NAME-big the big model's tables (hard links to its shards)
make_pair() {   # NAME WIDE
  local small=bench/model-engram-$1-small big=bench/model-engram-$1-big
  mkcfg "$TMP/$1-small.json" 1000 "$2"
  mkcfg "$TMP/$1-big.json" "$ROWS" "$2"
  if [ ! -f "$big/config.json" ] || ! cmp -s "$TMP/$1-big.json" "$big/config.json" || ! cmp -s "$TMP/$1-small.json" "$small/config.json"; then
    rm -rf "$small" "$big" "$TMP/init"
    ./dsv4 init --config "$TMP/$1-small.json" --seed 1 --out "$TMP/init" --dtype bf16 > /dev/null
    mkdir -p "$small" "$big"
    $PY - "$TMP/init" "$BIG" "$small" "$big" <<'P'
import json, os, struct, sys
init, tables, small, big = sys.argv[1:5]
def read(p):
    f = open(p, "rb"); n = struct.unpack("<Q", f.read(8))[0]; return json.loads(f.read(n)), 8 + n, p
def write(path, parts):   # parts: [(name, dtype, shape, bytes)]
    items, off = {}, 0
    for k, dt, shape, data in parts:
        items[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}; off += len(data)
    hj = json.dumps(items).encode(); hj += b" " * (-(8 + len(hj)) % 64)   # data 64-byte aligned
    with open(path, "wb") as w:
        w.write(struct.pack("<Q", len(hj))); w.write(hj); [w.write(p[3]) for p in parts]
wm = json.load(open(f"{init}/model.safetensors.index.json"))["weight_map"]
big_wm = json.load(open(f"{tables}/model.safetensors.index.json"))["weight_map"]
table_names = sorted(k for k in big_wm if k.endswith(".engram.embed.weight"))
backbone, small_tables = [], []
for f in sorted(set(wm.values())):
    h, base, p = read(f"{init}/{f}")
    raw = open(p, "rb")
    for k, v in h.items():
        if k == "__metadata__": continue
        a, b = v["data_offsets"]; raw.seek(base + a)
        (small_tables if k in table_names else backbone).append((k, v["dtype"], v["shape"], raw.read(b - a)))
# tensors whose size is a multiple of 64 bytes first: the large matrices stay 64-byte aligned
backbone.sort(key=lambda t: (len(t[3]) % 64 != 0, t[0]))
write(f"{small}/model-backbone.safetensors", backbone)
write(f"{small}/model-tables.safetensors", small_tables)
os.link(f"{small}/model-backbone.safetensors", f"{big}/model-backbone.safetensors")
wm_small = {k[0]: "model-backbone.safetensors" for k in backbone}
wm_big = dict(wm_small)
wm_small.update({k[0]: "model-tables.safetensors" for k in small_tables})
for k in table_names:
    os.link(f"{tables}/{big_wm[k]}", f"{big}/{big_wm[k]}"); wm_big[k] = big_wm[k]
json.dump({"weight_map": wm_small}, open(f"{small}/model.safetensors.index.json", "w"))
json.dump({"weight_map": wm_big}, open(f"{big}/model.safetensors.index.json", "w"))
P
    cp "$TMP/$1-small.json" "$small/config.json"; cp "$TMP/$1-big.json" "$big/config.json"
  fi
  cp "$TMP/tok.json" "$small/tokenizer.json"; cp "$TMP/tok.json" "$big/tokenizer.json"
}
make_pair default 0
make_pair wide 1
IDS=$($PY -c "import random; r = random.Random(5); print(','.join(str(r.randrange(4, 2000)) for _ in range(16)))")
drop() {   # the tables' pages out of the page cache (clean pages; no root needed)
  $PY -c "import glob, os
for f in glob.glob('$BIG/*.safetensors'):
    fd = os.open(f, os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)"
}
cached() { fincore -b "$BIG"/*.safetensors 2> /dev/null | awk 'NR > 1 {r += $1} END {printf "%.2f GB", r / 1e9}'; }
pair() {   # NAME SEED [ENV...]: the interleaved decode of NAME-small and NAME-big, "small big"
  local name=$1 seed=$2; shift 2
  env "$@" ./dsv4 engram bench --small bench/model-engram-$name-small --big bench/model-engram-$name-big -n "$N_GEN" --seed "$seed" |
    awk '{print $2, $5}'
}
echo "engram decode: tables $GB GB on disk (RAM $RAM_GB GB), $N_GEN sampled tokens per model, decode steps of the"
echo "small- and big-table models interleaved in one process (dsv4 engram bench), page cache dropped before each run"
for b in default wide; do
  res=""
  for r in $(seq "$REPEAT"); do   # a new seed per run: new tokens, new rows, never cached
    drop; [ "$r" = 1 ] && before=$(cached)
    res="$res $(pair $b $((r + 100)) DSV4_ENGRAM_PREFETCH=0) $(pair $b $((r + 200)))"
  done
  warm=$(pair $b $((REPEAT + 200)))   # the last run again: every row it reads is cached now
  $PY - "$b" "$before" $res $warm <<'P'
import statistics, sys
name, before = sys.argv[1:3]
v = list(map(float, sys.argv[3:]))
runs, warm = [v[i:i + 4] for i in range(0, len(v) - 2, 4)], v[-2:]
small = statistics.median([x[0] for x in runs] + [x[2] for x in runs])
nopf = [x[0] / x[1] for x in runs]
pf = [x[2] / x[3] for x in runs]
f = lambda xs: f"{statistics.median(xs):.2f}x slower (runs: {', '.join(f'{x:.2f}' for x in xs)})"
print(f"  {name} backbone: small table in memory {small:.1f} tok/s ({1000 / small:.2f} ms a token); cached before: {before}")
print(f"    tables on disk, no prefetch      {f(nopf)}")
print(f"    tables on disk, prefetch         {f(pf)}   target <= 1.10x")
print(f"    rows all cached (the same run again) {warm[0] / warm[1]:.2f}x: page faults and TLB misses on the big mapping")
P
done
