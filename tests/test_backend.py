"""The backend protocol (cseg.backend): the Runtime and the PyTorch reference are checked against it, member by
member and signature by signature, and the check itself finds what is wrong with a backend that does not conform."""

from __future__ import annotations

import pytest

from cseg.backend import Backend, RoutedBackend, conformance
from cseg.runtime import Runtime


def test_the_runtime_is_a_backend_with_a_learned_router():
    assert conformance(Runtime, RoutedBackend) == []
    assert conformance(Runtime, Backend) == []


def test_the_reference_is_a_backend():
    pytest.importorskip("torch")  # the reference is PyTorch; the test venv has it
    from cseg.export import ReferencePipeline

    assert conformance(ReferencePipeline, Backend) == []
    assert "ReferencePipeline.learned_route is missing" in conformance(ReferencePipeline, RoutedBackend)


def test_the_runtime_instance_is_a_routed_backend(runtime):
    assert isinstance(runtime, RoutedBackend)


class _Broken:
    """Each member wrong in one way the flow would trip over."""

    learned_router = None  # a plain attribute where the protocol has a property

    def segment(self, image, prompt, demos=None, *, options=None):  # no **settings: keywords would fail
        pass

    def segment_many(self, image, prompts, demos=None, *, options=None, **settings):
        pass

    def image_state(self, timings, frame):  # the order the flow passes them in is frame, timings
        pass

    def sam3_segment(self, state, text, concept_tokens, timings, scale):  # a required extra the flow never passes
        pass

    def reason(self, state, question, demos, max_new_tokens, timings, max_length):  # needs a default
        pass

    presence = 0.5  # not a method

    @staticmethod
    def postprocess(raw, size, interpolation="bilinear"):  # fine: a staticmethod has no self to drop
        pass


def test_conformance_names_every_problem():
    problems = conformance(_Broken, RoutedBackend)
    assert problems == [
        "_Broken.image_state: parameter 1 must be 'frame'",
        "_Broken.image_state: parameter 2 must be 'timings'",
        "_Broken.learned_route is missing",
        "_Broken.learned_router must be a property",
        "_Broken.presence must be a method",
        "_Broken.reason: takes no keyword 'pending'",
        "_Broken.reason: 'max_length' needs a default (the protocol's is None)",
        "_Broken.sam3_segment: extra parameter 'scale' needs a default (the flow never passes it)",
        "_Broken.segment: takes no **settings",
    ], problems
