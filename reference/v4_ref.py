#!/usr/bin/env python3
"""DeepSeek V4 forward pass: an independent, non-incremental float64 reference.

    /usr/bin/python3 reference/v4_ref.py -m MODEL_DIR --tokens TOKENS_FILE [--out LOGITS.f32]
                                         [--mtp-out MTP.f32] [--quant] [--grad-out GRAD.safetensors]
                                         [--mtp-weight LAMBDA]
                                         [--indexer-weight X [--indexer-dense]]

TOKENS_FILE  integer token ids separated by whitespace and/or commas (N ids).
--out        little-endian float32 [N, vocab]: main-model logits at every position.
--mtp-out    little-endian float32 [N-1, vocab]: row i = MTP logits from the main model's final
             hidden streams at position i combined with the embedding of token i+1.
--quant      the official quantisation-aware rounding (FP8 activations before FP8/FP4 linears,
             FP8 kv, Hadamard + FP4 in the indexer). Default: exact math.
--grad-out   gradient mode (exact math only; not with --quant): loss = mean next-token cross-entropy
             of the main head (logits at i predict token i+1, i = 0..N-2; the MTP and indexer
             terms only with --mtp-weight, --indexer-weight), d loss / d parameter by float64
             autograd for every floating-point tensor of the checkpoint, written as a safetensors
             file of F32 tensors named as in the checkpoint. Quantised weights (FP8, FP4) get the
             gradient of their dequantised values in their logical [out, in] shape; `*.scale` of
             quantised weights and integer tables (tid2eid) are left out. The indexer's and MoE's
             top-k / hash selections pass no gradient (the indexer runs in inference mode: zeros,
             unless --indexer-weight > 0; gate.bias only selects: zero gradient); the MTP block
             gets zeros (unless --mtp-weight > 0). Prints `loss <value>` as the last line on stdout.
--mtp-weight with --grad-out only; LAMBDA >= 0, default 0 (= the loss above, output unchanged).
             LAMBDA > 0: loss = CE_main + LAMBDA * CE_mtp, CE_mtp = mean over i = 0..N-3 of the
             cross-entropy of the MTP logits at i (as --mtp-out: main final streams at i + token
             i+1) against token i+2 (0 when N < 3). Gradients then also reach the MTP block
             (mtp.0.*; its gate.bias only selects: zeros; its indexer as the main layers' ones) and
             the main model: its layers through hnorm/h_proj, embed and head (shared); not the
             main hc_head_* and norm (the MTP reads the streams before them). `loss` prints the
             total.
--indexer-weight  with --grad-out only; X >= 0, default 0 (= the loss above, output unchanged).
             X > 0: loss += X * L_I, the lightning indexer's KL loss of the DeepSeek V3.2 recipe
             (the indexer is trained to imitate the main attention's distribution over the
             compressed entries). For every layer with an indexer (ratio 4; the MTP block's too,
             only when it runs, i.e. --mtp-weight > 0, over its own N-1 positions) and query t:
               S_t     = the compressed entries the main attention reads: the indexer's top-k of
                         the visible ones (sparse stage), or all visible ones (--indexer-dense);
               P_t(s)  = sum_h p_{t,h,s} / sum_{s' in S_t} sum_h p_{t,h,s'}, p = the main
                         attention's probabilities (same normaliser as its output: window keys,
                         S_t and the sink); detached, a target only;
               Q_t     = softmax over S_t of the index score
                         I_{t,s} = sum_h w_{t,h} ReLU(q_{t,h} . K_s) (the indexer's own score);
               KL_t    = sum_{s in S_t} P_t(s) (log P_t(s) - log Q_t(s)) (0 where P_t(s) = 0).
             Layer KL = mean of KL_t over the queries with |S_t| >= 1 (0 if none); L_I = sum over
             the layers. The indexer's inputs (attn-normed x, q latent c_q) are detached, so L_I
             reaches only the indexer's own weights (wq_b, weights_proj, compressor.*), and
             those get nothing else (top-k passes no gradient). Prints `indexer_kl <L_I>`
             (unweighted) on the line before `loss`.
--indexer-dense  with --indexer-weight > 0 only: the V3.2 dense warm-up stage. The main attention
             reads every visible compressed entry (as if index_topk were infinite), so the
             logits, the loss and every gradient change with it, and S_t = all visible entries.
At least one of --out, --grad-out is required.

Engram (shared/spec/ENGRAM.md; docs/engram-hash.md (h): the gating and fusion of DeepSeek's
engram_demo_v1.py) in every block listed in the config's engram_layer_ids (0-based; never in the
MTP block). The model directory then needs tokenizer.json: the table rows are the hash rows of
reference/engram_ref.py (imported, not duplicated) plus the per-(order, head) offsets into the
flat table layers.L.engram.embed.weight, and every token id must be a tokenizer id. Before the
block's attention sublayer (before its mHC pre-mixing), with e_t the (N-1)*K looked-up rows
concatenated in (order, head) order and X_m the block's input stream m:
    k = key_proj(e) [hc*dim] (slice m: k_m),  v = value_proj(e) [dim]   (both with bias)
    s_m = sum_i RMSNorm(k_m)_i RMSNorm(X_m)_i / sqrt(dim)   (key_norm / hidden_norm slice m,
          eps = float32 machine epsilon, PyTorch's default in the demo)
    s_m = sign(s_m) sqrt(max(|s_m|, 1e-6)),  U_m = sigmoid(s_m) v
    Y_m = SiLU(conv(RMSNorm(U_m))) + U_m     (engram_kernel_size > 0: conv_norm slice m, eps
          1e-5; depthwise causal conv, dilation engram_max_ngram_size, no bias) else Y_m = U_m
    X_m <- X_m + Y_m
It is part of the logits, the MTP logits (through the main streams) and the gradients (--grad-out:
every Engram tensor; table rows only where looked up). Under --quant the Engram path stays in plain
float (no activation rounding, also for FP8-stored projections).

Written from shared/spec/V4.md (section names cited above each function) and checked against
the facts of the official DeepSeek-V4-Flash inference code (inference/model.py, kernel.py), which
wins where the two differ. Everything is computed over the whole sequence at once with dense
masks (no KV cache, no decode state), in float64, so it is an independent check of an engine
that decodes incrementally. Needs only torch and numpy.
"""
import argparse
import glob
import json
import math
import os
import re
import struct
import sys
import time

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
F64 = torch.float64


