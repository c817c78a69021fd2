"""The repository `cseg export-triton` writes, served by a stock tritonserver: the tritonserver 2.51 binary and Python
backend that PyTriton's wheel bundles in .venv-serve, started directly (cseg.serve.stock), not through PyTriton. Its
Python-backend models (cseg_segment, cseg_apply, cseg_induce: each a stub process with its own cseg Runtime) must
answer RemoteRuntime as the local Runtime does; the graph models are not loaded (the wheel has no onnxruntime
backend)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest

from cseg.cli import main
from cseg.errors import InvalidInputError

# the serving environment's checks, ports, the rules fixture and the comparison of tests/test_serve.py
from serving import SERVE_PYTHON, START_S, free_ports, rules, same  # noqa: F401 (rules: a fixture)

pytestmark = pytest.mark.skipif(not SERVE_PYTHON.exists(), reason="no serving environment (.venv-serve, which bundles "
                                "the tritonserver binary): run `make serve-env`; `make test` creates it")  # fmt: skip
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (the test extra) is not installed")

from cseg.serve import contract  # noqa: E402
from cseg.serve.client import RemoteRuntime  # noqa: E402
from cseg.serve.stock import stock_command  # noqa: E402


@pytest.fixture(scope="module")
def stock(tiny_bundle, rules, tmp_path_factory):
    """The bundled tritonserver on the tiny bundle's repository, on free loopback ports; its log in a file."""
    work = tmp_path_factory.mktemp("stock")
    assert main(["export-triton", str(tiny_bundle), str(work / "repo"), "--rules", str(rules[0])]) == 0
    http, grpc = free_ports(2)
    argv, env = stock_command(SERVE_PYTHON.parents[1], work / "repo", work, grpc_port=grpc, http_port=http)
    log = work / "tritonserver.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"127.0.0.1:{grpc}"
    try:
        _wait_ready(url, process, log)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the session: tritonserver and its backend stubs
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _wait_ready(url: str, process: subprocess.Popen, log) -> None:
    client = grpcclient.InferenceServerClient(url)
    deadline = time.monotonic() + START_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"tritonserver exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if all(client.is_model_ready(m) for m in contract.MODELS):
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.25)
    finally:
        client.close()
    pytest.fail(f"tritonserver's models not ready in {START_S} s:\n{log.read_text()[-4000:]}")


def test_stock_tritonserver_answers_as_the_local_runtime(stock, runtime, rules, photo):
    from skimage import data

    with RemoteRuntime(stock, timeout_s=60) as rt:
        applied = rt.apply("cup", photo)  # 512x512x3: 786 KB, through shared memory
        assert rt.shared_memory_off is None, rt.shared_memory_off
        same(applied, runtime.apply(rules[1], photo))
        assert applied.route == "rule" and len(applied.rule_version) == 16 and applied.timings["runtime"] > 0
        frame = photo[:200, :300]
        for got, want in zip(rt.segment_many(frame, ["astronaut", "the flag"], route="shortcut"),
                             runtime.segment_many(frame, ["astronaut", "the flag"], route="shortcut")):  # fmt: skip
            assert got.mask.size > 0
            same(got, want)
        # cseg_induce saves the rule into the rules folder; cseg_apply (another stub process) reads it from there
        demos = [(data.coffee(), [[120, 30, 420, 300]])]
        induced = rt.induce(demos, "the cup", image=photo, max_new_tokens=10, rule_id="cup-stock")
        want = runtime.induce(demos, "the cup", image=photo, max_new_tokens=10)
        assert (induced.rule.answer, induced.rule.token_ids) == (want.answer, want.token_ids)
        applied = rt.apply(induced, photo)
        assert applied.rule_version == induced.version
        same(applied, runtime.apply(want, photo))


def test_stock_tritonserver_bad_request_is_the_cseg_error(stock, rules, photo):
    rules[1].save(rules[0] / "spare.json")  # never applied: cseg_apply has not loaded it, its error names it anyway
    with RemoteRuntime(stock, timeout_s=60) as rt:
        with pytest.raises(InvalidInputError, match=r"unknown rule 'nope': this server has \[.*'spare'\]"):
            rt.apply("nope", photo)
        image, options = np.ascontiguousarray(photo[:64, :64]), np.array([b"{}"], dtype=object)
        with pytest.raises(InvalidInputError, match="prompt is empty"):  # the server's own check, sent raw
            rt._infer(contract.SEGMENT, {"image": image, "prompt": np.array([b" "], dtype=object), "options": options})
        assert rt.apply("cup", photo).route == "rule"  # still serving
