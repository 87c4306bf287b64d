#!/usr/bin/env bash
# 1M-token context on this machine (issue: a 2-core, 24 GiB box): configs/long-1m.json (d 256,
# 8 layers = 2 CSA ratio 4 + 6 HCA ratio 128, window 128, 4 heads, indexer 2 x 32, top-256),
# random BF16 weights, prefill L tokens then 256 decoded, at L = 4K .. 1M, each in its own
# process (peak RSS is that run's). Beside it the same dimensions with dense attention (every
# layer attends every earlier token: window 32768, no compression) up to 32K, where it still
# fits the time. Writes a table to stdout and docs/long-context.png.
# Each length's result is kept in bench/long-results/ (the 1M run takes about 15 minutes) and
# not measured again: LONG_RERUN=1 measures everything anew; LONG_MAX=131072 stops earlier.
set -euo pipefail
cd "$(dirname "$0")/.."
D=./dsv4
MAX=${LONG_MAX:-1048576}
OUT=bench/long-results
[ "${LONG_RERUN:-0}" = 1 ] && rm -rf "$OUT"
mkdir -p "$OUT"
measure() {   # KIND L [bench options]
  local kind=$1 L=$2
  shift 2
  [ -s "$OUT/$kind-$L.json" ] && return
  $D bench --long "$L" --decode 256 --json "$@" 2> /dev/null > "$OUT/$kind-$L.tmp" && mv "$OUT/$kind-$L.tmp" "$OUT/$kind-$L.json"
}
for L in 4096 32768 131072 524288 1048576; do
  [ "$L" -le "$MAX" ] && measure v4 "$L"
done
for L in 4096 16384 32768; do
  [ "$L" -le "$MAX" ] && measure dense "$L" --config configs/long-1m-dense.json --model-dir bench/model-long-1m-dense
done
rm -f "$OUT"/*.dat
/usr/bin/python3 - "$OUT" <<'P'
import json, sys, os
out = sys.argv[1]
rows = {}
for f in sorted(os.listdir(out)):
    if f.endswith(".json"):
        rows.setdefault(f.split("-")[0], []).append(json.loads(open(os.path.join(out, f)).read()))
for k in rows:
    rows[k].sort(key=lambda r: r["tokens"])
print("| attention | tokens | prefill | tok/s | peak RSS | GFLOP (dense + attention + indexer) | GFLOP/s | indexer: s, GFLOP/s, share of sgemm | decode tok/s | MB read per token | decode time / its bytes at the read rate |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for k, rs in rows.items():
    for r in rs:
        ix = (f"{r['indexer_s']:.1f} s, {r['indexer_gflops']:.1f}, {100 * r['indexer_gflops'] / r['sgemm_gflops']:.0f}% of {r['sgemm_gflops']:.0f}"
              if r.get("indexer_s") else "-")
        print(f"| {'V4 (CSA + HCA)' if k == 'v4' else 'dense'} | {r['tokens']:,} | {r['prefill_s']:.1f} s | {r['prefill_tok_s']:.0f} | "
              f"{r['peak_rss_bytes'] / 1e9:.2f} GB | {r['prefill_gflop']:.0f} ({r['dense_gflop']:.0f} + {r['attention_gflop']:.0f} + {r['indexer_gflop']:.0f}) | "
              f"{r['prefill_gflops']:.1f} | {ix} | {r['decode_tok_s']:.1f} | {r['decode_bytes_per_token'] / 1e6:.1f} | {r['decode_time_over_bytes']:.2f}x |")
    for r in rs:
        open(os.path.join(out, f"{k}.dat"), "a").write(f"{r['tokens']} {r['prefill_s']} {r['decode_tok_s']} {r['peak_rss_bytes'] / 1e9}\n")
P
if command -v gnuplot > /dev/null; then
  gnuplot <<G
set terminal pngcairo size 1100,450 font ",10"
set output "docs/long-context.png"
set multiplot layout 1,2
set logscale xy
set xrange [2500:1500000]
set grid
set xlabel "context (tokens)"
set key top left
set title "prefill time"
set ylabel "seconds"
plot "$OUT/v4.dat" using 1:2 with linespoints lw 2 title "V4 hybrid attention", \
     "$OUT/dense.dat" using 1:2 with linespoints lw 2 title "dense attention"
set title "decode speed at that context"
set ylabel "tokens/s"
unset logscale y
set key top right
plot "$OUT/v4.dat" using 1:3 with linespoints lw 2 title "V4 hybrid attention", \
     "$OUT/dense.dat" using 1:3 with linespoints lw 2 title "dense attention"
unset multiplot
G
  echo "plot: docs/long-context.png"
fi
