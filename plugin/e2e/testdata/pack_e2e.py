"""Runs API-format prompts that ran on a (fake) ComfyUI server through the
m3gate node pack, the way ComfyUI's executor would (nodes/testdata/executor.py:
per-node cache keyed by inputs, output nodes in a shuffled seeded order,
hidden inputs), against the real daemon.

Driven by plugin/e2e. Stub server / comfy / comfy_execution / folder_paths
modules come from nodes/testdata/pystubs and the executor from nodes/testdata
(PYTHONPATH); torch, numpy and PIL are real. The stock nodes of the prompt
are stand-ins: VAEDecode yields the images ComfyUI rendered for the prompt
(read from files), the loaders, encoders and the sampler yield nothing, and
SaveImage is ComfyUI's. Environment:
  M3GATE_PACK   the pack folder (nodes/comfyui/m3gate)
  M3GATE_URL    the daemon (read by the pack itself)
  M3GATE_OUT    ComfyUI's output folder
  E2E_PLAN      a JSON file: a list of runs, each {"executor": name,
                "order_seed": n, "address": host, "port": n, "prompt": {...},
                "images": [png paths], "extra_data": {...}, "client_id": id}.
                Runs naming the same executor share its cache (one server
                process); the first run of a name creates it.
  E2E_SENT_PNG  where to write the PNG the pack sends to /v1/score for the
                first image of the first run
Prints a JSON list, one object per run: the nodes' outputs and ui, the files
each output node saved, what ran and what came from the cache, the events.
"""

import importlib.util
import json
import math
import os
import sys

import numpy as np
import torch
from PIL import Image

import server
import executor

PACK = os.environ["M3GATE_PACK"]
spec = importlib.util.spec_from_file_location(
    "m3gate", os.path.join(PACK, "__init__.py"), submodule_search_locations=[PACK])
m3gate = importlib.util.module_from_spec(spec)
sys.modules["m3gate"] = m3gate
spec.loader.exec_module(m3gate)

IMAGES = []  # the current run's rendered images


class Stub:
    """A stock node whose output the pack does not look at."""
    RETURN_TYPES = ("*", "*", "*")
    FUNCTION = "run"

    def run(self, **kwargs):
        return (None, None, None)


class Decoded:
    """VAEDecode: the images ComfyUI rendered, as LoadImage converts them."""
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    def run(self, **kwargs):
        arrs = [np.asarray(Image.open(p).convert("RGB")).astype(np.float32) / 255.0 for p in IMAGES]
        return (torch.from_numpy(np.stack(arrs)),)


def main():
    classes = executor.classes(m3gate)
    classes.update({c: Stub for c in ("KSampler", "CheckpointLoaderSimple", "EmptyLatentImage", "CLIPTextEncode")})
    classes["VAEDecode"] = Decoded
    with open(os.environ["E2E_PLAN"], encoding="utf-8") as f:
        plan = json.load(f)
    executors, out = {}, []
    for i, run in enumerate(plan):
        name = run.get("executor", "default")
        if name not in executors:
            executors[name] = executor.Executor(classes, seed=run.get("order_seed", 0),
                                                address=run.get("address", "127.0.0.1"), port=run.get("port", 8188))
        ex = executors[name]
        IMAGES[:] = run["images"]
        if i == 0 and os.environ.get("E2E_SENT_PNG"):
            with open(os.environ["E2E_SENT_PNG"], "wb") as f:
                f.write(m3gate.image_to_png(Decoded().run()[0][0]))
        ex.server.sent = []
        extra = run.get("extra_data") or {}
        r = ex.run(run["prompt"], extra, client_id=run.get("client_id", "client-1"))
        saved = {nid: executor.saved(r, nid) for nid in r.ui if (r.ui[nid] or {}).get("images")}

        def plain(v):
            if isinstance(v, float) and math.isnan(v):
                return None
            return None if v is None or isinstance(v, torch.Tensor) or type(v).__name__ == "ExecutionBlocker" else v

        out.append({
            "outputs": {nid: [plain(v) for v in vals] for nid, vals in r.outputs.items() if nid in ("10", "11", "12")},
            "ui": {nid: ui.get("text") for nid, ui in r.ui.items() if isinstance(ui, dict) and ui.get("text")},
            "saved": saved, "ran": r.ran, "cached": r.cached, "order": r.order,
            "events": [[event, data, sid] for event, data, sid in ex.server.sent],
            "extra_pnginfo": extra.get("extra_pnginfo"),
        })
    json.dump(out, sys.stdout, ensure_ascii=False)


main()
