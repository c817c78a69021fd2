"""`cseg-export`: checkpoint -> a bundle directory the torch-free runtime serves.

Every graph is exported, checked against its PyTorch module on fresh inputs, and only then written. The bundle is
assembled in a hidden sibling directory and renamed into place at the very end, so an export that is interrupted at
any point (Ctrl-C, kill, disk full) leaves nothing at the target path that looks like a bundle (and the staging
directory a killed export leaves is removed by the next export to the same path: export/destination.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from tqdm import tqdm

from cseg.bundle import writer
from cseg.bundle.schema import GRAPH_KEYS, RULE_ONLY_GRAPH_KEYS, validate_manifest
from cseg.calib.bundle_quantization import quantize_bundle
from cseg.engines.footprint import checkpoint_inventory, choose, describe, rule_only_inventory, safetensors_shapes
from cseg.engines.recipe import RECIPE_NAME, write_recipe
from cseg.engines.targets import canonical, with_memory
from cseg.engines.targets import resolve as resolve_target
from cseg.engines.tensorrt_support import check_bundle
from cseg.errors import BundleError, InvalidInputError
from cseg.export.cpu_choice import choose_backends
from cseg.export.destination import check_destination, remove_stale, replace, staging_dir
from cseg.export.fused_attention import FUSED_DOMAIN, FUSED_OP, fuse_attention
from cseg.export.graphs import GRAPHS
from cseg.export.graphs.sam3_text import TEXT_LENGTH
from cseg.export.loading import load_conceptseg, load_sam3, resolve_checkpoint_dir
from cseg.export.models.checkpoint_sizes import QWEN_FULL
from cseg.export.models.sam3_layouts import meta_file, transformers_layout
from cseg.export.onnx_export import count_flops, example_args, export_graph
from cseg.export.parity import VALIDATION_SEED, check_parity
from cseg.export.reference import INSTANCE_SCORE_THRESHOLD, RESEARCH_MAX_LENGTH, sam3_text_features
from cseg.images import VLM_SIDE

DEFAULT_TOP_K = 20
RULE_QUERIES = QWEN_FULL["num_of_query"]  # Q of the published ConceptSeg-R1: what a rule-only bundle takes by default


def export_bundle(model_dir, sam3_dir, out, **options) -> Path:
    """Export both checkpoints into the bundle directory `out`; returns its path. force: replace the bundle at `out`
    (never a folder that is not a cseg bundle, nor one holding a checkpoint); other options: see _export_bundle.

    `sam3_dir` may be transformers' layout (facebook/sam3's safetensors) or Meta's (its sam3.pt, or a folder with
    it), which is converted into a temporary folder first (cseg.export.models.sam3_layouts).
    """
    # checked against the user's checkpoint, not the temporary copy a Meta layout is converted into (and before it)
    sources = (sam3_dir,) if model_dir is None else (model_dir, sam3_dir)
    check_destination(Path(out), options.pop("force", False), sources)
    with transformers_layout(sam3_dir) as loadable:
        return _export_bundle(model_dir, loadable, out, sam3_given=sam3_dir, **options)


def _export_bundle(
    model_dir,
    sam3_dir,
    out,
    *,
    target: str = "cpu",
    precision: str | None = None,
    top_k: int = DEFAULT_TOP_K,
    queries: int | None = None,
    calib: str | Path | None = None,
    allow_oversize: bool = False,
    allow_unsupported_ops: bool = False,
    memory_gb: float | None = None,
    keep_slower: bool = False,
    openvino: bool = False,
    sam3_given=None,
    report: Callable[[str], None] = tqdm.write,
    progress: bool = True,
) -> Path:
    """Export both checkpoints into the bundle directory `out`; returns its path.

    model_dir None exports a rule-only bundle: SAM 3's image encoder and decoder alone, which serves Runtime.apply /
    stream with rules induced on a full bundle of the same SAM 3 weights; `queries` is the usual number of concept
    tokens of those rules (default: the published ConceptSeg-R1's), which validation and TensorRT's profile are tuned
    for: rules of any Q from 1 to max(32, queries) apply. A full bundle reads Q from its checkpoint.
    A precision other than fp32 quantizes the graphs its policy names, calibrated on `calib` (a calibration folder,
    see cseg.calib.calibration_set; default: photographs that ship with scikit-image). A GPU target (orin-*, ada,
    hopper) first checks that the bundle fits the device (`memory_gb`: a smaller module of that target), converts
    every graph (fp16, or QDQ per its policy; gated like quantization), checks the converted graphs against the
    operators its TensorRT versions document (refused unless `allow_unsupported_ops`) and writes the build recipe.
    On the cpu target an int8 graph slower than its fp32 graph here is not shipped unless `keep_slower`; `openvino`
    times OpenVINO against ONNX Runtime per graph on this CPU and records the faster where OpenVINO passes its
    accuracy gate (export/cpu_choice.py; `Runtime.open(device="auto")` follows it where the CPU allows).
    `sam3_given`: the SAM 3 checkpoint as the user named it, when `sam3_dir` is a conversion of it (the manifest names
    the user's files, not a temporary folder).
    """
    profile, precision = resolve_target(target, precision)
    profile, target = with_memory(profile, memory_gb), canonical(target)
    if openvino and profile["backend"] != "onnxruntime":
        raise InvalidInputError(f"the OpenVINO choice is for cpu bundles; target {target} serves with TensorRT")
    keys = GRAPH_KEYS if model_dir is not None else RULE_ONLY_GRAPH_KEYS
    queries = _queries(model_dir, queries, profile, precision)
    out = Path(out)
    destination = out.resolve()  # export_bundle checked it
    footprint = None
    if profile["backend"] == "tensorrt":
        # from the safetensors headers, before loading anything: a bundle that cannot fit is refused in seconds
        sam3_path = resolve_checkpoint_dir(sam3_dir, "SAM 3")
        counts, kv = (rule_only_inventory(safetensors_shapes(sam3_path)) if model_dir is None else
                      checkpoint_inventory(resolve_checkpoint_dir(model_dir, "ConceptSeg-R1"), sam3_path))  # fmt: skip
        precision, footprint = choose(counts, kv, target, profile, precision, allow_oversize, report)
        report(f"target {target} ({profile['device']['name']}, {profile['device']['memory_gb']:g} GB), precision "
               f"{precision}: {describe(footprint)}")  # fmt: skip
    policy = {key: value for key, value in profile["policies"][precision].items() if key in keys}
    remove_stale(destination)
    staging = staging_dir(destination, "partial")
    try:
        (staging / "graphs").mkdir(parents=True)
    except OSError as exc:
        raise BundleError(f"cannot create the bundle {out}: {exc.strerror} ({exc.filename})") from None
    start = time.perf_counter()
    feeds = {} if openvino else None
    try:
        with _calibration_set(calib) if policy else contextlib.nullcontext() as calibration:
            manifest, text = _export_into(staging, model_dir, sam3_dir, sam3_given, target, profile, precision,
                                          {"top_k": top_k, "queries": queries,
                                           "kv_cache": profile.get("kv_cache", "sequence_major")},
                                          report, progress, feeds)  # fmt: skip
            if policy:
                manifest = quantize_bundle(staging, manifest, profile, precision, calibration, report, progress,
                                           keep_slower=keep_slower, text=text)  # fmt: skip
        if openvino:  # on the graphs as shipped (a quantized one stays on ONNX Runtime)
            report("choosing each graph's CPU backend (ONNX Runtime or OpenVINO) on this machine")
            manifest = choose_backends(staging, manifest, feeds, report)
            validate_manifest(manifest)
        if footprint is not None:
            manifest = _for_tensorrt(staging, manifest, target, profile, footprint, allow_unsupported_ops, report)
        if policy or footprint is not None:
            manifest = writer.seal(staging, manifest)
        writer.write(staging, manifest)  # last: a staging folder an interruption leaves never opens as a bundle
        replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    total = sum(f.stat().st_size for f in destination.rglob("*") if f.is_file()) / 1e6
    report(f"bundle {out} written in {time.perf_counter() - start:.1f} s, {total:.1f} MB")
    return out


def _queries(model_dir, queries: int | None, profile: dict, precision: str) -> int | None:
    """Q for a rule-only bundle (refusing precisions that would change none of its graphs); None for a full one."""
    if model_dir is not None:
        if queries is not None:
            raise InvalidInputError("the number of concept tokens comes from the ConceptSeg-R1 checkpoint; pass "
                                    "queries only for a rule-only bundle")  # fmt: skip
        return None
    changed = {profile["policies"][precision].get(key) for key in RULE_ONLY_GRAPH_KEYS}
    if precision not in changed | {"auto", profile["base_precision"]}:
        raise InvalidInputError(f"precision {precision} quantizes only the VLM, which a rule-only bundle does not "
                                "hold; choose " + " or ".join(sorted(changed - {None})) + " (or leave it out)")  # fmt: skip
    queries = RULE_QUERIES if queries is None else queries
    if type(queries) is not int or not 1 <= queries <= 4096:
        raise InvalidInputError(f"queries (the concept tokens of a rule) must be an integer from 1 to 4096, got {queries!r}")
    return queries


def sam3_weights_id(model) -> str:
    """The identity of SAM 3's weights, which a rule's concept tokens are bound to: sha256 over every parameter of
    the loaded model in name order (name, dtype, shape, bytes). Taken from the model, not the files, so the same
    weights give the same id whatever the file layout (one safetensors file, shards, or another published layout
    that loads into the same Sam3Model). Its cost is one sha256 pass over the weights in memory, once per export."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        tensor = parameter.detach().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}\n".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _export_into(staging, model_dir, sam3_dir, sam3_given, target, profile, precision, settings, report, progress,
                 feeds=None):  # fmt: skip
    """Export, check and write the graphs; returns the manifest and, for a rule-only bundle, a phrase -> SAM 3 text
    features function (its calibration prompts SAM 3 with text alone: it has no reasoner, nor a text encoder).
    `feeds`, when given, receives per graph its inputs at the export sizes (the CPU backend choice times them)."""
    report("loading checkpoints")
    vlm = load_conceptseg(model_dir) if model_dir is not None else None
    sam3 = load_sam3(sam3_dir, attn_implementation="eager")  # the dynamo exporter fails on SAM 3's sdpa path
    began = time.perf_counter()
    weights = sam3_weights_id(sam3.model)
    report(f"  SAM 3 weights id {weights[:16]} ({time.perf_counter() - began:.1f} s): rules from bundles with this id apply")
    if vlm is not None:
        image = Image.new("RGB", (VLM_SIDE, VLM_SIDE))
        settings = {**settings, "queries": vlm.num_queries,
                    "vlm_grid": vlm.image_processor(images=[image])["image_grid_thw"][0].tolist()}  # fmt: skip
    keys = GRAPH_KEYS if vlm is not None else RULE_ONLY_GRAPH_KEYS
    graphs, parity, cached = {}, {}, []
    builders = [(key, build) for key, build in GRAPHS.items() if key in keys]
    stages = tqdm(builders, desc="export", unit="graph", disable=not progress, leave=False)
    for key, build in stages:
        stages.set_postfix_str(key)
        began = time.perf_counter()
        spec = build(vlm, sam3, settings)
        files = export_graph(spec, staging / "graphs" / f"{key}.onnx", cached)
        fused = fuse_attention(files[0]) if key in profile.get("fused_attention", ()) else 0
        exported = time.perf_counter() - began
        counted = {}
        parity[key] = check_parity(spec, files[0], counted)
        if feeds is not None:
            args = example_args(spec, spec.export_sizes, VALIDATION_SEED)
            feeds[key] = {t.name: a.numpy() for t, a in zip(spec.inputs, args)}
        size = sum(f.stat().st_size for f in files) / 1e6
        graphs[key] = writer.graph_entry(key, files, exported, count_flops(spec, counted),
                                         {"op": f"{FUSED_DOMAIN}.{FUSED_OP}", "blocks": fused} if fused else None,
                                         spec.manifest_entry())  # fmt: skip
        worst = max(parity[key].values(), key=lambda e: e["max_abs"] / e["tolerance"])
        report(
            f"  {key:<13} exported in {exported:5.1f} s{' (trace cached)' if key in cached else ''}, {size:8.1f} MB, "
            + (f"{fused} attention blocks fused, " if fused else "") + "parity ok "
            f"(worst max-abs {worst['max_abs']:.2e} <= {worst['tolerance']:.1e})"
        )
    manifest = writer.new_manifest(sam3, full=vlm is not None, target=target, precision=precision,
                                   session=profile.get("session", {}), sam3_source=_sam3_source(sam3.path, sam3_given),
                                   weights=weights, queries=settings["queries"], top_k=settings["top_k"],
                                   instance_score_threshold=INSTANCE_SCORE_THRESHOLD, graphs=graphs,
                                   parity=parity)  # fmt: skip
    text = None
    if vlm is not None:
        writer.add_reasoner(manifest, staging, vlm, sam3, settings["vlm_grid"], max_length=RESEARCH_MAX_LENGTH,
                            text_length=TEXT_LENGTH)  # fmt: skip
    else:
        text = _text_features(sam3)
    return writer.seal(staging, manifest), text


def _text_features(sam3) -> Callable[[str], tuple]:
    """phrase -> SAM 3 text features [1, 32, 256] float32 and mask [1, 32] int64, from the PyTorch text encoder."""

    def features(phrase: str):
        with torch.inference_mode():
            values, mask = sam3_text_features(sam3, phrase)
        return values.numpy().astype("float32"), mask.numpy().astype("int64")

    return features


def _for_tensorrt(staging: Path, manifest: dict, target: str, profile: dict, footprint: dict, allow_unsupported: bool,
                  report) -> dict:  # fmt: skip
    """Check the converted graphs against the target's TensorRT versions, mark them for TensorRT, record the target,
    the footprint and the check, write the build recipe."""
    support = check_bundle(staging, manifest, profile["tensorrt_versions"], allow_unsupported, report)
    manifest = {**manifest, "graphs": {k: {**v, "backend": "tensorrt"} for k, v in manifest["graphs"].items()}}
    manifest["target_profile"] = {
        key: profile[key] for key in ("device", "tensorrt_versions", "base_precision", "shapes", "workspace_mb",
                                      "reserved_gb")
    }  # fmt: skip
    manifest["footprint"] = {**footprint, "onnx_gb": round(sum(g["bytes"] for g in manifest["graphs"].values()) / 1e9, 3)}
    manifest["tensorrt_support"] = support
    manifest["recipe"] = RECIPE_NAME
    write_recipe(staging, manifest)
    return manifest


@contextlib.contextmanager
def _calibration_set(calib):
    from cseg.calib.calibration_set import chosen

    with chosen(calib) as calibration:
        if len(calibration.items) < 2:
            raise InvalidInputError("a calibration set needs at least 2 samples: some calibrate, some check the result")
        yield calibration


def _sam3_source(loaded: Path, given) -> dict:
    """The SAM 3 checkpoint the weights came from: Meta's sam3.pt (and the config.json beside it) where that is what
    the user named, not the temporary folder it was converted into, which is gone when the export ends."""
    checkpoint = meta_file(given) if given is not None else None
    if checkpoint is None:
        return writer.source(loaded)
    return {**writer.source(checkpoint.parent, (checkpoint.name, "config.json")), "layout": "meta"}
