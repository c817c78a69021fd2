"""`cseg build BUNDLE`: the TensorRT engines of a GPU-target bundle, built on the device that will run them.

A TensorRT plan only runs on the GPU model and TensorRT version that built it, so the exporter ships ONNX plus a
recipe (engines/recipe.py) and this step, on the device, turns them into plans: TensorRT's ONNX parser, strongly
typed networks (the ONNX types are the precisions), the recipe's optimization profiles and workspace, one timing
cache for the whole bundle saved beside the engines (rebuilds reuse the measured tactics), and an engine cache keyed
by everything a plan depends on, so rebuilding an unchanged bundle costs a file copy. The manifest then records the
TensorRT version and the GPU, which the runtime checks before loading anything.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from cseg.bundle.schema import MANIFEST_NAME, file_sha256, hash_files, read_manifest, validate_manifest
from cseg.bundle.verify import verify_files
from cseg.engines.recipe import RECIPE_NAME
from cseg.errors import BundleError, EngineError
from cseg.runtime.tensorrt.engine import tensorrt_module


def cache_key(onnx_sha256: str, tensorrt_version: str, identity: dict, graph: dict) -> str:
    """What a plan depends on: the ONNX bytes, the TensorRT version, the GPU (name, compute capability, SM count,
    memory to the GB), and the recipe's build settings (profiles, precision, workspace). Any change gives another
    key."""
    settings = {k: graph[k] for k in ("profiles", "precision", "strongly_typed", "workspace_mb")}
    payload = {"onnx": onnx_sha256, "tensorrt": tensorrt_version, "gpu": identity["gpu"],
               "compute_capability": list(identity["compute_capability"]), "sm_count": identity["sm_count"],
               "memory_gb": round(identity["memory_gb"]), "build": settings}  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cseg" / "engines"


def check_device(manifest: dict, identity: dict) -> None:
    """Refuse to build a bundle exported for another target's GPU architecture."""
    wanted = manifest["target_profile"]["device"]
    if list(identity["compute_capability"]) != list(wanted["compute_capability"]):
        have = "sm_{}{}".format(*identity["compute_capability"])
        raise EngineError(
            f"this bundle was exported for {manifest['target']} ({wanted['name']}, {wanted['arch']}), but this GPU is "
            f"{identity['gpu']} ({have}); export for this GPU's target instead (cseg-export --target ...)"
        )


