"""Shared fixtures: checkpoints are generated once per test session (generation and loading take seconds)."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest


def _load_native_override() -> None:
    """CSEG_NATIVE_MODULE=path/to/native*.so: that build of cseg.runtime.native (the sanitized one of
    scripts/sanitize.sh) is imported in place of the installed one, before anything imports cseg.runtime."""
    path = os.environ.get("CSEG_NATIVE_MODULE")
    if not path:
        return
    spec = importlib.util.spec_from_file_location("cseg.runtime.native", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["cseg.runtime.native"] = module


_load_native_override()


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory):
    """One traced-graph cache for the session (export/graph_cache.py): the first export of each module traces it,
    the later bundles of the same checkpoints (int8, int4, orin, rule-only, the CLI's subprocesses) copy the trace.
    Measured on a 2-core EPYC: ~54 s of a 59 s tiny export is the trace, 5 s with it cached. Parity runs on every copy."""
    from cseg.export.graph_cache import ENV

    previous = os.environ.get(ENV)
    os.environ[ENV] = str(tmp_path_factory.mktemp("export-cache"))
    yield os.environ[ENV]
    if previous is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = previous


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from cseg.export.models.make_checkpoint import make_checkpoint

    return make_checkpoint("tiny", seed=0, out=tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_alt_checkpoint(tmp_path_factory):
    from cseg.export.models.make_checkpoint import make_checkpoint

    return make_checkpoint("tiny-alt", seed=1, out=tmp_path_factory.mktemp("tiny_alt"))


@pytest.fixture(scope="session")
def reference(tiny_checkpoint):
    from cseg.export.reference import ReferencePipeline

    return ReferencePipeline.from_pretrained(*tiny_checkpoint)


@pytest.fixture(scope="session")
def photo():
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory):
    from cseg.export.bundle import export_bundle

    return export_bundle(*tiny_checkpoint, tmp_path_factory.mktemp("bundles") / "tiny", progress=False)


@pytest.fixture(scope="session")
def tiny_alt_bundle(tiny_alt_checkpoint, tmp_path_factory):
    from cseg.export.bundle import export_bundle

    return export_bundle(*tiny_alt_checkpoint, tmp_path_factory.mktemp("bundles") / "tiny_alt", progress=False)


@pytest.fixture(scope="session")
def sessions(tiny_bundle):
    """ONNX Runtime sessions of the tiny bundle's graphs, by manifest key."""
    import onnxruntime as ort

    from cseg.bundle.schema import read_manifest

    manifest = read_manifest(tiny_bundle)
    return {
        key: ort.InferenceSession(str(tiny_bundle / graph["file"]), providers=["CPUExecutionProvider"])
        for key, graph in manifest["graphs"].items()
    }


@pytest.fixture(scope="session")
def runtime(tiny_bundle):
    from cseg.runtime import Runtime

    return Runtime.open(tiny_bundle)


@pytest.fixture(scope="session")
def calibration_folder(tmp_path_factory):
    """Four samples of the default calibration set: three calibrate, one is held out for the gate."""
    import json

    from cseg.calib.calibration_set import default_set

    root = tmp_path_factory.mktemp("calib")
    full = default_set(root)
    lines = [json.dumps({"image": str(i.image.relative_to(root)), "prompt": i.prompt}) for i in full.items[:4]]
    (root / "calib.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _quantized_bundle(checkpoint, factory, calibration_folder, precision):
    from cseg.export.bundle import export_bundle

    # keep_slower: these bundles test the quantized graphs' structure; on tiny graphs int8 need not be faster
    return export_bundle(*checkpoint, factory.mktemp("bundles") / precision, precision=precision,
                         calib=calibration_folder, keep_slower=True, progress=False, report=lambda line: None)  # fmt: skip


@pytest.fixture(scope="session")
def int8_bundle(tiny_checkpoint, tmp_path_factory, calibration_folder):
    return _quantized_bundle(tiny_checkpoint, tmp_path_factory, calibration_folder, "int8")


@pytest.fixture(scope="session")
def int4_bundle(tiny_checkpoint, tmp_path_factory, calibration_folder):
    return _quantized_bundle(tiny_checkpoint, tmp_path_factory, calibration_folder, "int4")


@pytest.fixture(scope="session")
def orin_bundle(tiny_checkpoint, tmp_path_factory, calibration_folder):
    """A GPU-target bundle: orin-nx with its int4 policy (int4 LLM, int8 ViTs, fp16 elsewhere), ONNX + recipe."""
    from cseg.export.bundle import export_bundle

    return export_bundle(*tiny_checkpoint, tmp_path_factory.mktemp("bundles") / "orin-nx", target="orin-nx",
                         precision="int4", calib=calibration_folder, progress=False, report=lambda line: None)  # fmt: skip


@pytest.fixture(scope="session")
def rule_only_bundle(tiny_checkpoint, tmp_path_factory):
    """A rule-only cpu bundle of the tiny SAM 3 (tiny_bundle's weights), exported as the README's walkthrough does:
    without --queries (16 concept tokens, the published Q), while the tiny ConceptSeg-R1 induces rules of 8."""
    from cseg.export.bundle import export_bundle

    return export_bundle(None, tiny_checkpoint[1], tmp_path_factory.mktemp("bundles") / "rule-only", progress=False,
                         report=lambda line: None)  # fmt: skip
