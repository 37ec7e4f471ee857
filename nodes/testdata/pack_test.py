"""Tests of the m3gate ComfyUI pack, run by nodes/python_test.go.

The pack is loaded the way ComfyUI v0.3.x loads custom_nodes/m3gate, with the
stub server / comfy / comfy_execution modules of testdata/pystubs on
PYTHONPATH and real torch, numpy and PIL. The Go test passes:
  M3GATE_PACK       the pack folder (nodes/comfyui/m3gate)
  M3GATE_URL        a fake m3gate daemon (Go httptest server)
  M3GATE_DOWN_URL   an address where nothing listens
  M3GATE_GOLDEN     schemas/nodes/object_info.json
  M3GATE_COMPACT    the Go rendering of GET /object_info (Python separators)
  M3GATE_FUNCTIONS  JSON {class: FUNCTION} from the Go registry
  M3GATE_ASPECTS    JSON list of the registry's aspects
  M3GATE_WORKFLOW   testdata/workflow-api.json, run by a small executor
  M3GATE_OUT        where the executor's save node writes PNGs
"""

import importlib.util
import json
import math
import os
import sys
import unittest

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import server
from comfy_execution.graph import ExecutionBlocker

PACK = os.environ["M3GATE_PACK"]
URL = os.environ["M3GATE_URL"]


def load_pack():
    """Import the pack as ComfyUI's load_custom_node does."""
    spec = importlib.util.spec_from_file_location(
        "m3gate", os.path.join(PACK, "__init__.py"), submodule_search_locations=[PACK])
    module = importlib.util.module_from_spec(spec)
    sys.modules["m3gate"] = module
    spec.loader.exec_module(module)
    for cls in module.NODE_CLASS_MAPPINGS.values():
        cls.RELATIVE_PYTHON_MODULE = "custom_nodes.m3gate"
    return module


def node_info(module, node_class):
    """server.py node_info of ComfyUI v0.3.64, line for line in effect."""
    obj_class = module.NODE_CLASS_MAPPINGS[node_class]
    info = {}
    info['input'] = obj_class.INPUT_TYPES()
    info['input_order'] = {key: list(value.keys()) for (key, value) in obj_class.INPUT_TYPES().items()}
    info['output'] = obj_class.RETURN_TYPES
    info['output_is_list'] = obj_class.OUTPUT_IS_LIST if hasattr(obj_class, 'OUTPUT_IS_LIST') else [False] * len(obj_class.RETURN_TYPES)
    info['output_name'] = obj_class.RETURN_NAMES if hasattr(obj_class, 'RETURN_NAMES') else info['output']
    info['name'] = node_class
    names = module.NODE_DISPLAY_NAME_MAPPINGS
    info['display_name'] = names[node_class] if node_class in names.keys() else node_class
    info['description'] = obj_class.DESCRIPTION if hasattr(obj_class, 'DESCRIPTION') else ''
    info['python_module'] = getattr(obj_class, "RELATIVE_PYTHON_MODULE", "nodes")
    info['category'] = 'sd'
    if hasattr(obj_class, 'OUTPUT_NODE') and obj_class.OUTPUT_NODE is True:
        info['output_node'] = True
    else:
        info['output_node'] = False
    if hasattr(obj_class, 'CATEGORY'):
        info['category'] = obj_class.CATEGORY
    if hasattr(obj_class, 'OUTPUT_TOOLTIPS'):
        info['output_tooltips'] = obj_class.OUTPUT_TOOLTIPS
    if getattr(obj_class, "DEPRECATED", False):
        info['deprecated'] = True
    if getattr(obj_class, "EXPERIMENTAL", False):
        info['experimental'] = True
    return info


pack = load_pack()


def batch(*levels, h=8, w=6):
    """An IMAGE batch whose image i is filled with grey level levels[i]."""
    return torch.stack([torch.full((h, w, 3), float(v)) for v in levels])


