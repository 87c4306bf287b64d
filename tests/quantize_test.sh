#!/usr/bin/env bash
# `dsv4 quantize`: the Q8/Q4 block formats decoded here with NumPy from the format's definition
# (docs/quantize.md) and compared with the input's values (Q8 within half a step, scale
# max|v|/127 in F16; Q4 no block worse than the classic largest-value/-8 scale); which tensors
# are quantised and which keep their bytes; the quantised model's logits equal those of its own
# exact f32 expansion (the Q8/Q4 kernels, vector and portable, against dequantised weights);
# the report's perplexity change on the bundled model; malformed Q8/Q4 tensors and bad arguments
# refused with messages.
# Run from the repository root: tests/quantize_test.sh (D=build-asan/dsv4 for the sanitizer build).
set -u
cd "$(dirname "$0")/.."
D=${D:-./dsv4}
PY=/usr/bin/python3
TEST_TMP_NAME=quantize . tests/lib.sh
TOK=tests/fixtures/tokens.txt

cat > "$TMP/check.py" <<'PY'
import json, os, struct, sys
import numpy as np
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
from st_load import dispatch, load as load_index

def load(d): return load_index(d)[1]

def f16(x): return np.asarray(x, np.float32).astype(np.float16).astype(np.float64)

def q_decode(ts, k):   # the format's definition: F16 scale d per 1x32 block
    dt, shape, data = ts[k]
    sdt, sshape, sdata = ts[k[:-len(".weight")] + ".scale"]
    assert sdt == "F16", f"{k}: scale dtype {sdt}"
    d = np.frombuffer(sdata, "<f2").astype(np.float64).reshape(sshape)
    if dt == "I8":    # Q8: int8 q, q * d
        q = np.frombuffer(data, np.int8).astype(np.float64).reshape(shape)
    else:             # Q4: U8, low nibble first, (c - 8) * d
        b = np.frombuffer(data, np.uint8).reshape(shape)
        q = np.stack([(b & 15).astype(np.float64) - 8, (b >> 4).astype(np.float64) - 8], -1).reshape(shape[0], -1)
    assert sshape == [q.shape[0], q.shape[1] // 32], f"{k}: scale shape {sshape} for {q.shape}"
    return q, d, q * np.repeat(d, 32, axis=1)

def f32_values(ts, k):
    dt, shape, data = ts[k]
    assert dt == "F32", f"{k}: {dt}"
    return np.frombuffer(data, "<f4").astype(np.float64).reshape(shape)

def formats(qdir, srcdir, bf16dir, to):
    """Which tensors are quantised (attention, indexer wq_b, experts, MTP projections, the head:
    Q8 head, `to` elsewhere); every other tensor is byte for byte what convert --dtype bf16 writes."""
    tq, tb = load(qdir), load(bf16dir)
    want = "I8" if to == "q8" else "U8"
    n_q = n_same = 0
    for k in tb:
        if k in tq and tq[k][0] in ("I8", "U8"):
            expect = "I8" if k == "head.weight" else want
            assert tq[k][0] == expect, f"{k}: {tq[k][0]}, want {expect}"
            n_q += 1
        else:
            assert k in tq and tq[k] == tb[k], f"{k}: differs from convert --dtype bf16"
            n_same += 1
    for must in ("head.weight", "layers.0.attn.wq_a.weight", "layers.0.ffn.experts.0.w1.weight", "layers.0.ffn.shared_experts.w2.weight"):
        assert tq[must][0] in ("I8", "U8"), f"{must} not quantised"
    for keep in ("embed.weight", "layers.0.attn_norm.weight", "layers.1.ffn.gate.weight"):
        assert tq[keep][0] in ("BF16", "F32"), f"{keep} quantised"
    return f"{n_q} matrices quantised ({want}, head I8), {n_same} tensors identical to convert --dtype bf16"

def q8(qdir, srcdir):
    tq, ts = load(qdir), load(srcdir)
    n = 0
    for k, (dt, shape, _) in tq.items():
        if dt != "I8": continue
        q, d, got = q_decode(tq, k)
        v = f32_values(ts, k)
        blocks = np.abs(v).reshape(v.shape[0], -1, 32).max(-1)
        assert np.array_equal(d, f16(blocks / 127)), f"{k}: scale is not F16(max|v|/127)"
        step = np.repeat(d, 32, axis=1)
        assert np.all(np.abs(got - v) <= step * 0.5 * (1 + 1e-6) + 1e-12), f"{k}: a value further than half a step"
        assert np.abs(q).max() <= 127, f"{k}: code -128"
        n += v.size
    return f"{n} weights within half a step of F16(max|v|/127) scales"

def q4(qdir, srcdir):
    tq, ts = load(qdir), load(srcdir)
    n = 0
    err = err_c = 0.0
    for k, (dt, shape, _) in tq.items():
        if dt != "U8": continue
        _, _, got = q_decode(tq, k)
        v = f32_values(ts, k)
        vb = v.reshape(-1, 32)
        m = vb[np.arange(len(vb)), np.abs(vb).argmax(1)]
        dc = f16(m / -8.0)[:, None]   # the classic scale: the largest magnitude on level -8
        with np.errstate(divide="ignore", invalid="ignore"):
            lc = np.clip(np.rint(np.where(dc != 0, vb / dc, 0)), -8, 7)
        e = ((got.reshape(-1, 32) - vb) ** 2).sum(1)
        ec = ((lc * dc - vb) ** 2).sum(1)
        assert np.all(e <= ec * (1 + 1e-9) + 1e-30), f"{k}: a block worse than the classic scale"
        err += e.sum(); err_c += ec.sum(); n += v.size
    assert err < err_c, "no gain over the classic scale"
    return f"{n} weights; squared error {err / err_c:.3f} of the classic scale's, no block worse"

def config(d, dtype, expert):
    c = json.load(open(os.path.join(d, "config.json")))
    assert c.get("dtype") == dtype and c.get("expert_dtype") == expert and "scale_fmt" not in c, c
    return f"dtype {dtype}, expert_dtype {expert}, no scale_fmt"

def report(j, max_dloss, to):
    r = json.loads(j)
    assert r["to"] == to and r["bytes_out"] < r["bytes_in"] and r["decode_bytes_out"] < r["decode_bytes_in"], r
    dl = r["loss_out"] - r["loss_in"]
    assert abs(dl) <= float(max_dloss), f"loss change {dl:+.4f} beyond {max_dloss}"
    assert r["decode_tok_s_in"] > 0 and r["decode_tok_s_out"] > 0 and r["fast_decode_tok_s_out"] > 0, r
    return (f"{r['bytes_in'] / 1e6:.1f} -> {r['bytes_out'] / 1e6:.1f} MB, loss {r['loss_in']:.4f} -> {r['loss_out']:.4f} "
            f"({dl:+.4f}) over {r['eval_tokens']} tokens, perplexity {r['perplexity_in']:.2f} -> {r['perplexity_out']:.2f}")

def corrupt(src, dst, name, field, value):   # one header field of one tensor changed
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        b = open(os.path.join(src, f), "rb").read()
        if f.endswith(".safetensors"):
            n = struct.unpack("<Q", b[:8])[0]
            h = json.loads(b[8:8 + n])
            if name in h:   # data offsets count from the end of the header: only its length changes
                h[name][field] = json.loads(value)
                hb = json.dumps(h).encode()
                hb += b" " * (-len(hb) % 8)
                b = struct.pack("<Q", len(hb)) + hb + b[8 + n:]
        open(os.path.join(dst, f), "wb").write(b)
    return "written"

dispatch(globals())
PY
check() { $PY "$TMP/check.py" "$@"; }

echo "== dsv4 quantize ($D)"
run "init f32" "$D" init --config configs/tiny.json --seed 11 --out "$TMP/f32" --dtype f32 || exit 1
run "convert bf16" "$D" convert -m "$TMP/f32" --out "$TMP/bf16" --dtype bf16 || exit 1
if "$D" quantize --help > "$TMP/help.txt" 2>&1 && grep -q "usage: dsv4 quantize" "$TMP/help.txt"; then ok "quantize --help prints the usage"
else bad "quantize --help: $(head -c 200 "$TMP/help.txt")"; fi

for to in q8 q4; do
  out=$TMP/$to
  run "quantize --to $to" "$D" quantize -m "$TMP/f32" --out "$out" --to $to --decode 0 || continue
  ok "quantize f32 -> $to: $(grep -h 'size' "$TMP/out.txt")"
  r=$(check formats "$out" "$TMP/f32" "$TMP/bf16" $to) && ok "$to: $r" || bad "$to formats: $r"
  r=$(check $to "$out" "$TMP/f32") && ok "$to: $r" || bad "$to values: $r"
  r=$(check config "$out" $to $to) && ok "$to config.json: $r" || bad "$to config.json: $r"
  run "info $to" "$D" info -m "$out" && ok "info -m $to validates"
  # the quantised model against its own dequantised expansion: the kernels are the only difference
  if run "convert $to -> f32" "$D" convert -m "$out" --out "$TMP/$to-f32" --dtype f32 &&
     run "logits $to" "$D" logits -m "$out" --tokens "$TOK" --prefill 250 --out "$TMP/l-$to.f32" &&
     run "logits $to-f32" "$D" logits -m "$TMP/$to-f32" --tokens "$TOK" --prefill 250 --out "$TMP/l-$to-f32.f32"; then
    r=$($PY tests/compare.py "$TMP/l-$to.f32" "$TMP/l-$to-f32.f32" 512 --tol 2e-4) && ok "$to logits (prefill 250 + 50 decoded) == its f32 expansion's: $r" ||
      bad "$to logits vs its f32 expansion: $r"
    if DSV4_SIMD=0 run "logits $to portable" "$D" logits -m "$out" --tokens "$TOK" --prefill 250 --out "$TMP/lp-$to.f32"; then
      r=$($PY tests/compare.py "$TMP/lp-$to.f32" "$TMP/l-$to-f32.f32" 512 --tol 2e-4) && ok "$to logits, portable path (DSV4_SIMD=0): $r" ||
        bad "$to portable logits: $r"
    fi
    r=$($PY tests/compare.py "$TMP/l-$to.f32" "$TMP/l-$to-f32.f32" 512 --tol 1e-9 2>&1) && bad "$to: logits bit-equal to f32 — was anything quantised?" ||
      ok "$to: logits not bit-equal to the f32 expansion's (different kernels ran)"
  fi
  # the fast mode (int8 activations) runs on the Q formats and stays near the exact logits
  if run "run --fast $to" "$D" run -m "$out" --ids 1,2,3,4,5 -n 8 --ignore-eos --fast; then ok "run --fast on $to: $(head -c 60 "$TMP/out.txt" | tr '\n' ' ')"; fi
done

# the report on the bundled model: loss over text, decode speed; q8 nearly lossless
cat > "$TMP/eval.txt" <<'TXT'
The committee met on Monday morning to discuss the budget for the coming year. Several members
said that the city could not afford to raise taxes again, and they asked the mayor to look for
savings in the departments that had grown the most. The mayor replied that the schools and the
hospital needed more money, not less, and that the roads had been neglected for too long.
After a long debate the committee agreed to hold a public hearing before the end of the month.
Many people in the town were surprised by the decision. Some of them had expected the council
to vote at once, while others thought that the plan would be dropped. A local teacher said that
she was glad the public would have a chance to speak, because the families of the students
would feel the effects of any change for many years.
In the evening the rain began again, and the river rose slowly along the old stone wall. The
farmers who lived near the water moved their animals to higher ground, and the children watched
from the bridge as the boats were tied more firmly to the posts.
TXT
for spec in "q8 0.01" "q4 0.08"; do
  set -- $spec
  if run "quantize models/default --to $1" "$D" quantize -m models/default --out "$TMP/default-$1" --to $1 --eval "$TMP/eval.txt" \
       --eval-tokens 2048 --decode 4 --json; then
    r=$(check report "$(cat "$TMP/out.txt")" $2 $1) && ok "models/default -> $1: $r" || bad "models/default -> $1 report: $r"
  fi
done

# malformed Q8/Q4 tensors: a scale of the wrong dtype, a weight of the wrong shape
check corrupt "$TMP/q8" "$TMP/bad-scale" layers.0.attn.wq_a.scale dtype '"BF16"' > /dev/null
expect_error "Q8 scale stored as BF16" "layers.0.attn.wq_a.scale" "$D" info -m "$TMP/bad-scale"
check corrupt "$TMP/q4" "$TMP/bad-shape" layers.0.attn.wq_a.weight shape '[32, 64]' > /dev/null
expect_error "Q4 weight with unpacked columns" "layers.0.attn.wq_a.weight" "$D" info -m "$TMP/bad-shape"

# bad arguments: each a message and a non-zero exit; an existing OUT untouched without --force
expect_error "no --to" "--to" "$D" quantize -m "$TMP/f32" --out "$TMP/x"
expect_error "unknown format" "'q5'" "$D" quantize -m "$TMP/f32" --out "$TMP/x" --to q5
expect_error "--experts bf16" "'bf16'" "$D" quantize -m "$TMP/f32" --out "$TMP/x" --to q4 --experts bf16
expect_error "unknown option" "--bogus" "$D" quantize -m "$TMP/f32" --out "$TMP/x" --to q4 --bogus
expect_error "missing IN" "no-such-model" "$D" quantize -m "$TMP/no-such-model" --out "$TMP/x" --to q8
expect_error "eval file missing" "no-such-file" "$D" quantize -m "$TMP/f32" --out "$TMP/x" --to q8 --eval "$TMP/no-such-file.bin"
[ -e "$TMP/x" ] && bad "a failed quantize left $TMP/x"
before=$(md5sum < "$TMP/q8/model-00001-of-00001.safetensors")
expect_error "existing OUT without --force" "already exists" "$D" quantize -m "$TMP/f32" --out "$TMP/q8" --to q4
if [ "$before" = "$(md5sum < "$TMP/q8/model-00001-of-00001.safetensors")" ]; then ok "the existing OUT is untouched"; else bad "the existing OUT changed"; fi
if ls -d "$TMP"/*.tmp.* "$TMP"/*.old.* > /dev/null 2>&1; then bad "temporary directories left: $(ls -d "$TMP"/*.tmp.* "$TMP"/*.old.*)"
else ok "no OUT.tmp.* / OUT.old.* left behind"; fi

echo "quantize: $passed passed, $failed failed"
[ $failed -eq 0 ]
