#!/usr/bin/python3
"""Reference side of tests/npy_random_test.sh: NumPy's own outputs for the cases that
src/util/npy_random.c must reproduce bit for bit.

Prints one line per case, "SPEC = VALUES": SPEC is what the C driver reads (it prints the same
SPEC followed by its own values), VALUES are decimal integers separated by spaces, with " | "
between the calls of a sequence, or "error" where NumPy raises ValueError.

Case kinds (all seeds are non-negative Python ints given to np.random.default_rng):
  seedseq SEED                 SeedSequence(SEED).generate_state(4, np.uint64) (PCG64's seed words)
  raw SEED COUNT               default_rng(SEED).bit_generator.random_raw(COUNT)
  words W,W,...                entropy given as uint32 words (SeedSequence([W, W, ...]), "-" for
                               none): generate_state(4, np.uint64), then 3 raw PCG64 draws;
                               more than 4 words exercise the last loop of mix_entropy
  int SEED LOW HIGH SIZE       default_rng(SEED).integers(LOW, HIGH, size=(SIZE,), dtype=np.int64)
  closed SEED LOW HIGH SIZE    the same with endpoint=True
  seq SEED OP;OP;...           several calls on one generator, OP one of
                               i:LOW:HIGH:SIZE (integers), c:LOW:HIGH:SIZE (endpoint=True),
                               r:COUNT (random_raw, which leaves the 32-bit buffer alone)
  engram SEED LAYER VOCAB NMAX the multipliers engram_demo_v1.py (deepseek-ai/Engram,
                               NgramHashMapping.__init__) computes for one layer: r, then r*2+1

Run with /usr/bin/python3 (Debian's python3-numpy). Usage: npy_random_check.py [--specs-only]
"""
import sys

import numpy as np

SEEDS = [0, 1, 42, 12345, 10007 * 3 + 7, 2**32 - 1, 2**32, 2**40 + 5, 2**62 + 11,
         2**63 - 1, 2**64 - 1]
# exclusive highs with low = 0: every branch of random_bounded_uint64_fill (rng = high - 1):
# rng 0 (no draw), 32-bit Lemire (with heavy rejection at 2**31 + 1), rng = 2**32 - 1 (plain
# next_uint32), 64-bit Lemire, and the largest int64 bound.
HIGHS = [1, 2, 3, 1000, 2**31, 2**31 + 1, 3 * 2**30, 2**32 - 1, 2**32, 2**32 + 1, 10**12 + 39,
         2**62, 2**63 - 1]
SIZES = [1, 5, 1000]
I64_MIN, I64_MAX = -2**63, 2**63 - 1
# (kind, low, high, size) with low != 0, negative lows, the full int64 range, rng == 2**64 - 1
# (plain next_uint64), heavy 64-bit rejection, empty and invalid requests
OFFSET_CASES = [
    ("int", 5, 6, 5), ("int", 10, 20, 5), ("int", -100, 100, 1000), ("int", 2**40, 2**40 + 3, 5),
    ("int", 7, 2**32 + 7, 5), ("int", 1, 2**32, 5), ("int", -2**31, 2**31, 5),
    ("int", I64_MIN, I64_MAX, 5), ("int", I64_MIN, I64_MIN + 1, 3), ("int", I64_MIN, 1, 1000),
    ("int", I64_MAX - 3, I64_MAX, 5), ("int", -5, 5, 0), ("int", 5, 5, 0), ("int", 5, 5, 1),
    ("int", 6, 5, 1),
    ("closed", 0, I64_MAX, 5), ("closed", I64_MIN, I64_MAX, 5), ("closed", I64_MIN, 2**62, 1000),
    ("closed", -5, -5, 3), ("closed", 0, 2**32 - 1, 5), ("closed", 0, 2**32 - 2, 5),
    ("closed", 3, 2, 1),
]
SEQUENCES = [
    "i:0:3:5;i:0:3:1;i:0:3:2",                       # odd counts: the spare half carries over
    "i:0:1000:3;r:1;i:0:1000:2",                     # a raw 64-bit draw keeps the spare half
    "i:0:3:1;i:0:4294967296:1;i:0:3:1",              # rng = 2**32-1 also uses next_uint32
    "i:0:3:1;i:0:4294967297:2;i:0:3:1",              # the 64-bit path leaves the buffer alone
    "i:5:5:0;i:7:8:3;i:0:3:1;i:0:3:1",               # empty and rng == 0 requests draw nothing
    "i:0:2147483648:7;c:-9223372036854775808:9223372036854775807:2;i:-100:100:5;"
    "c:0:9223372036854775807:3;i:0:3:1001;r:2;i:0:2147483649:999",
]
SEQ_SEEDS = [0, 42, 2**32, 2**62 + 11]
# engram_demo_v1.py defaults: seed 0, layer_ids [1, 15], max_ngram_size 3. The bound comes from
# len(CompressedTokenizer) for deepseek-ai/DeepSeek-V3, which needs the tokenizer: 98627 is the
# value given in shared/spec/ENGRAM.md (128,815 ids -> 98,627); 128815 and 129280 (uncompressed
# tokenizer / model vocabulary) are there to show how the bound moves, plus other layer sets.
ENGRAM = [(0, 1, 98627, 3), (0, 15, 98627, 3),
          (0, 1, 128815, 3), (0, 15, 128815, 3), (0, 1, 129280, 3), (0, 15, 129280, 3),
          (0, 2, 98627, 3), (0, 1, 98627, 4), (0, 14, 98627, 4), (12345, 7, 98627, 3)]