class RefError(Exception):
    """A bad input (config, weights, tokens): reported on stderr, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Config: either the Hugging Face form or the official inference form (defaults = ModelArgs).
# ---------------------------------------------------------------------------------------------

ARG_DEFAULTS = dict(
    vocab_size=129280, dim=4096, moe_inter_dim=4096, n_layers=7, n_hash_layers=0, n_mtp_layers=1,
    n_heads=64, n_routed_experts=8, n_shared_experts=1, n_activated_experts=2,
    score_func="sqrtsoftplus", route_scale=1.0, swiglu_limit=0.0, q_lora_rank=1024, head_dim=512,
    rope_head_dim=64, norm_eps=1e-6, o_groups=8, o_lora_rank=1024, window_size=128,
    compress_ratios=[0, 0, 4, 128, 4, 128, 4, 0], compress_rope_theta=40000.0,
    original_seq_len=0, rope_theta=10000.0, rope_factor=40.0, beta_fast=32, beta_slow=1,
    index_n_heads=64, index_head_dim=128, index_topk=512, hc_mult=4, hc_sinkhorn_iters=20,
    hc_eps=1e-6)

HF_NAMES = {  # Hugging Face key -> official inference key
    "hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
    "moe_intermediate_size": "moe_inter_dim", "num_hash_layers": "n_hash_layers",
    "num_experts_per_tok": "n_activated_experts", "scoring_func": "score_func",
    "routed_scaling_factor": "route_scale", "qk_rope_head_dim": "rope_head_dim",
    "sliding_window": "window_size", "rms_norm_eps": "norm_eps",
    "num_nextn_predict_layers": "n_mtp_layers"}
HF_ROPE_NAMES = {"original_max_position_embeddings": "original_seq_len", "factor": "rope_factor",
                 "beta_fast": "beta_fast", "beta_slow": "beta_slow"}


def load_config(model_dir):
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise RefError(f"cannot read {path}: {e}")
    if not isinstance(raw, dict):
        raise RefError(f"{path}: not a JSON object")
    raw = {k: v for k, v in raw.items() if v is not None}
    cfg = dict(ARG_DEFAULTS)
    for hf, name in HF_NAMES.items():           # Hugging Face names (official ones win below)
        if hf in raw:
            cfg[name] = raw[hf]
    rs = raw.get("rope_scaling")
    if isinstance(rs, dict):
        for hf, name in HF_ROPE_NAMES.items():
            if rs.get(hf) is not None:
                cfg[name] = rs[hf]
    for name in ARG_DEFAULTS:                   # official inference names
        if name in raw:
            cfg[name] = raw[name]
    try:
        for k in ("vocab_size", "dim", "moe_inter_dim", "n_layers", "n_hash_layers", "n_mtp_layers",
                  "n_heads", "n_routed_experts", "n_shared_experts", "n_activated_experts",
                  "q_lora_rank", "head_dim", "rope_head_dim", "o_groups", "o_lora_rank",
                  "window_size", "original_seq_len", "index_n_heads", "index_head_dim",
                  "index_topk", "hc_mult", "hc_sinkhorn_iters", "beta_fast", "beta_slow"):
            cfg[k] = int(cfg[k])
        for k in ("route_scale", "swiglu_limit", "norm_eps", "compress_rope_theta", "rope_theta",
                  "rope_factor", "hc_eps"):
            cfg[k] = float(cfg[k])
        cfg["compress_ratios"] = [int(r) for r in cfg["compress_ratios"]]
    except (TypeError, ValueError) as e:
        raise RefError(f"{path}: bad value type: {e}")
    c = cfg
    checks = [
        (c["score_func"] in ("softmax", "sigmoid", "sqrtsoftplus"), f"unknown score_func {c['score_func']!r}"),
        (len(c["compress_ratios"]) >= c["n_layers"], f"compress_ratios has {len(c['compress_ratios'])} entries, need >= n_layers={c['n_layers']}"),
        (all(r >= 0 for r in c["compress_ratios"]), "compress_ratios must be >= 0"),
        (c["rope_head_dim"] % 2 == 0 and 0 < c["rope_head_dim"] <= min(c["head_dim"], c["index_head_dim"]), "rope_head_dim must be even and <= head_dim, index_head_dim"),
        (c["n_heads"] * c["head_dim"] % c["o_groups"] == 0, "n_heads*head_dim must be divisible by o_groups"),
        (0 < c["n_activated_experts"] <= c["n_routed_experts"], "need 0 < n_activated_experts <= n_routed_experts"),
        (c["hc_mult"] >= 1 and c["hc_sinkhorn_iters"] >= 1, "hc_mult and hc_sinkhorn_iters must be >= 1"),
        (c["window_size"] >= 1, "window_size must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise RefError(f"{path}: {msg}")
    cfg["engram"] = engram_config(path, raw, cfg["n_layers"])
    return cfg


def _engram_ref():
    """reference/engram_ref.py (the NumPy reference of Engram's retrieval), imported on demand."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import engram_ref
    return engram_ref


def engram_config(path, raw, n_layers):
    """None without "engram_layer_ids"; else engram_ref's hash fields (layers, nmax, heads,
    vocab_sizes, pad, seed; all required, as engram_ref requires them) plus head_dim (required)
    and kernel (engram_kernel_size, default 0 = no short conv)."""
    if "engram_layer_ids" not in raw:
        return None
    er = _engram_ref()
    try:
        e = er.load_config(path)
    except er.RefError as err:
        raise RefError(str(err))
    hd, ks = raw.get("engram_head_dim"), raw.get("engram_kernel_size", 0)
    if not (er.is_int(hd) and hd >= 1):
        raise RefError(f"{path}: \"engram_head_dim\" must be a positive integer")
    if not (er.is_int(ks) and ks >= 0):
        raise RefError(f"{path}: \"engram_kernel_size\" must be an integer >= 0")
    bad = [L for L in e["layers"] if L >= n_layers]
    if bad:
        raise RefError(f"{path}: engram layer {bad[0]} does not exist (the model has {n_layers} layers)")
    e.update(head_dim=hd, kernel=ks)
    return e


# ---------------------------------------------------------------------------------------------
# Checkpoint: a tiny safetensors reader and the dtype decoders (spec: "Checkpoint format").
# ---------------------------------------------------------------------------------------------

ST_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "F8_E4M3": "u1",
            "F8_E8M0": "u1", "I8": "i1", "U8": "u1", "I16": "<i2", "I32": "<i4", "I64": "<i8",
            "BOOL": "u1"}


def _e4m3fn_table():
    """e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; no inf; 0x7f/0xff = NaN."""
    t = np.zeros(256, dtype=np.float64)
    for b in range(256):
        e, m = (b >> 3) & 0xF, b & 7
        if e == 15 and m == 7:
            v = float("nan")
        elif e == 0:
            v = m / 8.0 * 2.0 ** -6          # subnormal
        else:
            v = (1.0 + m / 8.0) * 2.0 ** (e - 7)
        t[b] = -v if b & 0x80 else v
    return t


E4M3_TABLE = _e4m3fn_table()
E8M0_TABLE = np.array([2.0 ** (e - 127) if e != 255 else float("nan") for e in range(256)])
E2M1_TABLE = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)


