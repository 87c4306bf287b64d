#!/usr/bin/env python3
"""Brown corpus (tagged, one file per text: word/tag tokens) -> plain text.

usage: brown_to_text.py CORPUS_DIR OUT.txt
Tags are stripped (the part after the last '/'), the corpus' quote marks ``  '' become ",
and punctuation is re-attached to the words it follows. Each Brown text becomes one document
whose sentences are joined into lines; documents are separated by one blank line."""
import os
import re
import sys

src, out = sys.argv[1], sys.argv[2]
files = sorted(f for f in os.listdir(src) if re.fullmatch(r"c[a-r]\d\d", f))
NO_SPACE_BEFORE = {".", ",", ";", ":", "!", "?", ")", "]", "'s", "n't", "'", "''", "'re", "'ve", "'ll", "'d", "'m"}
docs = []
for name in files:
    sentences = []
    for line in open(os.path.join(src, name), encoding="latin-1"):
        toks = line.split()
        if not toks:
            continue
        words = []
        for t in toks:
            w = t.rsplit("/", 1)[0] if "/" in t else t
            words.append(w)
        text = ""
        quote_open = False
        for w in words:
            if w == "``":
                text += (" " if text else "") + '"'
                quote_open = True
                continue
            if w == "''":
                text += '"'
                quote_open = False
                continue
            if not text or w in NO_SPACE_BEFORE or text.endswith(('"', "(", "[")) and quote_open and text.endswith('"'):
                text += w
            elif text.endswith(("(", "[")):
                text += w
            else:
                text += " " + w
        sentences.append(text.strip())
    docs.append("\n".join(s for s in sentences if s))
tmp = out + ".tmp"
with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n\n".join(docs) + "\n")
os.replace(tmp, out)
words = sum(len(d.split()) for d in docs)
print(f"brown: {len(docs)} documents, {words} words, {os.path.getsize(out)} bytes -> {out}", file=sys.stderr)
