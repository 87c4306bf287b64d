#!/usr/bin/python3
"""Engram n-gram hash retrieval: an independent reference for `dsv4 engram hash`.

    /usr/bin/python3 reference/engram_ref.py [hash] -m DIR --tokens FILE
    /usr/bin/python3 reference/engram_ref.py [hash] -m DIR --stats

Reproduces the retrieval path of DeepSeek's Engram demo (`deepseek-ai/Engram`,
`engram_demo_v1.py`: CompressedTokenizer, find_next_prime, NgramHashMapping), as described in
docs/engram-hash.md, without transformers/tokenizers/sympy/torch: only the standard library and
NumPy (Debian's python3-numpy; run it with /usr/bin/python3).

DIR      holds config.json (dsv4 native or Hugging Face form: the Engram fields have the same
         top-level names in both) and tokenizer.json (Hugging Face, byte-level BPE with added
         tokens). Fields used: engram_layer_ids (0-based layer indices, in this order),
         engram_max_ngram_size (N >= 2), engram_n_heads (heads per n-gram order),
         engram_vocab_size (rows per order before the prime search: a list with one entry per
         order 2..N, or one integer for all orders), engram_pad_token_id (an ORIGINAL token id,
         compressed before use), engram_seed. engram_head_dim and engram_kernel_size do not
         enter the hash and are ignored. All six fields are required (no demo defaults).
FILE     integer token ids (original ids) separated by whitespace and/or commas.

Output (stdout), one JSON object per line, layers in engram_layer_ids order (outer loop),
positions t = 0..T-1 (inner loop):
    {"layer": L, "pos": t, "compressed": c, "rows": [r, ...]}
c is the compressed (canonical) id of token t; rows has (N-1)*K entries ordered by n-gram order
(2..N) then head: the index within that head's table, mix mod prime, before any offset.

--stats  prints one line instead (no --tokens needed; if given, the ids are still checked):
    {"ids": n, "compressed": n', "half_bound": h,
     "multipliers": {"L": [m_0, ..., m_{N-1}], ...}, "primes": {"L": [p, ...], ...}}
         primes per layer in the (order, head) order of the rows.

Errors (message on stderr, exit status 1): a token id outside [0, len(tokenizer)) (naming the
id and its position), a missing/invalid config field, a tokenizer.json whose ids have holes or
that is not byte-level.

Unicode: the normalisation uses Python's unicodedata (Unicode 14.0.0 with Python 3.11, the
Debian 12 /usr/bin/python3); the demo uses the Rust `tokenizers` crate's tables. A different
Unicode version can change |V'| and so every multiplier; with Unicode 14.0.0 the DeepSeek-V3
tokenizer gives 128,815 -> 98,627 as the demo does. Checked: the whole lookup table (every id's
canonical id) equals the one built by the Hugging Face `tokenizers` Rust core itself (its Node
binding in tests/tokenizer/node_modules, 0.23.2: decode([id]), id_to_token and the demo's
normalizer Sequence), for DeepSeek-V3 and for tokenizers trained by `dsv4 tokenizer train`.
"""
import argparse
import json
import os
import re
import sys
import unicodedata

import numpy as np

I64_MAX = 2**63 - 1
PRIME_1 = 10007                     # engram_demo_v1.py: seed + PRIME_1 * layer_id
SENTINEL = "\ue000"                 # the demo's protection of a lone " " from Strip
# Unicode White_Space (Rust char::is_whitespace, used by the `Strip` normaliser). Python's
# str.isspace() differs (it also accepts U+001C..U+001F), so the set is spelled out.
WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                        + "".join(chr(c) for c in range(0x2000, 0x200B)))
WS_RUN = re.compile(r"[ \t\r\n]+")


class RefError(Exception):
    pass


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


# ---------------------------------------------------------------------------------------------
# tokenizer.json: ids, token strings, per-id decode
# ---------------------------------------------------------------------------------------------