def decode_plain(raw, dtype):
    """Storage array -> float64 numpy array (element-wise dtypes only)."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if dtype == "F8_E4M3":
        return E4M3_TABLE[raw]
    if dtype == "F8_E8M0":
        return E8M0_TABLE[raw]
    return raw.astype(np.float64)


class SafeTensorsDir:
    """The shards of a model folder: the files named by model.safetensors.index.json when it
    exists (as the engine does: other *.safetensors files there, e.g. a gradient file, are not
    part of the checkpoint), else every *.safetensors file. Each: 8-byte LE header length, JSON
    header, data."""

    def __init__(self, model_dir):
        index = os.path.join(model_dir, "model.safetensors.index.json")
        weight_map = None
        if os.path.exists(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
                files = sorted({os.path.join(model_dir, v) for v in weight_map.values()})
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise RefError(f"{index}: not valid JSON with a \"weight_map\" object ({e})")
        else:
            files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
        if not files:
            raise RefError(f"no *.safetensors files in {model_dir}")
        self.entries = {}
        for path in files:
            try:
                with open(path, "rb") as f:
                    (hlen,) = struct.unpack("<Q", f.read(8))
                    header = json.loads(f.read(hlen))
                size = os.path.getsize(path)
                mm = np.memmap(path, dtype=np.uint8, mode="r") if size > 8 + hlen else None
            except (OSError, ValueError, struct.error) as e:
                raise RefError(f"{path}: not a safetensors file ({e})")
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                dtype, shape = info["dtype"], tuple(int(s) for s in info["shape"])
                begin, end = info["data_offsets"]
                if dtype not in ST_NUMPY:
                    raise RefError(f"{path}: tensor {name}: unsupported dtype {dtype}")
                n = int(np.prod(shape, dtype=np.int64))
                if end - begin != n * np.dtype(ST_NUMPY[dtype]).itemsize or 8 + hlen + end > size:
                    raise RefError(f"{path}: tensor {name}: bad data_offsets for {dtype}{list(shape)}")
                if name in self.entries:
                    raise RefError(f"tensor {name} appears in more than one file")
                self.entries[name] = (mm, dtype, shape, 8 + hlen + begin)
        self.files = files
        self.model_dir = model_dir
        if weight_map is not None:
            for name in weight_map:
                if name not in self.entries:
                    raise RefError(f"{index}: tensor {name!r} is listed in {weight_map[name]} but not stored there")

    def __contains__(self, name):
        return name in self.entries

    def info(self, name):
        if name not in self.entries:
            raise RefError(f"missing tensor {name!r} in the checkpoint")
        return self.entries[name][1], self.entries[name][2]

    def raw(self, name, r0=None, r1=None):
        """The stored array (storage dtype), optionally rows [r0, r1) of the first axis."""
        mm, dtype, shape, off = self.entries[name]
        npd = np.dtype(ST_NUMPY[dtype])
        if r0 is None:
            r0, r1 = 0, (shape[0] if shape else 1)
            out_shape = shape
        else:
            out_shape = (r1 - r0,) + shape[1:]
        row = int(np.prod(shape[1:], dtype=np.int64)) * npd.itemsize if shape else npd.itemsize
        n = int(np.prod(out_shape, dtype=np.int64))
        if n == 0:
            return np.zeros(out_shape, dtype=npd)
        buf = mm[off + r0 * row: off + r1 * row]
        return np.frombuffer(buf.tobytes(), dtype=npd).reshape(out_shape)

    def weight_kind(self, name):
        """'fp8' (F8_E4M3 + 128x128 E8M0 scale), 'fp4' (I8 packed e2m1 + 1x32 scale) or 'plain'."""
        dtype, shape = self.info(name)
        sname = name[:-len(".weight")] + ".scale" if name.endswith(".weight") else None
        if dtype == "F8_E4M3":
            return "fp8"
        if dtype in ("I8", "U8") and len(shape) == 2 and sname in self:
            _, sshape = self.info(sname)
            if tuple(sshape) == (shape[0], -(-2 * shape[1] // 32)):
                return "fp4"
        return "plain"

    def load(self, name, r0=None, r1=None):
        """Decode a tensor (rows [r0, r1) if given) to a float64 torch tensor."""
        dtype, shape = self.info(name)
        kind = self.weight_kind(name)
        if r0 is None:
            r0, r1 = 0, (shape[0] if shape else 1)
            full = True
        else:
            full = False
        if kind == "plain":
            v = decode_plain(self.raw(name, *((None, None) if full else (r0, r1))), dtype)
            return torch.from_numpy(np.ascontiguousarray(v))
        sname = name[:-len(".weight")] + ".scale"
        if kind == "fp8":
            if len(shape) != 2:
                raise RefError(f"{name}: FP8 weight must be 2-D, got {list(shape)}")
            out_f, in_f = shape
            w = E4M3_TABLE[self.raw(name, r0, r1)]
            if sname in self:
                sdt, sshape = self.info(sname)
                want = (-(-out_f // 128), -(-in_f // 128))
                if tuple(sshape) != want:
                    raise RefError(f"{sname}: shape {list(sshape)}, expected {list(want)}")
                b0, b1 = r0 // 128, -(-r1 // 128)
                s = decode_plain(self.raw(sname, b0, b1), sdt)
                s = np.repeat(np.repeat(s, 128, axis=0), 128, axis=1)
                w = w * s[r0 - b0 * 128: r1 - b0 * 128, :in_f]
            return torch.from_numpy(np.ascontiguousarray(w))
        # fp4: byte j of a row holds element 2j (low nibble) and 2j+1 (high nibble)
        b = self.raw(name, r0, r1).view(np.uint8)
        rows, nbytes = b.shape
        w = np.empty((rows, 2 * nbytes), dtype=np.float64)
        w[:, 0::2] = E2M1_TABLE[b & 0xF]
        w[:, 1::2] = E2M1_TABLE[b >> 4]
        sdt, _ = self.info(sname)
        s = np.repeat(decode_plain(self.raw(sname, r0, r1), sdt), 32, axis=1)[:, :2 * nbytes]
        return torch.from_numpy(np.ascontiguousarray(w * s))


# ---------------------------------------------------------------------------------------------
# Quantisation-aware rounding (--quant; spec: "Compressor", last bullet; kernel.py act_quant,
# fp4_act_quant with power-of-two (ue8m0) scales; model.py rotate_activation).
# ---------------------------------------------------------------------------------------------

def _pow2_ceil(v):
    """2^ceil(log2 v) for v > 0, exactly."""
    m, e = torch.frexp(v)                       # v = m * 2^e, 0.5 <= m < 1
    e = torch.where(m == 0.5, e - 1, e)
    return torch.ldexp(torch.ones_like(v), e)


def _round_to_float_grid(a, mant_bits, min_exp):
    """Round a >= 0 to the nearest value of a float format with `mant_bits` mantissa bits and
    minimum normal exponent `min_exp` (subnormals included), ties to even."""
    _, e = torch.frexp(a)                       # floor(log2 a) = e - 1 for a > 0
    e = torch.clamp(e - 1, min=min_exp)
    q = torch.ldexp(torch.ones_like(a), e - mant_bits)
    return torch.round(a / q) * q               # torch.round: half to even


def _blocked(x, block):
    """View the last dim in blocks (zero-padded at the end): returns (blocks, n)."""
    n = x.shape[-1]
    pad = (-n) % block
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:-1], pad)], dim=-1)
    return x.reshape(*x.shape[:-1], -1, block), n


def fp8_fake_quant(x, block):
    """act_quant(inplace): e4m3 with one power-of-two scale per `block` values of the last dim."""
    xb, n = _blocked(x, block)
    amax = xb.abs().amax(-1, keepdim=True).clamp(min=1e-4)
    s = _pow2_ceil(amax / 448.0)
    y = torch.clamp(xb / s, -448.0, 448.0)
    y = torch.sign(y) * _round_to_float_grid(y.abs(), 3, -6) * s
    return y.reshape(*x.shape[:-1], -1)[..., :n]


def fp4_fake_quant(x, block=32):
    """fp4_act_quant(inplace): e2m1 with one power-of-two scale per `block` values."""
    xb, n = _blocked(x, block)
    amax = xb.abs().amax(-1, keepdim=True).clamp(min=6 * 2.0 ** -126)
    s = _pow2_ceil(amax / 6.0)
    y = torch.clamp(xb / s, -6.0, 6.0)
    y = torch.sign(y) * _round_to_float_grid(y.abs(), 1, 0) * s
    return y.reshape(*x.shape[:-1], -1)[..., :n]


def hadamard(x):
    """Normalised Walsh-Hadamard transform of the last dim (Sylvester order, scale n^-0.5)."""
    n = x.shape[-1]
    if n & (n - 1):
        raise RefError(f"--quant: Hadamard rotation needs a power-of-two width, got {n}")
    h = torch.ones(1, 1, dtype=F64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (x @ h) * n ** -0.5


# ---------------------------------------------------------------------------------------------
# Weights and the two kinds of matmul of the official code.
# ---------------------------------------------------------------------------------------------

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E8M0")


class Model:
    def __init__(self, cfg, st, quant, grad=False):
        """grad=True: every floating-point tensor is decoded once and kept as a float64 leaf with
        requires_grad (the dequantised values for FP8/FP4 weights)."""
        self.cfg, self.st, self.quant, self.grad = cfg, st, quant, grad
        self.params = {}
        # --indexer-dense: the main attention reads every visible compressed entry (V3.2 dense
        # warm-up: the indexer is trained before it is allowed to select)
        self.idx_dense = False
        # --indexer-weight > 0: a list that collects (layer prefix, layer KL) for every indexer
        # the forward runs; None = the indexer runs in inference mode only (no KL, no graph)
        self.idx_kl = None
        # Engram: the tokenizer compression, multipliers and primes (computed once, on demand)
        self.engram_hash = None

    def has(self, name):
        return name in self.st

    def is_param(self, name):
        """A floating-point tensor of the checkpoint that is not the scale of a quantised weight."""
        dtype, _ = self.st.info(name)
        if name.endswith(".scale"):
            wname = name[:-len(".scale")] + ".weight"
            if wname in self.st and self.st.weight_kind(wname) != "plain":
                return False
        return dtype in FLOAT_DTYPES or self.st.weight_kind(name) != "plain"

    def logical_shape(self, name):
        _, shape = self.st.info(name)
        if self.st.weight_kind(name) == "fp4":
            return (shape[0], 2 * shape[1])
        return tuple(shape)

    def w(self, name, shape=None):
        if self.grad:
            t = self.params.get(name)
            if t is None:
                t = self.st.load(name)
                if self.is_param(name):
                    t.requires_grad_(True)
                self.params[name] = t
        else:
            t = self.st.load(name)
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise RefError(f"tensor {name}: shape {list(t.shape)}, config expects {list(shape)}")
        return t

    def linear(self, x, name, shape):
        """Official `linear()`: x @ W^T; with --quant, a weight stored FP8/FP4 gets its input
        fake-quantised to FP8 in 1x128 blocks first (act_quant before fp8_gemm / fp4_gemm)."""
        w = self.w(name, shape)
        if self.quant and self.st.weight_kind(name) != "plain":
            x = fp8_fake_quant(x, 128)
        return x @ w.t()

    def dense(self, x, name, shape):
        """Plain x @ W^T with no activation rounding: the official code's F.linear / einsum paths
        (wo_a, indexer weights_proj, compressor wkv/wgate, gate, head)."""
        return x @ self.w(name, shape).t()


def rms_norm(x, weight, eps):
    """RMSNorm(x) = w * x / sqrt(mean(x^2) + eps) (spec: Notation)."""
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


# ---------------------------------------------------------------------------------------------
# RoPE (spec: "Attention": interleaved pairs on the last r dims; ratio > 0 layers use
# compress_rope_theta with YaRN, ratio-0 layers rope_theta without; official precompute_freqs_cis).
# ---------------------------------------------------------------------------------------------

def rope_angles(cfg, ratio, positions):
    """Rotation angles [len(positions), r/2] for a layer of the given compress ratio.
    float64 throughout (the official table is float32: ~1e-5 rad off at t ~ 300, ~3e-3 at 64k)."""
    rd = cfg["rope_head_dim"]
    if ratio > 0:
        base, orig = cfg["compress_rope_theta"], cfg["original_seq_len"]
    else:
        base, orig = cfg["rope_theta"], 0
    freqs = 1.0 / (base ** (torch.arange(0, rd, 2, dtype=F64) / rd))
    if orig > 0:                                # YaRN: V3 ramp between beta_fast and beta_slow
        def corr_dim(rot):
            return rd * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))
        low = max(math.floor(corr_dim(cfg["beta_fast"])), 0)
        high = min(math.ceil(corr_dim(cfg["beta_slow"])), rd - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(rd // 2, dtype=F64) - low) / (high - low), 0, 1)
        smooth = 1 - ramp
        freqs = freqs / cfg["rope_factor"] * (1 - smooth) + freqs * smooth
    return torch.outer(positions.to(F64), freqs)


def rope(x, ang, rd, inverse=False):
    """Rotate the last rd dims of x by ang (broadcast to [..., rd/2]): pair (x[2i], x[2i+1]) is
    the complex number x[2i] + i x[2i+1], multiplied by e^{+-i ang}."""
    x = x.clone()
    pairs = x[..., -rd:].reshape(*x.shape[:-1], rd // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    c, s = torch.cos(ang), torch.sin(ang)
    if inverse:
        s = -s
    x[..., -rd:] = torch.stack([a * c - b * s, a * s + b * c], dim=-1).reshape(*x.shape[:-1], rd)
    return x


# ---------------------------------------------------------------------------------------------
# mHC residual stream (spec: "Residual stream: mHC"; kernel.py hc_split_sinkhorn).
# ---------------------------------------------------------------------------------------------

def hc_sinkhorn(mixes, scale, base, n, iters, eps):
    """mixes [T, n(n+2)] -> pre [T, n], post [T, n], comb [T, n, n] (comb[j, k]: stream j -> k)."""
    pre = torch.sigmoid(mixes[:, :n] * scale[0] + base[:n]) + eps
    post = 2 * torch.sigmoid(mixes[:, n:2 * n] * scale[1] + base[n:2 * n])
    c = (mixes[:, 2 * n:] * scale[2] + base[2 * n:]).reshape(-1, n, n)
    c = torch.softmax(c, dim=-1) + eps
    c = c / (c.sum(-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        c = c / (c.sum(-1, keepdim=True) + eps)
        c = c / (c.sum(-2, keepdim=True) + eps)
    return pre, post, c


def hc_mixes(X, fn, eps):
    """m = (fn . vec(X)) * rsqrt(mean(vec(X)^2) + eps), X [T, n, d]."""
    v = X.reshape(X.shape[0], -1)
    return (v @ fn.t()) * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)


def mhc_pre(model, X, prefix, kind):
    """y = sum_i pre_i X_i, plus (post, comb) for mhc_post. kind: 'attn' or 'ffn'."""
    c = model.cfg
    n, d = c["hc_mult"], c["dim"]
    fn = model.w(f"{prefix}.hc_{kind}_fn", (n * (n + 2), n * d))
    base = model.w(f"{prefix}.hc_{kind}_base", (n * (n + 2),))
    scale = model.w(f"{prefix}.hc_{kind}_scale", (3,))
    m = hc_mixes(X, fn, c["norm_eps"])
    pre, post, comb = hc_sinkhorn(m, scale, base, n, c["hc_sinkhorn_iters"], c["hc_eps"])
    return (pre.unsqueeze(-1) * X).sum(1), post, comb


def mhc_post(f, X, post, comb):
    """X'_k = post_k * f + sum_j comb[j, k] X_j."""
    return post.unsqueeze(-1) * f.unsqueeze(1) + torch.einsum("tjk,tjd->tkd", comb, X)