def build_bundle(bundle: str | Path, *, cache: str | Path | None = None, force: bool = False, register: bool = False,
                 report: Callable[[str], None] = tqdm.write, progress: bool = True) -> dict:  # fmt: skip
    """Build (or take from the cache) every engine of `bundle`, record them in its manifest; returns the manifest.

    register=True builds nothing: it records engines already built by hand (build_engines.sh) at the recipe's paths.
    """
    from cseg.runtime.cuda.graphs import device_identity

    trt = tensorrt_module()
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    if "target_profile" not in manifest or not (bundle / RECIPE_NAME).is_file():
        raise BundleError(f"{bundle} is a {manifest['target']} bundle: it has no TensorRT recipe and needs no build")
    recipe = json.loads((bundle / RECIPE_NAME).read_text())
    # recipes of earlier cseg versions carry dla_core (always null); one naming a core was edited by hand
    dla = {key: graph["dla_core"] for key, graph in recipe["graphs"].items() if graph.get("dla_core") is not None}
    if dla:
        raise EngineError(f"recipe.json asks for DLA cores ({dla}): cseg builds strongly typed networks for the GPU "
                          "only; remove dla_core from the recipe")  # fmt: skip
    identity = device_identity()
    check_device(manifest, identity)
    known = manifest["target_profile"]["tensorrt_versions"]
    if not any(trt.__version__.startswith(v.removesuffix("x")) for v in known):
        report(f"WARNING: TensorRT {trt.__version__} is not one this target was checked against ({', '.join(known)})")
    cache = Path(cache) if cache else default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    (bundle / "engines").mkdir(exist_ok=True)
    timing_path = bundle / recipe["timing_cache"]
    builder = _Builder(trt, timing_path.read_bytes() if timing_path.is_file() else b"", report)
    engines = {}
    bar = tqdm(recipe["graphs"].items(), desc="engines", unit="engine", disable=not progress, leave=False)
    for key, graph in bar:
        bar.set_postfix_str(key)
        entry = manifest["graphs"][key]
        key_hash = cache_key(entry["sha256"], trt.__version__, identity, graph)
        cached, target = cache / f"{key_hash}.plan", bundle / graph["engine"]
        began = time.perf_counter()
        if register:
            if not target.is_file():
                raise EngineError(f"{graph['engine']} is missing: run build_engines.sh first, or cseg build without --register")
            report(f"  {key:<13} registered ({target.stat().st_size / 1e6:.1f} MB, built by hand)")
        elif cached.is_file() and not force:
            shutil.copyfile(cached, target)
            report(f"  {key:<13} from the engine cache ({cached.stat().st_size / 1e6:.1f} MB)")
        else:
            plan = builder.build(bundle / graph["onnx"], graph, key, progress)
            target.write_bytes(plan)  # from TensorRT's own buffer: a plan is never copied in host memory
            shutil.copyfile(target, cached)
            report(f"  {key:<13} built in {time.perf_counter() - began:.1f} s ({plan.nbytes / 1e6:.1f} MB, {graph['precision']})")
        engines[key] = {"file": graph["engine"], "sha256": file_sha256(target), "cache_key": key_hash,
                        "profiles": [p["name"] for p in graph["profiles"]] or ["default"],
                        "seconds": round(time.perf_counter() - began, 1)}  # fmt: skip
    timing_path.write_bytes(builder.timing_cache())
    manifest["tensorrt"] = {
        "version": trt.__version__, **identity, "engines": engines,
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    manifest["files"] = hash_files(bundle)
    validate_manifest(manifest)
    staged = bundle / f".{MANIFEST_NAME}.partial"
    staged.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(staged, bundle / MANIFEST_NAME)  # the manifest is replaced whole or not at all
    return manifest


class _Builder:
    """TensorRT builder state shared by the engines of one bundle (logger, builder, one timing cache)."""

    def __init__(self, trt, timing_cache: bytes, report: Callable[[str], None]):
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.builder = trt.Builder(self.logger)
        self._cache_config = self.builder.create_builder_config()
        self.cache = self._cache_config.create_timing_cache(timing_cache)
        # TensorRT refuses (False) a cache made on another GPU or TensorRT version: it would be silently unused and
        # then written back, stale, over the bundle's; start a new one instead
        if timing_cache and not self._cache_config.set_timing_cache(self.cache, ignore_mismatch=False):
            report("WARNING: the bundle's timing cache was made on another GPU or TensorRT version: starting a new one")
            self.cache = self._cache_config.create_timing_cache(b"")

    def build(self, onnx_path: Path, graph: dict, key: str, progress: bool):
        """The serialized engine, in TensorRT's host memory (IHostMemory: a buffer; on a Jetson that is the memory
        the GPU uses too, so it is not copied into a bytes object)."""
        trt = self.trt
        network = self.builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT's ONNX parser refused {onnx_path.name}: {errors}")
        config = self.builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, graph["workspace_mb"] << 20)
        if not config.set_timing_cache(self.cache, ignore_mismatch=False):
            raise EngineError(f"TensorRT refused the timing cache while building {key}")
        for recipe_profile in graph["profiles"]:
            profile = self.builder.create_optimization_profile()
            for name, shapes in recipe_profile["shapes"].items():
                profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
            if config.add_optimization_profile(profile) < 0:  # -1: a shape range TensorRT found invalid
                ranges = "; ".join(f"{name} {s['min']} .. {s['opt']} .. {s['max']}"
                                   for name, s in recipe_profile["shapes"].items())  # fmt: skip
                raise EngineError(f"{key}: TensorRT refused optimization profile {recipe_profile['name']} ({ranges}); "
                                  "see the TensorRT messages above")  # fmt: skip
        if progress and hasattr(trt, "IProgressMonitor"):
            config.progress_monitor = _progress_monitor(trt, key)
        plan = self.builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"TensorRT could not build {key} (see the TensorRT messages above)")
        return plan

    def timing_cache(self):
        return self.cache.serialize()  # a buffer, written as it is


def _progress_monitor(trt, key: str):
    """TensorRT's build phases as a progress bar (its IProgressMonitor interface)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.bars = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.bars[phase_name] = tqdm(total=num_steps, desc=f"{key}: {phase_name}", leave=False)

        def step_complete(self, phase_name, step):
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.n = step + 1
                bar.refresh()
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return Monitor()
