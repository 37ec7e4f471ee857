#!/usr/bin/env python3
"""bench_minicpmv_gpu.py: the minicpmv25 scoring pipeline's stages at the real
MiniCPM-Llama3-V-2.5 shapes (SigLIP-so400m 27×1152, resampler 96 queries,
Llama-3-8B 32×4096 GQA 32/8, vocab 128256), random bf16 weights, in plain
torch on one CUDA GPU: the per-image cost of three aspects the way m3gate's
minicpmv25 engine runs them (per aspect: vision + resampler on the image's
slices, round-1 prefill, beam search of 3 with a KV cache, the three-message
prefill for the predictor and the rating word), and the batched throughput
when several images share each stage.

It is a measurement of the pipeline's arithmetic on the GPU, not of
m3gate's Go code (gotch needs a CUDA libtorch 2.1 build and the Go
toolchain, which the device machine did not have).

usage: python3 scripts/bench_minicpmv_gpu.py [--desc-tokens 64] [--runs 5] [--batch 8]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--desc-tokens", type=int, default=64)
p.add_argument("--runs", type=int, default=5)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--layers", type=int, default=32)
args = p.parse_args()

dev, dt = "cuda", torch.bfloat16
torch.manual_seed(0)


def W(*s):
    return (torch.randn(*s, device=dev, dtype=dt) * 0.02)


# --- weights -----------------------------------------------------------------
DV, HV, LV, IV = 1152, 16, 27, 4304
E, H, KV, L, I, V = 4096, 32, 8, args.layers, 14336, 128256
Q = 96
vis = [dict(qkv=W(3 * DV, DV), o=W(DV, DV), f1=W(IV, DV), f2=W(DV, IV)) for _ in range(LV)]
patch = W(DV, 3 * 14 * 14)
pos = W(4900, DV)
res = dict(kv=W(E, DV), inw=W(3 * E, E), out=W(E, E), q=W(Q, E), proj=W(E, E))
txt = [dict(q=W(E, E), k=W(KV * 128, E), v=W(KV * 128, E), o=W(E, E), g=W(I, E), u=W(I, E), d=W(E, I)) for _ in range(L)]
emb = W(V, E)
head = W(V, E)
print(json.dumps({"params_b": round(sum(t.numel() for d in vis + txt + [res] for t in d.values()) / 1e9 + 2 * V * E / 1e9, 2),
                  "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)


def ln(x):
    return F.layer_norm(x, x.shape[-1:])


def rms(x):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(x.dtype)


def vision(px):  # px [B, P, 588] patches
    x = px @ patch.T + pos[: px.shape[1]]
    B, P, _ = x.shape
    for l in vis:
        h = ln(x)
        q, k, v = (h @ l["qkv"].T).view(B, P, 3, HV, DV // HV).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, P, DV)
        x = x + a @ l["o"].T
        x = x + F.gelu(ln(x) @ l["f1"].T, approximate="tanh") @ l["f2"].T
    x = ln(x)
    kv = ln(x @ res["kv"].T)
    q = ln(res["q"]) @ res["inw"][:E].T
    k = kv @ res["inw"][E:2 * E].T
    v = kv @ res["inw"][2 * E:].T
    nh = E // 128
    q = q.view(1, Q, nh, 128).transpose(1, 2).expand(B, -1, -1, -1)
    k = k.view(B, P, nh, 128).transpose(1, 2)
    v = v.view(B, P, nh, 128).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, Q, E)
    return ln(o @ res["out"].T) @ res["proj"]


def rope(x, start):
    T = x.shape[2]
    inv = 1.0 / (500000 ** (torch.arange(0, 128, 2, device=dev).float() / 128))
    ang = torch.arange(start, start + T, device=dev).float()[:, None] * inv
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(dt), torch.cat([ang.sin()] * 2, -1).to(dt)
    x1, x2 = x[..., :64], x[..., 64:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def text(x, cache=None):  # x [B, T, E]; cache: list of (k, v)
    B, T, _ = x.shape
    start = 0 if cache is None else cache[0][0].shape[2]
    new = []
    for i, l in enumerate(txt):
        h = rms(x)
        q = rope((h @ l["q"].T).view(B, T, H, 128).transpose(1, 2), start)
        k = rope((h @ l["k"].T).view(B, T, KV, 128).transpose(1, 2), start)
        v = (h @ l["v"].T).view(B, T, KV, 128).transpose(1, 2)
        if cache is not None:
            k = torch.cat([cache[i][0], k], 2)
            v = torch.cat([cache[i][1], v], 2)
        new.append((k, v))
        kk, vv = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
        a = F.scaled_dot_product_attention(q, kk, vv, is_causal=(cache is None and T > 1))
        x = x + a.transpose(1, 2).reshape(B, T, E) @ l["o"].T
        h = rms(x)
        x = x + (F.silu(h @ l["g"].T) * (h @ l["u"].T)) @ l["d"].T
    return rms(x), new


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


# A 512×512 image: the source at 448² (1024 patches) and two 630×322 cells
# (1035 patches each), padded to 1035 in one vision batch.
SLICES, PATCHES = 3, 1035
R1 = SLICES * (Q + 2) + 2 + 70       # placeholder + round-1 question + template
R3 = R1 + args.desc_tokens + 45      # + description + round-2 question


def one_aspect(images):
    B = images
    stages = {}
    px = torch.randn(B * SLICES, PATCHES, 588, device=dev, dtype=dt)
    feats, stages["vision+resampler"] = timed(lambda: vision(px))
    x = emb[torch.randint(0, V, (B, R1), device=dev)]
    x[:, : SLICES * Q] = feats.view(B, SLICES * Q, E)
    (h, cache), stages["prefill round 1"] = timed(lambda: text(x))

    def beam():
        c = [(k.repeat_interleave(3, 0), v.repeat_interleave(3, 0)) for k, v in cache]
        tok = torch.randint(0, V, (B * 3, 1), device=dev)
        for _ in range(args.desc_tokens):
            hh, c = text(emb[tok], c)
            lp = torch.log_softmax((hh[:, -1] @ head.T).float(), -1)
            top = lp.view(B, -1).topk(9, -1).indices[:, :3]  # per image, over its 3 beams
            origin = (torch.arange(B, device=dev)[:, None] * 3 + top // V).reshape(-1)
            c = [(k[origin], v[origin]) for k, v in c]
            tok = (top % V).reshape(-1, 1)
        return tok
    _, stages["describe (beam 3)"] = timed(beam)
    x3 = emb[torch.randint(0, V, (B, R3), device=dev)]
    (h3, c3), stages["three-message prefill"] = timed(lambda: text(x3))
    w = W(512, E)
    _, stages["rating word + predictor input"] = timed(lambda: (text(emb[torch.randint(0, V, (B, 5), device=dev)], c3)[0][:, -1] @ head.T, h3[:, :512] @ w.T))
    return stages


def run(images):
    one_aspect(images)  # warm-up
    rows = []
    for _ in range(args.runs):
        per = {}
        for _ in range(3):  # three aspects
            for k, v in one_aspect(images).items():
                per[k] = per.get(k, 0) + v
        per["total"] = sum(per.values())
        rows.append(per)
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


single = run(1)
print(json.dumps({"images": 1, "aspects": 3, "desc_tokens": args.desc_tokens, "median_s": {k: round(v, 4) for k, v in single.items()}}), flush=True)
batched = run(args.batch)
print(json.dumps({"images": args.batch, "aspects": 3, "desc_tokens": args.desc_tokens,
                  "median_s": {k: round(v, 4) for k, v in batched.items()},
                  "images_per_s": round(args.batch / batched["total"], 2)}), flush=True)
print(json.dumps({"gpu_mem_peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)}), flush=True)
