"""Writes a safetensors file by hand (struct + json + torch tensor bytes, no
safetensors package) and the expected values as JSON, for tensorio's interop
test. Usage: ref_write.py OUT.safetensors EXPECTED.json"""
import json
import struct
import sys

import torch

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def raw(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def main(out, expected):
    torch.manual_seed(0)
    tensors = {
        "model.f32": torch.randn(3, 4),
        "model.f16": torch.randn(5).half(),
        "model.bf16": torch.randn(2, 3).bfloat16(),
        "buffers.i64": torch.tensor([0, -1, 2**62, -(2**62), 7]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    header = {"__metadata__": {"source": "python", "format": "pt"}}
    data = b""
    for name, t in tensors.items():
        b = raw(t)
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(header).encode()  # deliberately not padded to 8 bytes
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        f.write(data)
    exp = {}
    for name, t in tensors.items():
        vals = t.flatten().tolist() if t.dtype == torch.int64 else t.float().flatten().tolist()
        exp[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "values": vals}
    with open(expected, "w") as f:
        json.dump(exp, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
