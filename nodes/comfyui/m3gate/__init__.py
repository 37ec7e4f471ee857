"""m3gate nodes for ComfyUI: score, gate, reroll, best-of-N and save with M3-AGIQA.

Install by copying or symlinking this folder to ComfyUI/custom_nodes/m3gate.
The nodes are thin: they forward images to the m3gate daemon over HTTP
(address from the environment variable M3GATE_URL, default
http://127.0.0.1:8190; bearer token from M3GATE_DAEMON_TOKEN when the
daemon requires one) and need nothing beyond what ComfyUI already has.

The node schemas (inputs, outputs, names, tooltips) come from node_defs.json,
which is generated from the Go registry in nodes/ (scripts/gen-nodes.sh) and
is byte-for-byte the object_info the pack makes ComfyUI serve. Do not edit it
by hand.
"""

import base64
import io
import json
import math
import os
import socket
import urllib.error
import urllib.request

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import folder_paths

try:
    from comfy_execution.graph import ExecutionBlocker
except ImportError:  # older layouts keep it in graph_utils only
    from comfy_execution.graph_utils import ExecutionBlocker

try:
    from server import PromptServer
except ImportError:  # imported outside ComfyUI: no websocket events
    PromptServer = None

try:
    from comfy.cli_args import args as comfy_args
except ImportError:  # imported outside ComfyUI: default options
    comfy_args = None

_HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_HERE, "node_defs.json"), encoding="utf-8") as _f:
    NODE_DEFS = json.load(_f)

ASPECTS = ("quality", "correspondence", "authenticity")
DEFAULT_URL = "http://127.0.0.1:8190"
START_HINT = "start the daemon with: m3gate serve"
PNGINFO_KEY = "m3gate"
REROLL_KEY = "m3gate_reroll"
SEED_INPUTS = ("seed", "noise_seed")
LINKED_SEED_INPUTS = ("seed", "noise_seed", "value")
SCORE_FIELDS = ("mos", "rating", "word_probs", "description", "source")  # nodes.AspectScore


class DaemonError(RuntimeError):
    """The m3gate daemon could not be reached or refused a request."""


def daemon_url():
    """Base URL of the m3gate daemon, read at call time from M3GATE_URL."""
    return (os.environ.get("M3GATE_URL") or DEFAULT_URL).rstrip("/")


def _timeout():
    try:
        return float(os.environ.get("M3GATE_TIMEOUT", "900"))
    except ValueError:
        return 900.0


