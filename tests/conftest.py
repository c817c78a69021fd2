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