def api_prompt(attempt=1):
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": 18446744073709551615, "steps": 20}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0]}},
        "10": {"class_type": "M3Score", "inputs": {"images": ["8", 0], "quality": True}},
        "11": {"class_type": "M3Gate", "inputs": {"images": ["10", 0], "scores": ["10", 4]}},
        "12": {"class_type": "M3Reroll", "inputs": {"passed_count": ["11", 2], "attempt": attempt}},
    }


class Base(unittest.TestCase):
    def setUp(self):
        os.environ["M3GATE_URL"] = URL
        self.server = server.PromptServer()
        self.server.client_id = "client-1"

    def events(self, name):
        return [(d, sid) for (e, d, sid) in self.server.sent if e == name]


class SchemaTests(Base):
    def test_mappings_cover_the_registry(self):
        with open(os.environ["M3GATE_GOLDEN"], encoding="utf-8") as f:
            golden = json.load(f)
        self.assertEqual(sorted(pack.NODE_CLASS_MAPPINGS), sorted(golden))
        for name, cls in pack.NODE_CLASS_MAPPINGS.items():
            self.assertEqual(pack.NODE_DISPLAY_NAME_MAPPINGS[name], golden[name]["display_name"])
            self.assertTrue(callable(getattr(cls(), cls.FUNCTION)), name)

    def test_functions_match_the_registry(self):
        want = json.loads(os.environ["M3GATE_FUNCTIONS"])
        got = {name: cls.FUNCTION for name, cls in pack.NODE_CLASS_MAPPINGS.items()}
        self.assertEqual(got, want)

    def test_aspects_match_the_registry(self):
        self.assertEqual(list(pack.ASPECTS), json.loads(os.environ["M3GATE_ASPECTS"]))

    def test_object_info_equals_golden_file(self):
        infos = {name: node_info(pack, name) for name in sorted(pack.NODE_CLASS_MAPPINGS)}
        with open(os.environ["M3GATE_GOLDEN"], encoding="utf-8") as f:
            golden = f.read()
        self.assertEqual(json.dumps(infos, indent=2) + "\n", golden)
        with open(os.environ["M3GATE_COMPACT"], encoding="utf-8") as f:
            compact = f.read()
        # aiohttp's json_response is json.dumps with default separators.
        self.assertEqual(json.dumps(infos), compact)

    def test_input_types_are_tuples_like_comfy_nodes(self):
        for name, cls in pack.NODE_CLASS_MAPPINGS.items():
            types = cls.INPUT_TYPES()
            self.assertIn("required", types, name)
            for group, inputs in types.items():
                for key, spec in inputs.items():
                    if group == "hidden":
                        self.assertIsInstance(spec, str, (name, key))
                    else:
                        self.assertIsInstance(spec, tuple, (name, key))
            self.assertIsInstance(cls.RETURN_TYPES, tuple)
            self.assertEqual(len(cls.RETURN_TYPES), len(cls.RETURN_NAMES))
            # INPUT_TYPES hands out a fresh dict each call, as ComfyUI expects.
            cls.INPUT_TYPES()["required"].clear()
            self.assertTrue(cls.INPUT_TYPES()["required"])