def _headers():
    """Request headers; the bearer token from M3GATE_DAEMON_TOKEN when set
    (the daemon's daemon.token). The token is never printed."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    token = os.environ.get("M3GATE_DAEMON_TOKEN", "").strip()
    if token:
        headers["Authorization"] = "Bearer " + token
    return headers


def call_daemon(path, body):
    """POST body as JSON to the daemon and return the decoded JSON answer."""
    base = daemon_url()
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode("utf-8"),
        headers=_headers(),
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=_timeout()) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", errors="replace").strip()
        try:
            detail = json.loads(detail).get("error") or detail
        except (ValueError, AttributeError):
            pass
        raise DaemonError(
            "m3gate daemon at %s answered %d to POST %s: %s" % (base, e.code, path, detail)
        ) from None
    except (socket.timeout, TimeoutError):
        raise DaemonError(
            "m3gate daemon at %s did not answer POST %s within %g s (set M3GATE_TIMEOUT to wait longer)"
            % (base, path, _timeout())
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DaemonError(
            "m3gate daemon is not reachable at %s (%s); %s (or set M3GATE_URL to its address)"
            % (base, reason, START_HINT)
        ) from None
    try:
        return json.loads(raw)
    except ValueError:
        raise DaemonError("m3gate daemon at %s sent invalid JSON for POST %s" % (base, path)) from None


def _check_images(images, node):
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError("%s: images must be an IMAGE tensor [B,H,W,C], got %s" % (node, shape))


def image_to_png(image):
    """PNG bytes of one IMAGE [H,W,C] float 0..1, quantised like SaveImage."""
    arr = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def score_images(images, prompt, aspects, node="M3 Score", api_prompt=None):
    """Ask the daemon to score every image; returns one result dict per image.
    With the graph (api_prompt), the request also says the attempt and the
    sampler seed, which the daemon's review page shows."""
    _check_images(images, node)
    if "correspondence" in aspects and not prompt:
        raise ValueError("%s: correspondence is judged against the text prompt; link a STRING to prompt "
                         "(or link scores from M3 Score)" % node)
    body = {
        "images": [{"data": base64.b64encode(image_to_png(img)).decode("ascii")} for img in images],
        "prompt": prompt or "",
        "aspects": list(aspects),
    }
    if isinstance(api_prompt, dict):
        body["attempt"] = attempt_from_prompt(api_prompt)
        seed = seed_from_graph(api_prompt)
        if seed is not None:
            body["seed"] = seed
    answer = call_daemon("/v1/score", body)
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list) or len(results) != images.shape[0]:
        raise DaemonError(
            "m3gate daemon answered /v1/score with %s results for %d images"
            % (len(results) if isinstance(results, list) else "no", images.shape[0])
        )
    out = [None] * len(results)
    for pos, r in enumerate(results):
        idx = r.get("index", pos) if isinstance(r, dict) else pos
        if not isinstance(r, dict) or not isinstance(idx, int) or not 0 <= idx < len(out) or out[idx] is not None:
            raise DaemonError("m3gate daemon answered /v1/score with a bad result at position %d" % pos)
        out[idx] = {"index": idx, "error": r.get("error") or "", "aspects": r.get("aspects") or {}}
    return out


def parse_scores(text, batch, node):
    """Decode the scores STRING of M3 Score for a batch of the given size."""
    try:
        scores = json.loads(text)
    except ValueError as e:
        raise ValueError("%s: scores is not the JSON of M3 Score: %s" % (node, e)) from None
    if not isinstance(scores, list) or not all(isinstance(s, dict) for s in scores):
        raise ValueError("%s: scores must be a JSON list of per-image objects" % node)
    if len(scores) != batch:
        raise ValueError("%s: scores describe %d images but the batch has %d" % (node, len(scores), batch))
    return scores


def _mos(result, aspect):
    a = (result.get("aspects") or {}).get(aspect)
    if isinstance(a, dict) and isinstance(a.get("mos"), (int, float)):
        return float(a["mos"])
    return None


def _need_aspect(results, aspect, node):
    for r in results:
        if not r.get("error") and _mos(r, aspect) is None:
            raise ValueError(
                "%s: the scores have no %s; turn %s on in M3 Score or set its threshold/weight to 0"
                % (node, aspect, aspect)
            )


def attempt_from_prompt(api_prompt):
    """The attempt number of this run: the attempt input of M3 Reroll nodes."""
    best = 1
    if isinstance(api_prompt, dict):
        for n in api_prompt.values():
            if isinstance(n, dict) and n.get("class_type") == "M3Reroll":
                v = (n.get("inputs") or {}).get("attempt")
                if isinstance(v, int) and not isinstance(v, bool) and v > best:
                    best = v
    return best


def seed_from_graph(api_prompt):
    """The literal seed (or noise_seed) of the graph's first sampler by node
    id; None when no node has one."""
    if not isinstance(api_prompt, dict):
        return None

    def key(i):
        return (0, int(i), "") if str(i).isdigit() else (1, 0, str(i))

    for nid in sorted(api_prompt, key=key):
        node = api_prompt[nid]
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
            seed = _literal_seed(node["inputs"], SEED_INPUTS)
            if seed is not None and seed < 2 ** 64:
                return seed
    return None


