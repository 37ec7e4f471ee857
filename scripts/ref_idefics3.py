#!/usr/bin/python3
"""Independent reference forward pass of an Idefics3 (SmolVLM) model.

Plain torch ops only (torch 1.13, no transformers, no safetensors package):
reads config.json and model.safetensors of a model directory, builds the
test image from a closed formula, runs

  SigLIP vision encoder -> pixel shuffle (explicit index formula) ->
  modality projection -> splice features into the <image> token embeddings
  -> Llama decoder (RMSNorm, RoPE rotate-half, GQA via repeat_kv, causal
  softmax attention, SiLU MLP) -> final norm -> lm_head

for the token ids given on the command line, and writes JSON with the image
features and the logits at every position.

usage: ref_idefics3.py MODEL_DIR IDS_JSON OUT_JSON
  IDS_JSON: {"ids": [...], "image_size": S}
"""
import json
import math
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        buf = bytearray(data[base + a : base + b])
        t = torch.frombuffer(buf, dtype=DTYPES[e["dtype"]]).reshape(e["shape"]) if b > a else torch.zeros(e["shape"], dtype=DTYPES[e["dtype"]])
        out[name] = t.to(torch.float64)
    return out


def test_pixels(size):
    """pixel[c, y, x] = 0.9·sin(0.37·x + 0.23·y + 1.1·c), as the Go test."""
    v = [[[float(torch.tensor(0.9 * math.sin(0.37 * x + 0.23 * y + 1.1 * c), dtype=torch.float32))
           for x in range(size)] for y in range(size)] for c in range(3)]
    return torch.tensor(v, dtype=torch.float64)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def linear(x, W, prefix, name, bias=True):
    y = x @ W[prefix + name + ".weight"].T
    if bias and (prefix + name + ".bias") in W:
        y = y + W[prefix + name + ".bias"]
    return y


def vision(W, cfg, px):
    vc = cfg["vision_config"]
    D, H, p = vc["hidden_size"], vc["num_attention_heads"], vc["patch_size"]
    eps = vc.get("layer_norm_eps", 1e-6)
    n = px.shape[-1] // p
    pre = "model.vision_model."
    # patch embedding written as an explicit unfold + matmul: patch (r, c)
    # flattens its pixels as (channel, ky, kx)
    w = W[pre + "embeddings.patch_embedding.weight"].reshape(D, -1)
    patches = []
    for r in range(n):
        for c in range(n):
            patches.append(px[:, r * p:(r + 1) * p, c * p:(c + 1) * p].reshape(-1))
    x = torch.stack(patches) @ w.T + W[pre + "embeddings.patch_embedding.bias"]
    x = x + W[pre + "embeddings.position_embedding.weight"][torch.arange(n * n)]
    hd = D // H
    for i in range(vc["num_hidden_layers"]):
        lp = pre + "encoder.layers.%d." % i
        h = layer_norm(x, W[lp + "layer_norm1.weight"], W[lp + "layer_norm1.bias"], eps)
        q = linear(h, W, lp, "self_attn.q_proj").reshape(-1, H, hd).transpose(0, 1)
        k = linear(h, W, lp, "self_attn.k_proj").reshape(-1, H, hd).transpose(0, 1)
        v = linear(h, W, lp, "self_attn.v_proj").reshape(-1, H, hd).transpose(0, 1)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
        x = x + linear(a.transpose(0, 1).reshape(-1, D), W, lp, "self_attn.out_proj")
        h = layer_norm(x, W[lp + "layer_norm2.weight"], W[lp + "layer_norm2.bias"], eps)
        x = x + linear(gelu_tanh(linear(h, W, lp, "mlp.fc1")), W, lp, "mlp.fc2")
    return layer_norm(x, W[pre + "post_layernorm.weight"], W[pre + "post_layernorm.bias"], eps)


def pixel_shuffle(x, s):
    """out[i·(n/s)+j, (m·s+k)·D+d] = x[(i·s+m)·n + (j·s+k), d], by loops."""
    seq, D = x.shape
    n = int(round(math.sqrt(seq)))
    out = torch.zeros(seq // (s * s), D * s * s, dtype=x.dtype)
    for i in range(n // s):
        for j in range(n // s):
            for m in range(s):
                for k in range(s):
                    out[i * (n // s) + j, (m * s + k) * D:(m * s + k + 1) * D] = x[(i * s + m) * n + (j * s + k)]
    return out


def rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def text(W, cfg, ids, feats):
    tc = cfg["text_config"]
    D, H = tc["hidden_size"], tc["num_attention_heads"]
    KV = tc.get("num_key_value_heads", H)
    hd = tc.get("head_dim") or D // H
    eps = tc.get("rms_norm_eps", 1e-6)
    theta = tc.get("rope_theta", 10000.0)
    pre = "model.text_model."
    x = W[pre + "embed_tokens.weight"][torch.tensor(ids)].clone()
    k_img = 0
    for t, tok in enumerate(ids):
        if tok == cfg["image_token_id"]:
            x[t] = feats[k_img]
            k_img += 1
    assert k_img == feats.shape[0], (k_img, feats.shape)
    T = len(ids)
    # RoPE angles in f32 as Hugging Face computes them
    inv = (1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))).float()
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    cos, sin = emb.cos().double(), emb.sin().double()
    causal = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(tc["num_hidden_layers"]):
        lp = pre + "layers.%d." % i
        h = rms_norm(x, W[lp + "input_layernorm.weight"], eps)
        q = linear(h, W, lp, "self_attn.q_proj").reshape(T, H, hd).transpose(0, 1)
        k = linear(h, W, lp, "self_attn.k_proj").reshape(T, KV, hd).transpose(0, 1)
        v = linear(h, W, lp, "self_attn.v_proj").reshape(T, KV, hd).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = H // KV
        k = torch.stack([k[hh // rep] for hh in range(H)])  # query head h uses KV head h // rep
        v = torch.stack([v[hh // rep] for hh in range(H)])
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + causal, dim=-1) @ v
        x = x + linear(a.transpose(0, 1).reshape(T, H * hd), W, lp, "self_attn.o_proj")
        h = rms_norm(x, W[lp + "post_attention_layernorm.weight"], eps)
        g = linear(h, W, lp, "mlp.gate_proj")
        x = x + linear(g * torch.sigmoid(g) * linear(h, W, lp, "mlp.up_proj"), W, lp, "mlp.down_proj")
    x = rms_norm(x, W[pre + "norm.weight"], eps)
    head = W["model.text_model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    return x @ head.T


def main():
    model_dir, ids_path, out_path = sys.argv[1:4]
    cfg = json.load(open(model_dir + "/config.json"))
    W = read_safetensors(model_dir + "/model.safetensors")
    inp = json.load(open(ids_path))
    torch.set_grad_enabled(False)
    px = test_pixels(cfg["vision_config"]["image_size"])
    v = vision(W, cfg, px)
    feats = pixel_shuffle(v, cfg["scale_factor"]) @ W["model.connector.modality_projection.proj.weight"].T
    logits = text(W, cfg, inp["ids"], feats)
    json.dump({"ids": inp["ids"], "features": feats.float().tolist(), "logits": logits.float().tolist()},
              open(out_path, "w"))


if __name__ == "__main__":
    main()
