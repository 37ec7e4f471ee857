#!/usr/bin/python3
"""Independent reference of MiniCPM-Llama3-V-2.5 (family minicpmv25), float64.

Plain torch 1.13 ops (no transformers, no safetensors package), written from
the model's remote code (modeling_minicpmv.py, resampler.py,
modeling_navit_siglip.py of openbmb/MiniCPM-Llama3-V-2_5, transformers 4.40)
and the M3-AGIQA repository, for sidecar tests on the project's tiny model:

  slicing (scripts/ref_minicpmv_slice.py: grid, refined sizes, PIL BICUBIC)
  -> per slice ToTensor + Normalize(0.5, 0.5) in float32
  -> vision (Idefics2-style SigLIP): patch conv 14, the batch of the image's
     slices padded to the longest one, position ids bucketed as ONE ROW of
     max_patches patches (the 2.5 quirk: patch_attn_mask is (B, 1, P) and
     `mask[i, :n] = True` fills the whole row, so every slice — padding
     included — is attended and bucketed with the batch's longest length),
     computed with float32 arange/bucketize as torch does; encoder layers
     (LayerNorm eps 1e-6, tanh GELU), post_layernorm
  -> resampler: kv_proj, ln_kv, key = x + 2-D sin-cos table (float32 numpy,
     first half of channels = column, second half = row, cut to (h, w)),
     value = x, queries ln_q(query) with no position, packed in_proj,
     key_padding_mask past each slice's own length, out_proj, ln_post, @ proj
  -> splice: the k-th resampler output fills the positions between the k-th
     <image> and </image> ids
  -> Llama-3 text model (RMSNorm, RoPE rotate-half with config rope_theta,
     GQA) -> lm_head logits at every position
  -> greedy decoding and HF-4.40 beam search (3 beams, repetition penalty
     1.2 applied to log-probs of generated tokens only, length penalty 1,
     early_stopping False, terminators as eos) from the prompt, recomputing
     the full forward pass at every step (no cache).

usage: ref_minicpmv.py MODEL_DIR IMAGE_PNG IN_JSON OUT_JSON
  IN_JSON: {"ids": [...], "im_start": ID, "im_end": ID, "max_slices": 9,
            "gen_tokens": 8, "eos": [ID, ...], "num_beams": 3,
            "repetition_penalty": 1.2}
  OUT_JSON: grid, sizes (w, h per slice), tgt_sizes (h, w in patches),
            position_ids (per slice), pixels (first values of each slice),
            vision (per slice: its real rows, flattened), resampler (per
            slice, flattened), embeds (merged input embeddings, flattened),
            logits (every position, flattened), greedy, beam (token ids).
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_minicpmv_slice import slice_image  # noqa: E402

from PIL import Image  # noqa: E402

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
F64 = torch.float64


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
        out[name] = t.to(F64)
    return out


def read_weights(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        out = {}
        for fn in files:
            out.update(read_safetensors(os.path.join(model_dir, fn)))
        return out
    return read_safetensors(os.path.join(model_dir, "model.safetensors"))


def config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    # MiniCPMVConfig: a missing vision_config is SigLIP-so400m; fields a
    # given one omits take Idefics2VisionConfig's defaults.
    v = c.get("vision_config")
    if v is None:
        v = {"hidden_size": 1152, "image_size": 980, "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14}
    v = dict(v)
    for k, d in {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "image_size": 224, "patch_size": 32, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh"}.items():
        v.setdefault(k, d)
    c["vision_config"] = v
    c.setdefault("rms_norm_eps", 1e-6)
    c.setdefault("rope_theta", 10000.0)
    c.setdefault("num_key_value_heads", c["num_attention_heads"])
    c.setdefault("query_num", 64)
    c.setdefault("drop_vision_last_layer", True)
    return c


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def lin(W, name, x, bias=True):
    y = x @ W[name + ".weight"].T
    if bias:
        y = y + W[name + ".bias"]
    return y


def preprocess(img):
    """ToTensor (u8 -> float32 / 255) then Normalize(0.5, 0.5) in float32."""
    a = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy())  # H, W, 3
    x = a.permute(2, 0, 1).to(torch.float32).div(255)
    return x.sub(0.5).div(0.5)  # 3, H, W (float32)


def position_ids(n_patches, per_side):
    """NaViT bucketing of one row of n_patches patches, as the 2.5 code runs
    it: float32 tensors, torch.arange and torch.bucketize(right=True)."""
    boundaries = torch.arange(1 / per_side, 1.0, 1 / per_side)
    nb_w = torch.tensor(n_patches)
    frac_w = torch.arange(0, 1 - 1e-6, 1 / nb_w)
    frac_h = torch.arange(0, 1 - 1e-6, 1 / torch.tensor(1))
    bh = torch.bucketize(frac_h, boundaries, right=True)
    bw = torch.bucketize(frac_w, boundaries, right=True)
    return (bh[:, None] * per_side + bw).flatten()


def vision(W, cfg, slices):
    """slices: list of float32 (3, H, W). Returns per slice (L_i, D) real rows
    of the padded batch, plus the position ids used."""
    v = cfg["vision_config"]
    p = v["patch_size"]
    per_side = v["image_size"] // p
    D = v["hidden_size"]
    heads = v["num_attention_heads"]
    eps = v["layer_norm_eps"]
    lens = [(s.shape[1] // p) * (s.shape[2] // p) for s in slices]
    P = max(lens)
    conv_w = W["vpm.embeddings.patch_embedding.weight"].reshape(D, -1)  # D, 3*p*p (c, ky, kx)
    conv_b = W["vpm.embeddings.patch_embedding.bias"]
    pos = position_ids(P, per_side)
    pos_table = W["vpm.embeddings.position_embedding.weight"]
    batch = []
    for s in slices:
        s = s.to(F64)
        _, H, Wd = s.shape
        patches = s.reshape(3, H // p, p, Wd // p, p).permute(1, 3, 0, 2, 4).reshape(-1, 3 * p * p)  # row-major patches
        e = patches @ conv_w.T + conv_b
        pad = torch.zeros(P - e.shape[0], 3 * p * p, dtype=F64) @ conv_w.T + conv_b  # padded pixels are 0
        batch.append(torch.cat([e, pad], 0) + pos_table[pos])
    x = torch.stack(batch)  # B, P, D
    n_layers = v["num_hidden_layers"] - (1 if cfg["drop_vision_last_layer"] else 0)
    dh = D // heads
    for i in range(n_layers):
        pre = f"vpm.encoder.layers.{i}."
        h = layer_norm(x, W[pre + "layer_norm1.weight"], W[pre + "layer_norm1.bias"], eps)
        B, L, _ = h.shape
        q = lin(W, pre + "self_attn.q_proj", h).reshape(B, L, heads, dh).transpose(1, 2)
        k = lin(W, pre + "self_attn.k_proj", h).reshape(B, L, heads, dh).transpose(1, 2)
        vv = lin(W, pre + "self_attn.v_proj", h).reshape(B, L, heads, dh).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) * dh ** -0.5, -1) @ vv
        x = x + lin(W, pre + "self_attn.out_proj", a.transpose(1, 2).reshape(B, L, D))
        h = layer_norm(x, W[pre + "layer_norm2.weight"], W[pre + "layer_norm2.bias"], eps)
        x = x + lin(W, pre + "mlp.fc2", gelu_tanh(lin(W, pre + "mlp.fc1", h)))
    x = layer_norm(x, W["vpm.post_layernorm.weight"], W["vpm.post_layernorm.bias"], eps)
    return x, lens, pos


def sincos_table(embed_dim, max_h, max_w):
    """get_2d_sincos_pos_embed version (2, 5): (H, W, D) float32 numpy."""
    gh = np.arange(max_h, dtype=np.float32)
    gw = np.arange(max_w, dtype=np.float32)
    grid = np.stack(np.meshgrid(gw, gh), axis=0)  # grid[0] = column, grid[1] = row

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float32)
        omega /= dim / 2.0
        omega = 1.0 / 10000 ** omega
        out = np.einsum("hw,d->hwd", pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=-1)

    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=-1)


def resampler(W, cfg, x, tgt_sizes):
    E = cfg["hidden_size"]
    heads = E // 128
    dh = E // heads
    B, P, _ = x.shape
    max_h = max(70, max(h for h, _ in tgt_sizes))
    max_w = max(70, max(w for _, w in tgt_sizes))
    table = torch.from_numpy(sincos_table(E, max_h, max_w)).to(torch.float32)
    kv = x @ W["resampler.kv_proj.weight"].T
    kv = layer_norm(kv, W["resampler.ln_kv.weight"], W["resampler.ln_kv.bias"], 1e-6)
    q = layer_norm(W["resampler.query"], W["resampler.ln_q.weight"], W["resampler.ln_q.bias"], 1e-6)
    Wi, bi = W["resampler.attn.in_proj_weight"], W["resampler.attn.in_proj_bias"]
    outs = []
    for b, (th, tw) in enumerate(tgt_sizes):
        n = th * tw
        pos = torch.zeros(P, E, dtype=F64)
        pos[:n] = table[:th, :tw, :].reshape(n, E).to(F64)
        key = kv[b] + pos
        qq = q @ Wi[:E].T + bi[:E]
        kk = key @ Wi[E : 2 * E].T + bi[E : 2 * E]
        vv = kv[b] @ Wi[2 * E :].T + bi[2 * E :]
        Q = qq.shape[0]
        qq = qq.reshape(Q, heads, dh).transpose(0, 1) * dh ** -0.5
        kk = kk.reshape(P, heads, dh).transpose(0, 1)
        vv = vv.reshape(P, heads, dh).transpose(0, 1)
        s = qq @ kk.transpose(-1, -2)
        s[:, :, n:] = float("-inf")
        a = (torch.softmax(s, -1) @ vv).transpose(0, 1).reshape(Q, E)
        o = lin(W, "resampler.attn.out_proj", a)
        o = layer_norm(o, W["resampler.ln_post.weight"], W["resampler.ln_post.bias"], 1e-6)
        outs.append(o @ W["resampler.proj"])
    return torch.stack(outs)


def rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    d = x.shape[-1] // 2
    return torch.cat([-x[..., d:], x[..., :d]], -1)


def embed(W, cfg, ids, feats, im_start, im_end):
    """get_vllm_embedding: the positions strictly between each <image> and
    its </image>, concatenated, take the resampler outputs of all slices
    flattened in order (the k-th bound gets the k-th slice when every bound
    holds query_num positions)."""
    x = W["llm.model.embed_tokens.weight"][torch.tensor(ids)]
    starts = [i + 1 for i, t in enumerate(ids) if t == im_start]
    ends = [i for i, t in enumerate(ids) if t == im_end]
    if len(starts) != len(ends):
        raise SystemExit(f"{len(starts)} <image> but {len(ends)} </image>")
    idx = [i for a, b in zip(starts, ends) for i in range(a, b)]
    flat = feats.reshape(-1, feats.shape[-1])
    if len(idx) != flat.shape[0]:
        raise SystemExit(f"{len(idx)} image positions for {flat.shape[0]} resampler rows")
    x[torch.tensor(idx, dtype=torch.long)] = flat
    return x


def text(W, cfg, x):
    H = cfg["hidden_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dh = H // nh
    eps = cfg["rms_norm_eps"]
    S = x.shape[0]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, dh, 2, dtype=F64) / dh))
    ang = torch.arange(S, dtype=F64)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)
    mask = torch.full((S, S), float("-inf"), dtype=F64).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        pre = f"llm.model.layers.{i}."
        h = rms_norm(x, W[pre + "input_layernorm.weight"], eps)
        q = lin(W, pre + "self_attn.q_proj", h, False).reshape(S, nh, dh).transpose(0, 1)
        k = lin(W, pre + "self_attn.k_proj", h, False).reshape(S, nkv, dh).transpose(0, 1)
        v = lin(W, pre + "self_attn.v_proj", h, False).reshape(S, nkv, dh).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(nh // nkv, 0)
        v = v.repeat_interleave(nh // nkv, 0)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh) + mask, -1) @ v
        x = x + lin(W, pre + "self_attn.o_proj", a.transpose(0, 1).reshape(S, H), False)
        h = rms_norm(x, W[pre + "post_attention_layernorm.weight"], eps)
        g = lin(W, pre + "mlp.gate_proj", h, False)
        u = lin(W, pre + "mlp.up_proj", h, False)
        x = x + lin(W, pre + "mlp.down_proj", torch.nn.functional.silu(g) * u, False)
    x = rms_norm(x, W["llm.model.norm.weight"], eps)
    return x @ W["llm.lm_head.weight"].T


def greedy(W, cfg, prompt_embeds, n, eos):
    out = []
    x = prompt_embeds
    for _ in range(n):
        t = int(text(W, cfg, x)[-1].argmax())
        out.append(t)
        if t in eos:
            break
        x = torch.cat([x, W["llm.model.embed_tokens.weight"][t][None]], 0)
    return out


def beam_search(next_logits, max_new, eos, num_beams, penalty):
    """transformers 4.40 _beam_search with inputs_embeds only (the generated
    ids start empty), RepetitionPenaltyLogitsProcessor on log-probs,
    BeamSearchScorer(length_penalty=1.0, do_early_stopping=False).
    next_logits(tokens) returns the logits (float64) after the prompt
    followed by the generated tokens."""
    beams = [[] for _ in range(num_beams)]
    scores = [0.0] + [-1e9] * (num_beams - 1)
    hyps = []  # (score, tokens)
    worst = 1e9

    def add(tokens, sum_lp, gen_len):
        nonlocal worst
        score = sum_lp / gen_len
        if len(hyps) < num_beams or score > worst:
            hyps.append((score, list(tokens)))
            if len(hyps) > num_beams:
                order = sorted((s, i) for i, (s, _) in enumerate(hyps))
                del hyps[order[0][1]]
                worst = order[1][0]
            else:
                worst = min(score, worst)

    done = False
    cur_len = 0
    while cur_len < max_new and not done:
        cand = []
        for b in range(num_beams):
            lp = torch.log_softmax(next_logits(beams[b]), -1)
            for t in set(beams[b]):
                lp[t] = lp[t] * penalty if lp[t] < 0 else lp[t] / penalty
            cand.append(lp + scores[b])
        flat = torch.cat(cand)
        V = cand[0].shape[0]
        k = max(2, 1 + len(eos)) * num_beams
        top, idx = torch.topk(flat, k, largest=True, sorted=True)
        new_beams, new_scores = [], []
        for rank in range(k):
            b, t, s = int(idx[rank]) // V, int(idx[rank]) % V, float(top[rank])
            if t in eos:
                if rank >= num_beams:
                    continue
                add(beams[b], s, cur_len + 1)
            else:
                new_beams.append(beams[b] + [t])
                new_scores.append(s)
            if len(new_beams) == num_beams:
                break
        cur_len += 1
        if len(hyps) >= num_beams:
            best = float(top.max()) / cur_len
            done = worst >= best
        beams, scores = new_beams, new_scores
    if not done:
        for b in range(num_beams):
            add(beams[b], scores[b], len(beams[b]))
    return sorted(hyps, key=lambda h: h[0])[-1][1]  # sorted(...).pop(): the last of equal scores


def main():
    model_dir, image_path, in_path, out_path = sys.argv[1:5]
    with open(in_path) as f:
        req = json.load(f)
    cfg = config(model_dir)
    W = read_weights(model_dir)
    img = Image.open(image_path).convert("RGB")
    v = cfg["vision_config"]
    source, cells, grid = slice_image(img, req.get("max_slices", 9), req.get("scale_resolution", 448), v["patch_size"])
    images = [source] + cells
    px = [preprocess(im) for im in images]
    p = v["patch_size"]
    tgt = [(t.shape[1] // p, t.shape[2] // p) for t in px]
    with torch.no_grad():
        vis, lens, pos = vision(W, cfg, px)
        res = resampler(W, cfg, vis, tgt)
        ids = req["ids"]
        x = embed(W, cfg, ids, res, req["im_start"], req["im_end"])
        logits = text(W, cfg, x)
        n = req.get("gen_tokens", 0)
        eos = req.get("eos", [])
        g = greedy(W, cfg, x, n, eos) if n else []
        emb = W["llm.model.embed_tokens.weight"]

        def next_logits(tokens):
            xx = x if not tokens else torch.cat([x, emb[torch.tensor(tokens)]], 0)
            return text(W, cfg, xx)[-1]

        bm = beam_search(next_logits, n, eos, req.get("num_beams", 3), req.get("repetition_penalty", 1.2)) if n else []
    out = {
        "grid": grid,
        "sizes": [list(im.size) for im in images],
        "tgt_sizes": [list(t) for t in tgt],
        "position_ids": pos.tolist(),
        "pixels": [t.flatten()[:64].tolist() for t in px],
        "vision": [vis[i, : lens[i]].flatten().tolist() for i in range(len(lens))],
        "resampler": res.flatten().tolist(),
        "embeds": x.flatten().tolist(),
        "logits": logits.flatten().tolist(),
        "vocab": logits.shape[1],
        "greedy": g,
        "beam": bm,
    }
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