def prompt_from_graph(api_prompt):
    """The positive prompt text of the graph when no prompt is linked: the
    literal text input of the node that a sampler's positive input links to
    (CLIPTextEncode and the like), first sampler by node id; "" if none."""
    if not isinstance(api_prompt, dict):
        return ""

    def key(i):
        return (0, int(i), "") if str(i).isdigit() else (1, 0, str(i))

    for nid in sorted(api_prompt, key=key):
        node = api_prompt[nid]
        link = ((node or {}).get("inputs") or {}).get("positive") if isinstance(node, dict) else None
        if isinstance(link, list) and len(link) == 2 and link[0] in api_prompt:
            text = ((api_prompt[link[0]] or {}).get("inputs") or {}).get("text")
            if isinstance(text, str) and text.strip():
                return text
    return ""


def _is_link(v):
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def _literal_seed(inputs, names):
    for name in names:
        v = inputs.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
    return None


def seeds_upstream(api_prompt, node_id, input_name="images"):
    """Seeds of the sampler nodes upstream of input_name of node node_id:
    {node id: seed} for every node with a seed or noise_seed input (a seed
    linked to a primitive node is read there)."""
    seeds = {}
    if not isinstance(api_prompt, dict) or node_id is None:
        return seeds
    node = api_prompt.get(str(node_id))
    start = ((node or {}).get("inputs") or {}).get(input_name) if isinstance(node, dict) else None
    stack = [start[0]] if _is_link(start) else []
    seen = set()
    while stack:
        nid = stack.pop()
        if nid in seen or not isinstance(api_prompt.get(nid), dict):
            continue
        seen.add(nid)
        inputs = api_prompt[nid].get("inputs") or {}
        for name in SEED_INPUTS:
            v = inputs.get(name)
            if _is_link(v) and isinstance(api_prompt.get(v[0]), dict):
                s = _literal_seed(api_prompt[v[0]].get("inputs") or {}, LINKED_SEED_INPUTS)
            else:
                s = _literal_seed(inputs, (name,))
            if s is not None:
                seeds[nid] = s
                break
        stack.extend(v[0] for v in inputs.values() if _is_link(v))
    return dict(sorted(seeds.items(), key=lambda kv: (0, int(kv[0]), "") if kv[0].isdigit() else (1, 0, kv[0])))


def comfyui_url():
    """Base URL of the ComfyUI server this pack runs in, for the daemon to
    queue rerolls on: M3GATE_COMFYUI_URL when set (a server behind a proxy),
    else the address and port ComfyUI listens on; "" when unknown."""
    env = os.environ.get("M3GATE_COMFYUI_URL")
    if env:
        return env.rstrip("/")
    server = getattr(PromptServer, "instance", None) if PromptServer is not None else None
    address, port = getattr(server, "address", None), getattr(server, "port", None)
    if not address or not isinstance(port, int):
        return ""
    tls = comfy_args is not None and getattr(comfy_args, "tls_keyfile", None) and getattr(comfy_args, "tls_certfile", None)
    host = "[%s]" % address if ":" in address else address
    return "%s://%s:%d" % ("https" if tls else "http", host, port)


def parse_seed_nodes(text):
    """Node ids from M3 Reroll's seed_nodes text, e.g. "3, 12" -> ["3", "12"]."""
    for sep in ",;":
        text = text.replace(sep, " ")
    return text.split()


def send_event(event, data):
    """Send a custom websocket event to the client that queued the prompt."""
    server = getattr(PromptServer, "instance", None) if PromptServer is not None else None
    if server is None:
        return
    server.send_sync(event, data, getattr(server, "client_id", None))


def _select(images, idx):
    return images.index_select(0, torch.tensor(idx, dtype=torch.long, device=images.device))


def _reindex(results, idx, **extra):
    out = []
    for new, old in enumerate(idx):
        r = dict(results[old])
        r["source_index"] = r.get("index", old)
        r["index"] = new
        for k, v in extra.items():
            r[k] = v[new]
        out.append(r)
    return out


def _fmt(x):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else "%.2f" % x


