"""`cseg serve`: a bundle's Runtime behind NVIDIA Triton Inference Server, through PyTriton (the `serve` extra).

Three models, with the tensors of cseg.serve.contract: `cseg_segment`, `cseg_apply` and `cseg_induce` (its handler:
cseg.serve.induce). Triton's dynamic batcher groups
concurrent requests (many cameras) into one call of the infer function, bounded by a queue of `max_queue` requests
each waiting at most `queue_timeout_s` (then rejected, not served late). Every request answers for itself: a bad one
gets its `error` output and the rest of its batch is served.

How a batch is served: the bundle's graphs take a batch of exactly 1, and on a CPU a batched graph gains little
(benchmarks/batch_gain.py: per-frame time at batch 2-8 1.03-1.17x better than at batch 1 for sam3_vision and
sam3_decoder with ONNX Runtime on 2 cores, within a loaded machine's noise), so each request runs the graphs alone.
Throughput comes from overlap instead: each model has `instances` model instances (PyTriton serves each from its own
thread, with its own Triton backend stub), so one batch's tensors move through Triton's and PyTriton's shared
memory while another's graphs run, and a pool of `concurrency` threads, shared by all instances, runs that many
requests at once (ONNX Runtime and the native pre- and postprocessing release the GIL), each with its share of the
cores as ONNX Runtime intra-op threads (`threads`; 0: one per core per run).

PyTriton's own needs are checked first (`check_environment`): numpy < 2 (PyTriton with numpy 2 answers with empty
tensors, silently) and the Python backend stub's libpython (LD_LIBRARY_PATH = this interpreter's LIBDIR).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cseg.errors import CsegError, InvalidInputError, SharedFrameError
from cseg.serve import contract
from cseg.serve.memory import IdleTrim, bound_child_heaps
from cseg.serve.shm import LOCAL_HOSTS, SharedFrames

log = logging.getLogger("cseg.serve")


def check_environment() -> None:
    """Refuse numpy 2; point the dynamic loader at this interpreter's libpython before Triton starts.

    Triton's Python backend starts a stub process that loads libpython3.x.so; without LD_LIBRARY_PATH it finds the
    system's copy (another build) and fails. Setting it in this process's environment is enough: tritonserver and its
    stubs are started by PyTriton after this, and inherit it (this process has loaded its libpython already).
    """
    major = int(np.__version__.split(".")[0])
    if major >= 2:
        raise CsegError(
            f"cseg serve needs numpy<2, this environment has numpy {np.__version__}: PyTriton 0.7 with numpy 2 answers "
            "with empty tensors. Serve from the serving environment: make serve-env, then .venv-serve/bin/cseg serve"
        )
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir and libdir not in paths:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *paths])


def rule_version(path: Path) -> str:
    """A rule's version: the sha256 of its JSON and arrays files (16 hex), so a changed rule file is a new version."""
    digest = hashlib.sha256(path.read_bytes())
    arrays = path.with_suffix(".npz")
    if arrays.exists():
        digest.update(arrays.read_bytes())
    return digest.hexdigest()[:16]


def load_rules(folder, manifest: dict) -> dict:
    """{rule id: (Rule, version)} for every *.json rule in `folder`, each checked against the bundle's SAM 3 weights."""
    from cseg.runtime.rules import Rule

    if folder is None:
        return {}
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"--rules {folder}: not a folder of rule files (cseg induce --out DIR/NAME.json)")
    rules = {}
    for path in sorted(folder.glob("*.json")):
        rule = Rule.load(path)
        rule.check_bundle(manifest)  # a rule for other SAM 3 weights is refused at start, not per request
        rules[path.stem] = (rule, rule_version(path))
    return rules


