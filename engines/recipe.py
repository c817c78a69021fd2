"""The build recipe of a GPU-target bundle: for every graph the ONNX file, the engine file, the optimization
profiles (min/opt/max shape of every input) and the builder settings, plus the equivalent `trtexec` command lines
for users who build by hand. Written by cseg-export into the bundle, read by `cseg build` on the device.

Profiles come from the target's shape table and the manifest's dynamic axes:
- vlm_vision: 1 image .. `images.max` images of the exported VLM grid (patches, merged tokens and attention windows);
- vlm_decoder: two profiles. `prefill` (the prompt, an empty cache) and `decode` (one token against the whole KV
  cache of `total_tokens` positions, unfilled ones masked): the decode step's shapes never change, so its engine
  run is captured once as a CUDA graph and replayed per token;
- concept_head: 1 .. total_tokens generated states;
- sam3_decoder: 0 (shortcut) .. Q (full path) concept tokens, optimal at Q; on a rule-only bundle 0 .. 32 (rules
  induced by a ConceptSeg-R1 of any Q), optimal at --queries; the others are static.
A rule-only bundle (SAM 3's image encoder and decoder) has only the last.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from cseg.runtime.rules import concept_bounds
from cseg.runtime.vlm_inputs import vision_inputs

RECIPE_NAME = "recipe.json"
BUILD_SCRIPT = "build_engines.sh"
TIMING_CACHE = "engines/timing.cache"


def _axes(manifest: dict) -> dict[str, dict[str, dict[str, int]]]:
    """Per graph and profile: axis name -> {"min", "opt", "max"}."""

    def span(low, opt, high):
        return {"min": low, "opt": opt, "max": high}

    # tuned for the usual Q; up to the decoder's bound (a rule-only bundle takes rules of any Q up to 32)
    low, high = concept_bounds(manifest)
    sam3 = {"sam3_decoder": {"default": {"concepts": span(low, manifest["model"]["num_queries"], high)}}}
    if "vlm" not in manifest["preprocessing"]:  # a rule-only bundle: SAM 3 alone
        return sam3
    shapes = manifest["target_profile"]["shapes"]
    images, prompt, total = shapes["images"], shapes["prompt_tokens"], shapes["total_tokens"]
    t, h, w = manifest["preprocessing"]["vlm"]["grid_thw"]
    patches = t * h * w
    merged = patches // manifest["preprocessing"]["vlm"]["merge_size"] ** 2
    windows = len(vision_inputs([[t, h, w]], manifest["model"]["vision"])["window_valid"])
    return {
        **sam3,
        "vlm_vision": {"default": {"patches": span(*(n * patches for n in images.values())),
                                   "merged": span(*(n * merged for n in images.values())),
                                   "windows": span(*(n * windows for n in images.values()))}},
        "vlm_decoder": {
            "prefill": {"seq": prompt, "past": span(0, 0, 0), "total": prompt,
                        "image_tokens": span(1, merged * images["opt"], merged * images["max"])},
            "decode": {"seq": span(1, 1, 1), "past": span(total, total, total),
                       "total": span(total + 1, total + 1, total + 1), "image_tokens": span(1, 1, 1)},
        },
        "concept_head": {"default": {"tokens": span(1, 64, total)}},
    }  # fmt: skip


def _shape(shape: list, axes: dict[str, dict[str, int]], which: str) -> list[int]:
    return [axes[dim][which] if isinstance(dim, str) else dim for dim in shape]


def make_recipe(manifest: dict) -> dict:
    profile = manifest["target_profile"]
    axes = _axes(manifest)
    graphs = {}
    for key, entry in manifest["graphs"].items():
        dynamic = [t for t in entry["inputs"] if any(isinstance(d, str) for d in t["shape"])]
        profiles = []
        for name, values in axes.get(key, {"default": {}}).items():
            profiles.append({
                "name": name,
                "shapes": {t["name"]: {which: _shape(t["shape"], values, which) for which in ("min", "opt", "max")}
                           for t in dynamic},
            })  # fmt: skip
        graphs[key] = {
            "onnx": entry["file"],
            "engine": f"engines/{key}.plan",
            "precision": entry["precision"],
            "strongly_typed": True,  # the ONNX types are the precisions (fp16 / QDQ int8, fp8, int4)
            "workspace_mb": profile["workspace_mb"],
            "profiles": [p for p in profiles if p["shapes"]],
        }
    recipe = {"target": manifest["target"], "device": profile["device"], "tensorrt_versions": profile["tensorrt_versions"],
              "timing_cache": TIMING_CACHE, "graphs": graphs}  # fmt: skip
    recipe["trtexec"] = {key: trtexec_command(key, graph, TIMING_CACHE) for key, graph in graphs.items()}
    return recipe


def trtexec_command(key: str, graph: dict, timing_cache: str) -> str:
    """The trtexec line that builds the same engine: `--profile=N` then that profile's --min/--opt/--maxShapes.

    trtexec takes the shape options right behind each --profile as that profile's; without --profile it refuses a
    second set of shape options, so every graph writes the --profile form (one profile is --profile=0)."""
    words = ["trtexec", f"--onnx={graph['onnx']}", f"--saveEngine={graph['engine']}", "--stronglyTyped",
             f"--memPoolSize=workspace:{graph['workspace_mb']}M", f"--timingCacheFile={timing_cache}"]  # fmt: skip
    for index, profile in enumerate(graph["profiles"]):
        words.append(f"--profile={index}")
        for which, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
            shapes = ",".join(f"{name}:{'x'.join(map(str, s[which]))}" for name, s in profile["shapes"].items())
            words.append(f"{flag}={shapes}")
    return " ".join(shlex.quote(w) for w in words)


def write_recipe(bundle: Path, manifest: dict) -> dict:
    """recipe.json and build_engines.sh (the trtexec lines) into `bundle`; returns the recipe."""
    recipe = make_recipe(manifest)
    (bundle / RECIPE_NAME).write_text(json.dumps(recipe, indent=1) + "\n")
    lines = ["#!/bin/sh", "# Builds this bundle's TensorRT engines by hand, on the target device (cseg build does the same",
             "# and also records the engines in manifest.json; engines built by hand must be registered with",
             "# `cseg build --register`).", "set -e", 'cd "$(dirname "$0")"', "mkdir -p engines",
             *recipe["trtexec"].values()]  # fmt: skip
    (bundle / BUILD_SCRIPT).write_text("\n".join(lines) + "\n")
    return recipe