class _Node:
    """Schema attributes come from node_defs.json, keyed by CLASS."""

    CLASS = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        d = NODE_DEFS[cls.CLASS]
        cls.RETURN_TYPES = tuple(d["output"])
        cls.RETURN_NAMES = tuple(d["output_name"])
        if any(d["output_is_list"]):
            cls.OUTPUT_IS_LIST = tuple(d["output_is_list"])
        if "output_tooltips" in d:
            cls.OUTPUT_TOOLTIPS = tuple(d["output_tooltips"])
        cls.DESCRIPTION = d["description"]
        cls.CATEGORY = d["category"]
        cls.OUTPUT_NODE = bool(d["output_node"])

    @classmethod
    def INPUT_TYPES(cls):
        groups = {}
        for group, inputs in NODE_DEFS[cls.CLASS]["input"].items():
            if group == "hidden":
                groups[group] = dict(inputs)
            else:
                groups[group] = {name: tuple(spec) for name, spec in inputs.items()}
        return groups


class M3Score(_Node):
    CLASS = "M3Score"
    FUNCTION = "score"

    def score(self, images, quality=True, correspondence=True, authenticity=False,
              prompt=None, api_prompt=None, unique_id=None, extra_pnginfo=None):
        _check_images(images, "M3 Score")
        on = {"quality": quality, "correspondence": correspondence, "authenticity": authenticity}
        aspects = [a for a in ASPECTS if on[a]]
        if not aspects:
            raise ValueError("M3 Score: turn on at least one aspect")
        if not prompt:
            prompt = prompt_from_graph(api_prompt)
        if not prompt and "correspondence" in aspects:
            raise ValueError("M3 Score: correspondence is judged against the text prompt, but none was linked "
                             "and no sampler's positive input leads to a text; link a STRING to prompt "
                             "or turn correspondence off")
        results = score_images(images, prompt, aspects, api_prompt=api_prompt)
        attempt = attempt_from_prompt(api_prompt)
        means = {}
        for a in ASPECTS:
            vals = [m for m in (_mos(r, a) for r in results if not r["error"]) if m is not None]
            means[a] = sum(vals) / len(vals) if vals else float("nan")
        seeds = seeds_upstream(api_prompt, unique_id)
        for r in results:
            r["attempt"] = attempt
            r["prompt"] = prompt or ""
            r["seeds"] = seeds
        mean_json = {a: (None if math.isnan(v) else v) for a, v in means.items() if a in aspects}
        # Best effort for a plain SaveImage: ComfyUI writes extra_pnginfo into
        # its PNGs, but only when this node runs before it in the same
        # execution (not when replayed from the cache) and only when the
        # prompt came with extra_pnginfo. M3 Save Image does not depend on it.
        if isinstance(extra_pnginfo, dict):
            extra_pnginfo[PNGINFO_KEY] = {
                "node": None if unique_id is None else str(unique_id),
                "attempt": attempt,
                "prompt": prompt or "",
                "seeds": seeds,
                "aspects": aspects,
                "mean": mean_json,
                "images": [
                    {
                        "index": r["index"],
                        "error": r["error"],
                        "aspects": {
                            a: {"mos": v.get("mos"), "rating": v.get("rating")}
                            for a, v in r["aspects"].items() if isinstance(v, dict)
                        },
                    }
                    for r in results
                ],
            }
        lines = ["attempt %d: " % attempt + ", ".join("%s %s" % (a, _fmt(means[a])) for a in aspects)]
        for r in results:
            if r["error"]:
                lines.append("#%d error: %s" % (r["index"], r["error"]))
            else:
                lines.append("#%d " % r["index"] + ", ".join(
                    "%s %s (%s)" % (a, _fmt(_mos(r, a)), (r["aspects"].get(a) or {}).get("rating", "?"))
                    for a in aspects))
        if not isinstance(extra_pnginfo, dict):
            lines.append("note: this prompt has no extra_pnginfo, so a plain SaveImage stores no scores; "
                         "M3 Save Image does")
        send_event("m3gate.scores", {"node": unique_id, "attempt": attempt, "mean": mean_json,
                                     "results": [{"index": r["index"], "error": r["error"],
                                                  "mos": {a: _mos(r, a) for a in aspects}} for r in results]})
        out = (images,) + tuple(means[a] for a in ASPECTS) + (json.dumps(results),)
        return {"ui": {"text": ["\n".join(lines)]}, "result": out}