def gpt2_char_to_byte():
    """The GPT-2 byte-level alphabet, inverted: character -> byte."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


CHAR_BYTE = gpt2_char_to_byte()


def load_tokenizer(path):
    """Returns the token string of every id 0..n-1 (n = len(tokenizer)).

    Like the Rust core's id_to_token in Tokenizer::decode, an added token's content takes
    precedence over a model-vocabulary entry with the same id (DeepSeek-V3's ids 0, 1, 2 are in
    both, with the same string).

    len(tokenizer): the demo iterates range(len(tokenizer)), and `tokenizers` computes that as
    the number of distinct token STRINGS of model vocab + added tokens. For a tokenizer whose
    ids are contiguous 0..max and whose strings are one per id, that is max id + 1, which is what
    this reference uses. Holes (ids in 0..max that no entry defines) would be decoded by the demo
    from an empty token list: text "" (no U+FFFD), normalised "" -> key "" (the raw decode), so
    every hole would share one canonical id (first seen at the first hole), and len(tokenizer)
    would be smaller than max + 1, so the highest ids would not be covered at all. That is not
    a sensible table, so holes are an error here; so is a string defined under two different
    ids (it would also make len(tokenizer) < max + 1).
    """
    try:
        with open(path, "rb") as f:
            t = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise RefError(f"{path}: {e}")
    model = t.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(vocab, dict):
        raise RefError(f"{path}: no model.vocab object (a byte-level BPE tokenizer.json is required)")
    dec = t.get("decoder")
    if not (isinstance(dec, dict) and dec.get("type") == "ByteLevel"):
        raise RefError(f"{path}: the decoder is not ByteLevel (only byte-level BPE tokenizers are supported)")
    by_id = {}          # id -> token string (added content over model string)
    ids_of = {}         # token string -> ids
    strs_of = {}        # id -> token strings
    entries = [(s, i, "vocab entry") for s, i in vocab.items()]
    entries += [(a.get("content"), a.get("id"), "added token") if isinstance(a, dict) else (None, None, "added token")
                for a in (t.get("added_tokens") or [])]
    for s, i, what in entries:
        if not is_int(i) or i < 0 or not isinstance(s, str):
            raise RefError(f"{path}: invalid {what} {s!r} -> {i!r}")
        if what == "added token" or i not in by_id:
            by_id[i] = s
        ids_of.setdefault(s, set()).add(i)
        strs_of.setdefault(i, set()).add(s)
    if not by_id:
        raise RefError(f"{path}: the tokenizer defines no ids")
    n = max(by_id) + 1
    if len(by_id) != n:
        hole = next(i for i in range(n) if i not in by_id)
        raise RefError(f"{path}: token ids have holes (id {hole} is not defined; {len(by_id)} ids, max id {n - 1})")
    if len(ids_of) != n:
        s = next(s for s, v in ids_of.items() if len(v) > 1) if len(ids_of) < n else None
        i = next(i for i, v in strs_of.items() if len(v) > 1) if s is None else None
        raise RefError(f"{path}: {len(ids_of)} distinct token strings for {n} ids, so len(tokenizer) is ambiguous ("
                       + (f"{s!r} has ids {sorted(ids_of[s])})" if s is not None else
                          f"id {i} has strings {sorted(strs_of[i])!r})"))
    return [by_id[i] for i in range(n)]


def decode_one(tok):
    """tokenizer.decode([id]) for a byte-level BPE tokenizer (ByteLevel decoder, no clean-up).

    As the Rust ByteLevel decoder (tokenizers/src/pre_tokenizers/byte_level.rs, decode_chain):
    if EVERY character of the token is in the 256-character byte alphabet, each maps to its byte;
    otherwise the token's own UTF-8 bytes are used, whole. Then a lossy UTF-8 decode (invalid
    sequences -> U+FFFD; Python's "replace" and Rust's from_utf8_lossy agree on whether there is
    one). For tokens mixing alphabet and non-alphabet characters this differs from mapping each
    character separately only when an alphabet character maps to a byte other than its own code
    (e.g. 'Ġ' or 'é'); no DeepSeek-V3 or dsv4-trained token does that (added tokens such as
    <｜begin▁of▁sentence｜> mix only printable ASCII, which maps to itself, with '｜' and '▁'),
    so there the two readings give the same text for every id.
    """
    try:
        raw = bytes(CHAR_BYTE[c] for c in tok)
    except KeyError:
        raw = tok.encode("utf-8")
    return raw.decode("utf-8", errors="replace")


def normalise(s):
    """The demo's normalizers.Sequence: NFKC, NFD, StripAccents, Lowercase,
    Replace(Regex("[ \\t\\r\\n]+"), " "), Replace(Regex("^ $"), U+E000), Strip, Replace(U+E000, " ")."""
    s = unicodedata.normalize("NFKC", s)
    s = unicodedata.normalize("NFD", s)
    # StripAccents removes every Mark (Mn, Mc, Me), not only Mn
    s = "".join(c for c in s if unicodedata.category(c) not in ("Mn", "Mc", "Me"))
    # Lowercase: full mapping per character, no context (no final-sigma rule)
    s = "".join(c.lower() for c in s)
    s = WS_RUN.sub(" ", s)
    if s == " ":
        s = SENTINEL
    i, j = 0, len(s)
    while i < j and s[i] in WHITE_SPACE:
        i += 1
    while j > i and s[j - 1] in WHITE_SPACE:
        j -= 1
    return s[i:j].replace(SENTINEL, " ")


def compress_table(tokens):
    """CompressedTokenizer._build_lookup_table: (lookup int64[n], number of canonical ids)."""
    key2new = {}
    lookup = np.empty(len(tokens), dtype=np.int64)
    for tid, tok in enumerate(tokens):
        text = decode_one(tok)
        if "\ufffd" in text:
            key = tok                       # convert_ids_to_tokens: the raw token string
        else:
            nm = normalise(text)
            key = nm if nm else text        # empty after normalising: the raw decoded text
        nid = key2new.get(key)
        if nid is None:
            nid = key2new[key] = len(key2new)
        lookup[tid] = nid
    return lookup, len(key2new)


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

def load_config(path):
    try:
        with open(path, "rb") as f:
            c = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise RefError(f"{path}: {e}")
    if not isinstance(c, dict):
        raise RefError(f"{path}: not a JSON object")

    def need(name):
        if name not in c:
            raise RefError(f"{path}: missing field \"{name}\"")
        return c[name]

    layers = need("engram_layer_ids")
    if not isinstance(layers, list) or not layers or not all(is_int(x) and x >= 0 for x in layers):
        raise RefError(f"{path}: \"engram_layer_ids\" must be a non-empty list of non-negative integers")
    if len(set(layers)) != len(layers):
        raise RefError(f"{path}: \"engram_layer_ids\" lists a layer twice")
    n_layers = c.get("n_layers", c.get("num_hidden_layers"))
    if is_int(n_layers):
        bad = [x for x in layers if x >= n_layers]
        if bad:
            raise RefError(f"{path}: engram layer {bad[0]} does not exist (the model has {n_layers} layers)")
    nmax = need("engram_max_ngram_size")
    if not is_int(nmax) or nmax < 2:
        raise RefError(f"{path}: \"engram_max_ngram_size\" must be an integer >= 2")
    heads = need("engram_n_heads")
    if not is_int(heads) or heads < 1:
        raise RefError(f"{path}: \"engram_n_heads\" must be a positive integer")
    vs = need("engram_vocab_size")
    if is_int(vs):
        vs = [vs] * (nmax - 1)
    if not isinstance(vs, list) or len(vs) != nmax - 1 or not all(is_int(x) for x in vs):
        raise RefError(f"{path}: \"engram_vocab_size\" must be one integer or a list of {nmax - 1} integers "
                       f"(one per n-gram order 2..{nmax})")
    # the primes must stay below 2^63 so that mix % p stays in int64 (NumPy would otherwise
    # switch to float64); 2^62 leaves ample room for the search above the size
    if not all(1 <= x <= 2**62 for x in vs):
        raise RefError(f"{path}: \"engram_vocab_size\" entries must be in [1, 2^62]")
    pad = need("engram_pad_token_id")
    if not is_int(pad):
        raise RefError(f"{path}: \"engram_pad_token_id\" must be an integer")
    seed = need("engram_seed")
    if not is_int(seed) or seed < 0:
        raise RefError(f"{path}: \"engram_seed\" must be a non-negative integer")
    return dict(layers=layers, nmax=nmax, heads=heads, vocab_sizes=vs, pad=pad, seed=seed)


# ---------------------------------------------------------------------------------------------
# multipliers, primes, hashes (NgramHashMapping)
# ---------------------------------------------------------------------------------------------

def is_prime(n):
    """Deterministic Miller-Rabin: these bases are exact for n < 3.3e24 (sizes here are < 2^63)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in small:
        x = pow(a, d, n)
        if x == 1 or x == n - 1:
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def find_next_prime(start, seen):
    """The smallest prime > start that is not in seen."""
    cand = start + 1
    while True:
        if is_prime(cand) and cand not in seen:
            return cand
        cand += 1


