#!/usr/bin/env python3
"""Training-throughput reference: the DeepSeek V4 model of reference/v4_ref.py trained with
PyTorch autograd + torch.optim.AdamW, in float32, on a fixed number of threads.

    OMP_NUM_THREADS=2 /usr/bin/python3 reference/train_torch.py -m MODEL_DIR --data DIR/train.bin
        [--seq 512] [--batch 1] [--steps 3] [--threads 2] [--lr 3e-4] [--seed 1]

MODEL_DIR comes from `dsv4 init --config CFG --seed 1 --out MODEL_DIR --dtype f32`.
One step: for each of B sequences of S+1 consecutive tokens (random offsets in the shard),
forward over the whole sequence (v4_ref.forward_main, grad mode), mean next-token cross-entropy
of the main head (no MTP, no auxiliary losses), backward (gradients averaged over the B
sequences), then gradient clipping at norm 1 and one AdamW step (as dsv4's --clip 1). Step 1 is a warm-up and is not timed.
Prints one line per step and then `tok/s <value>` (steps 2..N) as the last line on stdout.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import v4_ref  # noqa: E402  (sets the default dtype to float64; reset below)


def read_shard(path):
    """A `dsv4 data prepare` shard: 32-byte header ("DSV4TOK\\0", u32 1, u32 4, u64 n, 8 reserved bytes), u32 ids."""
    with open(path, "rb") as f:
        head = f.read(32)
        if len(head) != 32 or head[:8] != b"DSV4TOK\0":
            raise SystemExit(f"{path}: not a DSV4TOK shard")
        n = int(np.frombuffer(head[16:24], dtype="<u8")[0])
        ids = np.frombuffer(f.read(4 * n), dtype="<u4")
    if len(ids) != n:
        raise SystemExit(f"{path}: truncated ({len(ids)} of {n} ids)")
    return ids.astype(np.int64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--data", required=True, help="train.bin token shard")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps must be >= 2 (step 1 is the untimed warm-up)")

    torch.set_num_threads(a.threads)
    torch.set_default_dtype(torch.float32)
    v4_ref.F64 = torch.float32            # the reference's explicit float64 buffers -> float32
    torch.manual_seed(a.seed)

    cfg = v4_ref.load_config(a.model)
    st = v4_ref.SafeTensorsDir(a.model)
    model = v4_ref.Model(cfg, st, quant=False, grad=True)
    # every parameter decoded once as a float32 leaf; Model.w hands these out in grad mode
    params = []
    for name in st.entries:
        if model.is_param(name):
            t = st.load(name).to(torch.float32).requires_grad_(True)
            model.params[name] = t
            params.append(t)
    # parameters the main-head loss never reaches (MTP block, gate.bias) get no gradient and
    # are skipped by AdamW, as in dsv4 with --mtp-weight 0
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=a.wd)

    ids = read_shard(a.data)
    if len(ids) < a.seq + 2:
        raise SystemExit(f"{a.data}: {len(ids)} tokens, need more than seq+1 = {a.seq + 1}")
    rng = np.random.default_rng(a.seed)
    print(f"train_torch: torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          f"{sum(p.numel() for p in params)} parameters, seq {a.seq}, batch {a.batch}",
          file=sys.stderr)

    timed_tokens, timed_s = 0, 0.0
    for step in range(1, a.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(a.batch):
            off = int(rng.integers(0, len(ids) - a.seq - 1))
            tok = torch.from_numpy(ids[off:off + a.seq + 1].copy())
            logits, _ = v4_ref.forward_main(model, tok, lambda m: None)
            loss = v4_ref.lm_loss(logits, tok) / a.batch      # gradients averaged over B
            loss.backward()
            total += loss.item()
        gn = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        tps = a.seq * a.batch / dt
        if step > 1:
            timed_tokens += a.seq * a.batch
            timed_s += dt
        print(f"step {step}/{a.steps} loss {total:.6f} grad_norm {gn.item():.3g} {tps:.1f} tok/s"
              + ("  (warm-up, not timed)" if step == 1 else ""), flush=True)
    print(f"tok/s {timed_tokens / timed_s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