class M3Gate(_Node):
    CLASS = "M3Gate"
    FUNCTION = "gate"

    def gate(self, images, mode="all", quality_min=3.0, correspondence_min=0.0, authenticity_min=0.0,
             scores=None, prompt=None, unique_id=None):
        _check_images(images, "M3 Gate")
        if mode not in ("all", "any"):
            raise ValueError("M3 Gate: mode must be all or any, got %r" % (mode,))
        mins = {"quality": quality_min, "correspondence": correspondence_min, "authenticity": authenticity_min}
        thresholds = {a: float(mins[a]) for a in ASPECTS if mins[a] > 0}
        batch = images.shape[0]
        if scores is not None and scores != "":
            results = parse_scores(scores, batch, "M3 Gate")
        elif thresholds and batch > 0:
            results = score_images(images, prompt, list(thresholds), node="M3 Gate")
        else:
            results = [{"index": i, "error": "", "aspects": {}} for i in range(batch)]
        for a in thresholds:
            _need_aspect(results, a, "M3 Gate")

        def passes(r):
            if r.get("error"):
                return False
            if not thresholds:
                return True
            ok = [_mos(r, a) >= t for a, t in thresholds.items()]
            return all(ok) if mode == "all" else any(ok)

        passed = [i for i, r in enumerate(results) if passes(r)]
        rejected = [i for i in range(batch) if i not in set(passed)]
        rule = {"mode": mode, "thresholds": thresholds}
        results = [dict(r, passed=i in set(passed), gate=rule) for i, r in enumerate(results)]
        blocked = ExecutionBlocker(None)  # silent: downstream nodes just do not run
        out_passed = _select(images, passed) if passed else blocked
        out_rejected = _select(images, rejected) if rejected else blocked
        out_scores = json.dumps(_reindex(results, passed)) if passed else blocked
        out_rejected_scores = json.dumps(_reindex(results, rejected)) if rejected else blocked
        rule = (" %s " % ("and" if mode == "all" else "or")).join(
            "%s >= %s" % (a, _fmt(t)) for a, t in thresholds.items()) or "no thresholds"
        text = "passed %d / %d (%s)" % (len(passed), batch, rule)
        send_event("m3gate.gate", {"node": unique_id, "passed": passed, "rejected": rejected})
        return {"ui": {"text": [text]},
                "result": (out_passed, out_rejected, len(passed), len(rejected), out_scores, out_rejected_scores)}


