"""`RemoteRuntime`: the Runtime API over gRPC to a `cseg serve` server, so user code changes one line.

    from cseg.serve.client import RemoteRuntime
    rt = RemoteRuntime("127.0.0.1:8001")            # was: rt = Runtime.open("bundle/")
    result = rt.segment(frame, "scratch on the lid")
    result = rt.apply("lid-scratch", frame)        # a rule the server loaded from its --rules folder, by id
    rule = rt.induce([(demo, boxes)], "scratches?", rule_id="lid-scratch")  # the server keeps it: rt.apply(rule, ...)
    for tracked in rt.track(frames, rule, line=Line(...)): ...      # Runtime.track's loop, frames served remotely

Results are cseg Segmentations (apply's carry the server's rule version). The inputs are checked here where that is
cheap (image, prompt, options: the same checks and messages as a local Runtime), and an error the server reports
arrives as the same cseg exception class. A server that is down or too slow is a ServerError naming the address;
the next call connects afresh. Needs tritonclient[grpc] (the `serve` extra); works with numpy 1 and 2.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import numpy as np

from cseg import errors, prompting
from cseg.errors import CsegError, InvalidInputError, SharedFrameError
from cseg.images import Episode, check_demos, load_frame
from cseg.options import SegmentOptions, check_bgr, check_options
from cseg.segmentation import Instances, Segmentation
from cseg.serve import contract


class ServerError(CsegError, ConnectionError):
    """The server cannot be reached, timed out, or refused the request for a reason of its own (queue full)."""


@dataclass(frozen=True)
class RemoteRule:
    """A rule the server induced and keeps: `id` (what cseg_apply takes), `version` (what its results carry) and the
    rule itself (`rule`: a cseg Rule, loaded from the files the server saved; `rule.save(path)` sends it to an edge
    device's rule-only bundle). RemoteRuntime.apply/stream/track take it in place of the id."""

    id: str
    version: str
    rule: "cseg.runtime.rules.Rule"  # noqa: F821 - imported where loaded: the client module stays light


@dataclass(frozen=True)
class RemoteSegmentation(Segmentation):
    """A Segmentation from a server; `rule_version` is the version of the rule the server applied (apply only)."""

    rule_version: str | None = None


class RemoteRuntime:
    """A `cseg serve` server as a Runtime. Thread-safe: calls from many threads share one gRPC channel (HTTP/2
    multiplexes them), which lets the server's batcher group them.

    shared_memory: frames go by reference to a shared-memory region of this process (cseg.serve.shm: one copy, the
    client's, instead of the gRPC message's several); None: where the url is this host's loopback. Where the server
    cannot read it or refuses it, frames go in the message and `shared_memory_off` says why."""

    def __init__(self, url: str = "127.0.0.1:8001", *, timeout_s: float = 30.0, shared_memory: bool | None = None):
        from cseg.serve.shm import FrameRegions, is_local

        if not isinstance(url, str) or not url:
            raise InvalidInputError(f"url must be 'host:grpc_port', got {url!r}")
        if shared_memory not in (None, True, False):
            raise InvalidInputError(f"shared_memory must be True, False or None (auto), got {shared_memory!r}")
        self.url = url.removeprefix("grpc://")
        self.timeout_s = float(timeout_s)
        self._client = None
        self._lock = threading.Lock()
        use = is_local(self.url) if shared_memory is None else shared_memory
        self._frames = FrameRegions() if use else None

    @property
    def shared_memory_off(self) -> str | None:
        """Why frames go in the gRPC message (not asked for, or refused by the server); None while shared memory
        carries them."""
        if self._frames is None:
            return "not asked for (shared_memory=False, or the server is not on this host's loopback)"
        return self._frames.disabled

    # --- the Runtime API --------------------------------------------------------------------------------------------

    def segment(self, image, prompt: str, demos=None, *, options: SegmentOptions | None = None,
                **settings) -> Segmentation:  # fmt: skip
        return self.segment_many(image, [prompt], demos, options=options, **settings)[0]

    def segment_many(self, image, prompts, demos=None, *, options: SegmentOptions | None = None,
                     **settings) -> list[Segmentation]:  # fmt: skip
        if demos:
            raise InvalidInputError("RemoteRuntime does not send demonstrations (the contract has no demo tensors): "
                                    "induce a rule and apply it on the server instead")  # fmt: skip
        options = SegmentOptions.of(options, **settings)
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise InvalidInputError(f"prompts must be a list of str, got {type(prompts).__name__}")
        if not 1 <= len(prompts) <= contract.MAX_PROMPTS:
            raise InvalidInputError(f"a request takes 1 to {contract.MAX_PROMPTS} prompts, got {len(prompts)}")
        prompts = [prompting.check_prompt(p).encode() for p in prompts]
        fields = {name: getattr(options, name) for name in contract.OPTION_FIELDS}
        pixels, bgr = self._frame(image, options.bgr)
        inputs = {
            "image": pixels,
            "prompt": np.array(prompts, dtype=object),
            "options": np.array([json.dumps(fields).encode()], dtype=object),
        }
        return self._infer(contract.SEGMENT, inputs, bgr)

    def induce(self, demos, question: str, image=None, *, max_new_tokens: int | None = None, bgr: bool = False,
               rule_id: str | None = None) -> RemoteRule:  # fmt: skip
        """As Runtime.induce, reasoned on the server, which keeps the rule (in its --rules folder when it has one) for
        apply/stream/track by id. `rule_id` names it (replacing a rule of that id: a new version); None: the rule's
        content hash. demos: up to 4 (image, boxes) pairs as for Runtime.induce (not an Episode)."""
        from cseg.serve.induce import check_rule_id

        check_options("full", max_new_tokens, bgr)
        question = prompting.check_prompt(question)
        if isinstance(demos, Episode):
            raise InvalidInputError("RemoteRuntime.induce takes (image, boxes) demonstrations, not an Episode")
        checked = check_demos(demos)
        if not checked:
            raise InvalidInputError("induce() needs at least one (image, boxes) demonstration")
        if rule_id is not None:
            check_rule_id(rule_id)
        target = _pixels(demos[0][0] if image is None else image, bgr if image is not None else False)
        pixels = [np.asarray(demo.convert("RGB"), np.uint8) for demo, _ in checked]
        boxes = [(k, box) for k, (_, demo_boxes) in enumerate(checked) for box in demo_boxes]
        boxes = boxes or [(-1, (0.0, 0.0, 0.0, 0.0))]  # PyTriton cannot carry a zero-sized tensor: a padding row
        inputs = {
            "image": target,
            "question": np.array([question.encode()], dtype=object),
            "demo_images": np.array([p.tobytes() for p in pixels], dtype=object),
            "demo_sizes": np.array([p.shape[:2] for p in pixels], np.int32),
            "demo_boxes": np.array([box for _, box in boxes], np.float32),
            "demo_box_index": np.array([k for k, _ in boxes], np.int32),
            "options": np.array([json.dumps({"max_new_tokens": max_new_tokens, "rule_id": rule_id}).encode()], object),
        }
        return decode_rule(self._send(contract.INDUCE, inputs, contract.INDUCE_OUTPUTS, batched=False).as_numpy)

    def apply(self, rule, frame, *, bgr: bool = False) -> Segmentation:
        """Apply the server's rule `rule` (a RemoteRule, or its id: the rule file's name without .json) to `frame`."""
        rule = _rule_id(rule)
        check_bgr(bgr)
        pixels, bgr = self._frame(frame, bgr)
        inputs = {"image": pixels, "rule_id": np.array([rule.encode()], dtype=object)}
        return self._infer(contract.APPLY, inputs, bgr)[0]

    def track(self, frames, rule, monitor=None, *, line=None, defect_rule=None, min_overlap: float = 0.02, times=None,
              budget_ms: float | None = None, drop: str | None = None, bgr: bool | None = None):  # fmt: skip
        """As Runtime.track (the same loop: cseg.runtime.track_loop), each frame applied on the server. The rules are
        the server's (RemoteRule or id); the monitor's rule id and version default to the server's id and the
        RemoteRule's version (an id alone: the version of the first frame served). A defect rule costs a second
        request per frame (the contract applies one rule per request: two image encodings on the server)."""
        from cseg.runtime.track_loop import track_frames  # stdlib + cseg only: no ONNX Runtime session made

        rule_id, defect_id = _rule_id(rule), None if defect_rule is None else _rule_id(defect_rule)
        bgr = hasattr(frames, "read") if bgr is None else bgr
        check_bgr(bgr)
        version = rule.version if isinstance(rule, RemoteRule) else ""
        run = None

        def apply(frame):
            result = self.apply(rule_id, frame, bgr=bgr)
            if run is not None and not run.monitor.rule_version:  # an id alone: the server names the version
                run.monitor.rule_version = result.rule_version or ""
            return result

        def pair(frame):
            return apply(frame), self.apply(defect_id, frame, bgr=bgr)

        run = track_frames(apply, frames, monitor, line=line, pair=None if defect_id is None else pair,
                           min_overlap=min_overlap, times=times, budget_ms=budget_ms, drop=drop,
                           identity=lambda: (rule_id, version))  # fmt: skip
        return run

    def stream(self, frames, rule, *, budget_ms: float | None = None, drop: str | None = None, bgr: bool | None = None):
        """As Runtime.stream: FrameResults of `rule` applied to every frame; a failed frame (the server down
        included) is an error result and the stream goes on."""
        from cseg.runtime.stream import stream as stream_frames  # stdlib + cseg only: no ONNX Runtime session made

        rule = _rule_id(rule)
        if bgr is None:
            bgr = hasattr(frames, "read")
        check_bgr(bgr)
        return stream_frames(lambda frame: self.apply(rule, frame, bgr=bgr), frames, budget_ms=budget_ms, drop=drop)

    def ready(self) -> bool:
        """Whether the server is up with every model loaded (a server answers before its models are)."""
        return self._call(lambda client: all(client.is_model_ready(m) for m in contract.MODELS))

    def statistics(self, model: str | None = None) -> dict:
        """Triton's inference statistics (request and batch counts per model) as a dict."""
        return self._call(lambda client: client.get_inference_statistics(model_name=model or "", as_json=True))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if self._frames is not None:
            self._frames.close()
        if client is not None:
            client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- the wire ---------------------------------------------------------------------------------------------------

    def _connect(self):
        with self._lock:
            if self._client is None:
                import tritonclient.grpc as grpcclient

                self._client = grpcclient.InferenceServerClient(self.url)
            return self._client

    def _call(self, request):
        from tritonclient.utils import InferenceServerException

        client = self._connect()
        try:
            return request(client)
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            if "INVALID_ARGUMENT" in status:  # Triton's own checks (dtype, shape, rank): the caller's input
                raise InvalidInputError(f"cseg server {self.url} refused the request: {exc.message()}") from None
            self._drop(client)  # down, timed out, or cut off mid-request: the next call connects afresh
            what = {"UNAVAILABLE": "is unavailable", "DEADLINE_EXCEEDED": f"did not answer within {self.timeout_s} s"}
            reason = next((text for key, text in what.items() if key in status), "failed")
            raise ServerError(f"cseg server {self.url} {reason}: {exc.message()} ({status or 'no status'})") from None

    def _drop(self, client) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        try:
            client.close()
        except Exception:  # closing a broken channel may fail too; the channel is discarded either way
            pass

    def frame_buffer(self, height: int, width: int) -> np.ndarray:
        """A writable HxWx3 uint8 array for the calling thread's next frame: where frames go by reference (a server
        on this host) it lies in the shared memory the server reads, so a frame written into it (OpenCV's
        `cap.read(buf)`, `buf[...] = pixels`) and passed to apply/segment/segment_many/track/stream from this thread
        is not copied here, BGR included (bgr=True: the server reads it reversed). Elsewhere a plain array. Valid
        until this thread asks for a larger one or the client closes."""
        from cseg.images import _check_size

        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (height, width)):
            raise InvalidInputError(f"frame_buffer takes a positive int height and width, got {height!r}, {width!r}")
        _check_size(width, height, "frame_buffer")
        if self._frames is None or self._frames.disabled is not None:
            return np.zeros((height, width, 3), np.uint8)
        return self._frames.buffer(height, width)

    def _frame(self, image, bgr: bool) -> tuple[np.ndarray, bool]:
        """The frame to send and whether the server is to read it as BGR (a frame_buffer() is sent as it is)."""
        if self._frames is not None and self._frames.holds(image):
            load_frame(image, bgr=bgr)  # the local Runtime's checks (size, dtype)
            return image, bool(bgr)
        return _pixels(image, bgr), False

    def _infer(self, model: str, arrays: dict[str, np.ndarray], bgr: bool = False) -> list[Segmentation]:
        ref = None
        if self._frames is not None and "image_ref" in {spec.name for spec in contract.INPUTS[model]}:
            ref = self._frames.place(arrays["image"], bgr)  # None: frames go in the message
        if ref is not None:
            by_reference = {**{k: v for k, v in arrays.items() if k != "image"}, "image_ref": np.array([ref], object)}
            try:
                return decode(self._send(model, by_reference, contract.OUTPUTS).as_numpy)
            except SharedFrameError as exc:  # not the server's host, or refused there: the message from now on
                self._frames.disable(f"the server cannot read frames by reference: {exc}")
            except InvalidInputError as exc:  # a server whose contract has no image_ref (an older cseg serve)
                if "image_ref" not in str(exc):
                    raise
                self._frames.disable(f"the server does not take frames by reference: {exc}")
        if bgr:  # a BGR frame_buffer() that did not go by reference: RGB, as the contract's image is
            arrays = {**arrays, "image": np.ascontiguousarray(arrays["image"][..., ::-1])}
        return decode(self._send(model, arrays, contract.OUTPUTS).as_numpy)

    def _send(self, model: str, arrays: dict[str, np.ndarray], outputs, *, batched: bool = True):
        """One request to `model`; `batched`: the model has a batch dimension (a request is a batch of 1)."""
        import tritonclient.grpc as grpcclient

        specs = {spec.name: spec for spec in contract.INPUTS[model]}
        wanted = [grpcclient.InferRequestedOutput(spec.name) for spec in outputs]
        inputs = []
        for name, value in arrays.items():
            value = value[None] if batched else value
            inputs.append(grpcclient.InferInput(name, list(value.shape), specs[name].triton_dtype))
            inputs[-1].set_data_from_numpy(value)
        return self._call(lambda client: client.infer(model, inputs, outputs=wanted, client_timeout=self.timeout_s))