class Handlers:
    """The per-request work of both models on one Runtime; every request is answered, failures as `error`.

    `concurrency` requests run at once (a pool shared by every model instance, so the cores are never asked for more
    graph runs than that in all); a batch of one runs on the calling thread."""

    def __init__(self, runtime, rules: dict, concurrency: int = 1, frames=None):
        self.runtime, self.rules = runtime, rules
        self.frames = frames  # cseg.serve.shm.SharedFrames: requests may send frames by reference; None: refused
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="cseg-request") if concurrency > 1 else None

    def segment(self, requests) -> list[dict]:
        return self._serve(self._segment, requests)

    def apply(self, requests) -> list[dict]:
        return self._serve(self._apply, requests)

    def _serve(self, serve, requests) -> list[dict]:
        if self._pool is None or len(requests) == 1:
            return [self._answer(serve, request) for request in requests]
        return list(self._pool.map(lambda request: self._answer(serve, request), requests))  # in order

    @staticmethod
    def _answer(serve, request) -> dict:
        try:
            return serve(request)
        except CsegError as exc:
            return contract.placeholder_outputs(contract.error_payload(exc))
        except Exception as exc:  # a bug must not take the model down for the other requests: log it, answer it
            log.exception("request failed")
            return contract.placeholder_outputs(contract.error_payload(CsegError(f"server error: {exc!r}")))

    def _segment(self, request) -> dict:
        from cseg.options import SegmentOptions

        image = self._image(request)
        prompts = [_text(value, "prompt", contract.MAX_PROMPT_BYTES) for value in request["prompt"][0]]
        if not 1 <= len(prompts) <= contract.MAX_PROMPTS:
            raise InvalidInputError(f"a request takes 1 to {contract.MAX_PROMPTS} prompts, got {len(prompts)}")
        options = _json(request["options"][0][0], "options")
        if not isinstance(options, dict) or not set(options) <= set(contract.OPTION_FIELDS):
            raise InvalidInputError(f"options must be a JSON object with keys among {contract.OPTION_FIELDS}")
        if isinstance(options.get("mask_size"), list):  # JSON has no tuples; anything else SegmentOptions refuses
            options["mask_size"] = tuple(options["mask_size"])
        start = time.perf_counter()
        results = self.runtime.segment_many(image, prompts, options=SegmentOptions(**options))
        return _outputs(results, start=start)

    def _apply(self, request) -> dict:
        rule_id = _text(request["rule_id"][0][0], "rule_id", 256)
        found = self.rules.get(rule_id)  # one lookup: FolderRules checks the rule's files on each
        if found is None:
            raise InvalidInputError(f"unknown rule {rule_id!r}: this server has {sorted(self.rules) or 'no rules'} "
                                    "(cseg serve --rules DIR loads DIR/*.json)")  # fmt: skip
        rule, version = found
        image = self._image(request)
        start = time.perf_counter()
        return _outputs([self.runtime.apply(rule, image)], version, start=start)


    def _image(self, request):
        """The request's image (batch dimension dropped), from `image` or by reference (`image_ref`, read where the
        client wrote it: a cseg Frame where it is BGR); Triton has checked dtypes and the channel count already, the
        runtime checks size and content."""
        image, ref = (request[name] if name in request.keys() else None for name in ("image", "image_ref"))
        if (image is None) == (ref is None):
            raise InvalidInputError("a request carries its frame in exactly one of image and image_ref, got "
                                    f"{'both' if image is not None else 'neither'}")  # fmt: skip
        if ref is not None:
            if self.frames is None:
                raise SharedFrameError("this server does not take frames by reference (cseg serve --shared-memory)")
            return self.frames.frame(ref.reshape(-1)[0])
        if image.ndim != 4 or image.shape[0] != 1:
            raise InvalidInputError(f"image must be one HxWx3 uint8 image per request, got shape {image.shape[1:]}")
        return image[0]


def _text(value, name: str, limit: int) -> str:
    value = bytes(value)
    if len(value) > limit:  # checked on bytes, before decoding: a huge prompt costs nothing
        raise InvalidInputError(f"{name} has {len(value)} bytes, more than the {limit} allowed")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{name} is not UTF-8: {exc.reason} at byte {exc.start}") from None


def _json(value, name: str):
    try:
        return json.loads(_text(value, name, 4096))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{name} is not JSON: {exc}") from None


