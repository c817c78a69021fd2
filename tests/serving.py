"""What the serving tests share: the serving environment, a `cseg serve` subprocess on free loopback ports, the rule
the tests apply, and the comparison of a remote answer with the local Runtime's (test_serve, test_serve_restart)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
START_S = 120  # a loaded 2-core machine: Triton starts in ~3 s alone, the bundle loads in seconds more
NEEDS_SERVE_ENV = pytest.mark.skipif(not SERVE_PYTHON.exists(), reason="no serving environment: run `make serve-env` "
                                     "(.venv-serve, PyTriton with numpy<2); `make test` creates it")  # fmt: skip


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Server:
    """`python -m cseg.serve` in .venv-serve, on free loopback ports; its log goes to a file for the failure message."""

    def __init__(self, bundle, rules, log: Path, ports=None, launcher=("-m", "cseg.serve"), flags=()):
        self.bundle, self.rules, self.log, self.launcher, self.flags = bundle, rules, log, list(launcher), list(flags)
        self.http, self.grpc, self.metrics = ports or free_ports(3)
        self.url = f"127.0.0.1:{self.grpc}"
        self.process = None

    def start(self) -> "Server":
        command = [str(SERVE_PYTHON), *self.launcher, str(self.bundle), "--rules", str(self.rules),
                   "--port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
                   "--max-batch", "8", "--max-delay-ms", "20", *self.flags]  # fmt: skip
        from cseg.serve.stock import serving_environment

        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=serving_environment(),
                                            start_new_session=True)  # fmt: skip
        import tritonclient.grpc as grpcclient

        from cseg.serve import contract

        client = grpcclient.InferenceServerClient(self.url)
        deadline = time.monotonic() + START_S
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"cseg serve exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
                try:
                    if all(client.is_model_ready(m) for m in contract.MODELS):
                        return self
                except Exception:  # not listening yet
                    pass
                time.sleep(0.25)
        finally:
            client.close()
        self.stop()
        pytest.fail(f"cseg serve not ready in {START_S} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)  # the session: PyTriton's tritonserver and stubs go with it
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


# a test module's fixture where it is imported (`from serving import rules`): the rule cseg serve --rules loads
@pytest.fixture(scope="module")
def rules(runtime, photo, tmp_path_factory):
    from skimage import data

    rule = runtime.induce([(data.coffee(), [[120, 30, 420, 300]])], "the cup", image=photo, max_new_tokens=10)
    folder = tmp_path_factory.mktemp("rules")
    rule.save(folder / "cup.json")
    return folder, rule


def same(remote_result, local_result) -> None:
    assert remote_result.mask.shape == local_result.mask.shape and remote_result.mask.any() == local_result.mask.any()
    assert np.array_equal(remote_result.mask, local_result.mask)
    assert np.array_equal(remote_result.instances.masks, local_result.instances.masks)
    np.testing.assert_allclose(remote_result.instances.boxes, local_result.instances.boxes, atol=1e-3)
    np.testing.assert_allclose(remote_result.instances.scores, local_result.instances.scores, atol=1e-5)
    assert remote_result.presence == pytest.approx(local_result.presence, abs=1e-5)
    assert (remote_result.route, remote_result.answer, remote_result.token_ids) == (
        local_result.route, local_result.answer, local_result.token_ids)  # fmt: skip


