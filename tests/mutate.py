#!/usr/bin/env python3
"""Makes broken copies of a model directory for the bad-input tests.

  mutate.py SRC DST KIND [ARG]
KIND: truncate (cut the shard in half), lie-offsets (a header whose offsets run past the data),
drop TENSOR, dtype TENSOR (relabel it I32, keeping a consistent size), config-set KEY=JSONVALUE,
config-del KEY, config-garbage, index-missing-file."""
import json
import os
import shutil
import struct
import sys

src, dst, kind = sys.argv[1], sys.argv[2], sys.argv[3]
arg = sys.argv[4] if len(sys.argv) > 4 else None
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("ref_*.f32"))
shards = sorted(f for f in os.listdir(dst) if f.endswith(".safetensors"))
shard = os.path.join(dst, shards[0])


def read(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write(path, header, data):
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def find(name):
    for s in shards:
        h, d = read(os.path.join(dst, s))
        if name in h:
            return os.path.join(dst, s), h, d
    sys.exit(f"mutate: no tensor {name}")


def drop_from_index(name):
    idx = os.path.join(dst, "model.safetensors.index.json")
    if os.path.exists(idx):
        j = json.load(open(idx))
        j["weight_map"].pop(name, None)
        json.dump(j, open(idx, "w"))


if kind == "truncate":
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
elif kind == "lie-offsets":
    h, d = read(shard)
    name = arg or next(k for k in h if k != "__metadata__")
    b, e = h[name]["data_offsets"]
    h[name]["data_offsets"] = [b + len(d), e + len(d)]
    write(shard, h, d)
elif kind == "drop":
    path, h, d = find(arg)
    del h[arg]
    write(path, h, d)
    drop_from_index(arg)
elif kind == "dtype":
    path, h, d = find(arg)
    t = h[arg]
    nbytes = t["data_offsets"][1] - t["data_offsets"][0]
    t["dtype"] = "I32" if nbytes % 4 == 0 else "I8"
    t["shape"] = [nbytes // (4 if t["dtype"] == "I32" else 1)]
    write(path, h, d)
elif kind in ("config-set", "config-del", "config-garbage"):
    p = os.path.join(dst, "config.json")
    if kind == "config-garbage":
        txt = open(p).read()
        open(p, "w").write(txt[: len(txt) // 2])
    else:
        j = json.load(open(p))
        if kind == "config-set":
            k, v = arg.split("=", 1)
            j[k] = json.loads(v)
        else:
            del j[arg]
        json.dump(j, open(p, "w"))
elif kind == "index-missing-file":
    idx = os.path.join(dst, "model.safetensors.index.json")
    j = json.load(open(idx))
    k = next(iter(j["weight_map"]))
    j["weight_map"][k] = "model-00009-of-00009.safetensors"
    json.dump(j, open(idx, "w"))
else:
    sys.exit(f"mutate: unknown kind {kind}")
