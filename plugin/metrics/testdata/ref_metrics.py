#!/usr/bin/python3
"""Writes ref_metrics.json: fixed vectors (ties included) and the metrics
scipy computes for them, the independent reference the Go tests compare
against. Run from this folder: /usr/bin/python3 ref_metrics.py"""
import json

import numpy as np
import scipy
from scipy import optimize, stats


def logistic5(x, b1, b2, b3, b4, b5):
    return b1 * (0.5 - 1.0 / (1.0 + np.exp(b2 * (x - b3)))) + b4 * x + b5


def init(x, y):
    # Same initialisation as metrics.FitLogistic.
    sign = 1.0 if stats.pearsonr(x, y)[0] >= 0 else -1.0
    sd = np.std(x)
    return [sign * (np.max(y) - np.min(y)), 1.0 / sd if sd > 0 else 1.0, np.mean(x), 0.0, np.mean(y)]


rng = np.random.default_rng(20260225)
cases = []


def add(name, x, y, fit):
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    c = {
        "name": name,
        "x": x.tolist(),
        "y": y.tolist(),
        "srcc": float(stats.spearmanr(x, y)[0]),
        "plcc": float(stats.pearsonr(x, y)[0]),
        "krcc": float(stats.kendalltau(x, y, variant="b")[0]),
        "rmse": float(np.sqrt(np.mean((x - y) ** 2))),
    }
    if fit:
        popt, _ = optimize.curve_fit(logistic5, x, y, p0=init(x, y), maxfev=200000,
                                     ftol=1e-15, xtol=1e-15, gtol=1e-15)
        fx = logistic5(x, *popt)
        c["logistic"] = popt.tolist()
        c["plcc_fitted"] = float(stats.pearsonr(fx, y)[0])
        c["rmse_fitted"] = float(np.sqrt(np.mean((fx - y) ** 2)))
        c["sse_fitted"] = float(np.sum((fx - y) ** 2))
    cases.append(c)


# 1. small, ties in both vectors (one decimal).
x = np.round(rng.uniform(0, 5, 20), 1)
x[3] = x[7] = x[11]
y = np.round(x + rng.normal(0, 0.8, 20), 0)
add("ties_small", x, y, False)

# 2. heavy ties: integer ratings 1..3.
add("heavy_ties", rng.integers(1, 4, 30), rng.integers(1, 4, 30), False)

# 3. monotone but nonlinear, negative direction.
x = np.linspace(-2, 2, 15)
add("negative_nonlinear", x, -np.exp(x), False)

# 4. predictor vs MOS with a sigmoid distortion, ties in predictions.
mos = np.round(rng.uniform(0, 5, 120), 3)
pred = 2.5 + 2.0 * np.tanh((mos - 2.5) / 1.2) + rng.normal(0, 0.35, 120)
pred = np.round(pred, 1)
add("sigmoid_pred", pred, mos, True)

# 5. a scorer on another scale (0..100) with noise.
mos = rng.uniform(0, 5, 200)
pred = 100.0 / (1.0 + np.exp(-1.7 * (mos - 2.2))) + rng.normal(0, 6, 200)
add("other_scale", np.round(pred, 2), np.round(mos, 4), True)

with open("ref_metrics.json", "w") as f:
    json.dump({"generator": "ref_metrics.py", "numpy": np.__version__, "scipy": scipy.__version__,
               "cases": cases}, f, indent=1)