def multipliers_and_primes(cfg, n_compressed):
    half_bound = max(1, (I64_MAX // n_compressed) // 2)
    mult = {}
    for layer in cfg["layers"]:
        g = np.random.default_rng(cfg["seed"] + PRIME_1 * layer)
        r = g.integers(low=0, high=half_bound, size=(cfg["nmax"],), dtype=np.int64)
        mult[layer] = r * 2 + 1                          # int64
    seen = set()                                         # one set across layers, orders, heads
    primes = {}
    for layer in cfg["layers"]:
        lst = []
        for n in range(2, cfg["nmax"] + 1):
            start = cfg["vocab_sizes"][n - 2] - 1
            for _ in range(cfg["heads"]):
                p = find_next_prime(start, seen)
                seen.add(p)
                lst.append(p)
                start = p
        primes[layer] = lst
    return half_bound, mult, primes


def ngram_rows(x, pad_c, mult, primes, nmax, heads):
    """_get_ngram_hashes for one sequence: x int64 [T] compressed ids -> int64 [T, (N-1)*K]."""
    x = x.reshape(1, -1)
    T = x.shape[1]

    def shift(k):
        if k == 0:
            return x
        return np.pad(x, ((0, 0), (k, 0)), mode="constant", constant_values=pad_c)[:, :T]

    base = [shift(k) for k in range(nmax)]
    cols = []
    with np.errstate(over="ignore"):             # int64 products wrap like the demo's
        for n in range(2, nmax + 1):
            mix = base[0] * mult[0]
            for k in range(1, n):
                mix = np.bitwise_xor(mix, base[k] * mult[k])
            for j in range(heads):
                p = int(primes[(n - 2) * heads + j])
                cols.append((mix % p).astype(np.int64, copy=False))   # floor modulo
    return np.stack(cols, axis=2)[0]


# ---------------------------------------------------------------------------------------------

def read_ids(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (OSError, ValueError) as e:
        raise RefError(f"{path}: {e}")
    ids = []
    for pos, w in enumerate(x for x in re.split(r"[\s,]+", text) if x):
        if not re.fullmatch(r"[+-]?[0-9]+", w):
            raise RefError(f"{path}: token {pos} is not an integer id: {w!r}")
        ids.append(int(w))
    return ids


def main(argv):
    ap = argparse.ArgumentParser(description="Engram n-gram hash rows (reference for `dsv4 engram hash`)")
    ap.add_argument("cmd", nargs="?", choices=["hash"], help="optional, as in `dsv4 engram hash`")
    ap.add_argument("-m", "--model", required=True, metavar="DIR", help="directory with config.json and tokenizer.json")
    ap.add_argument("--tokens", metavar="FILE", help="token ids separated by whitespace and/or commas")
    ap.add_argument("--stats", action="store_true", help="print the compression/multiplier/prime summary instead")
    a = ap.parse_args(argv)
    if a.tokens is None and not a.stats:
        ap.error("--tokens FILE is required (unless --stats)")

    cfg = load_config(os.path.join(a.model, "config.json"))
    tokens = load_tokenizer(os.path.join(a.model, "tokenizer.json"))
    n_ids = len(tokens)
    ids = read_ids(a.tokens) if a.tokens is not None else []
    for pos, tid in enumerate(ids):
        if not 0 <= tid < n_ids:
            raise RefError(f"token id {tid} at position {pos} is outside the tokenizer's ids [0, {n_ids})")
    if not 0 <= cfg["pad"] < n_ids:
        raise RefError(f"engram_pad_token_id {cfg['pad']} is outside the tokenizer's ids [0, {n_ids})")

    lookup, n_comp = compress_table(tokens)
    half_bound, mult, primes = multipliers_and_primes(cfg, n_comp)
    out = sys.stdout
    if a.stats:
        out.write(json.dumps({"ids": n_ids, "compressed": n_comp, "half_bound": half_bound,
                              "multipliers": {str(L): [int(v) for v in mult[L]] for L in cfg["layers"]},
                              "primes": {str(L): primes[L] for L in cfg["layers"]}}) + "\n")
        return 0
    pad_c = int(lookup[cfg["pad"]])
    x = lookup[np.asarray(ids, dtype=np.int64)] if ids else np.zeros(0, dtype=np.int64)
    for L in cfg["layers"]:
        if not ids:
            break
        rows = ngram_rows(x, pad_c, mult[L], primes[L], cfg["nmax"], cfg["heads"])
        for t in range(len(ids)):
            out.write(json.dumps({"layer": L, "pos": t, "compressed": int(x[t]),
                                  "rows": [int(v) for v in rows[t]]}) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except RefError as e:
        sys.stderr.write(f"engram_ref: {e}\n")
        sys.exit(1)
