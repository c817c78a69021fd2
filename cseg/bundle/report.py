"""`cseg inspect`: a bundle's manifest as a readable report (torch-free)."""

from __future__ import annotations

from pathlib import Path

from cseg import cpu_backends
from cseg.bundle.schema import read_manifest, rule_only
from cseg.bundle.verify import verify_files


def _shape(tensor: dict) -> str:
    return f"{tensor['name']}[{','.join(str(d) for d in tensor['shape'])}]:{tensor['dtype']}"


def describe(bundle: str | Path, verify: bool = True) -> str:
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest, hashes=verify)
    model, sam3 = manifest["model"], manifest["source"]["sam3"]
    lines = [
        f"bundle      {bundle}" + ("  RULE-ONLY: SAM 3 alone, applies rules induced on a full bundle of the same SAM 3 "
                                   "weights" if rule_only(manifest) else ""),  # fmt: skip
        f"format      v{manifest['format_version']}, written by cseg {manifest['cseg_version']} on {manifest['created']}",
        f"target      {manifest['target']} ({manifest['precision']})",
        f"files       {len(manifest['files'])} " + ("(sha256 verified)" if verify else "(not verified)"),
    ]
    if "conceptseg" in manifest["source"]:
        lines.append(f"ConceptSeg  {manifest['source']['conceptseg']['path']}  sha256 "
                     f"{manifest['source']['conceptseg']['sha256'][:16]}")  # fmt: skip
    lines.append(f"SAM 3       {sam3['path']}  sha256 {sam3['sha256'][:16]}  weights id "
                 f"{sam3.get('weights', 'none (rules stay bound to this bundle)')[:16]}")  # fmt: skip
    if rule_only(manifest):
        lines.append(f"model       Q={model['num_queries']} top-K={model['top_k']} "
                     f"SAM 3 input={manifest['preprocessing']['sam3']['size']}")  # fmt: skip
    else:
        generation = manifest["generation"]
        lines += [
            f"model       H={model['hidden_size']} layers={model['num_layers']} Q={model['num_queries']} "
            f"top-K={model['top_k']} VLM grid={manifest['preprocessing']['vlm']['grid_thw']} "
            f"SAM 3 input={manifest['preprocessing']['sam3']['size']}",
            f"generation  max_length={generation['max_length']} repetition_penalty="
            f"{generation.get('repetition_penalty', 1.0)} eos={generation['eos_token_ids']}",
            f"router      {manifest['router']['kind']}",
        ]
    lines += [
        "",
        f"{'graph':<14}{'backend':<13}{'precision':<10}{'MB':>9}  inputs -> outputs",
    ]
    for key, graph in manifest["graphs"].items():
        inputs = ", ".join(_shape(t) for t in graph["inputs"][:6]) + (" ..." if len(graph["inputs"]) > 6 else "")
        outputs = ", ".join(_shape(t) for t in graph["outputs"][:5]) + (" ..." if len(graph["outputs"]) > 5 else "")
        lines.append(f"{key:<14}{graph['backend']:<13}{graph['precision']:<10}{graph.get('bytes', 0) / 1e6:>9.1f}  "
                     f"{inputs} -> {outputs}")  # fmt: skip
    lines += ["", f"{'parity (ONNX vs PyTorch)':<40}{'max_abs':>10}{'mean_abs':>10}{'allowed':>10}"]
    for key, outputs in manifest["parity"].items():
        for name, entry in outputs.items():
            if name.startswith(("new_", "present_")):
                continue  # one line per KV tensor would drown the rest; they are in manifest.json
            lines.append(f"{key + '.' + name:<40}{entry['max_abs']:>10.2e}{entry['mean_abs']:>10.2e}"
                         f"{entry['tolerance']:>10.1e}")  # fmt: skip
    if "target_profile" not in manifest:  # a cpu bundle: which backend serves each graph here, and why
        lines += ["", *_cpu_backends(manifest)]
    if "quantization" in manifest:
        quant = manifest["quantization"]
        lines += ["", f"quantization {quant['precision']} (calibration sha256 {quant['calibration']['sha256'][:16]}, "
                      f"{quant['calibration']['samples']} samples, {quant['calibration']['held_out']} held out)"]  # fmt: skip
        for key, row in quant["graphs"].items():
            cosine = min((e["cosine"] for e in row.get("gate", {}).values()), default=float("nan"))
            lines.append(f"  {key:<13} asked {row['requested']:<5} shipped {row['shipped']:<5} min cosine {cosine:.5f}")
        end = quant["end_to_end"]
        tokens = f", token agreement {end['token_agreement']:.3f}" if "token_agreement" in end else ""
        lines.append(f"  end to end vs fp32: mask IoU min {end['mask_iou_min']:.4f}, presence |delta| max "
                     f"{end['presence_delta_max']:.4f}{tokens}")  # fmt: skip
    if "target_profile" in manifest:
        device, fit = manifest["target_profile"]["device"], manifest["footprint"]
        lines += ["", f"device      {device['name']} ({device['arch']}, {device['memory_gb']:g} GB); estimated footprint "
                      f"{fit['total_gb']:.1f} GB of {fit['usable_gb']:.1f} GB usable" + ("" if fit["fits"] else " (DOES NOT FIT)")]  # fmt: skip
        if "tensorrt_support" in manifest:
            lines += _support(manifest["tensorrt_support"])
        built = manifest.get("tensorrt")
        lines.append(f"engines     built with TensorRT {built['version']} for {built['gpu']} on {built['built']}" if built
                     else "engines     not built yet: run `cseg build` on the device (recipe.json, build_engines.sh)")  # fmt: skip
    router = manifest.get("router", {})
    if router.get("kind") == "learned":
        lines += ["", f"router learned, threshold {router['threshold']:.4f}"]
        if "held_out" in router:
            held = router["held_out"]["learned"]
            lines[-1] += f": held-out skip rate {held['skip_rate']:.3f}, IoU loss {held['iou_loss']:.4f}"
    return "\n".join(lines)


