"""A small executor with ComfyUI v0.3.64's semantics where the m3gate pack
depends on them, and the test nodes the pack tests build graphs from.

What it does like ComfyUI's execution.py / comfy_execution/caching.py:
- Output nodes (OUTPUT_NODE = True) are the roots; ComfyUI collects them in
  a set, so their order changes from process to process: here it is a
  shuffle seeded by the Executor's seed. Dependencies run first, in a
  shuffled order too.
- Every node's outputs are cached under a signature of its class, its
  IS_CHANGED answer, its literal inputs and the signatures of the nodes it
  links to (and its own id when it takes UNIQUE_ID or is NOT_IDEMPOTENT).
  A node whose signature is in the cache is not run: its outputs, and for
  an output node its ui, are replayed without side effects. As with the
  classic cache, the cache keeps the nodes of the last prompt.
- Hidden inputs: PROMPT is the prompt, UNIQUE_ID the node id, EXTRA_PNGINFO
  the prompt's extra_data["extra_pnginfo"] (None when the client sent
  none), one dict shared by all nodes of a prompt.
- An input that receives an ExecutionBlocker blocks the node: it does not
  run and all its outputs are blockers.
- PromptServer.instance.client_id is the client that queued the prompt.
"""

import json
import math
import os
import random

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import folder_paths
import server
from comfy_execution.graph import ExecutionBlocker


def _is_link(v):
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


class Result:
    def __init__(self):
        self.outputs, self.ui, self.ran, self.cached, self.order = {}, {}, [], [], []


class Executor:
    """One ComfyUI server process: a cache that lives across prompts and a
    seeded order of output nodes."""

    def __init__(self, classes, seed=0, address="127.0.0.1", port=8188):
        self.classes = classes
        self.rng = random.Random(seed)
        self.cache = {}  # signature -> (outputs, ui)
        self.server = server.PromptServer()
        self.server.address, self.server.port = address, port

    def activate(self):
        """Make this process's PromptServer the current one (ComfyUI has one
        per process; tests that run two servers switch between them)."""
        server.PromptServer.instance = self.server

    def signature(self, prompt, nid, memo):
        if nid in memo:
            return memo[nid]
        node = prompt[nid]
        cls = self.classes[node["class_type"]]
        inputs = node.get("inputs") or {}
        changed = None
        if hasattr(cls, "IS_CHANGED"):
            literal = {k: v for k, v in inputs.items() if not _is_link(v)}
            changed = cls.IS_CHANGED(**literal)
            if isinstance(changed, float) and math.isnan(changed):
                changed = ("never equal", self.rng.random())
        sig = [node["class_type"], repr(changed)]
        hidden = cls.INPUT_TYPES().get("hidden", {}) if hasattr(cls, "INPUT_TYPES") else {}
        if getattr(cls, "NOT_IDEMPOTENT", False) or "UNIQUE_ID" in hidden.values():
            sig.append(("id", nid))
        for k in sorted(inputs):
            v = inputs[k]
            if _is_link(v):
                sig.append((k, "link", self.signature(prompt, v[0], memo), v[1]))
            else:
                sig.append((k, json.dumps(v, sort_keys=True)))
        memo[nid] = repr(sig)
        return memo[nid]

    def run(self, prompt, extra_data=None, client_id="client-1"):
        """Execute an API-format prompt; returns a Result."""
        self.activate()
        self.server.client_id = client_id
        extra_pnginfo = (extra_data or {}).get("extra_pnginfo")
        res, memo, new_cache = Result(), {}, {}

        def execute(nid):
            if nid in res.outputs:
                return res.outputs[nid]
            node = prompt[nid]
            cls = self.classes[node["class_type"]]
            inputs = node.get("inputs") or {}
            names = list(inputs)
            self.rng.shuffle(names)
            for name in names:  # dependencies first, in no fixed order
                if _is_link(inputs[name]):
                    execute(inputs[name][0])
            sig = self.signature(prompt, nid, memo)
            if sig in self.cache:
                res.outputs[nid], ui = self.cache[sig]
                if ui is not None:
                    res.ui[nid] = ui
                res.cached.append(nid)
                new_cache[sig] = self.cache[sig]
                return res.outputs[nid]
            kwargs = {}
            for name, v in inputs.items():
                if _is_link(v):
                    val = res.outputs[v[0]][v[1]]
                    if isinstance(val, ExecutionBlocker):
                        res.outputs[nid] = tuple(val for _ in cls.RETURN_TYPES)
                        return res.outputs[nid]
                    kwargs[name] = val
                else:
                    kwargs[name] = v
            hidden = cls.INPUT_TYPES().get("hidden", {}) if hasattr(cls, "INPUT_TYPES") else {}
            for name, kind in hidden.items():
                kwargs[name] = {"PROMPT": prompt, "UNIQUE_ID": nid, "EXTRA_PNGINFO": extra_pnginfo}[kind]
            out = getattr(cls(), cls.FUNCTION)(**kwargs)
            res.ran.append(nid)
            ui = None
            if isinstance(out, dict):
                ui = out.get("ui")
                out = out.get("result", ())
            res.outputs[nid] = tuple(out)
            if ui is not None:
                res.ui[nid] = ui
            new_cache[sig] = (res.outputs[nid], ui)
            return res.outputs[nid]

        roots = [nid for nid in prompt if getattr(self.classes.get(prompt[nid]["class_type"]), "OUTPUT_NODE", False)]
        self.rng.shuffle(roots)
        res.order = roots
        for nid in roots:
            execute(nid)
        self.cache = new_cache
        return res