class M3Reroll(_Node):
    CLASS = "M3Reroll"
    FUNCTION = "reroll"

    def reroll(self, passed_count, wanted=1, max_tries=3, seed_nodes="", attempt=1,
               api_prompt=None, unique_id=None, extra_pnginfo=None):
        passed_count, wanted, max_tries, attempt = int(passed_count), int(wanted), int(max_tries), int(attempt)
        if isinstance(extra_pnginfo, dict):  # best effort for a plain SaveImage, see M3Score
            extra_pnginfo[REROLL_KEY] = {"attempt": attempt, "max_tries": max_tries,
                                         "passed": passed_count, "wanted": wanted}
        requeued = False
        answer = None
        if passed_count >= wanted:
            text = "accepted: %d of %d wanted passed on attempt %d" % (passed_count, wanted, attempt)
        elif attempt >= max_tries:
            text = "gave up: %d of %d wanted passed after %d of %d tries" % (passed_count, wanted, attempt, max_tries)
        else:
            if not isinstance(api_prompt, dict) or not api_prompt:
                raise ValueError("M3 Reroll: ComfyUI passed no prompt to re-queue")
            ids = parse_seed_nodes(seed_nodes or "")
            for i in ids:
                if i not in api_prompt:
                    raise ValueError("M3 Reroll: seed node %s is not in the prompt (nodes: %s)"
                                     % (i, ", ".join(sorted(api_prompt))))
            candidates = ids or list(api_prompt)
            if not any(s in ((api_prompt[i] or {}).get("inputs") or {}) for i in candidates for s in SEED_INPUTS):
                where = "nodes " + ", ".join(ids) if ids else "the prompt"
                raise ValueError("M3 Reroll: no seed or noise_seed input in %s; name the sampler nodes in seed_nodes"
                                 % where)
            server = getattr(PromptServer, "instance", None) if PromptServer is not None else None
            body = {
                "prompt": api_prompt,
                "node_id": None if unique_id is None else str(unique_id),
                "seed_nodes": ids,
                "attempt": attempt,
                "max_tries": max_tries,
                "passed": passed_count,
                "wanted": wanted,
                "client_id": getattr(server, "client_id", None) or "",
                "comfyui_url": comfyui_url(),
                "extra_pnginfo": extra_pnginfo if isinstance(extra_pnginfo, dict) else None,
            }
            answer = call_daemon("/v1/reroll", body)
            requeued = True
            text = "re-queued attempt %d of %d (%d of %d wanted passed)" % (
                attempt + 1, max_tries, passed_count, wanted)
            if isinstance(answer, dict) and answer.get("prompt_id"):
                text += " as prompt %s" % answer["prompt_id"]
            if isinstance(answer, dict) and answer.get("server"):
                text += " on %s" % answer["server"]
        send_event("m3gate.reroll", {"node": unique_id, "attempt": attempt, "max_tries": max_tries,
                                     "passed": passed_count, "wanted": wanted, "requeued": requeued,
                                     "prompt_id": answer.get("prompt_id") if isinstance(answer, dict) else None})
        return {"ui": {"text": [text]}, "result": (attempt, requeued)}


class M3BestOfN(_Node):
    CLASS = "M3BestOfN"
    FUNCTION = "best_of_n"

    def best_of_n(self, images, top_k=1, quality_weight=1.0, correspondence_weight=0.0,
                  authenticity_weight=0.0, scores=None, prompt=None, unique_id=None):
        _check_images(images, "M3 Best-of-N")
        w = {"quality": quality_weight, "correspondence": correspondence_weight,
             "authenticity": authenticity_weight}
        weights = {a: float(w[a]) for a in ASPECTS if w[a] > 0}
        if not weights:
            raise ValueError("M3 Best-of-N: set at least one aspect weight above 0")
        batch = images.shape[0]
        if batch == 0:
            raise ValueError("M3 Best-of-N: the batch is empty")
        if scores is not None and scores != "":
            results = parse_scores(scores, batch, "M3 Best-of-N")
        else:
            results = score_images(images, prompt, list(weights), node="M3 Best-of-N")
        for a in weights:
            _need_aspect(results, a, "M3 Best-of-N")
        total = sum(weights.values())
        ranked = []
        for i, r in enumerate(results):
            if r.get("error"):
                continue
            ranked.append((sum(wt * _mos(r, a) for a, wt in weights.items()) / total, i))
        if not ranked:
            errors = "; ".join(str(r.get("error")) for r in results)
            raise ValueError("M3 Best-of-N: no image could be scored (%s)" % errors)
        ranked.sort(key=lambda t: (-t[0], t[1]))
        keep = ranked[: int(top_k)]
        idx = [i for _, i in keep]
        kept = _reindex(results, idx, weighted_score=[s for s, _ in keep])
        text = "kept %d of %d: " % (len(idx), batch) + ", ".join("#%d %.2f" % (i, s) for s, i in keep)
        return {"ui": {"text": [text]}, "result": (_select(images, idx), json.dumps(kept), keep[0][0])}


