# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, build + install wrn_fast, print build info, train the default model
#   make test   create .venv, build + install wrn_fast, run the test suite
# Both create their own virtual environment in $(VENV) and install torch from
# what pip finds here (torch 2.14.1, a cu130 build, so the CUDA sources compile).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PKGS ?= torch==2.14.1 triton==3.8.0 torchvision==0.29.1
DEV_PKGS ?= numpy pytest ninja pybind11 scikit-learn scipy tqdm matplotlib
PYTEST_ARGS ?=
# nvcc lives in /usr/local/cuda on these machines; torch needs CUDA_HOME to find its headers.
export CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)

SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)

.PHONY: venv install demo test info bench clean

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH_PKGS) $(DEV_PKGS)
	touch $@

# --no-build-isolation: the extension must compile against the torch installed
# above (an isolated build would fetch its own torch and break the C++ ABI).
$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

venv: $(VENV)/.deps
install: $(VENV)/.installed

info: install
	$(PY) -m wrn_fast info

demo: install
	$(PY) -m wrn_fast info
	$(PY) -m wrn_fast train

# The lent GPU machines run Triton 3.6 (with torch 2.11); tests also compile every
# Triton kernel with that Triton, from a venv of its own (torch 2.13 CPU: the one
# older torch pip finds here without a multi-GB download).
COMPAT_VENV ?= .venv-triton36
COMPAT_PKGS ?= torch==2.13.0 triton==3.6.0 numpy
$(COMPAT_VENV)/.deps:
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/pip install $(COMPAT_PKGS)
	touch $@

test: install $(COMPAT_VENV)/.deps
	WRN_FAST_COMPAT_PYTHON=$(abspath $(COMPAT_VENV))/bin/python $(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m bench.run --quick

clean:
	rm -rf build *.egg-info wrn_fast/_C*.so $(VENV) $(COMPAT_VENV)
