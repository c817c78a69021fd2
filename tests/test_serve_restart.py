"""`cseg serve` starting and stopping: PyTriton's instance start race retried, a server killed mid-stream and
restarted (the client reports and reconnects), nothing listening, numpy 2 in the serving environment refused."""

from __future__ import annotations

import signal
import sys

import numpy as np
import pytest

from serving import NEEDS_SERVE_ENV, Server, free_ports, rules, same  # noqa: F401 - rules: a fixture

pytestmark = NEEDS_SERVE_ENV
pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (the test extra) is not installed")

from cseg.serve.client import RemoteRuntime, ServerError  # noqa: E402


# `cseg serve` with PyTriton's instance start race forced once per start (the second model's bind fails as it does
# when an instance misses instance 0's handshake socket): the server must restart Triton and serve
RACE_ONCE = """
import runpy, sys
import pytriton.triton
from tritonclient.utils import InferenceServerException
real, calls = pytriton.triton.Triton.bind, []
def bind(self, *args, **kwargs):
    calls.append(kwargs["model_name"])
    if len(calls) == 2:
        raise InferenceServerException("[400] load failed for model 'cseg_apply': version 1 is at UNAVAILABLE state: "
                                       "... in get_config_from_handshake_server ... ConnectionRefusedError")
    return real(self, *args, **kwargs)
pytriton.triton.Triton.bind = bind
runpy.run_module("cseg.serve", run_name="__main__")
"""


def test_start_race_is_retried_server_down_is_a_clear_error_and_the_client_reconnects(
        tiny_bundle, rules, photo, runtime, tmp_path):  # fmt: skip
    log = tmp_path / "server.log"
    server = Server(tiny_bundle, rules[0], log, launcher=("-c", RACE_ONCE), flags=["--no-shared-memory"]).start()
    try:
        assert log.read_text().count("missed PyTriton's start handshake (attempt 1 of 4)") == 1
        rt = RemoteRuntime(server.url, timeout_s=30)
        same(rt.apply("cup", photo), runtime.apply(rules[1], photo))  # frames in the message: shared memory refused
        assert "does not take frames by reference" in rt.shared_memory_off
        server.stop(signal.SIGKILL)
        with pytest.raises(ServerError, match=f"cseg server {server.url}"):
            rt.apply("cup", photo)
        failed = list(rt.stream([photo], "cup"))
        assert failed[0].result is None and "cseg server" in failed[0].error
        server.start()  # the same ports: the same client's next call connects afresh
        same(rt.apply("cup", photo), runtime.apply(rules[1], photo))
        rt.close()
    finally:
        server.stop()


def test_only_the_start_race_is_retried():
    from cseg.serve.server import instance_start_race

    race = "[400] load failed for model 'x': ... get_config_from_handshake_server(handshake_socket) ..."
    assert instance_start_race(RuntimeError(race))
    assert not instance_start_race(RuntimeError("[400] load failed for model 'x': model.py: ValueError: bad"))
    assert not instance_start_race(RuntimeError("get_config_from_handshake_server"))  # not a load failure


def test_nothing_listening_is_a_server_error():
    (port,) = free_ports(1)
    with pytest.raises(ServerError, match="unavailable"):
        RemoteRuntime(f"127.0.0.1:{port}", timeout_s=5).segment(np.zeros((8, 8, 3), np.uint8), "cat")


def test_numpy_2_is_refused_with_a_clear_message(tmp_path, capsys):
    from cseg.cli import main

    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("this environment has numpy<2: the refusal is for numpy 2")
    assert main(["serve", str(tmp_path)]) == 2  # refused before the bundle is even read
    assert "needs numpy<2" in capsys.readouterr().err
    assert sys.modules.get("pytriton") is None  # refused before PyTriton is imported
