"""Reads a safetensors file by hand (struct + json + torch.frombuffer) and
prints {name: {dtype, shape, values}} as JSON, for tensorio's interop test.
Usage: ref_read.py FILE.safetensors"""
import json
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def main(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    out = {"__metadata__": header.pop("__metadata__", {})}
    for name, info in header.items():
        s, e = info["data_offsets"]
        dt = DTYPES[info["dtype"]]
        if e > s:
            t = torch.frombuffer(bytearray(data[s:e]), dtype=dt).reshape(info["shape"])
        else:
            t = torch.zeros(info["shape"], dtype=dt)
        vals = t.flatten().tolist() if dt == torch.int64 else t.float().flatten().tolist()
        out[name] = {"dtype": info["dtype"], "shape": list(t.shape), "values": vals}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