# uint32 entropy words; 2**200 + 12345 as an int gives 7 words (lowest first)
WORD_SETS = [[], [0], [1, 2], [1, 2, 3, 4], [1, 2, 3, 4, 5], [2**32 - 1] * 6,
             [(2**200 + 12345) >> (32 * i) & 0xFFFFFFFF for i in range(7)]]


def fmt(values):
    return " ".join(str(int(v)) for v in values)


def integers(g, low, high, size, closed):
    try:
        return fmt(g.integers(low, high, size=(size,), dtype=np.int64, endpoint=closed))
    except ValueError:
        return "error"


def engram_multipliers(seed, layer_id, tokenizer_vocab_size, max_ngram_size):
    # the demo's own formulas (NgramHashMapping.__init__), step by step
    max_long = np.iinfo(np.int64).max
    m_max = int(max_long // tokenizer_vocab_size)
    half_bound = max(1, m_max // 2)
    base_seed = int(seed + 10007 * int(layer_id))
    g = np.random.default_rng(base_seed)
    r = g.integers(low=0, high=half_bound, size=(max_ngram_size,), dtype=np.int64)
    multipliers = r * 2 + 1
    return r, multipliers


def cases():
    for s in SEEDS:
        yield f"seedseq {s}", lambda s=s: fmt(np.random.SeedSequence(s).generate_state(4, np.uint64))
        yield f"raw {s} 5", lambda s=s: fmt(np.random.default_rng(s).bit_generator.random_raw(5))
    for w in WORD_SETS:
        def words(w=w):
            state = np.random.SeedSequence(np.array(w, dtype=np.uint32)).generate_state(4, np.uint64)
            raw = np.random.PCG64(np.random.SeedSequence(np.array(w, dtype=np.uint32))).random_raw(3)
            return fmt(state) + " | " + fmt(raw)
        yield "words " + (",".join(map(str, w)) or "-"), words
    for s in SEEDS:
        for h in HIGHS:
            for n in SIZES:
                yield f"int {s} 0 {h} {n}", lambda s=s, h=h, n=n: integers(
                    np.random.default_rng(s), 0, h, n, False)
    for s in [0, 42, 2**40 + 5]:
        for kind, lo, hi, n in OFFSET_CASES:
            yield f"{kind} {s} {lo} {hi} {n}", lambda s=s, kind=kind, lo=lo, hi=hi, n=n: integers(
                np.random.default_rng(s), lo, hi, n, kind == "closed")
    for s in SEQ_SEEDS:
        for ops in SEQUENCES:
            def run(s=s, ops=ops):
                g = np.random.default_rng(s)
                parts = []
                for op in ops.split(";"):
                    f = op.split(":")
                    if f[0] == "r":
                        parts.append(fmt(g.bit_generator.random_raw(int(f[1]))))
                    else:
                        parts.append(integers(g, int(f[1]), int(f[2]), int(f[3]), f[0] == "c"))
                return " | ".join(parts)
            yield f"seq {s} {ops}", run
    for seed, layer, vocab, nmax in ENGRAM:
        def eng(seed=seed, layer=layer, vocab=vocab, nmax=nmax):
            r, m = engram_multipliers(seed, layer, vocab, nmax)
            return fmt(r) + " | " + fmt(m)
        yield f"engram {seed} {layer} {vocab} {nmax}", eng


def main():
    specs_only = "--specs-only" in sys.argv[1:]
    out = sys.stdout
    for spec, f in cases():
        out.write(spec + "\n" if specs_only else f"{spec} = {f()}\n")


if __name__ == "__main__":
    main()
