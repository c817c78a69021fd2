"""`Runtime`: serve a bundle with ONNX Runtime (cpu bundles) or its TensorRT engines (GPU targets). No torch, no
transformers.

    from cseg import Runtime
    rt = Runtime.open("bundle/")
    result = rt.segment(frame, "scratch on the lid")

The request flow (router, timings, result) is cseg.pipeline, shared with the PyTorch reference; this module supplies
the model steps on the bundle's graphs.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cseg import cpu_backends, pipeline, prompting
from cseg.bundle.schema import read_manifest, rule_only
from cseg.bundle.verify import verify_files
from cseg.errors import BundleError, InvalidInputError
from cseg.images import Episode, Frame, check_demos, load_frame, render_demonstrations, vlm_target
from cseg.lru import LRU
from cseg.options import SegmentOptions, check_bgr, check_mask_interpolation, check_options
from cseg.pipeline import Reasoning, timed
from cseg.runtime.host.decoder import HostDecoder, Prefilled
from cseg.runtime.host.sam3 import HostSam3, ImageState, Sam3Output
from cseg.runtime.onnxruntime.graph import OrtGraph, check_session, session_options
from cseg.runtime.router import Router
from cseg.runtime.rules import Rule, bundle_id
from cseg.runtime.stream import stream as stream_frames
from cseg.runtime.text import ChatTokenizer, Sam3Tokenizer
from cseg.runtime.vlm_inputs import image_patches, rope_positions, vision_inputs
from cseg.segmentation import Instances, Segmentation

DEVICES = ("auto", "cpu", "tensorrt")
TEXT_CACHE_SIZE = 256  # SAM 3 text features per phrase: inspection loops repeat the same few phrases


@dataclass
class Pending:
    """A prompt prefilled and not decoded yet, and where the user's question sits in it."""

    prefilled: Prefilled
    question_tokens: np.ndarray  # indices of the question's tokens in the prompt


