"""Saves a PyTorch state dict with torch.save, plain and nested under
"state_dict", and the expected values as JSON, for tensorio's LoadPT test.
Usage: ref_pt.py PLAIN.pt NESTED.ckpt EXPECTED.json"""
import json
import sys

import torch


def main(plain, nested, expected):
    torch.manual_seed(1)
    sd = torch.nn.Linear(6, 4).state_dict()  # an OrderedDict
    base = torch.randn(4, 6)
    sd["base"] = base
    sd["transposed"] = base.t()  # non-contiguous view of the same storage
    sd["slice"] = base[1:3, 2:5]  # view with a storage offset
    sd["half"] = torch.randn(3).half()
    sd["bf16"] = torch.randn(2, 2).bfloat16()
    sd["steps"] = torch.tensor([1, -2, 2**40])
    sd["scalar"] = torch.tensor(3.5)
    torch.save(sd, plain)
    torch.save({"epoch": 3, "state_dict": sd, "lr": 0.1}, nested)
    exp = {}
    for name, t in sd.items():
        vals = t.flatten().tolist() if t.dtype == torch.int64 else t.float().flatten().tolist()
        exp[name] = {"dtype": str(t.dtype), "shape": list(t.shape), "values": vals}
    with open(expected, "w") as f:
        json.dump(exp, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
