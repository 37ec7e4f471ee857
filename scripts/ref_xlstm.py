#!/usr/bin/python3
"""Reference fixture for sidecar/xlstm: a plain-torch re-implementation of the
M3-AGIQA predictor forward as NX-AI xlstm 1.0.6 computes it (the xlstm
package itself is not installable here).

It follows the 1.0.6 modules step by step: LayerNorm with weight 1+w
(components/ln.py), MultiHeadLayerNorm through F.group_norm, CausalConv1d
(padding K-1, cut the tail), LinearHeadwiseExpand's einsum,
mLSTMLayer.forward + parallel_stabilized_simple (backends.py), the sLSTM
layer (fgate feeds the i slot) and sLSTMCell: parameters stored in the cuda
backend's layout are converted with the vanilla backend's
_recurrent_kernel_ext2int / _bias_ext2int and run through the vanilla
slstm_forward loop and slstm_forward_pointwise; GatedFeedForward with exact
GELU; xLSTMBlockStack with post_blocks_norm; then M3-AGIQA's head:
W (with bias) -> stack -> mean over positions -> fc.0 -> ReLU -> fc.2.

Weights are random but deterministic (torch.manual_seed), with every norm,
gate and recurrent weight non-zero so that every path is exercised.

Writes sidecar/xlstm/testdata/ref_small.safetensors (state dict under the
reference keys + inputs + expected outputs + the gradient of a weighted sum
of the outputs for every parameter) and ref_small.ckpt (a
Lightning-style torch.save dict whose "state_dict" holds the same weights
plus a frozen-MLLM tensor the loader must ignore).

Run: /usr/bin/python3 scripts/ref_xlstm.py
"""
import json
import math
import os
import struct

import torch
import torch.nn.functional as F

torch.manual_seed(20240617)
torch.set_default_dtype(torch.float32)

# Small sizes: width 32, 2 heads, 4 blocks, sLSTM at 1.
V, E, NB, SLSTM_AT = 48, 32, 4, [1]
NH_M, NH_S, K, BS, PF, FFF, HEAD = 2, 2, 4, 4, 2.0, 1.3, 128


def round64(f, d):
    return int(math.ceil(f * d / 64) * 64)


I = round64(PF, E)  # mLSTM inner width
FF = round64(FFF, E)  # ffn inner width
DHS = E // NH_S


def rnd(*shape, std=0.3):
    return torch.randn(*shape) * std


