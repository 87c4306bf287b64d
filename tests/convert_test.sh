#!/usr/bin/env bash
# `dsv4 convert`: a float32 model written by `dsv4 init` converted to bf16 and fp8 must be byte
# for byte what `dsv4 init --dtype` writes for the same seed (same safetensors files, so the same
# logits); fp8 experts are checked element by element against the f32 values; re-encoding is
# lossless; config.json announces the output format; bad arguments fail with a message.
# Run from the repository root: tests/convert_test.sh  (D=build-asan/dsv4 tests/convert_test.sh
# for the sanitizer build). Prints "ok ..." / "FAIL ..." lines; exits 1 on any failure.
set -u
cd "$(dirname "$0")/.."
D=${D:-./dsv4}
PY=/usr/bin/python3
TEST_TMP_NAME=convert . tests/lib.sh
TOK=tests/fixtures/tokens.txt
CFG=configs/tiny.json
SEED=11
logits() {   # DIR OUT-PREFIX: logits (prefill 250, then 50 decoded) and the MTP head's
  "$D" logits -m "$1" --tokens "$TOK" --prefill 250 --out "$2.f32" --mtp-out "$2.mtp.f32"
}

# Checks on model directories: safetensors parsed independently of dsv4.
cat > "$TMP/check.py" <<'PY'
import json, math, os, struct, sys
import numpy as np
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
from st_load import dispatch, load

def same(a, b):   # every tensor: name, dtype, shape and bytes; the index mapping and total
    ia, ta = load(a)
    ib, tb = load(b)
    assert set(ta) == set(tb), f"names differ: {sorted(set(ta) ^ set(tb))[:5]}"
    for k in ta:
        assert ta[k][:2] == tb[k][:2], f"{k}: {ta[k][:2]} vs {tb[k][:2]}"
        assert ta[k][2] == tb[k][2], f"{k}: data differ"
    assert ia["weight_map"] == ib["weight_map"] and ia["metadata"] == ib["metadata"], "index differs"
    return f"{len(ta)} tensors, {ia['metadata']['total_size']} bytes identical"

