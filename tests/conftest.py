"""Shared fixtures: checkpoints are generated once per test session (generation and loading take seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from cseg.export.make_checkpoint import make_checkpoint

    return make_checkpoint("tiny", seed=0, out=tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_alt_checkpoint(tmp_path_factory):
    from cseg.export.make_checkpoint import make_checkpoint

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

    from cseg.manifest import read_manifest

    manifest = read_manifest(tiny_bundle)
    return {
        key: ort.InferenceSession(str(tiny_bundle / graph["file"]), providers=["CPUExecutionProvider"])
        for key, graph in manifest["graphs"].items()
    }


@pytest.fixture(scope="session")
def runtime(tiny_bundle):
    from cseg.runtime import Runtime

    return Runtime.open(tiny_bundle)
