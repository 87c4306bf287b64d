#!/usr/bin/env python3
"""Compares dsv4 logits with reference logits.

  compare.py OURS REF VOCAB --rows FIRST [--tol T]
OURS holds R rows of VOCAB float32; they are compared with rows FIRST..FIRST+R-1 of REF.
Prints the max absolute difference; exit 1 when it exceeds the tolerance (default 1e-4).
With --min-frac F, passes when at least a fraction F of the rows are within the tolerance
(for the quantisation-aware mode, where a value on an FP8 rounding boundary may round either
way between float32 and float64 arithmetic)."""
import sys
import numpy as np

args = sys.argv[1:]
ours, ref, vocab = args[0], args[1], int(args[2])
first = int(args[args.index("--rows") + 1]) if "--rows" in args else 0
tol = float(args[args.index("--tol") + 1]) if "--tol" in args else 1e-4
min_frac = float(args[args.index("--min-frac") + 1]) if "--min-frac" in args else 1.0
a = np.fromfile(ours, dtype="<f4")
b = np.fromfile(ref, dtype="<f4")
if a.size % vocab or b.size % vocab:
    print(f"size not a multiple of vocab {vocab}: {a.size}, {b.size}")
    sys.exit(1)
a = a.reshape(-1, vocab)
b = b.reshape(-1, vocab)[first:first + a.shape[0]]
if a.shape != b.shape:
    print(f"shape mismatch: ours {a.shape}, reference rows {b.shape}")
    sys.exit(1)
if not np.isfinite(a).all():
    print("non-finite logits")
    sys.exit(1)
d = np.abs(a.astype(np.float64) - b.astype(np.float64))
worst = np.unravel_index(np.argmax(d), d.shape)
print(f"max |diff| {d.max():.3g} over {a.shape[0]} rows (row {worst[0] + first}, token {worst[1]}; |ref| max {np.abs(b).max():.3g}); tol {tol:g}")
if min_frac < 1.0:
    frac = float((d.max(axis=1) <= tol).mean())
    print(f"rows within tol: {frac:.3f} (need {min_frac})")
    sys.exit(0 if frac >= min_frac else 1)
sys.exit(0 if d.max() <= tol else 1)
