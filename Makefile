# The README's two commands: `make demo` and `make test`. Both set up .venv/ on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test processes (pytest-xdist; one test file per worker at a time). Most tests run a command line in a
# subprocess that waits on imports and MLflow, so two workers halve the wall time on 2 cores.
WORKERS ?= 2

.PHONY: demo test quick lint install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python demo.py

test: $(STAMP)
	@# Services the tests run for real: Debian's mosquitto (MQTT broker) and Chromium with its driver
	@# (dashboard tests). The OPC UA server is asyncua's own, from pyproject. Tests skip, saying so, where one is missing.
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
		(apt-get update && apt-get install -y mosquitto) || echo "mosquitto not installed: MQTT tests will skip"
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || \
		(apt-get update && apt-get install -y chromium chromium-driver) || echo "chromium not installed: browser tests will skip"
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	@# Everything, slow end-to-end tests included (the inner loop is `pytest -m "not slow"`).
	$(BIN)/python -m pytest -q -m "not gpu" -n $(WORKERS) --dist loadfile --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# The inner loop: lint and the fast tests (about 2 minutes on 2 cores).
quick: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow and not gpu" -n $(WORKERS) --dist loadfile

clean:
	rm -rf demo_out mlruns mlflow.db lightning_logs