def hc_head(model, X, prefix):
    """Output head mixing: pre = sigmoid(scale*m + base) + hc_eps (no Sinkhorn), y = sum pre_i X_i."""
    c = model.cfg
    n, d = c["hc_mult"], c["dim"]
    p = f"{prefix}." if prefix else ""
    fn = model.w(f"{p}hc_head_fn", (n, n * d))
    base = model.w(f"{p}hc_head_base", (n,))
    scale = model.w(f"{p}hc_head_scale", (1,))
    m = hc_mixes(X, fn, c["norm_eps"])
    pre = torch.sigmoid(m * scale + base) + c["hc_eps"]
    return (pre.unsqueeze(-1) * X).sum(1)


def output_logits(model, X, prefix):
    """hc_head -> RMSNorm(norm) -> x @ head^T (the head is applied in row chunks).
    float32 logits; in grad mode float64 logits that carry the autograd graph."""
    c = model.cfg
    p = f"{prefix}." if prefix else ""
    y = hc_head(model, X, prefix)
    y = rms_norm(y, model.w(f"{p}norm.weight", (c["dim"],)), c["norm_eps"])
    dt, shape = model.st.info("head.weight")
    if tuple(shape) != (c["vocab_size"], c["dim"]):
        raise RefError(f"head.weight: shape {list(shape)}, expected {[c['vocab_size'], c['dim']]}")
    step = max(1, (1 << 24) // max(1, c["dim"]))
    if model.grad:                              # float64 logits (same chunks) for the loss
        head = model.w("head.weight")
        return torch.cat([y @ head[r0:min(c["vocab_size"], r0 + step)].t()
                          for r0 in range(0, c["vocab_size"], step)], dim=1)
    out = torch.empty(y.shape[0], c["vocab_size"], dtype=torch.float32)
    for r0 in range(0, c["vocab_size"], step):
        r1 = min(c["vocab_size"], r0 + step)
        out[:, r0:r1] = (y @ model.st.load("head.weight", r0, r1).t()).float()
    return out


# ---------------------------------------------------------------------------------------------
# Compressor (spec: "Compressor"; official Compressor, prefill path).
# ---------------------------------------------------------------------------------------------

def compressor(model, x, prefix, ratio, width, rotate):
    """x [T, d] -> compressed entries [T // ratio, width]; entry w summarises tokens
    [w*ratio, (w+1)*ratio) (ratio 4: also window w-1 via the first half of the channels).
    rotate=True for the indexer's compressor (Hadamard + FP4 under --quant), else FP8 on the
    non-rope dims under --quant."""
    c = model.cfg
    T, d, rd = x.shape[0], c["dim"], c["rope_head_dim"]
    coff = 2 if ratio == 4 else 1
    a = model.dense(x, f"{prefix}.wkv.weight", (coff * width, d))
    z = model.dense(x, f"{prefix}.wgate.weight", (coff * width, d))
    ape = model.w(f"{prefix}.ape", (ratio, coff * width))
    norm_w = model.w(f"{prefix}.norm.weight", (width,))
    nc = T // ratio
    if nc == 0:
        return x.new_zeros(0, width)
    a = a[:nc * ratio].reshape(nc, ratio, coff * width)
    z = z[:nc * ratio].reshape(nc, ratio, coff * width) + ape        # ape added before softmax
    if coff == 1:
        cand_a, cand_z = a, z
    else:
        prev_a = a.new_zeros(nc, ratio, width)                          # window w-1, first half
        prev_z = a.new_full((nc, ratio, width), float("-inf"))          # w = 0: missing -> (0, -inf)
        prev_a[1:] = a[:-1, :, :width]
        prev_z[1:] = z[:-1, :, :width]
        cand_a = torch.cat([prev_a, a[:, :, width:]], dim=1)            # window w, second half
        cand_z = torch.cat([prev_z, z[:, :, width:]], dim=1)
    entries = (torch.softmax(cand_z, dim=1) * cand_a).sum(1)            # per-channel softmax
    entries = rms_norm(entries, norm_w, c["norm_eps"])
    ang = rope_angles(c, ratio, torch.arange(nc) * ratio)              # position w*ratio
    entries = rope(entries, ang, rd)
    if model.quant:
        if rotate:
            entries = fp4_fake_quant(hadamard(entries), 32)
        else:
            entries = torch.cat([fp8_fake_quant(entries[:, :-rd], 64), entries[:, -rd:]], dim=-1)
    return entries


def compressed_visible(T, nc, ratio):
    """[T, nc] bool: entry w is visible to query t iff w < floor((t+1)/ratio)."""
    t = torch.arange(T).unsqueeze(1)
    return torch.arange(nc).unsqueeze(0) < (t + 1) // ratio


# ---------------------------------------------------------------------------------------------
# Lightning indexer (spec: "Lightning indexer"; official Indexer).
# ---------------------------------------------------------------------------------------------

def indexer_scores(model, x, c_q, prefix, ratio):
    """Index scores [T, nc] I[t, w] = sum_h w_{t,h} ReLU(q_{t,h} . K_w), -inf where entry w is not
    visible to query t (float64; carries the autograd graph when grad is enabled)."""
    c = model.cfg
    T = x.shape[0]
    HI, I, rd = c["index_n_heads"], c["index_head_dim"], c["rope_head_dim"]
    q = model.linear(c_q, f"{prefix}.wq_b.weight", (HI * I, c["q_lora_rank"])).reshape(T, HI, I)
    q = rope(q, rope_angles(c, ratio, torch.arange(T)).unsqueeze(1), rd)
    if model.quant:
        q = fp4_fake_quant(hadamard(q), 32)
    K = compressor(model, x, f"{prefix}.compressor", ratio, I, rotate=True)
    nc = K.shape[0]
    wts = model.dense(x, f"{prefix}.weights_proj.weight", (HI, c["dim"])) * (I ** -0.5 * HI ** -0.5)
    score = torch.empty(T, nc, dtype=F64)
    step = max(1, (1 << 24) // max(1, HI * nc))
    for t0 in range(0, T, step):                                    # query chunks bound memory
        t1 = min(T, t0 + step)
        rel = torch.einsum("thi,wi->thw", q[t0:t1], K).relu()
        score[t0:t1] = (rel * wts[t0:t1].unsqueeze(-1)).sum(1)      # sum_h w_h ReLU(q_h . K_w)
    vis = compressed_visible(T, nc, ratio)
    return score.masked_fill(~vis, float("-inf"))


def indexer_select(score, topk):
    """[T, nc] bool: per query the top-min(topk, #visible) entries by index score (ties go to the
    lower entry index; topk None: every visible entry); score is -inf where not visible."""
    T, nc = score.shape
    vis = score > float("-inf")
    # stable sort of -score: equal scores keep ascending index order -> ties to the lower index
    order = np.argsort(-score.detach().numpy(), axis=-1, kind="stable")
    n_sel = (vis.sum(-1) if topk is None else torch.clamp(vis.sum(-1), max=topk)).numpy()
    sel = np.zeros((T, nc), dtype=bool)
    for t in range(T):
        sel[t, order[t, :n_sel[t]]] = True
    return torch.from_numpy(sel)


def indexer(model, x, c_q, prefix, ratio):
    """Returns [T, nc] bool: the compressed entries each query attends to (top-min(index_topk,
    #visible) by index score; ties go to the lower entry index)."""
    return indexer_select(indexer_scores(model, x, c_q, prefix, ratio), model.cfg["index_topk"])


def indexer_kl(score, attn_mass, S):
    """The lightning indexer's training loss of the DeepSeek V3.2 recipe (dense warm-up and
    sparse stage alike): KL(P_t || Q_t) between the main attention's distribution over the
    selected compressed entries and the indexer's, averaged over the queries that select any.
      score      [T, nc] index scores I (with the graph: the only path of the gradient);
      attn_mass  [T, nc] sum over heads of the main attention's probabilities (detached);
      S          [T, nc] bool: the selected set S_t of each query (the entries it attends to).
    P_t = attn_mass renormalised over S_t (the target; no gradient), Q_t = softmax of I over S_t,
    KL_t = sum_{s in S_t} P_t(s) (log P_t(s) - log Q_t(s)), terms with P_t(s) = 0 count 0.
    Returns the mean of KL_t over the queries with |S_t| >= 1 (0 when there are none)."""
    rows = S.any(-1)
    if not bool(rows.any()):
        return torch.zeros((), dtype=F64)
    S, score = S[rows], score[rows]
    m = attn_mass[rows].detach().masked_fill(~S, 0.0)
    P = m / m.sum(-1, keepdim=True)
    # log Q on S_t only: entries outside S_t are -inf before the softmax and 0 after it, so
    # neither the value nor the gradient sees them
    logQ = torch.log_softmax(score.masked_fill(~S, float("-inf")), dim=-1).masked_fill(~S, 0.0)
    plogp = torch.where(P > 0, P * torch.log(torch.where(P > 0, P, torch.ones_like(P))),
                        torch.zeros_like(P))
    return (plogp - P * logQ).sum(-1).mean()


# ---------------------------------------------------------------------------------------------
# Attention (spec: "Attention (per layer, MQA with K = V)"; official Attention + sparse_attn).
# ---------------------------------------------------------------------------------------------

def attention(model, x, prefix, ratio):
    """x [T, d] (already attn_norm'ed) -> [T, d]."""
    c = model.cfg
    T, d = x.shape
    H, D, rd, W = c["n_heads"], c["head_dim"], c["rope_head_dim"], c["window_size"]
    G, R, eps = c["o_groups"], c["o_lora_rank"], c["norm_eps"]
    p = f"{prefix}.attn"

    c_q = rms_norm(model.linear(x, f"{p}.wq_a.weight", (c["q_lora_rank"], d)),
                   model.w(f"{p}.q_norm.weight", (c["q_lora_rank"],)), eps)
    q = model.linear(c_q, f"{p}.wq_b.weight", (H * D, c["q_lora_rank"])).reshape(T, H, D)
    q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + eps)      # per-head RMS, no weight
    ang = rope_angles(c, ratio, torch.arange(T))
    q = rope(q, ang.unsqueeze(1), rd)
    kv = rms_norm(model.linear(x, f"{p}.wkv.weight", (D, d)),
                  model.w(f"{p}.kv_norm.weight", (D,)), eps)
    kv = rope(kv, ang, rd)
    if model.quant:                                                 # FP8 on the non-rope dims
        kv = torch.cat([fp8_fake_quant(kv[:, :-rd], 64), kv[:, -rd:]], dim=-1)
    sink = model.w(f"{p}.attn_sink", (H,))

    # Keys of query t: the window keys kv[s], s in window(t), then the compressed entries w with
    # cmask[t, w]. Dense masks, built per chunk of queries (only the window rows a chunk can see).
    comp, cmask = kv.new_zeros(0, D), torch.zeros(T, 0, dtype=torch.bool)
    kl_on = ratio == 4 and model.idx_kl is not None
    if ratio > 0:
        comp = compressor(model, x, f"{p}.compressor", ratio, D, rotate=False)
        cmask = compressed_visible(T, comp.shape[0], ratio)
        topk = None if model.idx_dense else c["index_topk"]        # dense warm-up: all visible
        if kl_on:
            # V3.2 indexer training: its inputs are detached, so its KL loss reaches only its
            # own weights; the score keeps its graph for that loss, the top-k sees only values
            with torch.enable_grad():
                iscore = indexer_scores(model, x.detach(), c_q.detach(), f"{p}.indexer", ratio)
            cmask = cmask & indexer_select(iscore.detach(), topk)
        elif ratio == 4 and not model.idx_dense:
            with torch.no_grad():                                   # top-k passes no gradient
                cmask = cmask & indexer(model, x, c_q, f"{p}.indexer", ratio)
        attn_mass = torch.zeros(T, comp.shape[0], dtype=F64) if kl_on else None

    o = torch.empty(T, H, D, dtype=F64)
    step = max(1, (1 << 24) // max(1, H * (W + comp.shape[0])))     # bounds memory
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        lo = max(0, t0 - W + 1)
        keys = torch.cat([kv[lo:t1], comp], dim=0)
        t = torch.arange(t0, t1).unsqueeze(1)
        s = torch.arange(lo, t1).unsqueeze(0)
        mask = torch.cat([(s <= t) & (s >= t - W + 1), cmask[t0:t1]], dim=1)   # window(t) | comp
        logits = torch.einsum("thd,sd->ths", q[t0:t1], keys) * D ** -0.5
        logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
        M = torch.maximum(logits.amax(-1), sink.unsqueeze(0))       # [t, H]
        e = torch.exp(logits - M.unsqueeze(-1))
        den = e.sum(-1) + torch.exp(sink.unsqueeze(0) - M)          # sink: denominator only
        o[t0:t1] = torch.einsum("ths,sd->thd", e, keys) / den.unsqueeze(-1)
        if kl_on:                       # the indexer's target: sum_h p_{t,h,s} on the entries
            attn_mass[t0:t1] = (e[:, :, t1 - lo:] / den.unsqueeze(-1)).detach().sum(1)
    o = rope(o, ang.unsqueeze(1), rd, inverse=True)
    if kl_on:
        model.idx_kl.append((f"{p}.indexer", indexer_kl(iscore, attn_mass, cmask)))

    # grouped low-rank output: wo_a as [G, R, H*D/G] on each group's concatenated heads.
    # wo_a is FP8 in the released checkpoint, but the official code dequantises it and runs a
    # plain einsum, so its input is NOT rounded under --quant (model.dense, not model.linear).
    wo_a = model.w(f"{p}.wo_a.weight", (G * R, H * D // G)).reshape(G, R, H * D // G)
    u = torch.einsum("tgk,grk->tgr", o.reshape(T, G, H * D // G), wo_a)
    return model.linear(u.reshape(T, G * R), f"{p}.wo_b.weight", (d, G * R))


# ---------------------------------------------------------------------------------------------
# Engram (shared/spec/ENGRAM.md; docs/engram-hash.md; DeepSeek's engram_demo_v1.py).
# ---------------------------------------------------------------------------------------------

ENGRAM_GATE_EPS = float(np.finfo(np.float32).eps)   # 2^-23: nn.RMSNorm(eps=None) in float32
ENGRAM_CONV_EPS = 1e-5                              # ShortConv's nn.RMSNorm(eps=1e-5)


def engram_rows(model, token_ids):
    """{layer: (rows int64 [T, (N-1)*K] into the layer's flat table, table rows R)}: the hash
    rows of reference/engram_ref.py (tokenizer.json of the model directory) plus the exclusive
    prefix sums of the layer's (order, head) primes."""
    e = model.cfg["engram"]
    er = _engram_ref()
    try:
        if model.engram_hash is None:
            vocab = er.load_tokenizer(os.path.join(model.st.model_dir, "tokenizer.json"))
            if not 0 <= e["pad"] < len(vocab):
                raise RefError(f"engram_pad_token_id {e['pad']} is outside the tokenizer's ids [0, {len(vocab)})")
            lookup, n_comp = er.compress_table(vocab)
            _, mult, primes = er.multipliers_and_primes(e, n_comp)
            model.engram_hash = (lookup, int(lookup[e["pad"]]), mult, primes)
    except er.RefError as err:
        raise RefError(f"Engram: {err}")
    lookup, pad_c, mult, primes = model.engram_hash
    ids = token_ids.numpy().astype(np.int64)
    bad = [i for i in ids.tolist() if not 0 <= i < len(lookup)]
    if bad:
        raise RefError(f"Engram: token id {bad[0]} is not an id of the model's tokenizer.json [0, {len(lookup)})")
    x = lookup[ids]
    out = {}
    for L in e["layers"]:
        p = np.asarray(primes[L], dtype=np.int64)
        off = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(p)[:-1]])
        r = er.ngram_rows(x, pad_c, mult[L], primes[L], e["nmax"], e["heads"]) + off
        out[L] = (torch.from_numpy(np.ascontiguousarray(r)), int(p.sum()))
    return out


def engram(model, X, prefix, rows):
    """X [T, n, d] (the block's input streams) -> X + Y (see the module docstring).
    rows: (int64 [T, (N-1)*K] flat-table rows, R) from engram_rows.
    --quant: the Engram path is NOT rounded (plain float matmuls, model.dense, even where the
    projections are stored FP8), so its values are those of the exact mode."""
    c, e = model.cfg, model.cfg["engram"]
    T, n, d = X.shape
    N, K, hd, kc = e["nmax"], e["heads"], e["head_dim"], e["kernel"]
    E = (N - 1) * K * hd
    p = f"{prefix}.engram"
    idx, R = rows
    tname = f"{p}.embed.weight"
    _, shape = model.st.info(tname)
    if tuple(shape) != (R, hd):
        raise RefError(f"{tname}: shape {list(shape)}, expected {[R, hd]} (the sum of the layer's primes x engram_head_dim)")
    if model.grad:                      # a leaf: the gradient lands on the looked-up rows only
        emb = model.w(tname)[idx]
    else:                               # only the rows looked up
        uniq, inv = np.unique(idx.numpy().ravel(), return_inverse=True)
        tab = torch.stack([model.st.load(tname, int(u), int(u) + 1)[0] for u in uniq])
        emb = tab[torch.from_numpy(inv.reshape(-1)).reshape(idx.shape)]
    emb = emb.reshape(T, E)             # e_t: (order, head) rows concatenated
    k = model.dense(emb, f"{p}.key_proj.weight", (n * d, E)) + model.w(f"{p}.key_proj.bias", (n * d,))
    v = model.dense(emb, f"{p}.value_proj.weight", (d, E)) + model.w(f"{p}.value_proj.bias", (d,))
    kn = rms_norm(k.reshape(T, n, d), model.w(f"{p}.key_norm.weight", (n * d,)).reshape(n, d), ENGRAM_GATE_EPS)
    hn = rms_norm(X, model.w(f"{p}.hidden_norm.weight", (n * d,)).reshape(n, d), ENGRAM_GATE_EPS)
    s = (kn * hn).sum(-1) / math.sqrt(d)                            # [T, n]
    s = torch.sign(s) * torch.sqrt(torch.clamp(s.abs(), min=1e-6))  # signed square root
    U = torch.sigmoid(s).unsqueeze(-1) * v.unsqueeze(1)             # [T, n, d]
    if kc > 0:
        # ShortConv: per-stream RMSNorm, channels c = m*d + i, depthwise causal conv with
        # dilation N: y_c[t] = sum_j w[c, j] z_c[t - (kc-1-j) N] (zeros before the start)
        z = rms_norm(U, model.w(f"{p}.conv_norm.weight", (n * d,)).reshape(n, d), ENGRAM_CONV_EPS).reshape(T, n * d)
        w = model.w(f"{p}.conv.weight", (n * d, kc))
        zp = torch.cat([z.new_zeros((kc - 1) * N, n * d), z], dim=0)
        y = w[:, 0] * zp[0:T]
        for j in range(1, kc):
            y = y + w[:, j] * zp[j * N:j * N + T]
        Y = torch.nn.functional.silu(y).reshape(T, n, d) + U
    else:
        Y = U
    return X + Y


# ---------------------------------------------------------------------------------------------
# MoE (spec: "MoE"; official Gate, Expert, MoE).
# ---------------------------------------------------------------------------------------------

def expert(model, x, prefix, weight, limit):
    """w2( weight * silu(min(x w1, L)) * clamp(x w3, -L, L) ); limit 0 = no clamp."""
    c = model.cfg
    d, I = c["dim"], c["moe_inter_dim"]
    g = model.linear(x, f"{prefix}.w1.weight", (I, d))
    u = model.linear(x, f"{prefix}.w3.weight", (I, d))
    if limit > 0:
        u = torch.clamp(u, -limit, limit)
        g = torch.clamp(g, max=limit)
    h = torch.nn.functional.silu(g) * u
    if weight is not None:
        h = weight * h
    return model.linear(h, f"{prefix}.w2.weight", (d, I))


def moe(model, x, prefix, layer_id, token_ids):
    """x [T, d] (already ffn_norm'ed) -> [T, d]; token_ids [T] for hash routing."""
    c = model.cfg
    T, d = x.shape
    E, k = c["n_routed_experts"], c["n_activated_experts"]
    p = f"{prefix}.ffn"
    logits = model.dense(x, f"{p}.gate.weight", (E, d))
    if c["score_func"] == "softmax":
        scores = torch.softmax(logits, dim=-1)
    elif c["score_func"] == "sigmoid":
        scores = torch.sigmoid(logits)
    else:
        scores = torch.sqrt(torch.nn.functional.softplus(logits))
    if layer_id < c["n_hash_layers"]:
        tid2eid = model.w(f"{p}.gate.tid2eid")
        if tid2eid.dim() != 2 or tid2eid.shape[1] != k or tid2eid.shape[0] < c["vocab_size"]:
            raise RefError(f"{p}.gate.tid2eid: shape {list(tid2eid.shape)}, expected [{c['vocab_size']}, {k}]")
        idx = tid2eid.long()[token_ids]
        if idx.min() < 0 or idx.max() >= E:
            raise RefError(f"{p}.gate.tid2eid: expert id out of range [0, {E})")
    else:
        bias = model.w(f"{p}.gate.bias", (E,)) if model.has(f"{p}.gate.bias") else torch.zeros(E)
        sel = (scores + bias).detach().numpy()        # bias only affects the selection
        idx = torch.from_numpy(np.argsort(-sel, axis=-1, kind="stable")[:, :k].copy())  # ties -> lower
    weights = scores.gather(1, idx)
    if c["score_func"] != "softmax":
        weights = weights / weights.sum(-1, keepdim=True)
    weights = weights * c["route_scale"]

    y = torch.zeros(T, d, dtype=F64)
    for e in torch.unique(idx).tolist():
        rows, slots = torch.nonzero(idx == e, as_tuple=True)
        out = expert(model, x[rows], f"{p}.experts.{e}", weights[rows, slots].unsqueeze(-1),
                     c["swiglu_limit"])
        y.index_add_(0, rows, out)
    if c["n_shared_experts"] > 0:
        y = y + expert(model, x, f"{p}.shared_experts", None, 0.0)   # shared: no clamp
    return y


# ---------------------------------------------------------------------------------------------
# Block, model, MTP (spec: "Residual stream: mHC", "MTP"; official Block, Transformer, MTPBlock).
# ---------------------------------------------------------------------------------------------

def block(model, X, prefix, layer_id, ratio, token_ids):
    """One transformer block on the residual streams X [T, n, d]."""
    c = model.cfg
    d, eps = c["dim"], c["norm_eps"]
    y, post, comb = mhc_pre(model, X, prefix, "attn")
    f = attention(model, rms_norm(y, model.w(f"{prefix}.attn_norm.weight", (d,)), eps), prefix, ratio)
    X = mhc_post(f, X, post, comb)
    y, post, comb = mhc_pre(model, X, prefix, "ffn")
    f = moe(model, rms_norm(y, model.w(f"{prefix}.ffn_norm.weight", (d,)), eps), prefix, layer_id, token_ids)
    return mhc_post(f, X, post, comb)


def embed(model, token_ids):
    c = model.cfg
    dt, shape = model.st.info("embed.weight")
    if tuple(shape) != (c["vocab_size"], c["dim"]):
        raise RefError(f"embed.weight: shape {list(shape)}, expected {[c['vocab_size'], c['dim']]}")
    if model.grad:
        return model.w("embed.weight")[token_ids]
    uniq, inv = np.unique(token_ids.numpy(), return_inverse=True)
    rows = torch.stack([model.st.load("embed.weight", int(u), int(u) + 1)[0] for u in uniq])
    return rows[torch.from_numpy(inv)]


def forward_main(model, token_ids, log):
    """Returns (logits [T, vocab] float32 (float64 with the graph in grad mode), final residual
    streams [T, n, d])."""
    c = model.cfg
    X = embed(model, token_ids).unsqueeze(1).repeat(1, c["hc_mult"], 1)
    erows = engram_rows(model, token_ids) if c.get("engram") else {}
    for L in range(c["n_layers"]):
        t0 = time.time()
        if L in erows:                  # Engram: added to every stream before the block
            X = engram(model, X, f"layers.{L}", erows[L])
        X = block(model, X, f"layers.{L}", L, c["compress_ratios"][L], token_ids)
        log(f"layer {L:3d} ratio {c['compress_ratios'][L]:4d}  {time.time() - t0:.2f}s")
    return output_logits(model, X, ""), X


def mtp(model, X, token_ids):
    """MTP logits [T-1, vocab] for positions 0..T-2: streams X_i and token i+1."""
    c = model.cfg
    d, eps, L = c["dim"], c["norm_eps"], c["n_layers"]
    ratio = c["compress_ratios"][L] if len(c["compress_ratios"]) > L else 0
    nxt = token_ids[1:]
    e = rms_norm(embed(model, nxt), model.w("mtp.0.enorm.weight", (d,)), eps)
    h = rms_norm(X[:-1], model.w("mtp.0.hnorm.weight", (d,)), eps)                 # per stream
    Y = (model.linear(e, "mtp.0.e_proj.weight", (d, d)).unsqueeze(1)
         + model.linear(h, "mtp.0.h_proj.weight", (d, d)))
    Y = block(model, Y, "mtp.0", L, ratio, nxt)
    return output_logits(model, Y, "mtp.0")


# ---------------------------------------------------------------------------------------------
# Gradient mode: main-head next-token cross-entropy, d loss / d every parameter.
# ---------------------------------------------------------------------------------------------

def lm_loss(logits, token_ids):
    """Mean cross-entropy of logits[i] against token i+1, i = 0..N-2 (float64)."""
    return torch.nn.functional.cross_entropy(logits[:-1], token_ids[1:], reduction="mean")


def mtp_loss(mtp_logits, token_ids):
    """Mean cross-entropy of MTP logits[i] (streams at i + token i+1) against token i+2,
    i = 0..N-3 (float64); mtp_logits has N-1 rows, the last one predicts past the sequence."""
    return torch.nn.functional.cross_entropy(mtp_logits[:-1], token_ids[2:], reduction="mean")


def param_grads(model):
    """[(name, float64 gradient in the logical shape)] for every parameter of the checkpoint, in
    checkpoint order; zeros where no gradient flows (never used, or used without a graph)."""
    out = []
    for name in model.st.entries:
        if not model.is_param(name):
            continue
        t = model.params.get(name)
        if t is not None and t.grad is not None:
            g = t.grad
        else:
            g = torch.zeros(model.logical_shape(name), dtype=F64)
        out.append((name, g))
    return out


def write_safetensors_f32(path, tensors):
    """tensors: [(name, tensor)] -> safetensors file of little-endian F32 tensors."""
    header, blobs, off = {}, [], 0
    for name, t in tensors:
        b = np.ascontiguousarray(t.detach().numpy().astype("<f4")).tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def read_tokens(path, vocab):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise RefError(f"cannot read tokens file {path}: {e}")
    parts = [p for p in re.split(r"[\s,]+", text) if p]
    if not parts:
        raise RefError(f"{path}: no token ids")
    try:
        ids = [int(p) for p in parts]
    except ValueError as e:
        raise RefError(f"{path}: not an integer token id ({e})")
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise RefError(f"{path}: token id {bad[0]} out of range [0, {vocab})")
    return torch.tensor(ids, dtype=torch.long)


def main(argv=None):
    ap = argparse.ArgumentParser(description="DeepSeek V4 float64 reference forward pass")
    ap.add_argument("-m", "--model", required=True, help="model directory (config.json + *.safetensors)")
    ap.add_argument("--tokens", required=True, help="token ids, whitespace/comma separated")
    ap.add_argument("--out", help="float32 logits [N, vocab]")
    ap.add_argument("--mtp-out", help="float32 MTP logits [N-1, vocab]")
    ap.add_argument("--quant", action="store_true", help="official quantisation-aware rounding")
    ap.add_argument("--grad-out", help="gradient mode: F32 safetensors of d loss / d parameter "
                    "(loss = mean next-token cross-entropy of the main head)")
    ap.add_argument("--mtp-weight", type=float, metavar="LAMBDA",
                    help="with --grad-out: loss = CE_main + LAMBDA * CE_mtp (MTP logits at i "
                    "predict token i+2); LAMBDA >= 0, default 0")
    ap.add_argument("--indexer-weight", type=float, metavar="X",
                    help="with --grad-out: loss += X * (sum over indexer layers of the mean KL "
                    "between the main attention's and the indexer's distributions over the "
                    "selected compressed entries; DeepSeek V3.2 recipe); X >= 0, default 0")
    ap.add_argument("--indexer-dense", action="store_true",
                    help="with --indexer-weight > 0: dense warm-up stage (the main attention and "
                    "the KL use every visible compressed entry, no top-k)")
    ap.add_argument("-v", "--verbose", action="store_true", help="per-layer timing on stderr")
    args = ap.parse_args(argv)
    if not args.out and not args.grad_out:
        ap.error("one of --out, --grad-out is required")
    if args.grad_out and args.quant:
        ap.error("--grad-out works on the exact math only; it cannot be combined with --quant")
    if args.mtp_weight is not None and not args.grad_out:
        ap.error("--mtp-weight needs --grad-out")
    if args.mtp_weight is not None and not (0 <= args.mtp_weight < math.inf):
        ap.error(f"--mtp-weight must be a finite value >= 0, got {args.mtp_weight!r}")
    lam = args.mtp_weight or 0.0
    if args.indexer_weight is not None and not args.grad_out:
        ap.error("--indexer-weight needs --grad-out")
    if args.indexer_weight is not None and not (0 <= args.indexer_weight < math.inf):
        ap.error(f"--indexer-weight must be a finite value >= 0, got {args.indexer_weight!r}")
    idx_w = args.indexer_weight or 0.0
    if args.indexer_dense and not idx_w > 0:
        ap.error("--indexer-dense needs --grad-out and --indexer-weight > 0")

    def log(msg):
        if args.verbose:
            print(msg, file=sys.stderr)

    t_start = time.time()
    try:
        if not os.path.isdir(args.model):
            raise RefError(f"model directory {args.model} does not exist")
        cfg = load_config(args.model)
        st = SafeTensorsDir(args.model)
        tokens = read_tokens(args.tokens, cfg["vocab_size"])
        for opt, on in (("--mtp-out", args.mtp_out), ("--mtp-weight", lam > 0)):
            if on and (cfg["n_mtp_layers"] < 1 or "mtp.0.e_proj.weight" not in st):
                raise RefError(f"{opt}: the model has no MTP layer (n_mtp_layers = 0 or mtp.0.* missing)")
        N = len(tokens)
        grad = bool(args.grad_out)
        if grad and N < 2:
            raise RefError("--grad-out: need at least 2 tokens (the loss predicts token i+1)")
        model = Model(cfg, st, args.quant, grad=grad)
        if idx_w > 0:                   # collect the indexer KL of every layer the loss runs
            model.idx_kl, model.idx_dense = [], args.indexer_dense
        logits, X = forward_main(model, tokens, log)
        if grad:
            t0 = time.time()
            loss = lm_loss(logits, tokens)
            if lam > 0:
                loss_main = loss
                # MTP term on the main streams X with the graph: gradients reach mtp.0.* and,
                # through hnorm/h_proj and the shared embed/head, the main model
                loss_mtp = (mtp_loss(mtp(model, X, tokens), tokens) if N >= 3
                            else torch.zeros((), dtype=F64))
                loss = loss_main + lam * loss_mtp
            if idx_w > 0:
                # V3.2 indexer loss: sum of the layer KLs (main layers, then the MTP block's when
                # it ran); its gradient reaches only the indexers' weights
                loss_idx = sum((kl for _, kl in model.idx_kl), torch.zeros((), dtype=F64))
                for name, kl in model.idx_kl:
                    log(f"indexer KL {name} {kl.item()!r}")
                model.idx_kl = None     # later forwards (--mtp-out) run the indexer as inference
                loss = loss + idx_w * loss_idx
            loss.backward()
            grads = param_grads(model)
            log(f"backward {time.time() - t0:.2f}s")
            logits, X = logits.detach().float(), X.detach()
        if args.out:
            logits.numpy().astype("<f4").tofile(args.out)
        if args.mtp_out:
            with torch.no_grad():
                if N >= 2:
                    mlog = mtp(model, X, tokens).float()
                else:
                    mlog = torch.zeros(0, cfg["vocab_size"], dtype=torch.float32)
            mlog.numpy().astype("<f4").tofile(args.mtp_out)
        if grad:
            write_safetensors_f32(args.grad_out, grads)
    except RefError as e:
        print(f"v4_ref: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"v4_ref: error: {e}", file=sys.stderr)
        return 2

    last = logits[-1]
    top = torch.topk(last, min(5, last.numel()))
    print(f"v4_ref: {len(st.files)} safetensors file(s), {len(st.entries)} tensors; "
          f"dim {cfg['dim']}, {cfg['n_layers']} layers, ratios {cfg['compress_ratios']}, "
          f"mode {'quant' if args.quant else 'exact'}", file=sys.stderr)
    outs = ([f"{args.out} [{N}, {cfg['vocab_size']}]"] if args.out else []) \
        + ([f"{args.mtp_out} [{max(N - 1, 0)}, {cfg['vocab_size']}]"] if args.mtp_out else []) \
        + ([f"{args.grad_out} ({len(grads)} gradient tensors)"] if args.grad_out else [])
    print(f"v4_ref: {N} tokens -> {', '.join(outs)} in {time.time() - t_start:.1f}s", file=sys.stderr)
    print("v4_ref: last position top-5: "
          + ", ".join(f"{i}:{v:.4f}" for v, i in zip(top.values.tolist(), top.indices.tolist())),
          file=sys.stderr)
    if args.grad_out and lam > 0:
        print(f"v4_ref: loss = CE_main {loss_main.item()!r} + {lam!r} * CE_mtp {loss_mtp.item()!r}",
              file=sys.stderr)
    if args.grad_out and idx_w > 0:
        print(f"indexer_kl {loss_idx.item()!r}")
    if args.grad_out:
        print(f"loss {loss.item()!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
