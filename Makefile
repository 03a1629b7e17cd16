# Two commands do everything on a fresh machine:
#   make train   -> set up, then train the default experiment
#   make test    -> set up, then run the test suite
# Extra arguments: make train ARGS="env=push seed=1"   make test ARGS="-k replay"
SHELL := /bin/bash
PY312 ?= $(shell pyenv which python3.12 2>/dev/null || command -v python3.12)
VENV := .venv
# uv is called through the interpreter, never by bare name: `python3.12 -m pip install uv`
# puts the uv binary in that interpreter's bin folder, which is not on PATH on a fresh machine.
UV = $(PY312) -m uv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock 2>/dev/null | sha1sum | cut -c1-12)
export MUJOCO_GL ?= osmesa
export PYOPENGL_PLATFORM ?= $(MUJOCO_GL)
export WANDB_MODE ?= offline

.PHONY: setup system train test bench lock
setup: system $(STAMP)

# System libraries: OSMesa for headless MuJoCo on a CPU, FFmpeg for video.
system:
	@if ! ldconfig -p | grep -q libOSMesa || ! ldconfig -p | grep -q libavcodec; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing libosmesa6 and ffmpeg (apt)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libosmesa6 ffmpeg >/dev/null) \
	      || { echo "error: could not install libosmesa6 ffmpeg; install them with your package manager"; exit 1; }; \
	  else echo "error: missing system libraries; run: sudo apt-get install libosmesa6 ffmpeg"; exit 1; fi; fi

$(STAMP): pyproject.toml requirements.lock
	@test -n "$(PY312)" || { echo "error: Python 3.12 not found; install it (pyenv install 3.12) or set PY312=/path/to/python3.12"; exit 1; }
	@$(UV) --version >/dev/null 2>&1 || $(PY312) -m pip install -q uv
	@test -x $(VENV)/bin/python || $(UV) venv -q --python $(PY312) $(VENV)
	$(UV) pip sync -q --python $(VENV)/bin/python requirements.lock
	$(UV) pip install -q --python $(VENV)/bin/python --no-deps -e .
	@rm -f $(VENV)/.installed-*; touch $@

lock:
	$(UV) pip compile -q pyproject.toml --extra dev --extra bench --extra libero --extra ray --python-version 3.12 -o requirements.lock

train: setup
	$(VENV)/bin/embodied-train $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -n 2 -q $(ARGS)

bench: setup
	$(VENV)/bin/python -m benchmarks $(ARGS)