sd = {}
sd["model.W.weight"] = rnd(E, V, std=0.2)
sd["model.W.bias"] = rnd(E, std=0.1)
for b in range(NB):
    p = f"model.xlstm_pooler.xlstm_stack.blocks.{b}."
    sd[p + "xlstm_norm.weight"] = rnd(E, std=0.1)
    if b in SLSTM_AT:
        sd[p + "xlstm.conv1d.conv.weight"] = rnd(E, 1, K, std=0.4)
        sd[p + "xlstm.conv1d.conv.bias"] = rnd(E, std=0.1)
        for g in ["fgate", "igate", "zgate", "ogate"]:
            sd[p + f"xlstm.{g}.weight"] = rnd(NH_S, DHS, DHS, std=0.3)
        # cuda layout: [NH, DH, 4*DH] and flat bias (h*4+g)*DH+d
        sd[p + "xlstm.slstm_cell._recurrent_kernel_"] = rnd(NH_S, DHS, 4 * DHS, std=0.3)
        sd[p + "xlstm.slstm_cell._bias_"] = rnd(NH_S * 4 * DHS, std=0.5)
        sd[p + "xlstm.group_norm.weight"] = rnd(E, std=0.1)
        sd[p + "ffn_norm.weight"] = rnd(E, std=0.1)
        sd[p + "ffn.proj_up.weight"] = rnd(2 * FF, E, std=0.2)
        sd[p + "ffn.proj_down.weight"] = rnd(E, FF, std=0.2)
    else:
        sd[p + "xlstm.proj_up.weight"] = rnd(2 * I, E, std=0.2)
        for q in ["q_proj", "k_proj", "v_proj"]:
            sd[p + f"xlstm.{q}.weight"] = rnd(I // BS, BS, BS, std=0.4)
        sd[p + "xlstm.conv1d.conv.weight"] = rnd(I, 1, K, std=0.4)
        sd[p + "xlstm.conv1d.conv.bias"] = rnd(I, std=0.1)
        sd[p + "xlstm.mlstm_cell.igate.weight"] = rnd(NH_M, 3 * I, std=0.1)
        sd[p + "xlstm.mlstm_cell.igate.bias"] = rnd(NH_M, std=0.5)
        sd[p + "xlstm.mlstm_cell.fgate.weight"] = rnd(NH_M, 3 * I, std=0.1)
        sd[p + "xlstm.mlstm_cell.fgate.bias"] = torch.linspace(3.0, 6.0, NH_M) + rnd(NH_M, std=0.5)
        sd[p + "xlstm.mlstm_cell.outnorm.weight"] = rnd(I, std=0.1)
        sd[p + "xlstm.learnable_skip"] = 1.0 + rnd(I, std=0.2)
        sd[p + "xlstm.proj_down.weight"] = rnd(E, I, std=0.2)
sd["model.xlstm_pooler.xlstm_stack.post_blocks_norm.weight"] = rnd(E, std=0.1)
sd["model.fc.0.weight"] = rnd(HEAD, E, std=0.2)
sd["model.fc.0.bias"] = rnd(HEAD, std=0.1)
sd["model.fc.2.weight"] = rnd(1, HEAD, std=0.2)
sd["model.fc.2.bias"] = rnd(1, std=0.1)


# ---- components (xlstm 1.0.6) ----
def layer_norm(x, w):
    return F.layer_norm(x, normalized_shape=(x.shape[-1],), weight=1.0 + w, bias=None, eps=1e-5)


def mh_layer_norm(x, w):  # x (B, NH, S, DH)
    B, NH, S, DH = x.shape
    gn_in = x.transpose(1, 2).reshape(B * S, NH * DH)
    out = F.group_norm(gn_in, num_groups=NH, weight=1.0 + w, bias=None, eps=1e-5)
    return out.view(B, S, NH, DH).transpose(1, 2)


def causal_conv(x, w, b):  # x (B, T, F)
    pad = w.shape[-1] - 1
    y = F.conv1d(x.transpose(2, 1), w, b, padding=pad, groups=x.shape[-1])
    return y[:, :, :-pad].transpose(2, 1)


def headwise(x, w):
    shape = x.shape
    x = x.view(*shape[:-1], w.shape[0], -1)
    x = torch.einsum("...hd,hod->...ho", x, w)
    return x.reshape(*shape[:-1], -1)


def parallel_stabilized_simple(queries, keys, values, igate_preact, fgate_preact, eps=1e-6):
    B, NH, S, DH = queries.shape
    log_fgates = F.logsigmoid(fgate_preact)
    ltr = torch.tril(torch.ones((S, S), dtype=torch.bool))
    log_fgates_cumsum = torch.cat([torch.zeros((B, NH, 1, 1)), torch.cumsum(log_fgates, dim=-2)], dim=-2)
    rep = log_fgates_cumsum.repeat(1, 1, 1, S + 1)
    _log_fg_matrix = rep - rep.transpose(-2, -1)
    log_fg_matrix = torch.where(ltr, _log_fg_matrix[:, :, 1:, 1:], -float("inf"))
    log_D_matrix = log_fg_matrix + igate_preact.transpose(-2, -1)
    max_log_D, _ = torch.max(log_D_matrix, dim=-1, keepdim=True)
    D_matrix = torch.exp(log_D_matrix - max_log_D)
    keys_scaled = keys / math.sqrt(DH)
    qk_matrix = queries @ keys_scaled.transpose(-2, -1)
    C_matrix = qk_matrix * D_matrix
    normalizer = torch.maximum(C_matrix.sum(dim=-1, keepdim=True).abs(), torch.exp(-max_log_D))
    C_matrix_normalized = C_matrix / (normalizer + eps)
    return C_matrix_normalized @ values


def mlstm_layer(x, p):
    B, S, _ = x.shape
    x_inner = F.linear(x, sd[p + "xlstm.proj_up.weight"])
    x_mlstm, z = torch.split(x_inner, I, dim=-1)
    x_conv_act = F.silu(causal_conv(x_mlstm, sd[p + "xlstm.conv1d.conv.weight"], sd[p + "xlstm.conv1d.conv.bias"]))
    q = headwise(x_conv_act, sd[p + "xlstm.q_proj.weight"])
    k = headwise(x_conv_act, sd[p + "xlstm.k_proj.weight"])
    v = headwise(x_mlstm, sd[p + "xlstm.v_proj.weight"])
    # mLSTMCell.forward
    if_in = torch.cat([q, k, v], dim=-1)
    qh = q.view(B, S, NH_M, -1).transpose(1, 2)
    kh = k.view(B, S, NH_M, -1).transpose(1, 2)
    vh = v.view(B, S, NH_M, -1).transpose(1, 2)
    ig = F.linear(if_in, sd[p + "xlstm.mlstm_cell.igate.weight"], sd[p + "xlstm.mlstm_cell.igate.bias"])
    ig = ig.transpose(-1, -2).unsqueeze(-1)
    fg = F.linear(if_in, sd[p + "xlstm.mlstm_cell.fgate.weight"], sd[p + "xlstm.mlstm_cell.fgate.bias"])
    fg = fg.transpose(-1, -2).unsqueeze(-1)
    h = parallel_stabilized_simple(qh, kh, vh, ig, fg)
    h = mh_layer_norm(h, sd[p + "xlstm.mlstm_cell.outnorm.weight"]).transpose(1, 2).reshape(B, S, -1)
    h = h + sd[p + "xlstm.learnable_skip"] * x_conv_act
    h = h * F.silu(z)
    return F.linear(h, sd[p + "xlstm.proj_down.weight"])


def slstm_pointwise(Wx, Ry, b, states):
    raw = Wx + Ry + b
    y, c, n, m = torch.unbind(states.view(4, states.shape[1], -1), dim=0)
    iraw, fraw, zraw, oraw = torch.unbind(raw.view(raw.shape[0], 4, -1), dim=1)
    logfplusm = m + F.logsigmoid(fraw)
    if torch.all(n == 0.0):
        mnew = iraw
    else:
        mnew = torch.max(iraw, logfplusm)
    ogate = torch.sigmoid(oraw)
    igate = torch.exp(iraw - mnew)
    fgate = torch.exp(logfplusm - mnew)
    cnew = fgate * c + igate * torch.tanh(zraw)
    nnew = fgate * n + igate
    ynew = ogate * cnew / nnew
    return torch.stack((ynew, cnew, nnew, mnew), dim=0)


def slstm_layer(x, p):
    B, S, _ = x.shape
    x_conv = F.silu(causal_conv(x, sd[p + "xlstm.conv1d.conv.weight"], sd[p + "xlstm.conv1d.conv.bias"]))
    i, f, z, o = (
        headwise(x_conv, sd[p + "xlstm.fgate.weight"]),
        headwise(x_conv, sd[p + "xlstm.igate.weight"]),
        headwise(x, sd[p + "xlstm.zgate.weight"]),
        headwise(x, sd[p + "xlstm.ogate.weight"]),
    )
    inp = torch.cat([i, f, z, o], dim=-1)
    # cuda-stored params -> external -> vanilla internal layout
    R_cuda = sd[p + "xlstm.slstm_cell._recurrent_kernel_"]
    R_ext = R_cuda.reshape(NH_S, DHS, 4, DHS)
    R = R_ext.permute(0, 2, 3, 1).reshape(NH_S, 4 * DHS, DHS)  # vanilla _recurrent_kernel_ext2int
    b_ext = sd[p + "xlstm.slstm_cell._bias_"].reshape(NH_S, 4, DHS)
    bias = b_ext.permute(1, 0, 2).reshape(-1)  # vanilla _bias_ext2int
    # _permute_input: BSGNH -> SBGNH
    xin = inp.view(B, S, 4, NH_S, -1).permute(1, 0, 2, 3, 4).reshape(S, B, -1)
    states = torch.zeros((4, B, E))
    ys = []
    for t in range(S):
        Ry = (
            states[0].reshape(B, NH_S, 1, -1)
            .matmul(R.transpose(1, 2).reshape(1, NH_S, DHS, 4 * DHS))
            .reshape(B, NH_S, 4, -1)
            .transpose(1, 2)
            .reshape(B, -1)
        )
        states = slstm_pointwise(xin[t], Ry, bias, states)
        ys.append(states[0])
    y = torch.stack(ys, 0)  # [S, B, H]
    y = y.view(S, B, NH_S, DHS).permute(1, 2, 0, 3)  # BNSH
    return mh_layer_norm(y, sd[p + "xlstm.group_norm.weight"]).transpose(1, 2).reshape(B, S, -1)


def ffn(x, p):
    g, u = F.linear(x, sd[p + "ffn.proj_up.weight"]).split(FF, dim=-1)
    return F.linear(F.gelu(g) * u, sd[p + "ffn.proj_down.weight"])


def stack(x):
    for b in range(NB):
        p = f"model.xlstm_pooler.xlstm_stack.blocks.{b}."
        xn = layer_norm(x, sd[p + "xlstm_norm.weight"])
        if b in SLSTM_AT:
            x = x + slstm_layer(xn, p)
            x = x + ffn(layer_norm(x, sd[p + "ffn_norm.weight"]), p)
        else:
            x = x + mlstm_layer(xn, p)
    return layer_norm(x, sd["model.xlstm_pooler.xlstm_stack.post_blocks_norm.weight"])


def predictor(logits):
    e = F.linear(logits, sd["model.W.weight"], sd["model.W.bias"])
    h = stack(e)
    pooled = h.mean(dim=1)
    y = F.linear(F.relu(F.linear(pooled, sd["model.fc.0.weight"], sd["model.fc.0.bias"])), sd["model.fc.2.weight"], sd["model.fc.2.bias"])
    return y.squeeze(1), h


B, S, S_SHORT = 2, 12, 7
x = torch.randn(B, S, V) * 3.0
with torch.no_grad():
    out, h = predictor(x)
    out_short, _ = predictor(x[1:2, :S_SHORT])

# Gradients of loss = Σ_b out[b]·LOSS_W[b] for every parameter (the training
# path: autograd through the parallel mLSTM, the sLSTM loop and the head).
LOSS_W = torch.tensor([1.0, -0.5])
for v in sd.values():
    v.requires_grad_(True)
out_g, _ = predictor(x)
(out_g * LOSS_W).sum().backward()
grads = {"grad." + k: v.grad.detach().clone() for k, v in sd.items()}
for v in sd.values():
    v.requires_grad_(False)
    v.grad = None

tensors = dict(sd)
tensors.update(grads)
tensors["loss.w"] = LOSS_W
tensors["input.x"] = x
tensors["expected.out"] = out
tensors["expected.stack"] = h
tensors["expected.out_short"] = out_short  # item 1 cut to S_SHORT positions


def write_safetensors(path, tensors, metadata):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().contiguous().to(torch.float32).numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    header["__metadata__"] = metadata
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


here = os.path.dirname(os.path.abspath(__file__))
outdir = os.path.join(here, "..", "sidecar", "xlstm", "testdata")
os.makedirs(outdir, exist_ok=True)
write_safetensors(os.path.join(outdir, "ref_small.safetensors"), tensors,
                  {"generator": "scripts/ref_xlstm.py", "s_short": str(S_SHORT)})
ckpt_sd = {k: v.clone() for k, v in sd.items()}
ckpt_sd["model.model.llm.lm_head.weight"] = torch.zeros(4, 4)  # frozen MLLM: ignored by the loader
torch.save({"epoch": 3, "global_step": 42, "state_dict": ckpt_sd}, os.path.join(outdir, "ref_small.ckpt"))
print("out", out.tolist(), "short", out_short.tolist())
