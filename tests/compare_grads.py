#!/usr/bin/env python3
"""Compares dsv4's gradients with the reference's.

  compare_grads.py OURS.safetensors REF.safetensors [--tol 1e-4]
Both files must hold the same tensors with the same shapes. For each, ‖ours − ref‖ / ‖ref‖ must be
at most the tolerance; where the reference gradient is exactly zero (no gradient flows: the indexer,
the selection bias, the MTP block), ours must be zero too. Prints the worst tensors."""
import json
import struct
import sys

import numpy as np


def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        assert v["dtype"] == "F32", (k, v["dtype"])
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype="<f4").reshape(v["shape"]).astype(np.float64)
    return out


args = sys.argv[1:]
tol = float(args[args.index("--tol") + 1]) if "--tol" in args else 1e-4
ours, ref = load(args[0]), load(args[1])
if set(ours) != set(ref):
    print(f"tensor sets differ: only ours {sorted(set(ours) - set(ref))[:5]}, only ref {sorted(set(ref) - set(ours))[:5]}")
    sys.exit(1)
rows, bad, zero = [], [], 0
for k in sorted(ref):
    a, b = ours[k], ref[k]
    if a.shape != b.shape:
        bad.append(f"{k}: shape {a.shape} vs {b.shape}")
        continue
    nb = np.linalg.norm(b)
    if nb == 0:
        zero += 1
        if np.abs(a).max() > 0:
            bad.append(f"{k}: reference gradient is zero, ours has max {np.abs(a).max():.3g}")
        continue
    r = np.linalg.norm(a - b) / nb
    rows.append((r, k))
    if r > tol:
        bad.append(f"{k}: relative error {r:.3g}")
rows.sort(reverse=True)
print(f"{len(ref)} tensors ({zero} with zero gradient): worst relative error {rows[0][0]:.3g} ({rows[0][1]}), "
      f"median {rows[len(rows) // 2][0]:.3g}; tolerance {tol:g}")
for line in bad[:10]:
    print("  " + line)
sys.exit(1 if bad else 0)