def _pixels(image, bgr: bool) -> np.ndarray:
    """Any image the local Runtime takes -> contiguous RGB uint8 HxWx3 (what the contract carries)."""
    check_bgr(bgr)
    frame = load_frame(image, bgr=bgr)
    pixels = frame.pixels[..., ::-1] if frame.bgr else frame.pixels
    return np.ascontiguousarray(pixels)


def _rule_id(rule) -> str:
    if isinstance(rule, RemoteRule):
        return rule.id
    if not isinstance(rule, str) or not rule:
        raise InvalidInputError(f"rule must be a RemoteRule or the id of a rule the server has (a str), got {rule!r}")
    return rule


def decode_rule(output) -> RemoteRule:
    """cseg_induce's outputs -> a RemoteRule; the rule's files are loaded with Rule.load's checks."""
    import tempfile
    from pathlib import Path

    from cseg.runtime.rules import Rule

    values = {spec.name: output(spec.name) for spec in contract.INDUCE_OUTPUTS}
    if any(value is None or value.size == 0 for value in values.values()):
        raise ServerError("the server's induce answer lacks outputs (not a cseg serve server of this version, or "
                          "PyTriton with numpy 2: serve from .venv-serve)")  # fmt: skip
    error = bytes(values["error"][0])
    if error:
        _raise(error)
    rule_id, version = bytes(values["rule_id"][0]).decode(), bytes(values["rule_version"][0]).decode()
    text, arrays = (bytes(blob) for blob in values["rule_files"])
    try:
        name = json.loads(text)["arrays"]["file"]  # the JSON names its arrays file; Rule.load checks the rest
    except (ValueError, KeyError, TypeError):
        raise ServerError(f"the server's induced rule {rule_id!r} is not a cseg rule file") from None
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or name == "rule.json":
        raise ServerError(f"the server's induced rule names its arrays {name!r}: not a file name beside the rule")
    with tempfile.TemporaryDirectory(prefix="cseg-rule-") as scratch:
        path = Path(scratch) / "rule.json"
        (path.parent / name).write_bytes(arrays)
        path.write_bytes(text)
        return RemoteRule(rule_id, version, Rule.load(path))