E4M3 = np.zeros(256, np.float64)
for c in range(256):
    s, e, m = c >> 7, (c >> 3) & 15, c & 7
    v = math.nan if (e == 15 and m == 7) else (m * 2.0 ** -9 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    E4M3[c] = -v if s else v
FINITE = np.unique(E4M3[~np.isnan(E4M3)])

def fp8_experts(conv, init_fp8, init_f32):
    """conv: fp8 with FP8 experts. Non-expert tensors == init --dtype fp8; each expert weight is
    the nearest e4m3 code of the f32 value over the 128x128 block's power-of-two scale."""
    _, tc = load(conv)
    _, t8 = load(init_fp8)
    _, t32 = load(init_f32)
    assert set(tc) == set(t8), f"names differ: {sorted(set(tc) ^ set(t8))[:5]}"
    n_exp = n_el = 0
    for k, (dt, shape, data) in tc.items():
        if ".ffn.experts." not in k:
            assert (dt, shape, data) == t8[k], f"{k} differs from init --dtype fp8"
            continue
        if k.endswith(".scale"): continue
        v = np.frombuffer(t32[k][2], "<f4").reshape(t32[k][1])
        r, c = v.shape
        sname = k[:-len(".weight")] + ".scale"
        sdt, sshape, sdata = tc[sname]
        assert dt == "F8_E4M3" and shape == [r, c], f"{k}: {dt} {shape}"
        assert sdt == "F8_E8M0" and sshape == [(r + 127) // 128, (c + 127) // 128], f"{sname}: {sdt} {sshape}"
        q = np.frombuffer(data, np.uint8).reshape(r, c)
        sc = np.frombuffer(sdata, np.uint8).reshape(sshape)
        for i in range(sshape[0]):
            for j in range(sshape[1]):
                blk = v[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
                amax = max(np.float32(1e-12), np.abs(blk).max())
                want = math.ceil(math.log2(float(np.float32(amax) / np.float32(448)))) + 127
                assert sc[i, j] == want, f"{sname}[{i},{j}] = {sc[i, j]}, want {want}"
                x = blk.astype(np.float64) / 2.0 ** (int(sc[i, j]) - 127)
                got = E4M3[q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]]
                pos = np.clip(np.searchsorted(FINITE, x), 1, len(FINITE) - 1)
                best = np.minimum(np.abs(x - FINITE[pos - 1]), np.abs(x - FINITE[pos]))
                assert np.all(np.abs(got - x) == best), f"{k}: a code is not the nearest e4m3 value"
                n_el += blk.size
        n_exp += 1
    return f"{n_exp} expert weights ({n_el} values) are nearest-e4m3 with covering scales; the rest == init --dtype fp8"

def config(d, dtype, expert, form):
    c = json.load(open(os.path.join(d, "config.json")))
    if form == "official":
        assert c.get("dtype") == dtype and c.get("expert_dtype") == expert, (c.get("dtype"), c.get("expert_dtype"))
        want = "ue8m0" if "fp8" in (dtype, expert) or expert == "fp4" else None
        assert c.get("scale_fmt") == want, c.get("scale_fmt")
        return f"dtype {dtype}, expert_dtype {expert}, scale_fmt {want}"
    qc = c.get("quantization_config")
    assert c.get("expert_dtype") == expert and (qc is not None) == (dtype == "fp8"), (c.get("expert_dtype"), qc)
    if qc: assert qc["quant_method"] == "fp8" and qc["weight_block_size"] == [128, 128], qc
    return f"quantization_config {'fp8' if qc else 'absent'}, expert_dtype {expert}"

def dtypes(d, pattern, want):   # every tensor whose name contains pattern (scales aside) is `want`
    _, ts = load(d)
    got = {ts[k][0] for k in ts if pattern in k and not k.endswith(".scale")}
    assert got == {want}, got
    return f"'{pattern}' tensors are {want}"

def closer(a, b, ref):   # logits a are nearer ref than b (rms), all finite
    a, b, r = (np.fromfile(f, "<f4").astype(np.float64) for f in (a, b, ref))
    assert np.isfinite(a).all(), "non-finite logits"
    ea, eb = np.sqrt(((a - r) ** 2).mean()), np.sqrt(((b - r) ** 2).mean())
    assert ea < eb, f"rms {ea:.4f} not below {eb:.4f}"
    return f"finite; rms from the f32 model's {ea:.4f}, below fp8 + fp4 experts' {eb:.4f}"

E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6])

