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
  M3GATE_WORKFLOW   testdata/workflow-api.json, run by testdata/executor.py
  M3GATE_OUT        ComfyUI's output folder (folder_paths stub)
  M3GATE_REPORT     where to write what the graph tests saw, for the Go side
"""

import importlib.util
import json
import math
import os
import sys
import unittest

import torch
from PIL.PngImagePlugin import iTXt

import server
from comfy_execution.graph import ExecutionBlocker

import executor

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


batch = executor.batch


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

    def test_blank_prompt_refusal_names_the_field(self):
        # A linked STRING of spaces passes the pack's own check; the daemon
        # refuses it with 400 and the node shows the daemon's words.
        with self.assertRaisesRegex(RuntimeError, "answered 400 .*prompt is empty: correspondence needs"):
            pack.M3Score().score(batch(0.5), prompt="   ", quality=True, correspondence=True)

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
        passed, rejected, n_pass, n_rej, passed_scores, rejected_scores = out["result"]
        self.assertEqual(tuple(passed.shape), (2, 8, 6, 3))
        self.assertIsInstance(rejected, ExecutionBlocker)
        self.assertIsNone(rejected.message)
        self.assertIsInstance(rejected_scores, ExecutionBlocker)
        self.assertEqual((n_pass, n_rej), (2, 0))
        self.assertEqual([s["source_index"] for s in json.loads(passed_scores)], [0, 1])
        for s in json.loads(passed_scores):
            self.assertIs(s["passed"], True)
            self.assertEqual(s["gate"], {"mode": "all", "thresholds": {"quality": 3.0}})

    def test_none_pass_blocks_passed_and_its_scores(self):
        images = batch(0.1, 0.2)
        out = pack.M3Gate().gate(images, "all", 3.0, 0.0, 0.0, scores=self.scores(0.1, 0.2))
        passed, rejected, n_pass, n_rej, passed_scores, rejected_scores = out["result"]
        self.assertIsInstance(passed, ExecutionBlocker)
        self.assertIsInstance(passed_scores, ExecutionBlocker)
        self.assertTrue(torch.equal(rejected, images))
        self.assertEqual((n_pass, n_rej), (0, 2))
        self.assertEqual([(s["source_index"], s["passed"]) for s in json.loads(rejected_scores)], [(0, False), (1, False)])

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

    def test_reroll_names_the_server_that_ran_the_prompt(self):
        # Two ComfyUI processes: each M3 Reroll sends its own address.
        for address, port in (("127.0.0.1", 8188), ("::1", 8189)):
            self.server.address, self.server.port = address, port
            out = pack.M3Reroll().reroll(0, wanted=1, max_tries=3, seed_nodes="", attempt=1,
                                         api_prompt=api_prompt(), unique_id="12", extra_pnginfo={})
            host = "[::1]" if address == "::1" else address
            self.assertIn("on http://%s:%d" % (host, port), out["ui"]["text"][0])
        # ComfyUI started with --tls-keyfile/--tls-certfile serves https.
        saved = pack.comfy_args
        pack.comfy_args = type("Args", (), {"tls_keyfile": "k.pem", "tls_certfile": "c.pem", "disable_metadata": False})()
        try:
            self.assertEqual(pack.comfyui_url(), "https://[::1]:8189")
        finally:
            pack.comfy_args = saved
        os.environ["M3GATE_COMFYUI_URL"] = "https://comfy.example:443/"
        try:
            out = pack.M3Reroll().reroll(0, 1, 3, "", 1, api_prompt=api_prompt(), unique_id="12")
            self.assertIn("on https://comfy.example:443", out["ui"]["text"][0])
        finally:
            del os.environ["M3GATE_COMFYUI_URL"]

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


REPORT = []  # saved PNGs and what the Python side read, re-checked from Go


def read_meta(test, path):
    """The m3gate chunk of a PNG M3 Save Image wrote, and its brightness."""
    text, bright = executor.png_text(path)
    test.assertIn(pack.PNGINFO_KEY, text, path)
    test.assertIsInstance(text[pack.PNGINFO_KEY], iTXt, "the m3gate chunk must be iTXt (UTF-8)")
    md = json.loads(text[pack.PNGINFO_KEY])
    REPORT.append({"path": path, "brightness": bright, "meta": md})
    return md, text, bright


class GraphTests(Base):
    """Whole graphs through executor.py: cache, output order, hidden inputs
    as a ComfyUI v0.3.64 server handles them."""

    SEED = 18446744073709551615

    def load(self):
        with open(os.environ["M3GATE_WORKFLOW"], encoding="utf-8") as f:
            return json.load(f)

    def executor(self, seed=0, **kw):
        return executor.Executor(executor.classes(pack), seed=seed, **kw)

    def check_scores(self, md, bright, aspects=("quality", "correspondence")):
        """The chunk holds the fake daemon's scores of this very image."""
        want = {"quality": 5 * bright, "correspondence": 5 * (1 - bright)}
        self.assertEqual(sorted(md["scores"]), sorted(aspects))
        for a in aspects:
            self.assertAlmostEqual(md["scores"][a]["mos"], want[a], places=3, msg=a)

    def check_run(self, r, attempt=1, prompt="a red fox in the snow", thresholds=None):
        passed = executor.saved(r, "13")
        rejected = executor.saved(r, "14")
        self.assertEqual((len(passed), len(rejected)), (1, 1))
        for path, ok in ((passed[0], True), (rejected[0], False)):
            md, _, bright = read_meta(self, path)
            self.check_scores(md, bright)
            self.assertIs(md["passed"], ok)
            self.assertEqual(md["gate"], {"mode": "all", "thresholds": thresholds or {"quality": 3.0}})
            self.assertEqual(md["attempt"], attempt)
            self.assertEqual(md["seeds"], {"3": self.SEED})
            self.assertEqual(md["prompt"], prompt)
            self.assertEqual((md["index"], md["batch"], md["node"]), (0, 1, "13" if ok else "14"))
            self.assertEqual(md["source_index"], 1 if ok else 0)
            self.assertAlmostEqual(bright, 0.9 if ok else 0.2, places=2)

    def test_workflow_scores_gates_saves_and_rerolls(self):
        prompt = self.load()
        r = self.executor().run(prompt, {"extra_pnginfo": {"workflow": {"nodes": [], "links": []}}})
        self.assertEqual(r.outputs["11"][2:4], (1, 1))
        self.assertEqual(r.outputs["12"], (1, True))  # 1 of 2 wanted passed: re-queued
        self.assertIn("rerolled-2", r.ui["12"]["text"][0])
        self.assertIn("on http://127.0.0.1:8188", r.ui["12"]["text"][0])
        self.check_run(r)
        md, text, _ = read_meta(self, executor.saved(r, "13")[0])
        self.assertEqual(json.loads(text["prompt"]), prompt)  # SaveImage's chunks too
        self.assertEqual(json.loads(text["workflow"]), {"nodes": [], "links": []})
        self.assertNotIn(pack.REROLL_KEY, text)
        best, _, bright = read_meta(self, executor.saved(r, "16")[0])
        self.check_scores(best, bright)
        self.assertIsNone(best["passed"])  # no gate before Best-of-N
        self.assertEqual(best["source_index"], 1)

    def test_cached_requeue_keeps_per_image_scores(self):
        ex = self.executor()
        prompt = self.load()
        ex.run(prompt, {"extra_pnginfo": {"workflow": {"nodes": []}}})
        # The artist lowers the threshold and queues again (the browser sends
        # a fresh extra_pnginfo): M3 Score and its images are replayed from
        # the cache, the gate and the saves run.
        prompt["11"]["inputs"]["quality_min"] = 0.5
        r = ex.run(prompt, {"extra_pnginfo": {"workflow": {"nodes": []}}})
        self.assertIn("10", r.cached)
        self.assertNotIn("10", r.ran)
        self.assertIn("13", r.ran)
        passed = executor.saved(r, "13")
        self.assertEqual(len(passed), 2)
        brights = []
        for i, path in enumerate(passed):
            md, _, bright = read_meta(self, path)
            self.check_scores(md, bright)
            self.assertIs(md["passed"], True)
            self.assertEqual(md["gate"]["thresholds"], {"quality": 0.5})
            self.assertEqual((md["index"], md["source_index"], md["batch"]), (i, i, 2))
            self.assertEqual((md["attempt"], md["seeds"]), (1, {"3": self.SEED}))
            brights.append(bright)
        self.assertAlmostEqual(brights[0], 0.2, places=2)
        self.assertAlmostEqual(brights[1], 0.9, places=2)
        # What a real server does to a plain SaveImage: M3 Score did not run,
        # so its side effect is missing from the PNG (why M3 Save Image exists).
        self.assertIn("17", r.ran)
        plain, _ = executor.png_text(executor.saved(r, "17")[0])
        self.assertNotIn(pack.PNGINFO_KEY, plain)

    def test_output_order_does_not_matter(self):
        orders = set()
        for seed in range(8):
            prompt = self.load()
            prompt["12"]["inputs"]["attempt"] = 2
            r = self.executor(seed=seed).run(prompt, {"extra_pnginfo": {"workflow": {}}})
            orders.add(tuple(r.order))
            self.check_run(r, attempt=2)
        self.assertGreater(len(orders), 4, "the executor must try several output orders")

    def test_plain_saveimage_depends_on_output_order(self):
        # The unreliable path, as a real server runs it: whether SaveImage
        # (node 17) runs before or after M3 Reroll decides whether its PNG
        # has m3gate_reroll. M3 Save Image's files are right either way.
        with_key = without_key = 0
        for seed in range(8):
            r = self.executor(seed=seed).run(self.load(), {"extra_pnginfo": {"workflow": {}}})
            plain, _ = executor.png_text(executor.saved(r, "17")[0])
            if pack.REROLL_KEY in plain:
                with_key += 1
            else:
                without_key += 1
            self.check_run(r)
        self.assertGreater(with_key, 0)
        self.assertGreater(without_key, 0)

    def test_without_extra_pnginfo(self):
        r = self.executor().run(self.load(), {})  # an API client's /prompt
        self.check_run(r)
        _, text, _ = read_meta(self, executor.saved(r, "13")[0])
        self.assertNotIn("workflow", text)
        self.assertIn("prompt", text)
        self.assertIn("no extra_pnginfo", r.ui["10"]["text"][0])

    def test_batch_of_three_gets_one_score_each(self):
        prompt = self.load()
        prompt["3"]["inputs"]["levels"] = "0.1,0.5,0.9"
        prompt = {k: prompt[k] for k in ("2", "3", "10")}
        prompt["20"] = {"class_type": "M3SaveImage", "inputs": {"images": ["10", 0], "scores": ["10", 4],
                                                                "filename_prefix": "batch/m3gate"}}
        r = self.executor().run(prompt, {})
        paths = executor.saved(r, "20")
        self.assertEqual(len(paths), 3)
        brights = []
        for i, path in enumerate(paths):
            md, _, bright = read_meta(self, path)
            self.check_scores(md, bright)
            self.assertEqual((md["index"], md["source_index"], md["batch"]), (i, i, 3))
            self.assertIsNone(md["passed"])
            brights.append(round(bright, 2))
        self.assertEqual(brights, [0.1, 0.5, 0.9])

    def test_non_ascii_prompt_round_trips(self):
        text = "statue café 雕像"
        prompt = self.load()
        prompt["2"]["inputs"]["text"] = text
        r = self.executor().run(prompt, {"extra_pnginfo": {"workflow": {}}})
        for nid in ("13", "14"):
            path = executor.saved(r, nid)[0]
            md, _, _ = read_meta(self, path)
            self.assertEqual(md["prompt"], text)
            with open(path, "rb") as f:
                raw = f.read()
            self.assertIn(b"iTXtm3gate\0", raw)
            self.assertIn(text.encode("utf-8"), raw)

    def test_disable_metadata_keeps_only_the_scores(self):
        # ComfyUI --disable-metadata: no prompt or workflow chunk, the scores stay.
        saved = pack.comfy_args
        pack.comfy_args = type("Args", (), {"tls_keyfile": None, "tls_certfile": None, "disable_metadata": True})()
        try:
            r = self.executor().run(self.load(), {"extra_pnginfo": {"workflow": {}}})
        finally:
            pack.comfy_args = saved
        md, text, bright = read_meta(self, executor.saved(r, "13")[0])
        self.assertEqual(sorted(text), [pack.PNGINFO_KEY])
        self.check_scores(md, bright)

    def test_save_scores_itself_when_scores_not_linked(self):
        prompt = self.load()
        prompt = {k: prompt[k] for k in ("2", "3")}
        prompt["20"] = {"class_type": "M3SaveImage", "inputs": {"images": ["3", 0], "prompt": ["2", 0],
                                                                "filename_prefix": "self/m3gate"}}
        r = self.executor().run(prompt, {})
        paths = executor.saved(r, "20")
        self.assertEqual(len(paths), 2)
        for path in paths:
            md, _, bright = read_meta(self, path)
            self.check_scores(md, bright)
            self.assertEqual(md["seeds"], {"3": self.SEED})

    def test_reroll_goes_to_the_server_that_ran_the_prompt(self):
        a = self.executor(address="127.0.0.1", port=8188)
        b = self.executor(seed=1, address="0.0.0.0", port=8189)
        rb = b.run(self.load(), {}, client_id="client-b")
        ra = a.run(self.load(), {}, client_id="client-a")
        self.assertIn("on http://0.0.0.0:8189", rb.ui["12"]["text"][0])
        self.assertIn("on http://127.0.0.1:8188", ra.ui["12"]["text"][0])


def tearDownModule():
    if os.environ.get("M3GATE_REPORT"):
        with open(os.environ["M3GATE_REPORT"], "w", encoding="utf-8") as f:
            json.dump(REPORT, f, ensure_ascii=False)


if __name__ == "__main__":
    unittest.main(verbosity=2)