class ScoreTests(Base):
    def test_score_fills_outputs_ui_and_pnginfo(self):
        images = batch(0.2, 1.0)
        pnginfo = {"workflow": {"nodes": []}}
        out = pack.M3Score().score(images, quality=True, correspondence=True, authenticity=False,
                                   prompt="a red fox", api_prompt=api_prompt(attempt=2),
                                   unique_id="10", extra_pnginfo=pnginfo)
        res = out["result"]
        self.assertEqual(len(res), len(pack.M3Score.RETURN_TYPES))
        self.assertIs(res[0], images)
        # The fake daemon scores quality 5*brightness, correspondence 5*(1-brightness).
        self.assertAlmostEqual(res[1], (1.0 + 5.0) / 2, places=3)
        self.assertAlmostEqual(res[2], (4.0 + 0.0) / 2, places=3)
        self.assertTrue(math.isnan(res[3]), "authenticity was not asked for")
        per_image = json.loads(res[4])
        self.assertEqual([r["index"] for r in per_image], [0, 1])
        self.assertAlmostEqual(per_image[0]["aspects"]["quality"]["mos"], 1.0, places=3)
        self.assertEqual(per_image[1]["aspects"]["quality"]["rating"], "excellent")
        self.assertEqual(per_image[0]["attempt"], 2)
        self.assertNotIn("authenticity", per_image[0]["aspects"])
        # Scores land in extra_pnginfo, which SaveImage writes as PNG text chunks.
        self.assertIn("workflow", pnginfo)
        meta = pnginfo["m3gate"]
        self.assertEqual(meta["attempt"], 2)
        self.assertEqual(meta["node"], "10")
        self.assertEqual(meta["aspects"], ["quality", "correspondence"])
        self.assertAlmostEqual(meta["images"][1]["aspects"]["quality"]["mos"], 5.0, places=3)
        json.dumps(pnginfo, allow_nan=False)  # SaveImage json.dumps it: no NaN inside
        text = out["ui"]["text"]
        self.assertEqual(len(text), 1)
        self.assertIn("quality 3.00", text[0])
        ev = self.events("m3gate.scores")
        self.assertEqual(len(ev), 1)
        self.assertEqual(ev[0][1], "client-1")
        self.assertEqual(ev[0][0]["attempt"], 2)

    def test_prompt_comes_from_the_graph_when_not_linked(self):
        p = api_prompt()
        p["3"]["inputs"]["positive"] = ["6", 0]
        p["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "graph prompt", "clip": ["4", 1]}}
        pnginfo = {}
        pack.M3Score().score(batch(0.5), quality=True, correspondence=True, authenticity=False,
                             api_prompt=p, unique_id="10", extra_pnginfo=pnginfo)
        self.assertEqual(pnginfo["m3gate"]["prompt"], "graph prompt")

    def test_correspondence_without_any_prompt_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "link a STRING to prompt or turn correspondence off"):
            pack.M3Score().score(batch(0.5), quality=True, correspondence=True, api_prompt=api_prompt())
        # quality alone needs no prompt
        out = pack.M3Score().score(batch(0.5), quality=True, correspondence=False, api_prompt=api_prompt())
        self.assertAlmostEqual(out["result"][1], 5 * 127 / 255, places=3)

    def test_score_without_aspects_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "at least one aspect"):
            pack.M3Score().score(batch(0.5), quality=False, correspondence=False, authenticity=False)

    def test_per_image_daemon_error_is_reported(self):
        out = pack.M3Score().score(batch(0.2, 0.4), prompt="image-error")
        per_image = json.loads(out["result"][4])
        self.assertEqual(per_image[1]["error"], "model failed on image 1")
        self.assertAlmostEqual(out["result"][1], 1.0, places=3)  # mean of the good image only
        self.assertIn("#1 error: model failed on image 1", out["ui"]["text"][0])

    def test_bad_image_tensor_names_the_shape(self):
        with self.assertRaisesRegex(ValueError, r"\[B,H,W,C\], got \(8, 6\)"):
            pack.M3Score().score(torch.zeros(8, 6))

    def test_daemon_down_says_how_to_start_it(self):
        os.environ["M3GATE_URL"] = os.environ["M3GATE_DOWN_URL"]
        with self.assertRaises(RuntimeError) as ctx:
            pack.M3Score().score(batch(0.5), prompt="x")
        msg = str(ctx.exception)
        self.assertIn("start the daemon with: m3gate serve", msg)
        self.assertIn(os.environ["M3GATE_DOWN_URL"], msg)

    def test_daemon_refusal_carries_its_error(self):
        with self.assertRaisesRegex(RuntimeError, "answered 503 .*sidecar is not ready"):
            pack.M3Score().score(batch(0.5), prompt="daemon-error")