def decode(ts, k):   # a stored weight or vector as float64 (its scale applied)
    dt, shape, data = ts[k]
    if dt == "F32": return np.frombuffer(data, "<f4").astype(np.float64).reshape(shape)
    if dt == "BF16": return (np.frombuffer(data, "<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64).reshape(shape)
    if dt in ("I32", "I64"): return np.frombuffer(data, "<i4" if dt == "I32" else "<i8").reshape(shape)
    s = ts[k[:-len(".weight")] + ".scale"]
    sc = 2.0 ** (np.frombuffer(s[2], np.uint8).astype(np.float64) - 127).reshape(s[1])
    if dt == "F8_E4M3":
        v = E4M3[np.frombuffer(data, np.uint8)].reshape(shape)
        return v * np.kron(sc, np.ones((128, 128)))[:shape[0], :shape[1]]
    q = np.frombuffer(data, np.uint8).reshape(shape)
    v = np.stack([E2M1[q & 15], E2M1[q >> 4]], -1).reshape(shape[0], -1)
    return v * np.repeat(sc, 32, axis=1)

def values(a, b):   # the same tensors in the same formats holding the same values
    _, ta = load(a)
    _, tb = load(b)
    assert set(ta) == set(tb), f"names differ: {sorted(set(ta) ^ set(tb))[:5]}"
    n = 0
    for k in ta:
        if k.endswith(".scale"): continue
        assert ta[k][:2] == tb[k][:2], f"{k}: {ta[k][:2]} vs {tb[k][:2]}"
        assert np.array_equal(decode(ta, k), decode(tb, k)), f"{k}: values differ"
        n += 1
    return f"{n} tensors hold the same values in the same formats"

def set_field(path, key, value):
    c = json.load(open(path))
    c[key] = value
    json.dump(c, open(path, "w"))
    return "set"

def write_extra(path):   # a safetensors file with tensors no model uses (like optimiser state)
    h = {"m.embed.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    hb = json.dumps(h).encode()
    hb += b" " * (-len(hb) % 8)
    open(path, "wb").write(struct.pack("<Q", len(hb)) + hb + bytes(8))
    return "written"

dispatch(globals())
PY
check() { $PY "$TMP/check.py" "$@"; }

echo "== dsv4 convert ($D)"
for dt in f32 bf16 fp8; do
  run "init --dtype $dt" "$D" init --config "$CFG" --seed $SEED --out "$TMP/init-$dt" --dtype $dt || exit 1
done
echo '{"dummy tokenizer": true}' > "$TMP/init-f32/tokenizer.json"
echo '{"bos_token_id": 0}' > "$TMP/init-f32/generation_config.json"

if "$D" convert --help > "$TMP/help.txt" 2>&1 && grep -q "usage: dsv4 convert" "$TMP/help.txt"; then ok "convert --help prints the usage"
else bad "convert --help: $(head -c 200 "$TMP/help.txt")"; fi

# f32 -> bf16 and fp8 + fp4 experts == init --dtype bf16 / fp8
for spec in "bf16 bf16 bf16" "fp8 fp8 fp4"; do
  set -- $spec; name=$1; dt=$2; et=$3
  out=$TMP/conv-$name
  run "convert f32 -> $name" "$D" convert -m "$TMP/init-f32" --out "$out" --dtype $dt --expert-dtype $et || continue
  ok "convert f32 -> $dt (experts $et): $(grep 'dsv4 convert' "$TMP/err.txt")"
  run "info $name" "$D" info -m "$out" && ok "info -m conv-$name validates: $(grep -E 'files' "$TMP/out.txt" | sed 's/^ *//')"
  r=$(check same "$out" "$TMP/init-$dt") && ok "conv-$name == init --dtype $dt: $r" || bad "conv-$name vs init --dtype $dt: $r"
  if cmp -s "$out/model-00001-of-00001.safetensors" "$TMP/init-$dt/model-00001-of-00001.safetensors"; then ok "conv-$name: safetensors file identical to init's"
  else bad "conv-$name: safetensors file differs from init's"; fi
  if run "logits conv-$name" logits "$out" "$TMP/lc-$name" && run "logits init-$dt" logits "$TMP/init-$dt" "$TMP/li-$name"; then
    if cmp -s "$TMP/lc-$name.f32" "$TMP/li-$name.f32" && cmp -s "$TMP/lc-$name.mtp.f32" "$TMP/li-$name.mtp.f32"; then
      ok "conv-$name: logits and MTP logits identical bytes to init --dtype $dt ($(stat -c %s "$TMP/lc-$name.f32") B)"
    else bad "conv-$name: logits differ from init --dtype $dt"; fi
  fi
  r=$(check config "$out" $dt $et official) && ok "conv-$name config.json: $r" || bad "conv-$name config.json: $r"
done

# f32 -> fp8 with fp8 experts (no init equivalent): checked value by value
out=$TMP/conv-fp8e8
if run "convert f32 -> fp8 --expert-dtype fp8" "$D" convert -m "$TMP/init-f32" --out "$out" --dtype fp8 --expert-dtype fp8; then
  ok "convert f32 -> fp8 --expert-dtype fp8: $(grep 'dsv4 convert' "$TMP/err.txt")"
  run "info fp8e8" "$D" info -m "$out" && ok "info -m conv-fp8e8 validates"
  r=$(check fp8_experts "$out" "$TMP/init-fp8" "$TMP/init-f32") && ok "conv-fp8e8: $r" || bad "conv-fp8e8: $r"
  if run "logits conv-fp8e8" logits "$out" "$TMP/lc-fp8e8" && run "logits init-f32" logits "$TMP/init-f32" "$TMP/li-f32"; then
    r=$(check closer "$TMP/lc-fp8e8.f32" "$TMP/lc-fp8.f32" "$TMP/li-f32.f32") && ok "conv-fp8e8 logits: $r" || bad "conv-fp8e8 logits: $r"
  fi
  r=$(check config "$out" fp8 fp8 official) && ok "conv-fp8e8 config.json: $r" || bad "conv-fp8e8 config.json: $r"
  # the default expert format with --dtype fp8: the input config's "expert_dtype", else fp8
  if run "convert f32 -> fp8 (default experts)" "$D" convert -m "$TMP/init-f32" --out "$TMP/conv-fp8def" --dtype fp8 &&
     check same "$TMP/conv-fp8def" "$out" > /dev/null; then ok "--dtype fp8 from a config without expert_dtype: fp8 experts by default"
  else bad "--dtype fp8 default experts (input without expert_dtype) are not fp8"; fi
fi

# extra files travel; nothing else does; no temporary directory is left behind
if cmp -s "$TMP/init-f32/tokenizer.json" "$TMP/conv-bf16/tokenizer.json" && cmp -s "$TMP/init-f32/generation_config.json" "$TMP/conv-bf16/generation_config.json" &&
   [ ! -e "$TMP/conv-bf16/tokenizer_config.json" ]; then ok "tokenizer.json and generation_config.json copied (tokenizer_config.json absent, not made up)"
else bad "extra files not copied as they were"; fi
if ls -d "$TMP"/*.tmp.* "$TMP"/*.old.* > /dev/null 2>&1; then bad "temporary directories left: $(ls -d "$TMP"/*.tmp.* "$TMP"/*.old.* 2>/dev/null)"
else ok "no OUT.tmp.* / OUT.old.* left behind"; fi

# re-encoding: bf16 -> bf16 identical; fp8/fp4 -> fp8 with the config's expert_dtype (fp4) keeps every value
if run "convert bf16 -> bf16" "$D" convert -m "$TMP/conv-bf16" --out "$TMP/rt-bf16" --dtype bf16; then
  r=$(check same "$TMP/rt-bf16" "$TMP/conv-bf16") && ok "bf16 -> bf16 round trip: $r" || bad "bf16 -> bf16 round trip: $r"
fi
if run "convert fp8 -> fp8" "$D" convert -m "$TMP/conv-fp8" --out "$TMP/rt-fp8" --dtype fp8; then
  r=$(check dtypes "$TMP/rt-fp8" ".ffn.experts." I8) && ok "fp8 -> fp8 without --expert-dtype follows expert_dtype fp4: $r" || bad "fp8 -> fp8 default experts: $r"
  if run "logits rt-fp8" logits "$TMP/rt-fp8" "$TMP/lr-fp8" && cmp -s "$TMP/lr-fp8.f32" "$TMP/li-fp8.f32" && cmp -s "$TMP/lr-fp8.mtp.f32" "$TMP/li-fp8.mtp.f32"; then
    ok "fp8/fp4 -> fp8/fp4 is lossless: logits identical bytes"
  else bad "fp8/fp4 -> fp8/fp4 changed the logits"; fi
fi
# a training checkpoint's layout: one model.safetensors beside optimiser state, no index
mkdir -p "$TMP/ckpt"
cp "$TMP/init-f32/config.json" "$TMP/ckpt/"
cp "$TMP/init-f32/model-00001-of-00001.safetensors" "$TMP/ckpt/model.safetensors"
check write_extra "$TMP/ckpt/optim.safetensors" > /dev/null
if run "convert checkpoint -> bf16" "$D" convert -m "$TMP/ckpt" --out "$TMP/ckpt-bf16" --dtype bf16; then
  if grep -q "left out" "$TMP/err.txt"; then ok "checkpoint: unused tensors reported: $(grep 'note' "$TMP/err.txt" | head -c 140)"
  else bad "checkpoint: no note about the optimiser tensors"; fi
  r=$(check same "$TMP/ckpt-bf16" "$TMP/init-bf16") && ok "checkpoint (no index, extra file) -> bf16 == init --dtype bf16: $r" || bad "checkpoint -> bf16: $r"
fi
# other inputs: the FP8/FP4 fixture (lossless to fp8/fp4), the Hugging Face config form
# (the fixture's F32 tensors sit at unaligned offsets, which changes the summation order of
# decode-time matrix-vector products by ~1e-6; values are compared, and logits with the reference's)
if run "convert tiny-fp8 fixture" "$D" convert -m tests/fixtures/tiny-fp8 --out "$TMP/fx-fp8" --dtype fp8 --expert-dtype fp4; then
  r=$(check values "$TMP/fx-fp8" tests/fixtures/tiny-fp8) && ok "tests/fixtures/tiny-fp8 -> fp8/fp4: $r" || bad "tiny-fp8 fixture -> fp8/fp4: $r"
  if run "logits fx-fp8" logits "$TMP/fx-fp8" "$TMP/lf"; then
    r=$($PY tests/compare.py "$TMP/lf.f32" tests/fixtures/tiny-fp8/ref_logits.f32 512 --rows 249) &&
      r2=$($PY tests/compare.py "$TMP/lf.mtp.f32" tests/fixtures/tiny-fp8/ref_mtp.f32 512) &&
      ok "converted tiny-fp8 against the PyTorch reference: logits $r; MTP $r2" || bad "converted tiny-fp8 vs reference: $r ${r2:-}"
  fi
fi
if run "convert alt-f32 (HF form) -> fp8" "$D" convert -m tests/fixtures/alt-f32 --out "$TMP/alt-fp8" --dtype fp8 --expert-dtype fp4 &&
   run "info alt-fp8" "$D" info -m "$TMP/alt-fp8" && run "logits alt-fp8" "$D" logits -m "$TMP/alt-fp8" --tokens "$TOK" --prefill 300 --out "$TMP/la.f32"; then
  r=$(check config "$TMP/alt-fp8" fp8 fp4 hf) && ok "alt-f32 (Hugging Face form) -> fp8/fp4 loads and runs; config: $r" || bad "alt-fp8 config: $r"
  r=$($PY tests/compare.py "$TMP/la.f32" tests/fixtures/alt-f32/ref_logits.f32 512 --rows 299 --tol 0.5 2>&1) && ok "alt-fp8 logits near the f32 reference: $r" || bad "alt-fp8 logits: $r"
fi

# bad arguments: each a message and a non-zero exit; an existing OUT is kept without --force
expect_error "no -m" "needs -m IN" "$D" convert --out "$TMP/x" --dtype bf16
expect_error "no --dtype" "--dtype" "$D" convert -m "$TMP/init-f32" --out "$TMP/x"
expect_error "unsupported --dtype" "'fp16'" "$D" convert -m "$TMP/init-f32" --out "$TMP/x" --dtype fp16
expect_error "--dtype fp4 (experts only)" "'fp4'" "$D" convert -m "$TMP/init-f32" --out "$TMP/x" --dtype fp4
expect_error "unsupported --expert-dtype" "'int4'" "$D" convert -m "$TMP/init-f32" --out "$TMP/x" --dtype fp8 --expert-dtype int4
expect_error "unknown option" "--bogus" "$D" convert -m "$TMP/init-f32" --out "$TMP/x" --dtype bf16 --bogus
expect_error "missing IN" "$TMP/no-such-model" "$D" convert -m "$TMP/no-such-model" --out "$TMP/x" --dtype bf16
mkdir -p "$TMP/nocfg"
expect_error "IN without config.json" "nocfg/config.json" "$D" convert -m "$TMP/nocfg" --out "$TMP/x" --dtype bf16
mkdir -p "$TMP/badexp" && cp "$TMP/conv-fp8"/* "$TMP/badexp/" && check set_field "$TMP/badexp/config.json" expert_dtype int4 > /dev/null
expect_error "bad expert_dtype in the input config" '"expert_dtype"' "$D" convert -m "$TMP/badexp" --out "$TMP/x" --dtype fp8
[ -e "$TMP/x" ] && bad "a failed convert left $TMP/x"
before=$(md5sum "$TMP/conv-bf16/model-00001-of-00001.safetensors")
expect_error "existing OUT without --force" "already exists" "$D" convert -m "$TMP/init-f32" --out "$TMP/conv-bf16" --dtype fp8
if [ "$before" = "$(md5sum "$TMP/conv-bf16/model-00001-of-00001.safetensors")" ]; then ok "the existing OUT is untouched"; else bad "the existing OUT changed"; fi
if run "--force" "$D" convert -m "$TMP/init-f32" --out "$TMP/conv-bf16/" --dtype fp8 --expert-dtype fp4 --force &&
   check same "$TMP/conv-bf16" "$TMP/init-fp8" > /dev/null && [ ! -e "$TMP/conv-bf16/tokenizer_config.json" ]; then ok "--force replaces an existing OUT (trailing slash too)"
else bad "--force did not replace OUT"; fi

echo "convert: $passed passed, $failed failed"
[ $failed -eq 0 ]
