"""Reads a dsv4 model directory's safetensors independently of dsv4 (the test scripts' checks):
load(d) -> (index, {name: (dtype, shape, bytes)}), with the index checked against the files."""
import json, os, struct


def load(d):
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    ts = {}
    for f in sorted(set(idx["weight_map"].values())):
        b = open(os.path.join(d, f), "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        for k, v in json.loads(b[8:8 + n]).items():
            if k == "__metadata__": continue
            s, e = v["data_offsets"]
            assert idx["weight_map"][k] == f, f"{k}: index says {idx['weight_map'][k]}, stored in {f}"
            ts[k] = (v["dtype"], v["shape"], b[8 + n + s:8 + n + e])
    assert set(ts) == set(idx["weight_map"]), "index and files list different tensors"
    assert idx["metadata"]["total_size"] == sum(len(t[2]) for t in ts.values()), "total_size"
    return idx, ts


def dispatch(funcs):
    """A check script's entry: prints funcs[argv[1]](*argv[2:]); a failed assertion is printed
    with the check's name and exits 1."""
    import sys
    try:
        print(funcs[sys.argv[1]](*sys.argv[2:]))
    except AssertionError as e:
        print(f"{sys.argv[1]}: {e}")
        sys.exit(1)