class GateTests(Base):
    def scores(self, *levels):
        out = pack.M3Score().score(batch(*levels), prompt="p", quality=True, correspondence=True)
        return out["result"][4]

    def test_all_pass_blocks_the_rejected_side(self):
        images = batch(0.7, 0.9)
        out = pack.M3Gate().gate(images, mode="all", quality_min=3.0, correspondence_min=0.0,
                                 authenticity_min=0.0, scores=self.scores(0.7, 0.9))
        passed, rejected, n_pass, n_rej, passed_scores = out["result"]
        self.assertEqual(tuple(passed.shape), (2, 8, 6, 3))
        self.assertIsInstance(rejected, ExecutionBlocker)
        self.assertIsNone(rejected.message)
        self.assertEqual((n_pass, n_rej), (2, 0))
        self.assertEqual([s["source_index"] for s in json.loads(passed_scores)], [0, 1])

    def test_none_pass_blocks_passed_and_its_scores(self):
        images = batch(0.1, 0.2)
        out = pack.M3Gate().gate(images, "all", 3.0, 0.0, 0.0, scores=self.scores(0.1, 0.2))
        passed, rejected, n_pass, n_rej, passed_scores = out["result"]
        self.assertIsInstance(passed, ExecutionBlocker)
        self.assertIsInstance(passed_scores, ExecutionBlocker)
        self.assertTrue(torch.equal(rejected, images))
        self.assertEqual((n_pass, n_rej), (0, 2))

    def test_mode_all_and_any_split_differently(self):
        images = batch(0.3, 0.7, 0.9)
        scores = self.scores(0.3, 0.7, 0.9)  # quality 1.5, 3.5, 4.5; correspondence 3.5, 1.5, 0.5
        out_all = pack.M3Gate().gate(images, "all", 3.0, 1.0, 0.0, scores=scores)
        out_any = pack.M3Gate().gate(images, "any", 3.0, 3.0, 0.0, scores=scores)
        self.assertEqual(out_all["result"][2:4], (1, 2))  # only 0.7: q 3.5, c 1.5
        self.assertTrue(torch.equal(out_all["result"][0], images[1:2]))
        self.assertEqual(out_any["result"][2:4], (3, 0))
        self.assertTrue(torch.equal(out_all["result"][1], images[[0, 2]]))

    def test_gate_scores_itself_when_scores_not_linked(self):
        images = batch(0.9, 0.1)
        out = pack.M3Gate().gate(images, "all", 3.0, 0.0, 0.0, prompt="p")
        self.assertEqual(out["result"][2:4], (1, 1))
        self.assertTrue(torch.equal(out["result"][0], images[0:1]))

    def test_correspondence_threshold_needs_a_prompt(self):
        with self.assertRaisesRegex(ValueError, "M3 Gate: correspondence is judged against the text prompt"):
            pack.M3Gate().gate(batch(0.5), "all", 0.0, 3.0, 0.0)

    def test_threshold_on_unscored_aspect_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "no authenticity"):
            pack.M3Gate().gate(batch(0.5), "all", 0.0, 0.0, 2.0, scores=self.scores(0.5))

    def test_scores_of_another_batch_size_are_an_error(self):
        with self.assertRaisesRegex(ValueError, "describe 1 images but the batch has 2"):
            pack.M3Gate().gate(batch(0.5, 0.6), "all", 3.0, 0.0, 0.0, scores=self.scores(0.5))


