"""The CPU host path on aarch64 (a Jetson's CPU): scripts/aarch64_check.sh cross-builds the kernels' harness
(tests/native/harness.cpp) with -march=armv8.2-a, runs it under qemu and requires its output equal byte for byte to
the same harness built for this machine, and every case within the oracles' tolerances (tests/native/compare.py).
Runs where the cross compiler and qemu are installed (apt-get install g++-aarch64-linux-gnu qemu-user-static; the
Makefile's set-up does not install them: they need root); elsewhere it is skipped, saying which is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CROSS = shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
MISSING = [name for name, path in (("aarch64-linux-gnu-g++", CROSS), ("qemu-aarch64", QEMU)) if path is None]


# slow: 17 s of CPU for two builds and the qemu run (over a minute on a loaded 2-core machine): the default suite
# is near its budget, and the script is the documented check
@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (scripts/aarch64_check.sh says how)")
def test_the_kernels_built_for_aarch64_give_the_bits_of_this_machine(tmp_path):
    run = subprocess.run(["bash", str(ROOT / "scripts" / "aarch64_check.sh")], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable, "AARCH64_CHECK_DIR": str(tmp_path)},
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "byte for byte" in run.stdout and "0 failures" in run.stdout, run.stdout
