#!/usr/bin/env bash
# Engram experiments on the Brown corpus (spec ENGRAM.md "Reported results", reproduced in shape):
#   (a) a backbone without Engram vs the same backbone with Engram at (nearly) equal active
#       parameters (the Engram model's experts are narrowed to pay for its projections);
#   (b) validation loss against the table size (rows per sub-table), four sizes or more;
#   (c) the Engram models evaluated with Engram's output zeroed (perplexity --engram-scale 0).
# Writes OUT (default runs/engram-exp)/results.csv, loss-vs-table.png, curves.png and prints a
# Markdown table. STEPS (default 400) sets every run's length; SIZES the table sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/engram-exp}
STEPS=${STEPS:-400}
SIZES=${SIZES:-"1000 4000 16000 64000"}
PY=/usr/bin/python3
DATA=data/brown-4096
scripts/prepare-brown-4096.sh
mkdir -p "$OUT"
# configs: a small V4 backbone; Engram in layer 1 (orders 2-3, 4 heads x 32, short conv)
$PY - "$OUT" $SIZES <<'P'
import json, sys
out, sizes = sys.argv[1], [int(s) for s in sys.argv[2:]]
base = {"vocab_size": 4096, "dim": 128, "moe_inter_dim": 128, "n_layers": 4, "n_hash_layers": 1, "n_mtp_layers": 0,
        "n_heads": 4, "head_dim": 32, "rope_head_dim": 16, "q_lora_rank": 64, "o_groups": 2, "o_lora_rank": 64,
        "n_routed_experts": 8, "n_shared_experts": 1, "n_activated_experts": 2, "score_func": "sqrtsoftplus",
        "route_scale": 1.5, "swiglu_limit": 10.0, "window_size": 64, "original_seq_len": 65536, "rope_theta": 10000,
        "rope_factor": 16, "beta_fast": 32, "beta_slow": 1, "compress_rope_theta": 160000, "index_n_heads": 2,
        "index_head_dim": 32, "index_topk": 16, "hc_mult": 4, "hc_sinkhorn_iters": 20, "dtype": "bf16",
        "compress_ratios": [0, 4, 128, 0]}
json.dump(base, open(f"{out}/base.json", "w"), indent=1)
for s in sizes:
    c = dict(base)
    # Engram's projections are active parameters: (hc + 1) x dim x E with E = (N-1) x heads x
    # head_dim; narrower experts pay for them (per unit of moe_inter_dim: 3 matrices x dim x
    # (routed + shared experts per token) in every layer)
    E = 2 * 4 * 32
    extra = (base["hc_mult"] + 1) * base["dim"] * E
    per_unit = base["n_layers"] * 3 * base["dim"] * (base["n_activated_experts"] + base["n_shared_experts"])
    c["moe_inter_dim"] = base["moe_inter_dim"] - round(extra / per_unit)
    c.update({"engram_layer_ids": [1], "engram_max_ngram_size": 3, "engram_n_heads": 4, "engram_head_dim": 32,
              "engram_vocab_size": s, "engram_pad_token_id": 0, "engram_seed": 0, "engram_kernel_size": 4})
    json.dump(c, open(f"{out}/engram-{s}.json", "w"), indent=1)
P
run() {   # NAME CONFIG: train (resumable), then the validation perplexity over the whole split
  local name=$1 cfg=$2 extra=()
  [ -d "$OUT/$name/checkpoint" ] && extra=(--resume)
  ./dsv4 train --config "$cfg" --data "$DATA" --out "$OUT/$name" "${extra[@]}" --steps "$STEPS" --seq 256 --batch 8 \
    --warmup 20 --eval-every 100 --eval-tokens 16384 --ckpt-every 50 --mtp-weight 0 > "$OUT/$name.log"
}
echo "name,table_rows,active_params,total_params,val_loss,val_loss_engram_zeroed" > "$OUT/results.csv"
for name in base $(for s in $SIZES; do echo "engram-$s"; done); do
  cfg="$OUT/$name.json"
  echo "training $name ..." >&2
  run "$name" "$cfg"
  ppl=$(./dsv4 perplexity -m "$OUT/$name/checkpoint" --data "$DATA/val.bin" --seq 256 2> /dev/null | sed -E 's/.*loss ([0-9.]+).*/\1/')
  zero=""
  [ "$name" != base ] && zero=$(./dsv4 perplexity -m "$OUT/$name/checkpoint" --data "$DATA/val.bin" --seq 256 --engram-scale 0 2> /dev/null | sed -E 's/.*loss ([0-9.]+).*/\1/')
  plan=$(./dsv4 plan "$cfg" --json)
  $PY -c "import json, sys; p = json.loads(sys.argv[1]); rows = sys.argv[3]
print(f\"{sys.argv[2]},{rows},{p['active_params']:.0f},{p['total_params']:.0f},{sys.argv[4]},{sys.argv[5]}\")" \
    "$plan" "$name" "${name#engram-}" "$ppl" "$zero" | sed 's/,base,/,0,/' >> "$OUT/results.csv"
done
# plots: validation loss against table rows (log x) beside the baseline; the training curves
gnuplot <<EOF 2> /dev/null || echo "(no plots: gnuplot missing)" >&2
set terminal pngcairo size 900,540 font 'sans,11' noenhanced
set datafile separator ','
set output '$OUT/loss-vs-table.png'
set title 'Engram: validation loss against table size (Brown, $STEPS steps)'
set xlabel 'rows per sub-table (log scale)'; set ylabel 'validation loss (nats)'; set logscale x; set grid
base = system("awk -F, '\$1 == \"base\" {print \$5}' $OUT/results.csv")
plot '$OUT/results.csv' every ::2 using 2:5 with linespoints pt 7 lw 2 title 'with Engram', \
     '' every ::2 using 2:6 with linespoints pt 5 lw 1 title 'Engram output zeroed', \
     base + 0 with lines dt 2 lw 2 title 'without Engram (equal active parameters)'
set output '$OUT/curves.png'
unset logscale x
set title 'Engram: validation loss during training'; set xlabel 'step'
plot for [f in "base $(for s in $SIZES; do printf 'engram-%s ' "$s"; done)"] '$OUT/'.f.'/log.csv' every ::1 using 1:(\$6 > 0 ? \$6 : 1/0) with linespoints title f
EOF
$PY - "$OUT/results.csv" <<'P'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print("| model | rows per sub-table | active params | total params | val loss | Engram zeroed |")
print("| --- | --- | --- | --- | --- | --- |")
for r in rows:
    print(f"| {r['name']} | {r['table_rows']} | {int(r['active_params']):,} | {int(r['total_params']):,} | {r['val_loss']} | {r['val_loss_engram_zeroed'] or '-'} |")
P
