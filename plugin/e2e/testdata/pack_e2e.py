"""Runs the m3gate node pack's M3 Score -> M3 Gate -> M3 Reroll chain of
pack-api.json the way ComfyUI's executor would, against the real daemon.

Driven by plugin/e2e (TestPackRerollThroughDaemon). Stub server / comfy /
comfy_execution modules come from nodes/testdata/pystubs (PYTHONPATH); torch,
numpy and PIL are real. Environment:
  M3GATE_PACK      the pack folder (nodes/comfyui/m3gate)
  M3GATE_URL       the daemon (read by the pack itself)
  E2E_PROMPT       the API-format prompt that ran (JSON file)
  E2E_IMAGE        the PNG its sampler branch produced (the IMAGE M3 Score gets)
  E2E_CLIENT_ID    the websocket client that queued the prompt
  E2E_ATTEMPT      the attempt this run is (M3 Reroll's attempt input)
  E2E_SENT_PNG     where to write the PNG the pack sends to /v1/score
Prints one JSON object with the nodes' outputs and the events they sent.
"""

import importlib.util
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

import server

PACK = os.environ["M3GATE_PACK"]
spec = importlib.util.spec_from_file_location(
    "m3gate", os.path.join(PACK, "__init__.py"), submodule_search_locations=[PACK])
m3gate = importlib.util.module_from_spec(spec)
sys.modules["m3gate"] = m3gate
spec.loader.exec_module(m3gate)

ps = server.PromptServer()
ps.client_id = os.environ["E2E_CLIENT_ID"]  # set by ComfyUI's executor per prompt

with open(os.environ["E2E_PROMPT"], encoding="utf-8") as f:
    prompt = json.load(f)
attempt = int(os.environ["E2E_ATTEMPT"])
prompt["12"]["inputs"]["attempt"] = attempt
extra_pnginfo = {"workflow": {"last_node_id": 13, "nodes": [], "links": []}}

# LoadImage's conversion: uint8 RGB -> float32 [1,H,W,3] in 0..1.
arr = np.asarray(Image.open(os.environ["E2E_IMAGE"]).convert("RGB")).astype(np.float32) / 255.0
images = torch.from_numpy(arr)[None,]
with open(os.environ["E2E_SENT_PNG"], "wb") as f:
    f.write(m3gate.image_to_png(images[0]))

score_in = prompt["10"]["inputs"]
out = m3gate.M3Score().score(images, quality=score_in["quality"], correspondence=score_in["correspondence"],
                             authenticity=score_in["authenticity"], api_prompt=prompt, unique_id="10",
                             extra_pnginfo=extra_pnginfo)
images_out, quality, _, _, scores = out["result"]

gate_in = prompt["11"]["inputs"]
gate = m3gate.M3Gate().gate(images_out, mode=gate_in["mode"], quality_min=gate_in["quality_min"],
                            correspondence_min=gate_in["correspondence_min"],
                            authenticity_min=gate_in["authenticity_min"], scores=scores, unique_id="11")
passed_count = gate["result"][2]

reroll_in = prompt["12"]["inputs"]
reroll = m3gate.M3Reroll().reroll(passed_count, wanted=reroll_in["wanted"], max_tries=reroll_in["max_tries"],
                                  seed_nodes=reroll_in["seed_nodes"], attempt=attempt, api_prompt=prompt,
                                  unique_id="12", extra_pnginfo=extra_pnginfo)

json.dump({
    "quality": quality,
    "scores": json.loads(scores),
    "passed_count": passed_count,
    "reroll_text": reroll["ui"]["text"][0],
    "reroll_result": list(reroll["result"]),
    "events": [[event, data, sid] for event, data, sid in ps.sent],
    "extra_pnginfo": extra_pnginfo,
}, sys.stdout)
