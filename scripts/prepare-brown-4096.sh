#!/usr/bin/env bash
# data/brown-4096: the Brown corpus (scripts/get-brown-corpus.sh), a 4,096-id BPE tokenizer trained
# on it by dsv4, and its train/validation token shards. Made once; later calls return at once.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=data/brown-4096
[ -x ./dsv4 ] || make dsv4
[ -s data/brown/brown.txt ] || scripts/get-brown-corpus.sh
if [ ! -s "$DATA/train.bin" ]; then
  mkdir -p "$DATA"
  ./dsv4 tokenizer train --vocab 4096 --data data/brown/brown.txt --out "$DATA/tokenizer.json"
  ./dsv4 data prepare --tokenizer "$DATA/tokenizer.json" --data data/brown/brown.txt --out "$DATA"
fi
