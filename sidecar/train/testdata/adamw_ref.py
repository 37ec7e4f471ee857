# Generates adamw_ref.json: torch.optim.AdamW with clip_grad_norm_ on fixed
# values, the reference for TestAdamWMatchesTorch. Run with /usr/bin/python3.
import json
import torch

torch.manual_seed(0)
p0 = torch.randn(3, 4, dtype=torch.float64)
q0 = torch.randn(5, dtype=torch.float64)
grads = [[torch.randn(3, 4, dtype=torch.float64) * (i + 1), torch.randn(5, dtype=torch.float64)] for i in range(4)]
lrs = [1e-2, 5e-3, 2e-2, 1e-3]
wd, clip = 0.1, 1.5
p, q = p0.clone().requires_grad_(), q0.clone().requires_grad_()
opt = torch.optim.AdamW([p, q], lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
norms = []
for g, lr in zip(grads, lrs):
    p.grad, q.grad = g[0].clone(), g[1].clone()
    norms.append(float(torch.nn.utils.clip_grad_norm_([p, q], clip)))
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
out = {
    "p0": p0.flatten().tolist(), "q0": q0.tolist(),
    "grads": [[g[0].flatten().tolist(), g[1].tolist()] for g in grads],
    "lrs": lrs, "wd": wd, "clip": clip, "norms": norms,
    "p": p.detach().flatten().tolist(), "q": q.detach().tolist(),
}
with open("adamw_ref.json", "w") as f:
    json.dump(out, f, indent=1)