def _outputs(results, version: str | None = None, *, start: float | None = None) -> dict:
    """Segmentations -> the contract's outputs (with the batch dimension of 1). Masks go packed (8 pixels a byte);
    one result's arrays are never copied into a stack or a concatenation of one before that. The timings
    gain `runtime`: the ms this request's Runtime call took here since `start` (a client's wall time minus it is what
    serving added: transfers, queue, Triton)."""
    instances = [r.instances for r in results]
    height, width = results[0].mask.shape
    timed = {} if start is None else {"runtime": (time.perf_counter() - start) * 1000}
    meta = [{**{key: getattr(r, key) for key in _META}, "timings": {**r.timings, **timed},
             "rule_version": version, "mask_size": [height, width]}
            for r in results]  # fields, not to_json(): that also sums the mask  # fmt: skip
    masks = [i.masks for i in instances]
    boxes, scores = [i.boxes for i in instances], [i.scores for i in instances]
    owner = [np.full(len(i), k, np.int32) for k, i in enumerate(instances)]
    packed = contract.pack_masks(_join(masks)) if any(len(i) for i in instances) else None
    if packed is None:  # PyTriton cannot send zero-sized tensors: one padding row (contract), zeros packed as such
        packed, boxes = np.zeros((1, height, -(-width // 8)), np.uint8), [np.zeros((1, 4), np.float32)]
        scores, owner = [np.zeros(1, np.float32)], [np.full(1, -1, np.int32)]
    out = {
        "mask": contract.pack_masks(_join([r.mask[None] for r in results])),
        "instance_masks": packed,
        "boxes": _join(boxes).astype(np.float32, copy=False),
        "scores": _join(scores).astype(np.float32, copy=False),
        "instance_prompt": _join(owner),
        "presence": np.array([r.presence for r in results], np.float32),
        "route": np.array([r.route.encode() for r in results], dtype=object),
        "meta": np.array([json.dumps(m).encode() for m in meta], dtype=object),
        "error": np.array([b""], dtype=object),
    }
    return {name: value[None] for name, value in out.items()}


def _join(arrays: list[np.ndarray]) -> np.ndarray:
    """np.concatenate, without its copy when there is one array (cseg_apply's answer: one prompt)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


_META = ("route_by", "route_score", "answer", "rule", "think", "bbox", "text", "token_ids")  # as JSON in `meta`


# Two instances overlap one batch's transfers with another's graph runs, and a pool of two runs two requests' graphs
# at once. Each run gets its share of the cores (THREADS None: cores // concurrency ONNX Runtime intra-op threads):
# measured idle on a 2-core EPYC (README, "Many cameras on one server"), 8 cameras ran at 1.96x one camera's rate
# with one thread per run, 1.05x with ONNX Runtime's default of one thread per core per run (two runs then fight for
# the same cores); the price is a lone camera's latency (0.61 -> 0.98 s there): --threads 0 for that.
# TensorRT serialises its requests anyway (one device buffer).
INSTANCES, CONCURRENCY, THREADS = 2, 2, None
# The batcher sends what is queued as soon as an instance is free: waiting for more requests cost every lone request
# its full delay (Triton's queue time 2.1 ms per request at 2 ms, 0.1 ms at 0, measured on loopback), while under
# load requests queue behind the busy instances and are batched anyway; on a CPU a batch gains little (above).
MAX_DELAY_MS = 0.0


def serve(bundle, *, rules=None, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int = 8002, max_batch: int = 8, max_queue: int = 64, queue_timeout_s: float = 30.0,
          max_delay_ms: float = MAX_DELAY_MS, device: str = "auto", instances: int = INSTANCES,
          concurrency: int = CONCURRENCY, threads: int | None = THREADS, shared_memory: bool | None = None,
          ready=None) -> None:  # fmt: skip
    """Serve `bundle` until interrupted (blocks). `ready(triton)` is called once the models are bound.
    instances: model instances per model (batches in flight at once); concurrency: requests run at once over all
    instances; threads: ONNX Runtime intra-op threads per graph run (None: the cores shared out among the concurrent
    requests, 0: ONNX Runtime's default, one per core); shared_memory: clients on this host may send frames by
    reference (`image_ref`, cseg.serve.shm) or through Triton's system shared memory, None: when `host` is
    loopback."""
    check_environment()
    claim_ports(host, {"--port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port})
    bound_child_heaps()  # cseg.serve.memory: before Triton starts (its processes inherit it)
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor, TimeoutAction
    from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig

    from cseg.runtime import Runtime
    from cseg.serve.induce import Inducer
    from cseg.serve.induce import bind as bind_induce

    if threads is None:
        threads = run_threads(concurrency)
    log.info("%d model instances, %d requests at once, %s ONNX Runtime threads per run", instances, concurrency,
             threads or "one per core")  # fmt: skip
    # no ONNX Runtime CPU arena: it keeps each run's activations for reuse (tiny, 1080p: the serve process idled at
    # 297 MB after 20 requests with it, 199 MB without, as freed memory goes back at idle: cseg.serve.memory) for
    # 1.3% of a frame's time (959 vs 947 ms, one thread, interleaved, idle EPYC)
    session = {"enable_cpu_mem_arena": False, **({"intra_op_num_threads": threads} if threads else {})}
    runtime = Runtime.open(bundle, device=device, session=session)
    if shared_memory is None:
        shared_memory = host in LOCAL_HOSTS
    frames = SharedFrames() if shared_memory else None
    handlers = Handlers(runtime, load_rules(rules, runtime.manifest), concurrency, frames)
    idle = IdleTrim(release=[frames.sweep] if frames else [])  # cseg.serve.memory: freed heap back when idle
    log.info("bundle %s, rules %s", bundle, sorted(handlers.rules))
    policy = QueuePolicy(timeout_action=TimeoutAction.REJECT, default_timeout_microseconds=int(queue_timeout_s * 1e6),
                         allow_timeout_override=True, max_queue_size=max_queue)  # fmt: skip
    batcher = DynamicBatcher(max_queue_delay_microseconds=int(max_delay_ms * 1000), default_queue_policy=policy)
    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port,
                          metrics_port=metrics_port or None, allow_metrics=metrics_port > 0)  # fmt: skip

    # PyTriton guards Triton's management endpoints with a token it generates; statistics (request and batch counts,
    # what a fleet's monitoring reads) are opened, and shared memory where clients share this host's /dev/shm (a
    # client that registers a region, or sends an image_ref, names a shared-memory object the server then reads: on
    # loopback unless asked); the rest (model repository, ...) stay guarded
    opened = {"statistics", "shared-memory"} if shared_memory else {"statistics"}
    security = TritonSecurityConfig(restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e not in opened])

    def tensors(specs):
        return [Tensor(name=s.name, dtype=s.dtype, shape=s.shape, optional=s.optional) for s in specs]

    for attempt in range(1, START_ATTEMPTS + 1):
        with Triton(config=config, security_config=security) as triton:
            try:
                for name, infer in ((contract.SEGMENT, handlers.segment), (contract.APPLY, handlers.apply)):
                    # the same callable per instance: the Runtime is thread-safe and its sessions take concurrent runs
                    infer = idle.watch(infer)
                    triton.bind(model_name=name, infer_func=[infer] * instances, inputs=tensors(contract.INPUTS[name]),
                                outputs=tensors(contract.OUTPUTS),
                                config=ModelConfig(max_batch_size=max_batch, batcher=batcher), strict=True)  # fmt: skip
                bind_induce(triton, Inducer(runtime, handlers.rules, rules), tensors, idle.watch)  # cseg.serve.induce
            except Exception as e:  # noqa: BLE001 - only PyTriton's instance start race is retried, the rest re-raised
                if attempt == START_ATTEMPTS or not instance_start_race(e):
                    raise
                log.warning("a model instance missed PyTriton's start handshake (attempt %d of %d): Triton restarts",
                            attempt, START_ATTEMPTS)  # fmt: skip
                continue  # leaving the `with` stops this Triton; the next attempt starts a fresh one
            if ready is not None:
                ready(triton)
            triton.serve()
            return


PORT_WAIT_S = 30.0  # Triton's own exit_timeout: a server stopping on these ports may hold them this long


def claim_ports(host: str, ports: dict[str, int], wait_s: float = PORT_WAIT_S) -> None:
    """Refuse, naming the flag, a port another process listens on, after waiting up to `wait_s` for one a stopping
    server still holds. Without this tritonserver fails to bind ("Socket '127.0.0.1:8001' already in use", in its log
    only) and PyTriton waits out its start timeout, minutes, before a traceback of its own: seen here when `cseg
    serve` was started again within seconds of the last one's stop (its tritonserver was still exiting)."""
    deadline = time.monotonic() + wait_s
    for flag, port in ports.items():
        if not port:
            continue
        waiting = False
        while not _can_bind(host, port):
            if time.monotonic() >= deadline:
                raise CsegError(f"port {port} on {host} ({flag}) is in use by another process (another cseg serve or "
                                f"tritonserver?): stop it, or give this server another {flag}")  # fmt: skip
            if not waiting:
                log.info("port %d on %s (%s) is in use: waiting up to %g s for it (a server still stopping?)", port,
                         host, flag, wait_s)  # fmt: skip
                waiting = True
            time.sleep(0.25)


def _can_bind(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # as servers bind: the TIME_WAIT of a closed connection does not hold the port, a listener does
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def run_threads(concurrency: int) -> int:
    """ONNX Runtime intra-op threads per run when `concurrency` runs share this process's cores (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))  # a container's or taskset's cores, not the host's
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, concurrency))


# Triton's Python backend starts a model's instances in parallel; PyTriton has instance 0 open a Unix socket that the
# others read their configuration from, and they give up after 1 s or when they connect between the socket's bind and
# its listen (ConnectionRefusedError). A loaded machine hits this (a CI run failed on it): the whole start is retried,
# as nothing of PyTriton's public API unbinds a model that failed to load.
START_ATTEMPTS = 4


def instance_start_race(error: BaseException) -> bool:
    """Whether `error` (from Triton.bind) is PyTriton's handshake race between a model's instances, not a real fault."""
    text = str(error)
    return "load failed" in text and "get_config_from_handshake_server" in text
