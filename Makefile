# Two commands do all set-up on a fresh clone:  make demo  |  make test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# cseg serve's own environment (numpy<2): see serve-env below
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
OUT := demo-output
# the native part's sources: a change rebuilds it on the next make
NATIVE := CMakeLists.txt $(wildcard runtime/kernels/*)

.PHONY: demo test install clean meta-oracle sanitize aarch64-check serve-env

install: $(STAMP)

# torch is installed first and pinned (CPU wheel): a bare torch requirement would pull a multi-GB CUDA build.
# The project's install builds the native part (CMakeLists.txt) with scikit-build-core.
$(STAMP): pyproject.toml $(NATIVE)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[export,test,openvino]"
	# Roboflow trackers without its opencv-python requirement (it would overwrite the headless cv2; see pyproject)
	$(BIN)/python -m pip install --quiet --no-deps "trackers>=2.6,<3"
	# the MQTT tests start their own mosquitto broker; Debian's package starts a service on 1883 we do not need
	command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || ( command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq mosquitto && \
		 (service mosquitto stop 2>/dev/null || systemctl stop mosquitto 2>/dev/null || true)) ) || \
		echo "mosquitto not installed (no apt-get or no root): the MQTT tests will skip; install a mosquitto broker to run them"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cseg make-checkpoint --size tiny --seed 0 --out $(OUT)/checkpoint
	$(BIN)/cseg-export --model $(OUT)/checkpoint/conceptseg-r1 --sam3 $(OUT)/checkpoint/sam3 --target cpu \
		--out $(OUT)/bundle --force
	$(BIN)/cseg segment --bundle $(OUT)/bundle sample:astronaut "astronaut" --out $(OUT)/overlay.png --json

test: $(STAMP) $(SERVE_STAMP)
	$(BIN)/python -m pytest -q --durations=25

# The native module under ASan + UBSan, fuzzed (scripts/sanitize.sh: its own build in build-asan/; ~7 min)
sanitize: $(STAMP)
	scripts/sanitize.sh

# The native kernels cross-built for aarch64 and run under qemu (needs g++-aarch64-linux-gnu, qemu-user-static)
aarch64-check: $(STAMP)
	scripts/aarch64_check.sh

# The serving environment (cseg serve, tests/test_serve.py): PyTriton pins numpy<2 and, with numpy 2 forced in, answers
# with empty tensors, so it cannot share .venv (torch 2.13 and the export side want numpy 2). No torch here: the
# runtime is torch-free; the check below fails the target if a dependency ever pulls torch in.
serve-env: $(SERVE_STAMP)
$(SERVE_STAMP): pyproject.toml $(NATIVE)
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install --quiet -e ".[serve]"
	@! $(SERVE_VENV)/bin/python -c "import torch" 2>/dev/null || (echo "$(SERVE_VENV) has torch: it must not" && false)
	touch $(SERVE_STAMP)

# Meta's own sam3 package as a second oracle (tests/meta_oracle.py), in its own venv: it needs torch 2.14 and
# torchvision, which the main venv must not carry; sam3 is never a dependency of cseg. ~5.5 GB.
META_VENV := .venv-meta
META_STAMP := $(META_VENV)/.installed
meta-oracle: $(META_STAMP)
$(META_STAMP):
	test -x $(META_VENV)/bin/python || $(PYTHON) -m venv $(META_VENV)
	$(META_VENV)/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" "sam3==0.1.4" \
		open_clip_torch psutil pillow numpy
	touch $(META_STAMP)

clean:
	rm -rf $(OUT) $(VENV) $(META_VENV) $(SERVE_VENV) build build-asan