class RerollTests(Base):
    def test_too_few_passed_requeues_with_attempt(self):
        pnginfo = {}
        out = pack.M3Reroll().reroll(0, wanted=2, max_tries=3, seed_nodes="3", attempt=1,
                                     api_prompt=api_prompt(), unique_id="12", extra_pnginfo=pnginfo)
        self.assertEqual(out["result"], (1, True))
        self.assertIn("re-queued attempt 2 of 3", out["ui"]["text"][0])
        self.assertIn("rerolled-2", out["ui"]["text"][0])
        self.assertEqual(pnginfo["m3gate_reroll"]["attempt"], 1)
        ev = self.events("m3gate.reroll")
        self.assertEqual(ev[-1][0]["prompt_id"], "rerolled-2")

    def test_enough_passed_does_not_requeue(self):
        out = pack.M3Reroll().reroll(2, wanted=2, max_tries=3, seed_nodes="", attempt=1,
                                     api_prompt=api_prompt(), unique_id="12", extra_pnginfo={})
        self.assertEqual(out["result"], (1, False))
        self.assertIn("accepted", out["ui"]["text"][0])

    def test_stops_at_max_tries(self):
        os.environ["M3GATE_URL"] = os.environ["M3GATE_DOWN_URL"]  # a call would fail
        out = pack.M3Reroll().reroll(0, wanted=1, max_tries=3, seed_nodes="", attempt=3,
                                     api_prompt=api_prompt(attempt=3), unique_id="12", extra_pnginfo={})
        self.assertEqual(out["result"], (3, False))
        self.assertIn("gave up", out["ui"]["text"][0])

    def test_unknown_seed_node_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "seed node 99 is not in the prompt"):
            pack.M3Reroll().reroll(0, 1, 3, "3, 99", 1, api_prompt=api_prompt(), unique_id="12")

    def test_prompt_without_seeds_is_an_error(self):
        p = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}}
        with self.assertRaisesRegex(ValueError, "no seed or noise_seed input"):
            pack.M3Reroll().reroll(0, 1, 3, "", 1, api_prompt=p, unique_id="12")

    def test_daemon_down_says_how_to_start_it(self):
        os.environ["M3GATE_URL"] = os.environ["M3GATE_DOWN_URL"]
        with self.assertRaisesRegex(RuntimeError, "start the daemon with: m3gate serve"):
            pack.M3Reroll().reroll(0, 1, 3, "", 1, api_prompt=api_prompt(), unique_id="12")


class BestOfNTests(Base):
    def test_keeps_top_k_by_weighted_score(self):
        images = batch(0.2, 0.9, 0.6)
        out = pack.M3BestOfN().best_of_n(images, top_k=2, quality_weight=1.0, correspondence_weight=0.0,
                                         authenticity_weight=0.0, prompt="p")
        kept, scores, best = out["result"]
        self.assertTrue(torch.equal(kept, images[[1, 2]]))
        self.assertAlmostEqual(best, 5 * 229 / 255, places=3)
        self.assertEqual([s["source_index"] for s in json.loads(scores)], [1, 2])

    def test_weights_change_the_winner(self):
        images = batch(0.2, 0.9, 0.6)
        out = pack.M3BestOfN().best_of_n(images, 1, 0.0, 1.0, 0.0, prompt="p")
        self.assertTrue(torch.equal(out["result"][0], images[0:1]))  # correspondence 5*(1-b)

    def test_ties_keep_batch_order_and_errors_drop_out(self):
        images = batch(0.1, 0.2, 0.3)
        scores = json.dumps([
            {"index": 0, "error": "model failed", "aspects": {}},
            {"index": 1, "error": "", "aspects": {"quality": {"mos": 2.0}, "correspondence": {"mos": 3.0}}},
            {"index": 2, "error": "", "aspects": {"quality": {"mos": 3.0}, "correspondence": {"mos": 2.0}}},
        ])
        out = pack.M3BestOfN().best_of_n(images, 3, 1.0, 1.0, 0.0, scores=scores)
        kept, kept_scores, best = out["result"]
        self.assertTrue(torch.equal(kept, images[[1, 2]]))
        self.assertEqual(best, 2.5)
        self.assertEqual([s["weighted_score"] for s in json.loads(kept_scores)], [2.5, 2.5])

    def test_all_weights_zero_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "at least one aspect weight"):
            pack.M3BestOfN().best_of_n(batch(0.5), 1, 0.0, 0.0, 0.0)


class TestImages:
    """Test source node: a batch of grey images, levels "0.2,0.9"."""
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    def run(self, levels):
        return (batch(*[float(x) for x in levels.split(",")]),)


class TestText:
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    def run(self, text):
        return (text,)


class TestSave:
    """Writes PNGs the way ComfyUI's SaveImage does, metadata included."""
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING",)},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save(self, images, filename_prefix, prompt=None, extra_pnginfo=None):
        for i, image in enumerate(images):
            img = Image.fromarray(np.clip(255. * image.cpu().numpy(), 0, 255).astype(np.uint8))
            metadata = PngInfo()
            if prompt is not None:
                metadata.add_text("prompt", json.dumps(prompt))
            if extra_pnginfo is not None:
                for x in extra_pnginfo:
                    metadata.add_text(x, json.dumps(extra_pnginfo[x]))
            img.save(os.path.join(os.environ["M3GATE_OUT"], "%s_%05d_.png" % (filename_prefix, i)),
                     pnginfo=metadata, compress_level=4)
        return {"ui": {"images": [{"filename": filename_prefix}]}}