def batch(*levels, h=8, w=6):
    """An IMAGE batch whose image i is filled with grey level levels[i]."""
    return torch.stack([torch.full((h, w, 3), float(v)) for v in levels])


class TestImages:
    """Test sampler: a batch of grey images, levels "0.2,0.9". Its seed only
    stands for a sampler's: a new seed makes ComfyUI run it (and everything
    after it) again."""
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"levels": ("STRING",), "seed": ("INT",)}}

    def run(self, levels, seed=0):
        return (batch(*[float(x) for x in levels.split(",")]),)


class LoadImageFile:
    """Test loader: a PNG file as LoadImage converts it (float32 RGB 0..1)."""
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING",), "seed": ("INT",)}}

    def run(self, path, seed=0):
        paths = path.split(",")
        arrs = [np.asarray(Image.open(p).convert("RGB")).astype(np.float32) / 255.0 for p in paths]
        return (torch.from_numpy(np.stack(arrs)),)


class TestText:
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING",)}}

    def run(self, text):
        return (text,)


class SaveImage:
    """ComfyUI's SaveImage, line for line in effect: prompt and every
    extra_pnginfo key as PNG text chunks."""
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True

    def __init__(self):
        self.output_dir = folder_paths.get_output_directory()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        full_output_folder, filename, counter, subfolder, filename_prefix = folder_paths.get_save_image_path(
            filename_prefix, self.output_dir, images[0].shape[1], images[0].shape[0])
        results = []
        for batch_number, image in enumerate(images):
            img = Image.fromarray(np.clip(255. * image.cpu().numpy(), 0, 255).astype(np.uint8))
            metadata = PngInfo()
            if prompt is not None:
                metadata.add_text("prompt", json.dumps(prompt))
            if extra_pnginfo is not None:
                for x in extra_pnginfo:
                    metadata.add_text(x, json.dumps(extra_pnginfo[x]))
            file = "%s_%05d_.png" % (filename.replace("%batch_num%", str(batch_number)), counter)
            img.save(os.path.join(full_output_folder, file), pnginfo=metadata, compress_level=4)
            results.append({"filename": file, "subfolder": subfolder, "type": "output"})
            counter += 1
        return {"ui": {"images": results}}


def classes(pack):
    """The pack's node classes and the test nodes, by class_type."""
    return dict(pack.NODE_CLASS_MAPPINGS, TestImages=TestImages, LoadImageFile=LoadImageFile,
                TestText=TestText, SaveImage=SaveImage)


def saved(result, nid):
    """Paths of the files output node nid saved in a run."""
    out = folder_paths.get_output_directory()
    return [os.path.join(out, im["subfolder"], im["filename"]) for im in (result.ui.get(nid) or {}).get("images", [])]


def png_text(path):
    """The PNG's text chunks (PIL's reading) and its mean brightness."""
    im = Image.open(path)
    im.load()
    arr = np.asarray(im.convert("RGB")).astype(np.float64) / 255.0
    return dict(im.text), float(arr.mean())
