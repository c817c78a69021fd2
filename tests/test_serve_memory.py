"""cseg.serve.memory.IdleTrim: the freed C heap goes back to the system when the server is idle, never mid-request."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from cseg.serve.memory import IdleTrim, _malloc_trim

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or _malloc_trim() is None,
                                reason="malloc_trim is glibc's")  # fmt: skip


def wait_for(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_trims_once_after_start_and_once_after_each_busy_spell_never_during_one():
    idle = IdleTrim(after_s=0.2)
    assert wait_for(lambda: idle.trims == 1)  # after start (the Runtime's opening leaves freed heap)
    time.sleep(0.5)
    assert idle.trims == 1  # nothing new to give back: no trim without activity

    running = threading.Event()

    def infer(requests):
        running.set()
        time.sleep(0.8)  # four idle periods long: a trim now would be mid-request
        return [{"n": len(requests)}]

    watched = IdleTrim.watch(idle, infer)
    assert watched.__name__ == "infer"  # PyTriton names models' callables in its logs
    thread = threading.Thread(target=lambda: watched([1, 2]))
    thread.start()
    running.wait(2)
    time.sleep(0.6)
    assert idle.trims == 1
    thread.join()
    assert wait_for(lambda: idle.trims == 2)
    time.sleep(0.5)
    assert idle.trims == 2


def test_an_infer_that_raises_still_ends_its_busy_spell():
    idle = IdleTrim(after_s=0.2)
    wait_for(lambda: idle.trims == 1)

    def infer(requests):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        idle.watch(infer)([1])
    assert wait_for(lambda: idle.trims == 2)


def test_triton_processes_get_a_fixed_mmap_threshold_unless_one_is_set(monkeypatch):
    from cseg.serve.memory import MMAP_THRESHOLD, bound_child_heaps

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    bound_child_heaps()
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(MMAP_THRESHOLD)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4194304")  # the operator's choice wins
    bound_child_heaps()
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == "4194304"
