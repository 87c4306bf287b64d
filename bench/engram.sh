#!/usr/bin/env bash
# Engram tables larger than RAM (spec ENGRAM.md "Idea": addresses depend only on the tokens): decode
# speed of a V4 backbone with (a) a small Engram table in memory and (b) tables on disk larger
# than the machine's RAM, read from a cold page cache, with and without dsv4's row prefetch
# (MADV_WILLNEED on the next tokens' rows from a prefetch thread before the layers run;
# MADV_RANDOM on the mapping). Two backbones with Engram in layers 1 and 2: configs/default.json
# (about 1.2 ms a token here: the worst case, little compute to hide the reads behind) and a
# wider one (dim 768, about 5 ms). The two models of a pair share one backbone file; the big
# tables are written once under bench/model-engram-big (DSV4_ENGRAM_GB sets their size in GB;
# default 1.25 x RAM) and hard-linked into both big models. Prints the disk's random-read speed
# first: a token's rows are 32 random 4 KiB reads here.
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
mkcfg() {   # OUT ROWS_PER_TABLE WIDE [BASE]: the backbone (default or wide) with Engram in layers 1 and 2
  $PY - "$1" "$2" "$3" "${4:-configs/default.json}" <<'P'
import json, sys
c = json.load(open(sys.argv[4]))
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
make_pair() {   # NAME WIDE [TRAINED]: TRAINED, a model directory whose weights replace the backbone's
  local small=bench/model-engram-$1-small big=bench/model-engram-$1-big trained=${3:-}
  mkcfg "$TMP/$1-small.json" 1000 "$2" ${trained:+$trained/config.json}
  mkcfg "$TMP/$1-big.json" "$ROWS" "$2" ${trained:+$trained/config.json}
  if [ ! -f "$big/config.json" ] || ! cmp -s "$TMP/$1-big.json" "$big/config.json" || ! cmp -s "$TMP/$1-small.json" "$small/config.json"; then
    rm -rf "$small" "$big" "$TMP/init"
    ./dsv4 init --config "$TMP/$1-small.json" --seed 1 --out "$TMP/init" --dtype bf16 > /dev/null
    mkdir -p "$small" "$big"
    $PY - "$TMP/init" "$BIG" "$small" "$big" "$trained" <<'P'
import json, os, struct, sys
init, tables, small, big, trained = sys.argv[1:6]
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
if trained:   # a trained backbone, with Engram present but silent (value projection zero: output 0)
    tw = {}
    for f in sorted(set(json.load(open(f"{trained}/model.safetensors.index.json"))["weight_map"].values())):
        h, base, p = read(f"{trained}/{f}")
        raw = open(p, "rb")
        for k, v in h.items():
            if k == "__metadata__": continue
            a, b = v["data_offsets"]; raw.seek(base + a); tw[k] = (v["dtype"], v["shape"], raw.read(b - a))
    for i, (k, dt, shape, data) in enumerate(backbone):
        if ".engram.value_proj." in k: backbone[i] = (k, dt, shape, bytes(len(data)))
        elif ".engram." not in k:
            assert k in tw and tw[k][:2] == (dt, shape), k
            backbone[i] = (k, dt, shape, tw[k][2])
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
  local tok=${trained:+$trained/tokenizer.json}
  cp "${tok:-$TMP/tok.json}" "$small/tokenizer.json"; cp "${tok:-$TMP/tok.json}" "$big/tokenizer.json"
}
make_pair default 0 models/default   # the bundled model's trained backbone: real text, real MTP drafts
make_pair wide 1
IDS=$($PY -c "import random; r = random.Random(5); print(','.join(str(r.randrange(4, 2000)) for _ in range(16)))")
drop() {   # the tables' pages out of the page cache (clean pages; no root needed)
  $PY -c "import glob, os
for f in glob.glob('$BIG/*.safetensors'):
    fd = os.open(f, os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)"
}
cached() { fincore -b "$BIG"/*.safetensors 2> /dev/null | awk 'NR > 1 {r += $1} END {printf "%.2f GB", r / 1e9}'; }
PROMPT=$(echo "The committee said that the new law would" | ./dsv4 tokenize -m models/default | tr ' ' ',')
pair() {   # NAME SEED ARGS...: the interleaved decode of NAME-small and NAME-big: "small big draft%"
  local name=$1 seed=$2; shift 2
  local ids=()
  [ "$name" = default ] && ids=(--ids "$PROMPT")
  ./dsv4 engram bench --small bench/model-engram-$name-small --big bench/model-engram-$name-big -n "$N_GEN" --seed "$seed" "${ids[@]}" "$@" |
    awk '{d = "-"; for (i = 1; i <= NF; i++) if ($i == "right") d = $(i + 1); print $2, $5, d}' | tr -d '%'
}
# the disk as decode sees it: one random 4 KiB page of a table file faulted in at a time, and 32
# pages (one token's rows here) requested together with MADV_WILLNEED, then read
drop
$PY - "$BIG" <<'P'
import glob, mmap, os, random, sys, time
f = max(glob.glob(sys.argv[1] + "/*.safetensors"), key=os.path.getsize)
fd = os.open(f, os.O_RDONLY); size = os.fstat(fd).st_size
mm = mmap.mmap(fd, size, prot=mmap.PROT_READ); mm.madvise(mmap.MADV_RANDOM)
r = random.Random(11); P = 4096
pages = lambda n: [r.randrange(size // P) * P for _ in range(n)]
ps = pages(300); t = time.perf_counter()
for p in ps: mm[p]
serial = (time.perf_counter() - t) / len(ps) * 1e6
tot = 0
for rep in range(30):
    ps = pages(32); t = time.perf_counter()
    for p in ps: mm.madvise(mmap.MADV_WILLNEED, p, P)
    for p in ps: mm[p]
    tot += time.perf_counter() - t
print(f"disk: a random 4 KiB read {serial:.0f} us; 32 at once {tot / 30 * 1e6:.0f} us ({32 * 30 / tot / 1000:.0f}K reads/s)")
P
echo "engram decode: tables $GB GB on disk (RAM $RAM_GB GB), $N_GEN sampled tokens per model, decode steps of the"
echo "small- and big-table models interleaved in one process (dsv4 engram bench), page cache dropped before each run"
for b in default wide; do
  res="" drafts=""
  for r in $(seq "$REPEAT"); do   # a new seed per run: new tokens, new rows, never cached
    drop; [ "$r" = 1 ] && before=$(cached)
    res="$res $(DSV4_ENGRAM_PREFETCH=0 pair $b $((r + 100)) | cut -d' ' -f1-2)"
    drop; res="$res $(pair $b $((r + 200)) | cut -d' ' -f1-2)"
    # the default backbone is trained (its MTP block too): prefetch driven by MTP drafts as well
    if [ "$b" = default ]; then drop; drafts="$drafts $(pair $b $((r + 300)) --draft-prefetch)"; fi
  done
  pair $b 999 > /dev/null   # a run, then the same again: every row it reads is cached now
  warm=$(pair $b 999 | cut -d' ' -f1-2)
  $PY - "$b" "$before" "$drafts" $res $warm <<'P'
import statistics, sys
name, before, drafts = sys.argv[1:4]
v = list(map(float, sys.argv[4:]))
runs, warm = [v[i:i + 4] for i in range(0, len(v) - 2, 4)], v[-2:]
small = statistics.median([x[0] for x in runs] + [x[2] for x in runs])
f = lambda xs: f"{statistics.median(xs):.2f}x slower (runs: {', '.join(f'{x:.2f}' for x in xs)})"
print(f"  {name} backbone: small table in memory {small:.1f} tok/s ({1000 / small:.2f} ms a token); cached before: {before}")
print(f"    tables on disk, no prefetch      {f([x[0] / x[1] for x in runs])}")
print(f"    tables on disk, prefetch         {f([x[2] / x[3] for x in runs])}   target <= 1.10x")
if drafts.split():
    d = list(map(float, drafts.split()))
    d = [d[i:i + 3] for i in range(0, len(d), 3)]
    print(f"    + MTP-draft prefetch             {f([x[0] / x[1] for x in d])}; drafts right {statistics.median([x[2] for x in d]):.0f}%")
print(f"    rows all cached (a run repeated)  {warm[0] / warm[1]:.2f}x: page faults and TLB misses on the big mapping")
P
done