def run_prompt(prompt, extra_pnginfo):
    """Execute an API prompt with ComfyUI's semantics for what the pack uses:
    links resolve to upstream outputs, hidden inputs are filled, a node with
    an ExecutionBlocker input does not run and blocks its outputs, only
    output nodes and what they need run. Returns (outputs, ui, ran)."""
    classes = dict(pack.NODE_CLASS_MAPPINGS, TestImages=TestImages, TestText=TestText, TestSave=TestSave)
    outputs, ui, ran = {}, {}, []

    def execute(nid):
        if nid in outputs:
            return outputs[nid]
        node = prompt[nid]
        cls = classes[node["class_type"]]
        kwargs = {}
        for name, v in node["inputs"].items():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                val = execute(v[0])[v[1]]
                if isinstance(val, ExecutionBlocker):
                    outputs[nid] = tuple(val for _ in cls.RETURN_TYPES)
                    return outputs[nid]
                kwargs[name] = val
            else:
                kwargs[name] = v
        hidden = cls.INPUT_TYPES().get("hidden", {}) if hasattr(cls, "INPUT_TYPES") else {}
        for name, kind in hidden.items():
            kwargs[name] = {"PROMPT": prompt, "UNIQUE_ID": nid, "EXTRA_PNGINFO": extra_pnginfo}[kind]
        res = getattr(cls(), cls.FUNCTION)(**kwargs)
        ran.append(nid)
        if isinstance(res, dict):
            ui[nid] = res.get("ui")
            res = res.get("result", ())
        outputs[nid] = tuple(res)
        return outputs[nid]

    for nid in sorted(prompt, key=int):
        if getattr(classes.get(prompt[nid]["class_type"]), "OUTPUT_NODE", False):
            execute(nid)
    return outputs, ui, ran


class WorkflowTests(Base):
    def load(self):
        with open(os.environ["M3GATE_WORKFLOW"], encoding="utf-8") as f:
            return json.load(f)

    def test_workflow_scores_gates_saves_and_rerolls(self):
        prompt = self.load()
        extra = {"workflow": {"nodes": [], "links": []}}
        outputs, ui, ran = run_prompt(prompt, extra)
        self.assertEqual(outputs["11"][2:4], (1, 1))
        self.assertEqual(outputs["12"], (1, True))  # 1 of 2 wanted passed: re-queued
        self.assertIn("rerolled-2", ui["12"]["text"][0])
        out = os.environ["M3GATE_OUT"]
        for name in ("passed_00000_.png", "rejected_00000_.png", "best_00000_.png"):
            self.assertTrue(os.path.exists(os.path.join(out, name)), name)
        self.assertNotIn("3", ran)  # the sampler is only a seed holder here
        self.assertEqual(extra[pack.PNGINFO_KEY]["attempt"], 1)

    def test_nothing_passes_blocks_the_passed_save(self):
        prompt = self.load()
        prompt["1"]["inputs"]["levels"] = "0.1,0.2"
        for n in ("13", "14", "16"):
            prompt[n]["inputs"]["filename_prefix"] = "allfail_" + prompt[n]["inputs"]["filename_prefix"]
        prompt["12"]["inputs"]["attempt"] = 2
        outputs, ui, ran = run_prompt(prompt, {})
        self.assertNotIn("13", ran)  # blocked, not run on an empty batch
        self.assertIn("14", ran)
        self.assertIsInstance(outputs["11"][0], ExecutionBlocker)
        self.assertEqual(outputs["12"], (2, True))
        out = os.environ["M3GATE_OUT"]
        self.assertFalse(os.path.exists(os.path.join(out, "allfail_passed_00000_.png")))
        self.assertTrue(os.path.exists(os.path.join(out, "allfail_rejected_00001_.png")))


if __name__ == "__main__":
    unittest.main(verbosity=2)