def _support(support: dict) -> list[str]:
    """The static operator check: per graph, what it uses and what a TensorRT version's matrix does not list."""
    versions = ", ".join(f"{v} ({table} matrix)" if v != table else v for v, table in support["versions"].items())
    lines = [f"operators   checked against {support['source']} for TensorRT {versions} (static, not a TensorRT parse)"]
    for key, graph in support["graphs"].items():
        missing = [f"{v}: {'; '.join(items)}" for v, items in graph["unsupported"].items() if items]
        lines.append(f"  {key:<13} opset {graph['opset']:<3} {graph['ops']:>4} operators, "
                     f"{', '.join(graph['dtypes'])}: " + ("UNSUPPORTED on " + " | ".join(missing) if missing
                                                          else "all supported"))  # fmt: skip
    return lines


def _cpu_backends(manifest: dict) -> list[str]:
    """What Runtime.open(device="auto") serves each graph with on this machine, the choice's measurements and why."""
    here = cpu_backends.plan(manifest, "auto")
    missing = cpu_backends.openvino_missing()
    section = manifest.get("cpu_backends")
    if section is None:
        return [f"cpu backends  ONNX Runtime for every graph: no OpenVINO choice in the manifest (exported without "
                f"--openvino){'; ' + missing if missing else ''}"]  # fmt: skip
    cpu = section["cpu"]
    flags = ", ".join(cpu["flags"]) or "no listed flags"
    version = section.get("openvino") or "not installed"
    lines = [f"cpu backends  chosen on {cpu['model']} ({flags}) with OpenVINO {version}; here (device auto): "
             f"{missing or 'OpenVINO available'}"]  # fmt: skip
    for key, choice in here.items():
        entry = section["graphs"].get(key, {})
        timing = ""
        if "onnxruntime_ms" in entry:
            timing = f"  [ORT {entry['onnxruntime_ms']:.1f} ms; OpenVINO " + ", ".join(
                f"{p} {ms:.1f} ms" for p, ms in entry["openvino_ms"].items()) + "]"  # fmt: skip
        served = choice.backend + (f" {choice.precision}" if choice.precision else "")
        lines.append(f"  {key:<13} {served:<15} {choice.why}{timing}")
    return lines