def image_metadata(result, index, batch, node, attempt, seeds, prompt):
    """The m3gate chunk of one saved image (nodes.ImageMetadata in Go)."""
    aspects = result.get("aspects") or {}
    gate = result.get("gate")
    return {
        "scores": {a: {k: v[k] for k in SCORE_FIELDS if k in v} for a, v in aspects.items() if isinstance(v, dict)},
        "error": result.get("error") or "",
        "passed": result["passed"] if isinstance(result.get("passed"), bool) else None,
        "gate": gate if isinstance(gate, dict) else None,
        "attempt": attempt,
        "seeds": seeds,
        "prompt": result.get("prompt") or prompt or "",
        "node": None if node is None else str(node),
        "index": index,
        "source_index": result.get("source_index", result.get("index", index)),
        "batch": batch,
    }


class M3SaveImage(_Node):
    CLASS = "M3SaveImage"
    FUNCTION = "save_images"

    def __init__(self):
        self.output_dir = folder_paths.get_output_directory()
        self.type = "output"
        self.compress_level = 4

    def save_images(self, images, filename_prefix="m3gate", scores=None, prompt=None,
                    api_prompt=None, unique_id=None, extra_pnginfo=None):
        _check_images(images, "M3 Save Image")
        batch = images.shape[0]
        if not prompt:
            prompt = prompt_from_graph(api_prompt)
        if scores is not None and scores != "":
            results = parse_scores(scores, batch, "M3 Save Image")
        else:
            aspects = ["quality"] + (["correspondence"] if prompt else [])
            results = score_images(images, prompt, aspects, node="M3 Save Image", api_prompt=api_prompt)
        # The attempt and the seeds are read from the prompt that runs now:
        # this node runs whenever its images change, which a reroll's new
        # seeds always do.
        attempt = attempt_from_prompt(api_prompt)
        seeds = seeds_upstream(api_prompt, unique_id)
        full_output_folder, filename, counter, subfolder, filename_prefix = folder_paths.get_save_image_path(
            filename_prefix, self.output_dir, images[0].shape[1], images[0].shape[0])
        disable = comfy_args is not None and getattr(comfy_args, "disable_metadata", False)
        saved, lines = [], []
        for i, image in enumerate(images):
            arr = np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)
            if arr.shape[-1] == 1:
                arr = arr[..., 0]
            img = Image.fromarray(arr)
            meta = PngInfo()
            if not disable:  # SaveImage's own chunks, as SaveImage writes them
                if api_prompt is not None:
                    meta.add_text("prompt", json.dumps(api_prompt))
                for k, v in (extra_pnginfo or {}).items():
                    if k not in (PNGINFO_KEY, REROLL_KEY):  # stale side effects of M3 Score / M3 Reroll
                        meta.add_text(k, json.dumps(v))
            md = image_metadata(results[i], i, batch, unique_id, attempt, seeds, prompt)
            meta.add_itxt(PNGINFO_KEY, json.dumps(md, ensure_ascii=False, allow_nan=False))
            file = "%s_%05d_.png" % (filename.replace("%batch_num%", str(i)), counter)
            img.save(os.path.join(full_output_folder, file), pnginfo=meta, compress_level=self.compress_level)
            saved.append({"filename": file, "subfolder": subfolder, "type": self.type})
            counter += 1
            if md["error"]:
                lines.append("%s: error: %s" % (file, md["error"]))
            else:
                verdict = "" if md["passed"] is None else (" passed" if md["passed"] else " rejected")
                lines.append("%s:%s " % (file, verdict) + ", ".join(
                    "%s %s" % (a, _fmt(_mos(results[i], a))) for a in sorted(md["scores"])))
        lines.insert(0, "attempt %d, seeds %s" % (attempt, ", ".join("%s=%d" % kv for kv in seeds.items()) or "none"))
        return {"ui": {"images": saved, "text": ["\n".join(lines)]}}


NODE_CLASS_MAPPINGS = {cls.CLASS: cls for cls in (M3Score, M3Gate, M3Reroll, M3BestOfN, M3SaveImage)}
NODE_DISPLAY_NAME_MAPPINGS = {name: NODE_DEFS[name]["display_name"] for name in NODE_CLASS_MAPPINGS}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
