"""A stock tritonserver for a repository `cseg export-triton` wrote: the tritonserver binary (2.51) and Python backend
that PyTriton's wheel bundles in the serving environment (.venv-serve), started directly, not through PyTriton.

    argv, env = stock_command(".venv-serve", repo, workdir, grpc_port=8001, http_port=8000)
    subprocess.Popen(argv, env=env, start_new_session=True)

What it takes to run the bundled binary (read from how PyTriton starts it: pytriton/triton.py,
pytriton/server/triton_server.py), each done here:
- a backend directory whose python/ holds libtriton_python.so, triton_python_backend_utils.py and the stub
  `triton_python_backend_stub` built for the serving interpreter's Python version: the wheel keeps the stubs apart
  (tritonserver/python_backend_stubs/3.X/), PyTriton copies the right one into a copy of backends/; here `workdir`
  gets a backends/python of symbolic links;
- LD_LIBRARY_PATH = the serving interpreter's LIBDIR (else the stub loads the system's libpython3.X.so, another build)
  and the wheel's nvidia_pytriton.libs (as PyTriton sets it);
- PATH with the serving environment's bin/ first: the stub embeds Python, and that Python finds its environment (the
  venv's site-packages, where cseg, numpy<2 and onnxruntime are) through the `python` on PATH. Without it the
  models fail to load with "No module named 'cseg'" (checked).
Only the repository's Python-backend models are loaded (`--model-control-mode explicit`): the wheel has no
onnxruntime or tensorrt backend for the graph models.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from cseg.errors import CsegError, InvalidInputError

# what the serving interpreter reports about itself: where PyTriton's tritonserver is, its LIBDIR and Python version
_PROBE = """import importlib.util, json, sys, sysconfig
spec = importlib.util.find_spec("pytriton")
print(json.dumps({"pytriton": spec and list(spec.submodule_search_locations)[0],
                  "libdir": sysconfig.get_config_var("LIBDIR"), "version": "%d.%d" % sys.version_info[:2]}))"""


def python_models(repo) -> list[str]:
    """The repository's Python-backend models (cseg_segment, cseg_apply, cseg_induce: those it has), from the summary
    cseg export-triton wrote beside them."""
    from cseg.serve.triton_repo import MARKER

    marker = Path(repo) / MARKER
    if not marker.is_file():
        raise InvalidInputError(f"{repo} is not a model repository written by cseg export-triton (no {MARKER})")
    models = json.loads(marker.read_text(encoding="utf-8"))["models"]
    return sorted(name for name, model in models.items() if model["backend"] == "python")


def stock_command(serve_env, repo, workdir, *, grpc_port: int, http_port: int, metrics_port: int = 0,
                  host: str = "127.0.0.1", models=None) -> tuple[list[str], dict]:  # fmt: skip
    """The command line and environment that start the bundled tritonserver on `repo`, serving `models` (default:
    the repository's Python-backend models) on `host`; `workdir` receives the backend directory. metrics_port 0: no
    metrics endpoint."""
    python = Path(serve_env).absolute() / "bin" / "python"  # not resolved: the venv's link is the venv
    if not python.exists():
        raise CsegError(f"no serving environment at {serve_env}: make serve-env (PyTriton bundles the tritonserver)")
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60,
                           env=serving_environment())  # fmt: skip
    if probe.returncode != 0:
        raise CsegError(f"{python} failed to describe itself: {probe.stderr.strip()[-500:]}")
    found = json.loads(probe.stdout)
    if not found["pytriton"]:
        raise CsegError(f"{serve_env} has no PyTriton (nvidia-pytriton bundles the tritonserver): make serve-env")
    server = Path(found["pytriton"]) / "tritonserver"
    stub = server / "python_backend_stubs" / found["version"] / "triton_python_backend_stub"
    if not stub.is_file():
        raise CsegError(f"PyTriton in {serve_env} has no Python backend stub for Python {found['version']} ({stub})")
    backend = Path(workdir) / "backends" / "python"
    backend.mkdir(parents=True, exist_ok=True)
    for source in [*(server / "backends" / "python").glob("*.*"), stub]:  # the library, utils (no __pycache__)
        link = backend / source.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    env = serving_environment()
    libs = [found["libdir"], str(Path(found["pytriton"]).parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *filter(None, env.get("LD_LIBRARY_PATH", "").split(os.pathsep))])
    env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
    argv = [str(server / "bin" / "tritonserver"), "--model-repository", str(Path(repo).resolve()),
            "--model-control-mode", "explicit", "--backend-directory", str(backend.parent),
            "--http-address", host, "--grpc-address", host, "--http-port", str(http_port),
            "--grpc-port", str(grpc_port)]  # fmt: skip
    argv += ["--metrics-port", str(metrics_port)] if metrics_port else ["--allow-metrics", "false"]
    for model in python_models(repo) if models is None else models:
        argv += ["--load-model", model]
    return argv, env


def serving_environment() -> dict:
    """This process's environment without another Python's settings, for a process of the serving environment
    (.venv-serve) started from another interpreter: it must find its own packages (tests/serving.py and the serving
    benchmarks start `cseg serve` with it too)."""
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