class Runtime:
    """A loaded bundle. Create with `Runtime.open(bundle)`.

    Thread-safe: ONNX Runtime sessions accept concurrent runs, every request keeps its own state (image features,
    KV cache), and the phrase cache is locked. Calls from several threads run concurrently on ONNX Runtime and one
    at a time on TensorRT (one set of device buffers).
    """

    def __init__(self, bundle: Path, manifest: dict, graphs: dict, decoder: HostDecoder | None = None,
                 request_lock: threading.Lock | None = None, sam3=None):  # fmt: skip
        self.bundle = bundle
        self.manifest = manifest
        self.graphs = graphs
        self.model = manifest["model"]
        self.rule_only = rule_only(manifest)
        self.chat = self.sam3_tokenizer = self.decoder = None  # a rule-only bundle has neither reasoner nor text encoder
        if not self.rule_only:
            tokenizers = manifest["tokenizers"]
            self.chat = ChatTokenizer(bundle / tokenizers["vlm"]["tokenizer.json"])
            clip = tokenizers["sam3"]
            config = bundle / clip["tokenizer_config.json"] if "tokenizer_config.json" in clip else None
            self.sam3_tokenizer = Sam3Tokenizer(bundle / clip["tokenizer.json"], config, self.model["sam3_text_length"])
            for tokenizer in (self.chat, self.sam3_tokenizer):  # what the graphs need of them (ids, vocabulary)
                tokenizer.check(manifest)
            self.decoder = decoder or HostDecoder.from_manifest(graphs["vlm_decoder"], manifest)
        self.backend = "tensorrt" if request_lock is not None else "onnxruntime"
        self.cpu_choices: dict = {}  # per CPU graph, its backend and why (cseg.cpu_backends.Choice); set by open
        # TensorRT: one set of device buffers and one KV cache, so requests take turns; ONNX Runtime runs them together
        self._requests = request_lock or contextlib.nullcontext()
        self.prep = manifest["preprocessing"]
        self.sam3 = sam3 or HostSam3(graphs["sam3_vision"], graphs["sam3_decoder"], self.prep["sam3"]["size"])
        self._text_cache: LRU[str, tuple[np.ndarray, np.ndarray]] = LRU(TEXT_CACHE_SIZE)  # host arrays: none to close
        self._text_lock = threading.Lock()
        self._router = Router(graphs["router"], manifest["router"]) if "router" in graphs else None

    def _needs_reasoner(self, call: str) -> None:
        if self.rule_only:
            raise BundleError(
                f"{self.bundle} is a rule-only bundle (SAM 3 alone): it applies rules (apply, stream, cseg watch) but "
                f"cannot {call}. Induce the rule on a full bundle of the same SAM 3 weights (Runtime.induce, or cseg "
                "induce --bundle FULL_BUNDLE ... --out rule.json), then copy the rule file and its .npz here and "
                "apply it (Rule.load, Runtime.apply / cseg watch --rule rule.json)"
            )

    @classmethod
    def open(cls, bundle, device: str = "auto", *, verify: bool = True, session: dict | None = None) -> "Runtime":
        """Load a bundle: check its manifest, the sha256 of every file, and that this machine can run its target.

        device: "auto" serves a cpu bundle with ONNX Runtime, or OpenVINO for the graphs its manifest chose it for
        where OpenVINO is installed and this CPU has what the choice assumed (cseg.cpu_backends), and a GPU-target
        bundle with its TensorRT engines (built by `cseg build`); "cpu" serves any bundle's ONNX graphs with ONNX
        Runtime on the CPU (for a GPU target: an accuracy check of its fp16/quantized graphs, slowly); "tensorrt"
        insists on the engines.
        `session` overrides the target profile's ONNX Runtime options (e.g. {"intra_op_num_threads": 2}).
        `verify=False` skips hashing the files (seconds for multi-GB bundles) when they are known to be intact; every
        file is still checked to be listed in the manifest and inside the bundle.
        """
        if not isinstance(bundle, (str, os.PathLike)) or not isinstance(os.fspath(bundle), str):
            raise InvalidInputError(f"bundle must be a path (str or os.PathLike), got {type(bundle).__name__}")
        bundle = Path(os.fspath(bundle))
        manifest = read_manifest(bundle)
        verify_files(bundle, manifest, hashes=verify)
        return cls.from_manifest(bundle, manifest, device=device, session=session)

    @classmethod
    def from_manifest(cls, bundle: Path, manifest: dict, *, device: str = "auto", session: dict | None = None):
        """Serve `manifest`'s graphs from `bundle` (open() after its checks; the exporter for bundles in the making)."""
        if device not in DEVICES:
            raise InvalidInputError(f"device must be one of {DEVICES} for a {manifest['target']} bundle, got {device!r}")
        check_session(session)
        engines = any(graph["backend"] == "tensorrt" for graph in manifest["graphs"].values())
        if device == "tensorrt" and not engines:
            raise InvalidInputError(f"a {manifest['target']} bundle has no TensorRT engines; open it with device='cpu'")
        settings = {**manifest.get("session", {}), **(session or {})}
        options = session_options(settings)
        on_cpu = {key: entry for key, entry in manifest["graphs"].items()
                  if device == "cpu" or not engines or entry["backend"] == "onnxruntime"}  # fmt: skip
        # a cpu bundle's graphs: ONNX Runtime, or OpenVINO where the manifest chose it and this machine can follow
        choices = cpu_backends.plan(manifest, device) if not engines else {}
        cpu_backends.notify(choices)
        graphs = {key: _cpu_graph(key, bundle / entry["file"], entry, choices.get(key), options, settings)
                  for key, entry in on_cpu.items()}  # fmt: skip
        if len(on_cpu) == len(manifest["graphs"]):
            runtime = cls(bundle, manifest, graphs)
            runtime.cpu_choices = choices
            return runtime
        from cseg.runtime.tensorrt.engine import open_engines

        engine_graphs, decoder, lock, sam3 = open_engines(bundle, manifest)
        return cls(bundle, manifest, {**graphs, **engine_graphs}, decoder, lock, sam3)

    # --- public calls ----------------------------------------------------------------------------------------------

    def segment(self, image, prompt: str, demos=None, *, options: SegmentOptions | None = None,
                **settings) -> Segmentation:  # fmt: skip
        """Segment what `prompt` asks for in `image` (path, PIL image, or HxWx3 uint8 array; bgr=True for OpenCV).

        demos: up to 4 (image, boxes) demonstrations. The options (cseg.options.SegmentOptions), as `options=` and/or
        keywords: route "auto" (Shortcut Router), "shortcut" or "full"; max_new_tokens; bgr; mask_size (height,
        width) to make the masks at instead of the image's size; mask_interpolation "bilinear" or "bicubic";
        max_length, prompt + completion tokens at most.
        """
        return self.segment_many(image, [prompt], demos, options=options, **settings)[0]

    def segment_many(self, image, prompts, demos=None, *, options: SegmentOptions | None = None,
                     **settings) -> list[Segmentation]:  # fmt: skip
        """Several concepts on one image with one image-encoder pass (and one VLM vision pass)."""
        self._needs_reasoner("segment from a prompt")
        with self._requests:
            return pipeline.segment_many(self, image, prompts, demos, options=options, **settings)

    # --- rule reuse (inspection loops) ------------------------------------------------------------------------------

    def induce(self, demos, question: str, image=None, *, max_new_tokens: int | None = None, bgr: bool = False) -> Rule:
        """Reason once over the demonstrations; the returned Rule serves every following frame via apply().

        `image` is the target the model reasons about (default: the first demonstration's image).
        """
        self._needs_reasoner("induce rules")
        check_options("full", max_new_tokens, bgr)
        question = prompting.check_prompt(question)
        demos = check_demos(demos)
        if not demos or (image is None and isinstance(demos, Episode)):
            raise InvalidInputError("induce() needs at least one (image, boxes) demonstration (or, for a prepared "
                                    "Episode, the target image)")  # fmt: skip
        target = load_frame(demos[0][0]) if image is None else load_frame(image, bgr=bgr)
        with self._requests:
            state = self.image_state(target, {})
            reasoning = self.reason(state, question, demos, max_new_tokens, {})
            features, mask = self._text_features(reasoning.parsed.answer)
        parsed = reasoning.parsed
        return Rule(
            question=question, answer=parsed.answer, rule=parsed.rule, think=parsed.think, text=reasoning.text,
            concept_tokens=reasoning.concept_tokens, text_features=features, text_mask=mask,
            bundle=bundle_id(self.manifest), sam3_weights=self.manifest["source"]["sam3"].get("weights"),
            token_ids=reasoning.token_ids,
        )  # fmt: skip

    def apply(self, rule: Rule, frame, *, bgr: bool = False) -> Segmentation:
        """SAM 3 alone on `frame`, prompted with the rule's phrase and concept tokens (no reasoning)."""
        _check_rule(rule, self.manifest)
        check_bgr(bgr)
        timings: dict[str, float] = {}
        with timed(timings, "preprocess"):
            frame = load_frame(frame, bgr=bgr)
        threshold = self.manifest["postprocess"]["instance_score_threshold"]
        with self._requests:
            raw, mask, instances = self.sam3.apply(frame, rule.text_features, rule.text_mask, rule.concept_tokens,
                                                   threshold, timings)  # fmt: skip
        return self._rule_result(rule, raw, mask, instances, timings)

    def apply_many(self, rules, frame, *, bgr: bool = False) -> list[Segmentation]:
        """Several rules on one frame with one image-encoder pass (a part rule and a defect rule, as `track` with
        defect_rule= does): each further rule costs a SAM 3 decoder pass, not another image encoding."""
        rules = list(rules)
        for rule in rules:
            _check_rule(rule, self.manifest)
        check_bgr(bgr)
        shared: dict[str, float] = {}
        with timed(shared, "preprocess"):
            frame = load_frame(frame, bgr=bgr)
        threshold = self.manifest["postprocess"]["instance_score_threshold"]
        results = []
        with self._requests:
            state = self.sam3.encode(frame, shared)
            for rule in rules:
                timings = dict(shared)  # the encoder's stages are each result's (spent once for all)
                raw = self.sam3.decode(state, rule.text_features, rule.text_mask, rule.concept_tokens, timings)
                with timed(timings, "postprocess"):
                    mask, instances = self.sam3.masks(raw, (frame.height, frame.width), threshold)
                results.append(self._rule_result(rule, raw, mask, instances, timings))
        return results

    def _rule_result(self, rule: Rule, raw: Sam3Output, mask, instances, timings: dict) -> Segmentation:
        return Segmentation(
            mask, instances, self.presence(raw), "rule", "user", answer=rule.answer, rule=rule.rule, think=rule.think,
            text=rule.text, token_ids=rule.token_ids, timings=timings,
        )  # fmt: skip

    def stream(self, frames, rule: Rule, *, budget_ms: float | None = None, drop: str | None = None,
               bgr: bool | None = None):  # fmt: skip
        """Apply `rule` to every frame of `frames` (iterable of arrays/paths, or an OpenCV capture); yields
        FrameResult(index, result, error, latency_ms, dropped_before, over_budget). A bad frame gives an error
        result and the stream goes on. drop: "none" (every frame, in order), "oldest" (stay live) or None: "none"
        for a finite sequence, "oldest" for an iterator or capture. OpenCV captures deliver BGR: bgr defaults to
        True for them. rule: a Rule, or a cseg.runtime.rule_feed.RuleFeed (rules pushed over MQTT): each frame then
        takes the feed's rule in force when it is processed."""
        current = rule_source(rule, self.manifest)
        if bgr is None:
            bgr = hasattr(frames, "read")
        check_bgr(bgr)
        return stream_frames(lambda frame: self.apply(current(), frame, bgr=bgr), frames, budget_ms=budget_ms,
                             drop=drop)  # fmt: skip

    def track(self, frames, rule: Rule, monitor=None, *, line=None, defect_rule: Rule | None = None,
              min_overlap: float = 0.02, times=None, budget_ms: float | None = None, drop: str | None = None,
              bgr: bool | None = None):  # fmt: skip
        """`stream` plus identities and events: every FrameResult (ok or error) goes through a cseg.track
        LineMonitor (`monitor=`, or one made from `line=`, a cseg.track.Line). Returns a TrackRun: iterate it for
        TrackedFrame(result, events, track_ids) per frame (track_ids: per instance its confirmed track id or -1);
        when the frames end it calls monitor.finish() (its events: `run.final_events`); `run.summary()` gives the
        counts, events per kind and every sink's delivery stats; `run.close()` stops early (and finishes).
        A bad frame, a timestamp that goes back, a frame of another size: an `error` event, never a stop.
        times: None (when each frame arrived from the source), a sequence (times[frame index], seconds) or a
        callable index -> seconds. defect_rule: a second rule applied to each frame (one image encoding for both);
        a part counts as defective in a frame when that rule's instances cover >= min_overlap of its mask, and the
        monitor's DefectRule (k of n frames) turns that into one `defect` event per part. The monitor's rule id and
        version default to `rule`'s (cseg.track.rule_identity)."""
        from cseg.runtime.track_loop import track

        return track(self, frames, rule, monitor, line=line, defect_rule=defect_rule, min_overlap=min_overlap,
                     times=times, budget_ms=budget_ms, drop=drop, bgr=bgr)  # fmt: skip

    # --- the backend protocol (cseg.backend.RoutedBackend) --------------------------------------------------------------------

    def image_state(self, frame: Frame, timings: dict) -> ImageState:
        return self.sam3.encode(frame, timings)

    def sam3_segment(self, state: ImageState, text: str, concept_tokens, timings: dict) -> Sam3Output:
        features, mask = self._text_features(text, timings)
        return self.sam3.decode(state, features, mask, concept_tokens, timings)

    def prefill(self, state: ImageState, question: str, demos, max_new_tokens, timings: dict,
                max_length: int | None = None) -> Pending:  # fmt: skip
        """Vision tower and decoder prefill: everything before the first token (what the learned router reads).
        The VLM sees the target image, or a prepared Episode's own target when it has one."""
        merge = self.model["vision"]["spatial_merge_size"]
        with timed(timings, "vlm_vision"):
            grids, embeds = [], []
            reference, layout = render_demonstrations(demos) if demos else (None, prompting.Layout())
            if reference is not None:  # the demonstration image comes first, as in the research script
                grid, reference_embeds = self._vision(reference)
                grids.append(grid)
                embeds.append(reference_embeds)
            if state.vlm_target is None:  # the target's vision tokens serve every prompt on this image
                state.vlm_target = self._vision(vlm_target(state.frame.pil(), demos))
            grids.append(state.vlm_target[0])
            embeds.append(state.vlm_target[1])
        with timed(timings, "vlm_preprocess"):
            problem = prompting.problem_text(question, layout)
            per_image = [t * h * w // merge**2 for t, h, w in grids]
            ids, question_tokens = self.chat.encode_prompt(problem, per_image, question)
            positions = rope_positions(ids, self.model["image_token_id"], grids, merge)
        prefilled = self.decoder.prefill(ids, np.concatenate(embeds), positions, max_new_tokens, max_length)
        timings["vlm_prefill"] = prefilled.prefill_ms
        return Pending(prefilled, question_tokens)

    def reason(self, state: ImageState, question: str, demos, max_new_tokens, timings: dict,
               pending: Pending | None = None, max_length: int | None = None) -> Reasoning:  # fmt: skip
        pending = pending or self.prefill(state, question, demos, max_new_tokens, timings, max_length)
        generated = self.decoder.decode(pending.prefilled)
        timings["vlm_decode"] = generated.decode_ms
        timings["decode_tokens_per_s"] = len(generated.tokens) / max(generated.decode_ms / 1000, 1e-9)
        text = self.chat.decode(generated.tokens)
        with timed(timings, "concept_head"):
            concept = self.graphs["concept_head"].run({"hidden_states": generated.hidden_states})["concept_tokens"]
        return Reasoning(text, prompting.parse_completion(text), concept, tuple(generated.tokens))

    @property
    def learned_router(self) -> Router | None:
        return self._router

    def learned_route(self, state: ImageState, question: str, demos, shortcut: Sam3Output, max_new_tokens,
                      timings: dict, max_length: int | None = None) -> tuple[float, bool, Pending]:  # fmt: skip
        """The fitted router's p(shortcut suffices) from the prefill and the shortcut pass, and its decision."""
        pending = self.prefill(state, question, demos, max_new_tokens, timings, max_length)
        with timed(timings, "router"):
            score = self._router.score(pending, shortcut, self.presence(shortcut), question)
        return score, score >= self._router.threshold, pending

    @staticmethod
    def presence(raw: Sam3Output) -> float:
        return float(1.0 / (1.0 + np.exp(-np.float64(raw.presence_logit.reshape(())))))

    def postprocess(self, raw: Sam3Output, size: tuple[int, int],
                    interpolation: str = "bilinear") -> tuple[np.ndarray, Instances]:  # fmt: skip
        bicubic = check_mask_interpolation(interpolation) == "bicubic"
        return self.sam3.masks(raw, size, self.manifest["postprocess"]["instance_score_threshold"], bicubic)

    # --- helpers ----------------------------------------------------------------------------------------------------

    def _text_features(self, text: str, timings: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """SAM 3's text encoder, cached per phrase. A cache hit is timed as its own stage, "sam3_text_cache", so that
        "sam3_text" always times the graph (cseg bench's roofline divides its FLOPs by that time)."""
        timings = {} if timings is None else timings
        with self._text_lock:
            cached = self._text_cache.get(text)
            if cached is not None:
                timings.setdefault("sam3_text_cache", 0.0)
                return cached
        with timed(timings, "sam3_text"):
            ids, mask = self.sam3_tokenizer.encode(text)
            features = self.graphs["sam3_text"].run({"input_ids": ids, "attention_mask": mask})["text_features"]
        with self._text_lock:
            self._text_cache.put(text, (features, mask))
        return features, mask

    def _vision(self, image: Image.Image) -> tuple[list[int], np.ndarray]:
        """One VLM image -> its grid and its vision tokens (the vision tower treats every image on its own)."""
        patches, grid = image_patches(image, self.prep["vlm"])
        feed = {"pixel_values": patches, **vision_inputs([grid], self.model["vision"])}
        return grid, self.graphs["vlm_vision"].run(feed)["image_embeds"]


def rule_source(rule, manifest: dict):
    """() -> the rule for the next frame: a Rule (checked once here), or a RuleFeed's rule in force (each checked
    against the feed's bundle on arrival; Runtime.apply checks it against this one)."""
    from cseg.runtime.rule_feed import RuleFeed

    if isinstance(rule, RuleFeed):
        return rule.rule
    _check_rule(rule, manifest)
    return lambda: rule


def _cpu_graph(key: str, path: Path, entry: dict, choice, options, settings: dict):
    """One graph on the CPU: OpenVINO where `choice` (cseg.cpu_backends.plan) says so, else ONNX Runtime. A graph
    OpenVINO cannot load here after all (another OpenVINO version, say) is served by ONNX Runtime, with a notice."""
    if choice is not None and choice.backend == "openvino":
        from cseg.runtime.openvino.graph import OpenVinoGraph

        try:
            return OpenVinoGraph(key, path, entry, choice.precision, int(settings.get("intra_op_num_threads", 0)))
        except BundleError as exc:
            cpu_backends.log.warning("serving %s with ONNX Runtime instead of OpenVINO: %s", key, exc)
    return OrtGraph(key, path, entry, options, ["CPUExecutionProvider"])


def _check_rule(rule, manifest: dict) -> None:
    if not isinstance(rule, Rule):
        raise InvalidInputError(f"rule must be a cseg Rule (Runtime.induce or Rule.load), got {type(rule).__name__}")
    rule.check_bundle(manifest)
