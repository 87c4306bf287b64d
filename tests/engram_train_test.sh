#!/usr/bin/env bash
# Training with the Engram tables on disk (`train --engram-on-disk`, src/train/engram_store.c):
# - the same run with the tables in memory and on disk ends with identical weights and moments,
#   bit for bit (the store changes where the rows live, not the arithmetic);
# - a crash at each step of the write-ahead protocol (undo records flushed; half the rows changed
#   in place; checkpoint committed but the log not yet reset), then --resume, ends exactly where
#   the uninterrupted run ends, and the rows changed past the checkpoint are rolled back;
# - the checkpoint holds the tables as hard links (no copy) and the store stays within its
#   stated disk budget; bad uses fail with a message.
# Run from the repository root: tests/engram_train_test.sh (D=build-asan/dsv4 for the sanitizer
# build). Prints "ok ..." / "FAIL ..." lines; exits 1 on any failure.
set -u
cd "$(dirname "$0")/.."
D=${D:-./dsv4}
PY=/usr/bin/python3
TEST_TMP_NAME=engram-train . tests/lib.sh

# a small corpus (this repository's prose), a 400-id tokenizer, the tiny config with Engram in layer 1
cat README.md docs/*.md > "$TMP/text.txt"
"$D" tokenizer train --vocab 400 --data "$TMP/text.txt" --out "$TMP/tok.json" > /dev/null 2> "$TMP/err.txt" &&
  "$D" data prepare --tokenizer "$TMP/tok.json" --data "$TMP/text.txt" --out "$TMP/td" > /dev/null 2>> "$TMP/err.txt" ||
  { bad "training data: $(head -c 300 "$TMP/err.txt")"; echo "engram-train: $passed passed, $failed failed"; exit 1; }
$PY - "$TMP/cfg.json" <<'P'
import json, sys
c = json.load(open("configs/tiny.json"))
c.update({"engram_layer_ids": [1], "engram_max_ngram_size": 3, "engram_n_heads": 2, "engram_head_dim": 16,
          "engram_vocab_size": [997, 499], "engram_pad_token_id": 0, "engram_seed": 0, "engram_kernel_size": 4})
json.dump(c, open(sys.argv[1], "w"), indent=1)
P
A="--config $TMP/cfg.json --data $TMP/td --steps 8 --seq 32 --batch 2 --eval-every 4 --eval-tokens 256 --ckpt-every 2 --warmup 2"
train() { "$D" train $A "$@" > "$TMP/out.txt" 2>> "$TMP/err.txt"; }

# every float tensor of a checkpoint (model, Engram table files, moments), by name
cat > "$TMP/same.py" <<'P'
import glob, json, struct, sys
import numpy as np
def tensors(d):
    out = {}
    for p in sorted(glob.glob(d + "/*.safetensors")):
        b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
        for k, v in h.items():
            if k != "__metadata__" and v["dtype"] == "F32":
                out[k] = np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], dtype="<f4")
    return out
def with_store(d, store):   # an on-disk run's moments live in its store
    t = tensors(d)
    if store:
        t.update(tensors(store))
    return t
a = with_store(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None)
b = with_store(sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))[:6]
diff = [k for k in a if not np.array_equal(a[k], b[k])]
assert not diff, diff[:5]
tab = [k for k in a if k.endswith(".engram.embed.weight")]
print(f"{len(a)} tensors identical, {sum(a[k].size for k in tab)} table values")
P

rm -f "$TMP/err.txt"
train --engram-adam lazy --out "$TMP/mem" && train --engram-on-disk --out "$TMP/disk" && train --out "$TMP/dense"
r=$($PY "$TMP/same.py" "$TMP/mem/checkpoint" "" "$TMP/disk/checkpoint" "$TMP/disk/engram" 2>&1); same=$?
if [ $same = 0 ] && sanitizer_clean "$TMP/err.txt"; then ok "tables in memory vs on disk (lazy Adam), 8 steps: $r"
else bad "memory vs disk: $r $(head -c 300 "$TMP/err.txt")"; fi
# dense Adam (the in-memory default) keeps moving rows whose gradient stopped: another model
r=$($PY "$TMP/same.py" "$TMP/mem/checkpoint" "" "$TMP/dense/checkpoint" "" 2>&1); same=$?
[ $same != 0 ] && echo "$r" | grep -q "AssertionError" && ok "dense Adam (the in-memory default) and lazy Adam train different models" ||
  bad "dense vs lazy: $r"
"$D" train $A --engram-on-disk --engram-adam dense --out "$TMP/x" > /dev/null 2> "$TMP/err.txt"; rc=$?
[ $rc = 1 ] && grep -q "lazy Adam" "$TMP/err.txt" && ok "--engram-on-disk with --engram-adam dense -> exit 1: $(head -c 120 "$TMP/err.txt")" ||
  bad "on disk + dense: exit $rc $(head -c 200 "$TMP/err.txt")"
# the tables moved, lazily: rows never updated keep zero moments and take no disk in the moments file
r=$($PY - "$TMP/disk" <<'P'
import glob, json, struct, sys
import numpy as np
d = sys.argv[1]
def tensors(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], dtype="<f4") for k, v in h.items() if k != "__metadata__"}
name = "layers.1.engram.embed.weight"
init = tensors(glob.glob(d + "/init/*.safetensors")[0])[name].reshape(-1, 16)
now = tensors(f"{d}/engram/{name}.safetensors")[name].reshape(-1, 16)
mv = tensors(f"{d}/engram/{name}.adam.safetensors")
m = mv["m." + name].reshape(-1, 16)
upd = np.any(m != 0, axis=1)
assert upd.sum() > 100 and (~upd).sum() > 100, upd.sum()
assert np.array_equal(init[~upd], now[~upd]) and not np.any(np.all(init[upd] == now[upd], axis=1))
print(f"{upd.sum()} of {len(upd)} rows updated, the other {(~upd).sum()} unchanged")
P
) && ok "lazy Adam on the store: $r" || bad "lazy Adam on the store: $r"
links=$(stat -c %h "$TMP/disk/checkpoint/engram-layers.1.engram.embed.weight.safetensors")
ino1=$(stat -c %i "$TMP/disk/checkpoint/engram-layers.1.engram.embed.weight.safetensors")
ino2=$(stat -c %i "$TMP/disk/engram/layers.1.engram.embed.weight.safetensors")
[ "$links" = 2 ] && [ "$ino1" = "$ino2" ] && ok "the checkpoint hard-links the store's table (no copy)" || bad "checkpoint table: links $links, inodes $ino1 $ino2"
# disk budget: F32 table + moments (at most 2x) + the undo log of one checkpoint interval
r=$($PY - "$TMP/disk/engram" <<'P'
import os, sys
d = sys.argv[1]
used = sum(os.stat(os.path.join(d, f)).st_blocks * 512 for f in os.listdir(d))
table = (997 + 1009 + 499 + 503) * 16 * 4   # the four sub-tables' primes x 16 floats
log_max = 2 * 2 * 32 * 4 * (12 * 16 + 24)   # 2 steps x 2 sequences x 32 tokens x 4 rows per checkpoint interval
budget = 3 * table + log_max + 4 * 65536        # + headers and block rounding
assert used <= budget, (used, budget)
print(f"{used} bytes on disk, budget {budget}")
P
) && ok "store within its disk budget: $r" || bad "disk budget: $r"
"$D" run -m "$TMP/disk/checkpoint" --ids 1,2,3 -n 4 > /dev/null 2> "$TMP/err.txt" && sanitizer_clean "$TMP/err.txt" &&
  ok "an on-disk run's checkpoint is a model directory (run loads it)" || bad "run on the checkpoint: $(head -c 300 "$TMP/err.txt")"

# crashes at each point of the protocol, then --resume: the uninterrupted run's result exactly
for point in logged:3 updating:3 updating:6 checkpointed:4 logged:5; do
  rm -rf "$TMP/c" "$TMP/err.txt"
  DSV4_CRASH_AT=$point "$D" train $A --engram-on-disk --out "$TMP/c" > /dev/null 2> "$TMP/crash.txt"; rc=$?
  "$D" train --resume --data "$TMP/td" --out "$TMP/c" > "$TMP/out.txt" 2> "$TMP/err.txt"; rc2=$?
  back=$(grep -o 'rolled [0-9]* table rows back to step [0-9]*' "$TMP/err.txt")
  r=$($PY "$TMP/same.py" "$TMP/disk/checkpoint" "$TMP/disk/engram" "$TMP/c/checkpoint" "$TMP/c/engram" 2>&1); same=$?
  if [ $rc = 86 ] && [ $rc2 = 0 ] && [ $same = 0 ] && sanitizer_clean "$TMP/err.txt" && grep -q "^step 8/8" "$TMP/out.txt" &&
     { [ "${point%%:*}" != updating ] || [ -n "$back" ]; }; then
    ok "crash at $point, then --resume: ${back:-nothing to roll back}; $r"
  else bad "crash at $point: exit $rc, resume $rc2: $r $(head -c 300 "$TMP/err.txt")"; fi
done
# a crash during a checkpoint's swap (killed at random moments, then resumed) ends the same way
rm -rf "$TMP/k"
"$D" train $A --steps 400 --ckpt-every 1 --eval-every 0 --engram-on-disk --out "$TMP/k" > /dev/null 2>&1 & kp=$!
for i in $(seq 600); do [ -d "$TMP/k/checkpoint" ] && break; sleep 0.1; done
sleep 0.$((RANDOM % 10)); kill -9 $kp 2> /dev/null; wait $kp 2> /dev/null
if "$D" train --resume --data "$TMP/td" --out "$TMP/k" --stop-at 1000 > "$TMP/out.txt" 2> "$TMP/err.txt" && sanitizer_clean "$TMP/err.txt"; then
  ok "killed with SIGKILL mid-run, then resumed ($(grep -o 'rolled .*' "$TMP/err.txt" | head -1))"
else bad "resume after SIGKILL: $(head -c 300 "$TMP/err.txt")"; fi

# bad uses
"$D" train --config configs/tiny.json --data "$TMP/td" --steps 1 --seq 32 --engram-on-disk --out "$TMP/x" > /dev/null 2> "$TMP/err.txt"; rc=$?
[ $rc = 1 ] && grep -q "has no Engram tables" "$TMP/err.txt" && sanitizer_clean "$TMP/err.txt" &&
  ok "--engram-on-disk without Engram tables -> exit 1: $(head -c 120 "$TMP/err.txt")" || bad "no tables: exit $rc $(head -c 200 "$TMP/err.txt")"
cp -r "$TMP/disk" "$TMP/bad"
printf 'garbage!' | dd of="$TMP/bad/engram/undo.log" conv=notrunc 2> /dev/null
"$D" train --resume --data "$TMP/td" --out "$TMP/bad" --steps 9 > /dev/null 2> "$TMP/err.txt"; rc=$?
[ $rc = 1 ] && grep -q "undo.log: not an Engram undo log" "$TMP/err.txt" && sanitizer_clean "$TMP/err.txt" &&
  ok "a corrupt undo log -> exit 1: $(head -c 160 "$TMP/err.txt")" || bad "corrupt log: exit $rc $(head -c 200 "$TMP/err.txt")"
rm -f "$TMP/bad/engram/undo.log" "$TMP/bad/engram/layers.1.engram.embed.weight.adam.safetensors"
"$D" train --resume --data "$TMP/td" --out "$TMP/bad" --steps 9 > /dev/null 2> "$TMP/err.txt"; rc=$?
[ $rc = 1 ] && grep -q "adam.safetensors" "$TMP/err.txt" && sanitizer_clean "$TMP/err.txt" &&
  ok "a missing moments file -> exit 1: $(head -c 160 "$TMP/err.txt")" || bad "missing moments: exit $rc $(head -c 200 "$TMP/err.txt")"

echo "engram-train: $passed passed, $failed failed"
[ $failed = 0 ]
