#!/usr/bin/env bash
# The CPU host path on aarch64 (a Jetson's CPU), under qemu (issue 29, item 4).
#
#   scripts/aarch64_check.sh        # or: make aarch64-check
#
# Builds tests/native/harness.cpp with runtime/kernels/host_kernels.cpp (the code of cseg.runtime.native without
# Python) twice: for this machine, and cross-compiled for aarch64 with -march=armv8.2-a (Orin's Cortex-A78AE), static.
# Both run the same deterministic cases (9 frame shapes x 6 layouts through preprocess, 10 mask shapes x bilinear and
# bicubic, 3 threads, the kernels' refusals); the aarch64 one under qemu-aarch64. The check: the two output files are
# equal byte for byte, and every case of the aarch64 file matches the oracles of tests/oracles.py at the unit tests'
# tolerances (tests/native/compare.py). Speed under qemu means nothing and is not measured.
# Needs g++-aarch64-linux-gnu and qemu-user-static (Debian: apt-get install -y g++-aarch64-linux-gnu
# qemu-user-static) and the project's venv (make install: numpy and torch for the oracles).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
CROSS=${CROSS_CXX:-aarch64-linux-gnu-g++}
QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
command -v "$CROSS" >/dev/null ||
  { echo "aarch64_check.sh: $CROSS not found (apt-get install g++-aarch64-linux-gnu)" >&2; exit 3; }
[ -n "$QEMU" ] || { echo "aarch64_check.sh: qemu-aarch64 not found (apt-get install qemu-user-static)" >&2; exit 3; }
if [ -n "${AARCH64_CHECK_DIR:-}" ]; then  # the binaries and outputs kept there
  OUT=$AARCH64_CHECK_DIR
  mkdir -p "$OUT"
else
  OUT=$(mktemp -d)
  trap 'rm -rf "$OUT"' EXIT
fi

# the flags of CMakeLists.txt's module: -ffp-contract=off is what makes the two builds agree bit for bit (aarch64
# gcc would otherwise fuse a * b + c into one FMA, rounded once)
FLAGS=(-std=c++17 -O3 -ffp-contract=off -fno-trapping-math -pthread -Wall -Wextra -Werror -Iruntime/kernels)
SOURCES=(tests/native/harness.cpp runtime/kernels/host_kernels.cpp)
g++ "${FLAGS[@]}" "${SOURCES[@]}" -o "$OUT/harness-host" &
"$CROSS" "${FLAGS[@]}" -march=armv8.2-a -static "${SOURCES[@]}" -o "$OUT/harness-aarch64"
wait $!
file "$OUT/harness-aarch64" | grep -q "ARM aarch64" || { echo "aarch64_check.sh: not an aarch64 binary" >&2; exit 1; }

export CSEG_NATIVE_THREADS=3  # the threaded path, with more chunks than threads
"$OUT/harness-host" "$OUT/host.bin"
"$QEMU" "$OUT/harness-aarch64" "$OUT/aarch64.bin"
"$PYTHON" tests/native/compare.py "$OUT/aarch64.bin" "$OUT/host.bin"
echo "aarch64_check.sh: passed ($("$CROSS" --version | head -1); $("$QEMU" --version | head -1))"