def _raise(error: bytes) -> None:
    """A server-side error -> the cseg exception class it was (CsegError if the name is not one of cseg's)."""
    try:
        payload = json.loads(error)
        kind, message = payload["type"], payload["message"]
    except (ValueError, KeyError, TypeError):
        raise ServerError(f"the server reported an unreadable error: {error[:200]!r}") from None
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, CsegError)):
        cls = CsegError
    raise cls(message)


def decode(output) -> list[Segmentation]:
    """The contract's outputs (`output(name)` -> array with the batch dimension) -> one Segmentation per prompt."""
    values = {name: output(name) for name in contract.OUTPUT_NAMES}
    if any(value is None for value in values.values()):
        missing = [name for name, value in values.items() if value is None]
        raise ServerError(f"the server's answer lacks outputs {missing}: not a cseg serve server of this version?")
    if any(value.size == 0 for value in values.values()):  # the contract never sends one (PyTriton cannot)
        raise ServerError("the server answered with empty tensors (PyTriton with numpy 2 does this: serve from the "
                          "serving environment, .venv-serve)")  # fmt: skip
    values = {name: value[0] for name, value in values.items()}  # one request: drop the batch dimension
    error = bytes(values["error"][0])
    if error:
        _raise(error)
    results = []
    for k, mask in enumerate(values["mask"]):
        mine = values["instance_prompt"] == k
        meta = json.loads(bytes(values["meta"][k]))
        try:
            width = int(meta["mask_size"][1])
            mask = contract.unpack_masks(mask[None], width)[0]
            instance_masks = contract.unpack_masks(values["instance_masks"][mine], width)  # new, writable arrays
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ServerError(f"the server's masks do not unpack ({exc}): "
                              "not a cseg serve server of this version?") from None
        instances = Instances(instance_masks, values["boxes"][mine].astype(np.float32, copy=False),
                              values["scores"][mine].astype(np.float32, copy=False))  # fmt: skip
        bbox = tuple(meta["bbox"]) if meta.get("bbox") is not None else None
        results.append(RemoteSegmentation(
            mask, instances, float(values["presence"][k]), bytes(values["route"][k]).decode(),
            meta["route_by"], meta["route_score"], meta["answer"], meta["rule"], meta["think"], bbox, meta["text"],
            tuple(meta["token_ids"]), meta["timings"], rule_version=meta.get("rule_version"),
        ))  # fmt: skip
    return results
