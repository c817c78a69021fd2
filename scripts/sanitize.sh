#!/usr/bin/env bash
# cseg.runtime.native under AddressSanitizer + UndefinedBehaviorSanitizer, fuzzed (issue 29, item 2).
#
#   scripts/sanitize.sh            # or: make sanitize
#   CSEG_FUZZ_EXAMPLES=5000 scripts/sanitize.sh    # examples per property (default 2000)
#
# Builds the module with CSEG_SANITIZE=ON into build-asan/ (cmake directly, apart from the installed module and its
# build/ folder), then runs the property-based tests (tests/test_native_fuzz.py, profile cseg-sanitize: random
# examples, many more than the default suite's) and the host-path tests on the CPU against that build:
# tests/conftest.py imports the file named by CSEG_NATIVE_MODULE as cseg.runtime.native. Python is not instrumented,
# so gcc's libasan is preloaded; leak checking is off (the interpreter keeps memory at exit by design). Any ASan
# report or UB aborts the run (exit status != 0). Needs the project's venv (make install) and g++.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BUILD=${CSEG_ASAN_BUILD:-build-asan}
[ -x "$PYTHON" ] || { echo "sanitize.sh: $PYTHON not found: run make install first" >&2; exit 2; }
case $PYTHON in /*) ;; *) PYTHON=$PWD/$PYTHON ;; esac  # absolute, but not resolved: the venv's link, not its target

# CMakeLists.txt finds nanobind through this interpreter (python -m nanobind --cmake_dir)
cmake -S . -B "$BUILD" -DCSEG_SANITIZE=ON -DPython_EXECUTABLE="$PYTHON" >/dev/null
cmake --build "$BUILD" --target native -j "${JOBS:-2}"
MODULE=$(realpath "$(ls "$BUILD"/native*.so | head -1)")
nm -D "$MODULE" | grep __asan_init >/dev/null || { echo "sanitize.sh: $MODULE is not instrumented" >&2; exit 2; }

# libstdc++ too: ASan resolves its __cxa_throw interceptor when it starts, before python (linked without libstdc++)
# loads the module; without it the first C++ exception (any refusal) aborts in asan_interceptors.cpp
export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
# reports go to files: pytest captures stderr, and an aborted process never prints what it captured
REPORTS="$BUILD/reports"
rm -rf "$REPORTS" && mkdir -p "$REPORTS"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$REPORTS/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan"
export CSEG_NATIVE_MODULE="$MODULE" HYPOTHESIS_PROFILE=cseg-sanitize
LOG="$BUILD/fuzz.log"
# not run: test_host_path.py's runtime test (exports a bundle: minutes, and no native call the others lack) and its
# fatbin test (the fatbin is not built here: it is no part of the CPU module)
set +e
"$PYTHON" -m pytest -q -p no:cacheprovider --hypothesis-show-statistics tests/test_native_fuzz.py \
  tests/test_host_path.py -k "not serves_numpy_frames and not fatbin_holds" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
cases=$(grep -oE '[0-9]+ passing' "$LOG" | awk '{n += $1} END {print n + 0}')
findings=$(cat "$REPORTS"/* 2>/dev/null | grep -cE 'ERROR: AddressSanitizer|runtime error:')
cat "$REPORTS"/* 2>/dev/null
echo "sanitize.sh: $MODULE: $cases generated examples passed; sanitizer reports: $findings; pytest exit $status"
exit "$status"
