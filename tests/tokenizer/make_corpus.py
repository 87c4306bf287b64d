#!/usr/bin/env python3
"""Writes a deterministic ~1.2 MB test corpus of NUL-separated documents for tokenizer parity:
English prose and source code (Python's own library files, which every machine with python3
has), Chinese, Japanese, Arabic, emoji (with ZWJ sequences and skin tones), long digit runs,
whitespace and newline runs, combining marks, characters from recent Unicode versions, and
text containing special-token strings.  usage: make_corpus.py OUT [SIZE_BYTES]"""
import glob
import os
import random
import sys

out = sys.argv[1]
target = int(sys.argv[2]) if len(sys.argv) > 2 else 1_250_000
rng = random.Random(20261129)

lib = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))
texts = []
for p in lib:
    try:
        texts.append(open(p, encoding="utf-8").read())
    except (UnicodeDecodeError, OSError):
        pass
code = "".join(texts)
prose = " ".join(l.strip().lstrip("#").strip() for l in code.splitlines() if l.strip().startswith("#"))

def span(s, n):
    i = rng.randrange(max(1, len(s) - n))
    return s[i:i + n]

def chars(ranges, n):
    out = []
    for _ in range(n):
        a, b = rng.choice(ranges)
        out.append(chr(rng.randint(a, b)))
    return "".join(out)

CJK = [(0x4E00, 0x9FA5)]
KANA = [(0x3040, 0x309F), (0x30A0, 0x30FF)]
ARABIC = [(0x0621, 0x064A)]
EMOJI = [(0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF)]
NEW = [(0x1FA70, 0x1FAF8), (0x31350, 0x323AF), (0x11F00, 0x11F59)]   # Unicode 13-15 additions
SPECIAL = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>",
           "<｜tool▁calls▁begin｜>", "<｜tool▁sep｜>", "<｜▁pad▁｜>", "<｜fim▁hole｜>", "<｜place▁holder▁no▁1｜>"]

def chinese():
    s = []
    for _ in range(rng.randint(3, 30)):
        s.append(chars(CJK, rng.randint(2, 12)) + rng.choice(["，", "。", "、", "！", "？", "：", " ", "\n"]))
    return "".join(s)

def japanese():
    return "".join(chars(rng.choice([KANA, CJK, KANA]), rng.randint(1, 8)) + rng.choice(["。", "、", "「", "」", ""]) for _ in range(rng.randint(5, 40)))

def arabic():
    return " ".join(chars(ARABIC, rng.randint(2, 9)) for _ in range(rng.randint(5, 60))) + rng.choice(["،", ".", "؟", "\n"])

def emoji():
    parts = []
    for _ in range(rng.randint(3, 30)):
        e = chars(EMOJI, 1)
        r = rng.random()
        if r < 0.2: e += chr(rng.randint(0x1F3FB, 0x1F3FF))                 # skin tone
        elif r < 0.35: e += "\u200d" + chars(EMOJI, 1)                       # ZWJ sequence
        elif r < 0.45: e += "\ufe0f"
        parts.append(e + rng.choice(["", " ", "  ", "!", "\n"]))
    return "".join(parts)

def digits():
    return " ".join(str(rng.randrange(10 ** rng.randint(1, 40))) for _ in range(rng.randint(3, 30))) + rng.choice(["1,234,567.89", "3.14159", "２０２６年", "٣٤٥", ""])

def whitespace():
    pieces = [span(prose, rng.randint(5, 40)), " " * rng.randint(2, 40), "\t" * rng.randint(1, 5), "\n" * rng.randint(1, 6),
              "\r\n" * rng.randint(1, 3), " \n \n", "\u3000\u00a0\u2009", span(code, rng.randint(5, 80))]
    rng.shuffle(pieces)
    return "".join(pieces)

def special():
    out = []
    for _ in range(rng.randint(2, 10)):
        out.append(span(prose, rng.randint(0, 60)))
        t = rng.choice(SPECIAL)
        if rng.random() < 0.2: t = t[: rng.randint(1, len(t) - 1)]          # a broken special string
        out.append(t)
    return "".join(out)

def marks():
    base = span(prose, rng.randint(10, 80))
    return "".join(c + ("\u0301" if rng.random() < 0.1 else "") + ("\u0308" if rng.random() < 0.05 else "") for c in base) + "é" + "e\u0301" + "ﬁ"

def recent():
    return span(prose, 30) + chars(NEW, rng.randint(1, 10)) + " " + chars(NEW, 3)

gens = [(lambda: span(prose, rng.randint(200, 3000)), 22), (lambda: span(code, rng.randint(200, 4000)), 22), (chinese, 8),
        (japanese, 6), (arabic, 6), (emoji, 6), (digits, 6), (whitespace, 8), (special, 8), (marks, 4), (recent, 4)]
weights = [w for _, w in gens]
docs, size = [], 0
while size < target:
    g = rng.choices([g for g, _ in gens], weights)[0]
    d = g()
    if rng.random() < 0.3:
        d += rng.choices([g for g, _ in gens], weights)[0]()
    d = d.replace("\0", "")
    if not d:
        continue
    docs.append(d)
    size += len(d.encode("utf-8"))
with open(out, "wb") as f:
    f.write(b"\0".join(x.encode("utf-8") for x in docs))
print(f"{len(docs)} documents, {size} bytes", file=sys.stderr)
